"""The stored images as the page sees them: where each one is, its true labels, and its JPEG bytes.

``Catalog.read(store)`` reads the small columns of every committed image shard (image id, url,
sha256, size, labels; never the JPEGs) into arrays: catalog row ``g`` is one stored image, known by
``(split, image_id)`` (ids repeat across splits, as FGVC5's do). A request names an image by id and
split, which is looked up here, never joined to a path. ``jpeg(g)`` reads one image's bytes from
its shard: the row group that holds it, kept in a small LRU (a page of thumbnails mostly falls in a
few row groups). ``thumbnail`` downsizes one for the grid. ``Labels`` is the label space with the
names and tasks of the store's label map (ids alone where it has none).
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg

from ..cache import Store, label_columns, label_map, label_space
from ..imaging import decode_rgb, overlay

THUMB_SIDE = 256           # a grid cell is about 180 CSS px: sharp at 1.4x
ROW_GROUP_CACHE = 64 << 20  # bytes of JPEG row groups kept in memory


class NotFound(LookupError):
    """An image id (or split) the store does not have; the message says which."""


class Ambiguous(LookupError):
    """An image id that several splits have; the message names them."""


@dataclasses.dataclass
class Labels:
    """The label space: ids (sorted), names and tasks from the label map ('' where it has none)."""

    ids: np.ndarray
    names: List[str]
    tasks: List[str]

    @classmethod
    def read(cls, store: Store) -> "Labels":
        ids = label_space(store).astype(np.int64)
        names, tasks = [""] * len(ids), [""] * len(ids)
        table = label_map(store)
        if table is not None:
            pos = {int(i): j for j, i in enumerate(ids)}
            for r in table.itertuples(index=False):
                j = pos.get(int(r.labelId))
                if j is not None:
                    names[j] = "" if r.labelName is None or r.labelName != r.labelName else str(r.labelName)
                    tasks[j] = "" if r.taskName is None or r.taskName != r.taskName else str(r.taskName)
        return cls(ids, names, tasks)

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, label_id: int) -> Optional[int]:
        j = int(np.searchsorted(self.ids, label_id))
        return j if j < len(self.ids) and self.ids[j] == label_id else None

    def text(self, j: int) -> str:
        return self.names[j] or str(int(self.ids[j]))


@dataclasses.dataclass
class Catalog:
    """Every stored image: row ``g`` -> split, image id, shard and row, url, sha256, size, true labels."""

    splits: List[str]
    split_of: np.ndarray          # (N,) int16 index into splits
    ids: np.ndarray               # (N,) object: image ids
    shards: List[Path]            # image shard files
    shard_of: np.ndarray          # (N,) int32 index into shards
    row_of: np.ndarray            # (N,) int32 row in its shard
    urls: np.ndarray              # (N,) object
    sha256: np.ndarray            # (N,) object
    size: np.ndarray              # (N, 2) int32 width, height as stored
    label_offsets: np.ndarray     # (N+1,) int64: true labels of g are label_cols[offsets[g]:offsets[g+1]]
    label_cols: np.ndarray        # positions in the label space
    labelled: np.ndarray          # (N,) bool: the image has a label list (not an unlabelled split)

    def __post_init__(self):
        self._where: Dict[Tuple[int, str], int] = {}
        self._splits_of: Dict[str, List[int]] = {}
        for g, (s, i) in enumerate(zip(self.split_of.tolist(), self.ids.tolist())):
            self._where[(s, i)] = g
            self._splits_of.setdefault(i, []).append(g)
        self._groups: "collections.OrderedDict[Tuple[int, int], pa.Array]" = collections.OrderedDict()
        self._group_bytes = 0
        self._starts: Dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def read(cls, store: Store, labels: Labels) -> "Catalog":
        splits = store.image_splits()
        tables, shards, split_of, shard_of = [], [], [], []
        for s, split in enumerate(splits):
            for shard in store.image_shards(split):
                t = pq.ParquetFile(shard).read(columns=["image_id", "url", "sha256", "width", "height", "labels"])
                tables.append(t)
                split_of.append(np.full(t.num_rows, s, np.int16))
                shard_of.append(np.full(t.num_rows, len(shards), np.int32))
                shards.append(shard)
        if not tables:
            store.input_splits()  # the one-line error naming the fix
        t = pa.concat_tables(tables, promote_options="permissive")
        offsets, cols = label_columns(t.column("labels"), labels.ids, where=str(store.images_root))
        rows = np.concatenate([np.arange(x.num_rows, dtype=np.int32) for x in tables])
        return cls(splits, np.concatenate(split_of), np.asarray(t.column("image_id").to_pylist(), dtype=object),
                   shards, np.concatenate(shard_of), rows, np.asarray(t.column("url").to_pylist(), dtype=object),
                   np.asarray(t.column("sha256").to_pylist(), dtype=object),
                   np.stack([t.column("width").to_numpy(), t.column("height").to_numpy()], axis=1).astype(np.int32),
                   offsets, cols, t.column("labels").is_valid().to_numpy(zero_copy_only=False))

    def __len__(self) -> int:
        return len(self.ids)

    # -- lookups ---------------------------------------------------------------------------------
    def split_index(self, split: str) -> int:
        if split not in self.splits:
            raise NotFound(f"split {split!r} is not in the store (it has: {', '.join(self.splits)})")
        return self.splits.index(split)

    def find(self, image_id: str, split: Optional[str] = None) -> int:
        """The catalog row of an image id (in ``split``, needed only when several splits have the id)."""
        if split is not None:
            g = self._where.get((self.split_index(split), image_id))
            if g is None:
                raise NotFound(f"image {image_id!r} is not in split {split!r} of the store")
            return g
        found = self._splits_of.get(image_id, [])
        if not found:
            raise NotFound(f"image {image_id!r} is not in the store")
        if len(found) > 1:
            raise Ambiguous(f"image id {image_id!r} is in several splits ("
                            f"{', '.join(self.splits[self.split_of[g]] for g in found)}); pass split too")
        return found[0]

    def split_name(self, g: int) -> str:
        return self.splits[int(self.split_of[g])]

    def true_cols(self, g: int) -> np.ndarray:
        return self.label_cols[self.label_offsets[g]:self.label_offsets[g + 1]]

    def postings(self, n_labels: int) -> List[np.ndarray]:
        """Per label position: the sorted catalog rows whose true labels hold it."""
        rows = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.label_offsets))
        order = np.argsort(self.label_cols, kind="stable")
        bounds = np.searchsorted(self.label_cols[order], np.arange(n_labels + 1))
        return [rows[order[bounds[j]:bounds[j + 1]]] for j in range(n_labels)]

    # -- image bytes -----------------------------------------------------------------------------
    def _group_of(self, shard: int, row: int) -> Tuple[int, int]:
        starts = self._starts.get(shard)
        if starts is None:
            meta = pq.read_metadata(self.shards[shard])
            starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            self._starts[shard] = starts
        i = int(np.searchsorted(starts, row, side="right")) - 1
        return i, row - int(starts[i])

    def jpeg(self, g: int) -> bytes:
        """The stored JPEG bytes of catalog row ``g``, read from its image shard."""
        shard, row = int(self.shard_of[g]), int(self.row_of[g])
        with self._lock:
            group, at = self._group_of(shard, row)
            col = self._groups.get((shard, group))
            if col is not None:
                self._groups.move_to_end((shard, group))
        if col is None:
            col = pq.ParquetFile(self.shards[shard]).read_row_group(group, columns=["jpeg"]).column(0).combine_chunks()
            with self._lock:
                self._groups[(shard, group)] = col
                self._group_bytes += col.nbytes
                while self._group_bytes > ROW_GROUP_CACHE and len(self._groups) > 1:
                    _, old = self._groups.popitem(last=False)
                    self._group_bytes -= old.nbytes
        return col[at].as_py()


def thumbnail(jpeg: bytes, side: int = THUMB_SIDE) -> bytes:
    """The stored JPEG as is when it already fits ``side`` (longer side, with 25 % slack), else downsized."""
    import cv2

    h, w = simplejpeg.decode_jpeg_header(jpeg)[:2]
    if max(w, h) <= side * 1.25:
        return jpeg
    img = decode_rgb(jpeg, min_size=0)
    scale = side / max(w, h)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(small), quality=85, colorspace="RGB")


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> bytes:
    """A PNG of ``image`` with a [0, 1] map drawn over it (the report's overlay, ``imaging.overlay``)."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(image, cam, alpha), cv2.COLOR_RGB2BGR))
    return png.tobytes()


def decode(jpeg: bytes) -> np.ndarray:
    return decode_rgb(jpeg)


def rows_of(ids: Sequence[str], catalog: Catalog, split: str) -> np.ndarray:
    """Catalog rows of image ids of one split (-1 where the split has no such id)."""
    s = catalog.split_index(split)
    return np.asarray([catalog._where.get((s, i), -1) for i in ids], dtype=np.int64)


__all__ = ["Ambiguous", "Catalog", "Labels", "NotFound", "THUMB_SIDE", "decode", "overlay_png", "rows_of",
           "thumbnail"]
