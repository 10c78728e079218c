"""One loader worker's reads: a unit of a split's layout at a time, the last few kept (LRU).

A unit is read as whole row groups of each of its files: the image shard
(``image_id``, ``labels`` and, unless batches hold cached embeddings, the
``jpeg`` bytes), the embedding shard (``embedding``) and the feature shard
(``hog``, ``color_hist`` -> the wide input, ``wide.py``). The image ids of
every derived file are checked against the image shard's
(``cache.aligned``). Memory is bounded: ``keep`` units and ``MAX_OPEN_FILES``
open Parquet files.
"""
from __future__ import annotations

import collections
import functools
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...cache import fixed_matrix, multi_hot
from ...cache.derived import check_rows
from .layout import SplitLayout
from .wide import wide_matrix

MAX_OPEN_FILES = 12  # a few shards' worth of image, embedding and feature files


class Chunk:
    """One unit's rows, read from Parquet (JPEG bytes not decoded yet)."""

    def __init__(self, ids: List[str], labels: np.ndarray, jpegs: Optional[List[bytes]],
                 embeddings: Optional[np.ndarray], wide: Optional[np.ndarray]):
        self.ids, self.labels, self.jpegs, self.embeddings, self.wide = ids, labels, jpegs, embeddings, wide

    @functools.cached_property
    def wide_ok(self) -> Optional[np.ndarray]:
        """(rows,) bool: the rows whose wide input is complete (computed once, when first asked)."""
        return None if self.wide is None else ~np.isnan(self.wide).any(axis=1)


class UnitReader:
    """Loads units of ``layout`` on demand and keeps the last ``keep`` (LRU)."""

    def __init__(self, layout: SplitLayout, space: np.ndarray, keep: int):
        self.layout, self.space, self.keep = layout, space, keep
        self.chunks: "collections.OrderedDict[int, Chunk]" = collections.OrderedDict()
        self.files: "collections.OrderedDict[Path, pq.ParquetFile]" = collections.OrderedDict()

    def _read(self, path: Path, groups, columns) -> pa.Table:
        if path not in self.files:
            self.files[path] = pq.ParquetFile(path)
            while len(self.files) > MAX_OPEN_FILES:
                self.files.popitem(last=False)
        return self.files[path].read_row_groups(list(groups), columns=columns)

    def get(self, u: int) -> Chunk:
        chunk = self.chunks.get(u)
        if chunk is None:
            chunk = self.chunks[u] = self._load(u)
            while len(self.chunks) > self.keep:
                self.chunks.popitem(last=False)
        else:
            self.chunks.move_to_end(u)
        return chunk

    def _derived(self, folder: Path, unit, groups, columns, ids: pa.Array, command: str) -> pa.Table:
        """The unit's rows of a derived shard (features, embeddings), checked to be the image shard's rows."""
        path = folder / unit.shard
        t = self._read(path, groups, ["image_id", *columns])
        check_rows(ids, t.column("image_id").combine_chunks().cast(pa.string()), path, command,
                   f"{unit.start}..{unit.start + unit.rows - 1}")
        return t

    def _load(self, u: int) -> Chunk:
        unit, layout = self.layout.units[u], self.layout
        path = layout.images_dir / unit.shard
        images = layout.embeddings_dir is None
        t = self._read(path, unit.image_groups, ["image_id", "labels"] + (["jpeg"] if images else []))
        ids = t.column("image_id").combine_chunks().cast(pa.string())
        labels = multi_hot(t.column("labels"), self.space, where=str(path))
        embeddings = wide = None
        if not images:
            e = self._derived(layout.embeddings_dir, unit, unit.embedding_groups, ["embedding"], ids, "embed")
            embeddings = np.empty((e.num_rows, e.column("embedding").type.list_size), np.float32)
            fixed_matrix(e.column("embedding"), embeddings, 0)
        if layout.features_dir is not None:
            f = self._derived(layout.features_dir, unit, unit.feature_groups, ["hog", "color_hist"], ids, "features")
            wide = wide_matrix(f)
        return Chunk(ids.to_pylist(), labels, t.column("jpeg").to_pylist() if images else None, embeddings, wide)


__all__ = ["Chunk", "MAX_OPEN_FILES", "UnitReader"]
