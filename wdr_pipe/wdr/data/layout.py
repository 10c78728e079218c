"""The units of a split, for the loader: ``build_layout(store, split, feature_key, embedding_key)``.

Reads only Parquet footers and small columns (``error`` of the feature and
embedding shards, ``image_id`` when there are sample weights) and lists the
*units*: runs of rows that start and end on a row-group boundary of every
file read together (the image shard and its row-aligned feature and
embedding shards), so a unit is read with whole row groups of each file and
nothing else. The rows worth loading (those whose embedding and features did
not fail) get canonical numbers ``0 .. N-1``, unit after unit; ``sampling.py``
orders them.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...cache import Store, failures_path
from ...errors import UserError

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A run of rows of one image shard, read as whole row groups of every file."""

    shard: str                           # file name, e.g. part-00003.parquet
    start: int                           # first row of the unit within the shard
    rows: int                            # rows in the unit (valid or not)
    image_groups: Tuple[int, ...]        # row groups of the image shard that make up the unit
    feature_groups: Tuple[int, ...]      # row groups of the feature shard (empty without features)
    embedding_groups: Tuple[int, ...] = ()  # row groups of the embedding shard (empty without embeddings)


@dataclasses.dataclass
class SplitLayout:
    """What one split holds, for the loader; cheap to pickle into workers."""

    images_dir: Path
    features_dir: Optional[Path]
    embeddings_dir: Optional[Path]  # set: batches hold the cached embeddings instead of images
    units: List[Unit]
    unit_start: np.ndarray          # (U + 1,) canonical number of each unit's first valid row
    row_offset: np.ndarray          # (N,) row of each valid row within its unit
    weight: np.ndarray              # (N,) float32 sample weight from stats/ (1.0 without)
    skipped: Dict[str, int]         # rows left out: {"download": .., ["embedding": ..,] "features": ..}

    @property
    def num_rows(self) -> int:
        return int(len(self.row_offset))

    def unit_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.unit_start, rows, side="right") - 1


def _group_bounds(meta: pq.FileMetaData) -> np.ndarray:
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _units(shard: str, img_bounds: np.ndarray, feat_bounds: Optional[np.ndarray],
           emb_bounds: Optional[np.ndarray] = None) -> List[Unit]:
    """Cut a shard at the row-group boundaries its image, feature and embedding files have in common."""
    cuts = img_bounds
    for other in (emb_bounds, feat_bounds):
        if other is not None:
            cuts = np.intersect1d(cuts, other)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            continue
        groups = lambda bounds: () if bounds is None else \
            tuple(int(i) for i in np.flatnonzero((bounds[:-1] >= a) & (bounds[:-1] < b)))  # noqa: E731
        out.append(Unit(shard, int(a), int(b - a), groups(img_bounds), groups(feat_bounds), groups(emb_bounds)))
    return out


def _no_error(path: Path) -> np.ndarray:
    """(rows,) bool: the rows of a derived shard whose ``error`` is null."""
    return pc.is_null(pq.read_table(path, columns=["error"]).column(0)).to_numpy(zero_copy_only=False)


def _aligned_weights(store: Store, split: str, shards: List[Path], weighted: bool) -> Optional[np.ndarray]:
    """Sample weights in the row order of ``shards`` (concatenated); None without stats (unless ``weighted``)."""
    from ...cache import sample_weights

    try:
        ids, w = sample_weights(store, split)
    except UserError:
        if weighted:
            raise
        return None
    shard_ids = np.concatenate([pq.read_table(p, columns=["image_id"]).column(0).to_numpy(zero_copy_only=False)
                                for p in shards])
    if len(ids) == len(shard_ids) and np.array_equal(ids, shard_ids):
        return w.astype(np.float32)
    import pandas as pd

    pos = pd.Index(ids).get_indexer(shard_ids)
    missing = int((pos < 0).sum())
    if missing:
        log.warning("%s: %d images have no sample weight (stats are older than the images); they get 1.0; "
                    "rerun 'wdr-pipe stats' to include them", store.label_stats_dir(split), missing)
    return np.where(pos >= 0, w[np.maximum(pos, 0)], 1.0).astype(np.float32)


def build_layout(store: Store, split: str, feature_key: Optional[str] = None, weighted: bool = False,
                 embedding_key: Optional[str] = None) -> SplitLayout:
    """The units and usable rows of ``split`` over its image shards and, with their keys, the row-aligned
    feature and embedding shards (module doc). Reads footers and small columns only."""
    shards = store.require_images(split)
    skipped = {"download": 0, **({"embedding": 0} if embedding_key is not None else {}), "features": 0}
    units: List[Unit] = []
    offsets: List[np.ndarray] = []
    shard_valid: List[np.ndarray] = []
    for shard in shards:
        fail = failures_path(shard)
        if fail.exists():
            skipped["download"] += pq.read_metadata(fail).num_rows
        meta = pq.read_metadata(shard)
        valid = np.ones(meta.num_rows, bool)
        bounds = {"feature": None, "embedding": None}
        for what, key, path_of in (("embedding", embedding_key, store.embeddings.shard),
                                   ("features", feature_key, store.features.shard)):
            if key is None:
                continue
            path = path_of(key, split, shard)
            bounds["feature" if what == "features" else what] = _group_bounds(pq.read_metadata(path))
            ok = _no_error(path)
            skipped[what] += int((valid & ~ok).sum())
            valid &= ok
        shard_valid.append(valid)
        for u in _units(shard.name, _group_bounds(meta), bounds["feature"], bounds["embedding"]):
            units.append(u)
            offsets.append(np.flatnonzero(valid[u.start:u.start + u.rows]).astype(np.int32))
    unit_start = np.concatenate([[0], np.cumsum([len(o) for o in offsets])]).astype(np.int64)
    if not unit_start[-1]:
        if embedding_key is not None:
            raise UserError(f"{store.embeddings.dir(embedding_key, split)}: no usable rows (every image, embedding "
                            "or feature row failed)")
        raise UserError(f"{store.images_dir(split)}: no usable rows (every image or feature row failed)")
    weights = _aligned_weights(store, split, shards, weighted)
    # shard rows are concatenated in the same order as the units
    weight = np.ones(int(unit_start[-1]), np.float32) if weights is None else weights[np.concatenate(shard_valid)]
    return SplitLayout(store.images_dir(split), store.features.dir(feature_key, split) if feature_key else None,
                       store.embeddings.dir(embedding_key, split) if embedding_key else None, units, unit_start,
                       np.concatenate(offsets), weight, skipped)


__all__ = ["SplitLayout", "Unit", "build_layout"]
