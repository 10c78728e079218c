"""Which rows a loader worker reads, and in which order: pure numpy, no image is touched.

``build_plan(store, split, feature_key)`` reads only Parquet footers and
small columns (``error`` of the feature shards, ``image_id`` when there are
sample weights) and lists the *units*: runs of rows that start and end on a
row-group boundary of both the image shard and its row-aligned feature shard,
so a unit is read with whole row groups of each file and nothing else.
The rows of a split that are worth loading (those whose features did not
fail) get canonical numbers ``0 .. N-1``, unit after unit.

``worker_rows(plan, ...)`` gives one DataLoader worker of one rank its rows
for an epoch, as canonical numbers in emission order:

1. the units are shuffled from ``(seed, epoch)``, giving a sequence ``seq`` of
   the N rows (no shuffle: store order);
2. weighted sampling (optional): with weights normalised to mean 1, the row
   at each place of ``seq`` is repeated ``floor(w)`` or ``floor(w) + 1``
   times, the latter with probability ``frac(w)`` (systematic sampling: one
   uniform ``u`` per epoch, counts ``floor(C_i + u) - floor(C_{i-1} + u)``
   over the cumulative weights ``C``). A row's expected count is exactly its
   weight, and the weighted sequence has exactly N places like the unweighted
   one, so the split below, the equal batch counts and ``len`` stay the same;
3. every rank takes ``T = ceil(N / world_size)`` consecutive positions of that
   sequence, position ``p`` being row ``seq[p % N]``: the last rank wraps
   around to the start, so ranks that come up short repeat at most
   ``world_size - 1`` rows in all (as ``DistributedSampler`` does) and every
   rank gets exactly ``T`` samples. Without weighting every row is seen
   exactly once per epoch, plus those few pads;
4. a rank's ``T`` positions are cut into one consecutive block per worker,
   each a whole number of batches (the rank's batches dealt round-robin, as
   the DataLoader collects them), so only the rank's last batch can be short;
   the sizes are the same on every rank, so every rank yields the same number
   of batches;
5. a local shuffle: each emission gets the key ``index + U(0, buffer)`` and
   they are sorted by it, so a row moves at most ``buffer`` places and the
   worker never needs more than about ``buffer`` rows (a few units) in memory.

Everything is drawn from ``(seed, epoch, rank, worker)``, so the same seed
gives the same order and a worker can skip to any position of its stream
without reading the rows before it (mid-epoch resume).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..cache import Store, failures_path
from ..errors import UserError

log = logging.getLogger("wdr_pipe")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A run of rows of one image shard, read as whole row groups of both files."""

    shard: str                      # file name, e.g. part-00003.parquet
    start: int                      # first row of the unit within the shard
    rows: int                       # rows in the unit (valid or not)
    image_groups: Tuple[int, ...]   # row groups of the image shard that make up the unit
    feature_groups: Tuple[int, ...]  # row groups of the feature shard (empty without features)


@dataclasses.dataclass
class Plan:
    """What one split holds, for the loader; cheap to pickle into workers."""

    images_dir: Path
    features_dir: Optional[Path]
    units: List[Unit]
    unit_start: np.ndarray          # (U + 1,) canonical number of each unit's first valid row
    row_offset: np.ndarray          # (N,) row of each valid row within its unit
    weight: np.ndarray              # (N,) float32 sample weight from stats/ (1.0 without)
    skipped: Dict[str, int]         # rows left out: {"download": .., "features": ..}

    @property
    def num_rows(self) -> int:
        return int(len(self.row_offset))

    def unit_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.unit_start, rows, side="right") - 1


def _group_bounds(meta: pq.FileMetaData) -> np.ndarray:
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _units(shard: str, img_bounds: np.ndarray, feat_bounds: Optional[np.ndarray]) -> List[Unit]:
    """Cut a shard at the row-group boundaries the image and feature files have in common."""
    cuts = img_bounds if feat_bounds is None else np.intersect1d(img_bounds, feat_bounds)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            continue
        groups = lambda bounds: tuple(int(i) for i in np.flatnonzero((bounds[:-1] >= a) & (bounds[:-1] < b)))
        out.append(Unit(shard, int(a), int(b - a), groups(img_bounds),
                        groups(feat_bounds) if feat_bounds is not None else ()))
    return out


def _aligned_weights(store: Store, split: str, shards: List[Path], weighted: bool) -> Optional[np.ndarray]:
    """Sample weights in the row order of ``shards`` (concatenated); None without stats (unless ``weighted``)."""
    from ..cache import sample_weights

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
                    "rerun 'wdr-pipe stats' to include them", store.stats_dir(split), missing)
    return np.where(pos >= 0, w[np.maximum(pos, 0)], 1.0).astype(np.float32)


