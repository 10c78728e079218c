"""In which order a loader worker reads the rows of a split: pure numpy, no file is touched.

The rows worth loading of a split have canonical numbers ``0 .. N-1``, unit
after unit (``layout.py``: a unit is a run of rows read as whole row groups).
``worker_rows(layout, ...)`` gives one DataLoader worker of one rank its rows
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

import math
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError

if TYPE_CHECKING:  # the layout's type only: this module touches no file
    from .layout import SplitLayout


def epoch_sequence(layout: SplitLayout, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The split's valid rows in this epoch's unit order (canonical numbers)."""
    n_units = len(layout.units)
    order = np.random.default_rng([seed, epoch]).permutation(n_units) if shuffle else np.arange(n_units)
    starts, ends = layout.unit_start[:-1][order], layout.unit_start[1:][order]
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


def weighted_sequence(layout: SplitLayout, seq: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``seq`` with each row repeated ``floor(w)`` or ``floor(w) + 1`` times, ``len(seq)`` places in all."""
    n = len(seq)
    w = layout.weight[seq].astype(np.float64)
    total = w.sum()
    if not total > 0:
        raise UserError(f"{layout.images_dir}: sample weights are all zero; rerun 'wdr-pipe stats'")
    cum = np.cumsum(w) * (n / total)
    cum[-1] = n  # exact, whatever the rounding
    u = np.random.default_rng([seed, epoch, 7]).random()
    marks = np.floor(cum + u).astype(np.int64)
    counts = np.diff(np.concatenate([[int(np.floor(u))], marks]))
    return np.repeat(seq, counts)


def worker_rows(layout: SplitLayout, *, seed: int, epoch: int, rank: int, world_size: int, worker: int,
                num_workers: int, batch_size: int = 1, shuffle: bool = True, weighted: bool = False,
                buffer_size: int = 1024) -> np.ndarray:
    """Canonical row numbers that ``worker`` of ``rank`` emits this epoch, in order (see the module doc)."""
    n = layout.num_rows
    seq = epoch_sequence(layout, seed, epoch, shuffle)
    if weighted:
        seq = weighted_sequence(layout, seq, seed, epoch)
    t = rank_size(n, world_size)
    size = worker_size(n, world_size, worker, num_workers, batch_size)
    first = rank * t + sum(worker_size(n, world_size, w, num_workers, batch_size) for w in range(worker))
    rows = seq[np.arange(first, first + size) % n]
    if shuffle and buffer_size > 1 and len(rows) > 1:
        rng = np.random.default_rng([seed, epoch, rank, worker, world_size, num_workers])
        keys = np.arange(len(rows)) + rng.uniform(0, buffer_size, len(rows))
        rows = rows[np.argsort(keys, kind="stable")]
    return rows.astype(np.int64)


def units_in_memory(layout: SplitLayout, buffer_size: int) -> int:
    """How many units a worker keeps loaded: enough to cover the shuffle window, plus slack."""
    mean_rows = max(1.0, layout.num_rows / max(1, len(layout.units)))
    return int(math.ceil(buffer_size / mean_rows)) + 3


__all__ = ["epoch_sequence", "rank_size", "units_in_memory", "weighted_sequence", "worker_rows", "worker_size"]
