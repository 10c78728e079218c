"""Label statistics benchmark: co-occurrence of 1 M label lists, four ways, side by side.

Input: N synthetic label lists shaped like FGVC5 train (228 labels with
Zipf-like frequencies, 1 + Poisson(4) labels per image, some repeated ids),
as the ``list<int32>`` Arrow column ``wdr-pipe stats`` reads from the image shards.
Every method starts from that column and ends with the dense (L, L) matrix.

- ours: ``multi_hot_csr`` (a CSR multi-hot matrix built from the column's
  offsets and a label lookup table), then ``cooccurrence``: the pairs i < j
  of each row coded ``i * L + j`` and counted with ``np.bincount``;
- scipy: the same CSR matrix, then ``C = X.T @ X`` (sparse matrix product);
- all pairs: ``np.bincount`` over every ordered pair (a, b) of each row, diagonal included;
- loop: the obvious Python double loop over each list, on a 1/20 sample, scaled up.

All four must give the same matrix (checked). Then the whole per-split
computation (``split_stats``: co-occurrence, the GloVe fit with the default
1000 epochs, label and image weights) on the same input. Each timing is the
best of --repeat runs.

Run::

    python benchmarks/bench_stats.py --n 1000000
"""
from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from wdr_pipe.pipeline.stats import StatsConfig, cooccurrence, multi_hot_csr, split_stats
from timing import best  # noqa: E402  (benchmarks/timing.py)

L = 228


def synthetic_lists(n: int, seed: int = 0) -> pa.ListArray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, L + 1) ** 0.9
    p = rng.permutation(p / p.sum())
    lengths = np.minimum(1 + rng.poisson(4, n), 23)
    values = rng.choice(L, size=int(lengths.sum()), p=p).astype(np.int32) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def ours(lists: pa.ListArray, space: np.ndarray) -> np.ndarray:
    return cooccurrence(multi_hot_csr(lists, space))


def scipy_product(lists: pa.ListArray, space: np.ndarray) -> np.ndarray:
    x = multi_hot_csr(lists, space)
    return (x.T @ x).toarray()


def all_pairs(lists: pa.ListArray, space: np.ndarray) -> np.ndarray:
    x = multi_hot_csr(lists, space)  # the same de-duplicated (row, label) entries
    k = np.diff(x.indptr)
    reps = np.repeat(k, k)                        # each entry pairs with every entry of its row
    a = np.repeat(x.indices, reps)
    pos = np.arange(len(a)) - np.repeat(np.cumsum(reps) - reps, reps)
    b = x.indices[np.repeat(np.repeat(x.indptr[:-1], k), reps) + pos]
    return np.bincount(a.astype(np.int64) * L + b, minlength=L * L).reshape(L, L)


def loop(lists: pa.ListArray, space: np.ndarray) -> np.ndarray:
    c = np.zeros((L, L), np.int64)
    pos = {int(v): i for i, v in enumerate(space)}
    for labels in lists.to_pylist():
        idx = sorted({pos[v] for v in labels})
        for a in idx:
            for b in idx:
                c[a, b] += 1
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loop-fraction", type=int, default=20, help="the loop runs on 1/this of the lists")
    args = ap.parse_args()
    space = np.arange(1, L + 1, dtype=np.int32)
    lists = synthetic_lists(args.n)
    mean = len(lists.flatten()) / args.n
    print(f"{args.n:,} label lists, {mean:.2f} labels each on average (repeats included), {L} labels")

    t_ours, c_ours = best(lambda: ours(lists, space), args.repeat)
    t_csr, _ = best(lambda: multi_hot_csr(lists, space), args.repeat)
    t_sci, c_sci = best(lambda: scipy_product(lists, space), args.repeat)
    t_all, c_all = best(lambda: all_pairs(lists, space), args.repeat)
    m = args.n // args.loop_fraction
    t_loop_part, c_loop = best(lambda: loop(lists.slice(0, m), space), 1)
    assert np.array_equal(c_ours, c_sci) and np.array_equal(c_ours, c_all), "methods differ"
    assert np.array_equal(ours(lists.slice(0, m), space), c_loop), "loop differs"
    t_loop = t_loop_part * args.n / m

    print(f"{'method':<38}{'seconds':>9}{'lists/s':>14}{'vs ours':>9}")
    for name, t in [("ours: CSR, bincount of pairs i < j", t_ours), ("  of which building the CSR matrix", t_csr),
                    ("scipy: CSR, X.T @ X", t_sci), ("bincount of all ordered pairs", t_all),
                    (f"python loop (1/{args.loop_fraction}, scaled)", t_loop)]:
        print(f"{name:<38}{t:>9.3f}{args.n / t:>14,.0f}{t / t_ours:>8.1f}x")

    x = multi_hot_csr(lists, space)
    ids = np.array([str(i) for i in range(args.n)], dtype=object)
    cfg = StatsConfig()
    t_whole, (tables, losses) = best(lambda: split_stats(ids, x, space, cfg), 1)
    print(f"whole split_stats (co-occurrence, GloVe {cfg.epochs} epochs dim {cfg.dim}, weights): {t_whole:.2f}s; "
          f"embedding loss {losses[0]:.3f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