def build_plan(store: Store, split: str, feature_key: Optional[str] = None, weighted: bool = False) -> Plan:
    """List the units and valid rows of ``split`` (see the module doc). Reads footers and small columns only."""
    shards = store.require_images(split)
    skipped = {"download": 0, "features": 0}
    units: List[Unit] = []
    offsets: List[np.ndarray] = []
    shard_valid: List[np.ndarray] = []
    for shard in shards:
        fail = failures_path(shard)
        if fail.exists():
            skipped["download"] += pq.read_metadata(fail).num_rows
        meta = pq.read_metadata(shard)
        valid = np.ones(meta.num_rows, bool)
        feat_bounds = None
        if feature_key is not None:
            fpath = store.feature_shard(feature_key, split, shard)
            feat_bounds = _group_bounds(pq.read_metadata(fpath))
            valid = pc.is_null(pq.read_table(fpath, columns=["error"]).column(0)).to_numpy(zero_copy_only=False)
            skipped["features"] += int((~valid).sum())
        shard_valid.append(valid)
        for u in _units(shard.name, _group_bounds(meta), feat_bounds):
            units.append(u)
            offsets.append(np.flatnonzero(valid[u.start:u.start + u.rows]).astype(np.int32))
    counts = np.array([len(o) for o in offsets], np.int64)
    unit_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    weights = _aligned_weights(store, split, shards, weighted)
    if weights is None:
        weight = np.ones(int(unit_start[-1]), np.float32)
    else:
        valid_all = np.concatenate(shard_valid)
        weight = weights[valid_all]  # shard rows are concatenated in the same order as the units
    if not unit_start[-1]:
        raise UserError(f"{store.images_dir(split)}: no usable rows (every image or feature row failed)")
    features_dir = store.features_dir(feature_key, split) if feature_key is not None else None
    return Plan(store.images_dir(split), features_dir, units, unit_start,
                np.concatenate(offsets) if offsets else np.zeros(0, np.int32), weight, skipped)


# -- order -------------------------------------------------------------------------
def epoch_sequence(plan: Plan, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The split's valid rows in this epoch's unit order (canonical numbers)."""
    n_units = len(plan.units)
    order = np.random.default_rng([seed, epoch]).permutation(n_units) if shuffle else np.arange(n_units)
    starts, ends = plan.unit_start[:-1][order], plan.unit_start[1:][order]
    lengths = ends - starts
    # concatenated aranges: start of each run repeated, plus the position inside the run
    run_first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - run_first


def rank_size(n: int, world_size: int) -> int:
    """Samples per rank per epoch: ``ceil(n / world_size)``."""
    return -(-n // world_size)


def worker_size(n: int, world_size: int, worker: int, num_workers: int, batch_size: int = 1) -> int:
    """Samples of ``worker`` per epoch: whole batches, dealt round-robin as the DataLoader collects them,
    so only the rank's very last batch (held by worker ``(batches - 1) % num_workers``) can be short."""
    t = rank_size(n, world_size)
    batches = -(-t // batch_size)
    size = (batches // num_workers + (1 if worker < batches % num_workers else 0)) * batch_size
    if batches and worker == (batches - 1) % num_workers:
        size -= batches * batch_size - t
    return size


def weighted_sequence(plan: Plan, seq: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``seq`` with each row repeated ``floor(w)`` or ``floor(w) + 1`` times, ``len(seq)`` places in all."""
    n = len(seq)
    w = plan.weight[seq].astype(np.float64)
    total = w.sum()
    if not total > 0:
        raise UserError(f"{plan.images_dir}: sample weights are all zero; rerun 'wdr-pipe stats'")
    cum = np.cumsum(w) * (n / total)
    cum[-1] = n  # exact, whatever the rounding
    u = np.random.default_rng([seed, epoch, 7]).random()
    marks = np.floor(cum + u).astype(np.int64)
    counts = np.diff(np.concatenate([[int(np.floor(u))], marks]))
    return np.repeat(seq, counts)


def worker_rows(plan: Plan, *, seed: int, epoch: int, rank: int, world_size: int, worker: int,
                num_workers: int, batch_size: int = 1, shuffle: bool = True, weighted: bool = False,
                buffer_size: int = 1024) -> np.ndarray:
    """Canonical row numbers that ``worker`` of ``rank`` emits this epoch, in order (see the module doc)."""
    n = plan.num_rows
    seq = epoch_sequence(plan, seed, epoch, shuffle)
    if weighted:
        seq = weighted_sequence(plan, seq, seed, epoch)
    t = rank_size(n, world_size)
    size = worker_size(n, world_size, worker, num_workers, batch_size)
    first = rank * t + sum(worker_size(n, world_size, w, num_workers, batch_size) for w in range(worker))
    rows = seq[np.arange(first, first + size) % n]
    if shuffle and buffer_size > 1 and len(rows) > 1:
        rng = np.random.default_rng([seed, epoch, rank, worker, world_size, num_workers])
        keys = np.arange(len(rows)) + rng.uniform(0, buffer_size, len(rows))
        rows = rows[np.argsort(keys, kind="stable")]
    return rows.astype(np.int64)


def units_in_memory(plan: Plan, buffer_size: int) -> int:
    """How many units a worker keeps loaded: enough to cover the shuffle window, plus slack."""
    mean_rows = max(1.0, plan.num_rows / max(1, len(plan.units)))
    return int(math.ceil(buffer_size / mean_rows)) + 3


__all__ = ["Plan", "Unit", "build_plan", "epoch_sequence", "rank_size", "weighted_sequence", "worker_rows",
           "worker_size",
           "units_in_memory"]
