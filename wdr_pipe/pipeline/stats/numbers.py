"""The label statistics of one split, from its labels alone (pure: nothing is read or written).

A split's label lists become a sparse multi-hot matrix (``multi_hot_csr``); from it come the
label counts and the co-occurrence of every pair (``cooccurrence``), GloVe-style label vectors
(``glove.py``), the loss weights of the labels and images (``per_label_weights``,
``per_image_weights``, ``pos_weights``), and all of them as the tables of ``stats/<split>/``
(``split_stats``), computed on the labels that occur.
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ...cache import label_columns
from ...cache.schema import COOCCURRENCE, LABEL_COUNTS, LABEL_WEIGHTS, SAMPLE_WEIGHTS, label_embeddings_schema
from ...errors import UserError
from ..configs import StatsConfig
from .glove import fit_glove

MAX_DENSE_LABELS = 8192  # distinct labels of a split: its (L, L) co-occurrence is computed dense


def multi_hot_csr(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray, where: str = "labels") -> sp.csr_matrix:
    """Sparse (N, L) 0/1 matrix of a list<int32> column (repeated ids count once), built
    straight from the column's offsets."""
    offsets, cols = label_columns(labels, space, where)
    x = sp.csr_matrix((np.ones(len(cols), np.int32), cols, offsets), shape=(len(offsets) - 1, len(space)))
    x.sum_duplicates()  # sorts each row's ids and merges repeats
    x.data[:] = 1
    return x


def cooccurrence(x: sp.csr_matrix, rows_per_step: int = 250_000) -> np.ndarray:
    """Dense symmetric (L, L) int64 counts: [i, j] = rows with both labels; [i, i] = rows with label i.

    Every pair i < j inside a row is coded ``i * L + j`` and counted with ``np.bincount``,
    ``rows_per_step`` rows at a time (bounded memory); about twice as fast as
    ``x.T @ x`` in scipy (benchmarks/bench_stats.py). ``x`` must have sorted, unique
    column indices per row, as ``multi_hot_csr`` makes it.
    """
    n_labels = x.shape[1]
    c = np.zeros((n_labels, n_labels), np.int64)
    for start in range(0, x.shape[0], rows_per_step):
        part = x[start:start + rows_per_step]
        k = np.diff(part.indptr)                      # labels per row
        idx = part.indices
        place = np.arange(len(idx)) - np.repeat(part.indptr[:-1], k)   # position of an entry in its row
        later = np.repeat(k, k) - place - 1          # entries after it in the same row
        a = np.repeat(idx, later).astype(np.int64)
        first = np.repeat(np.arange(1, len(idx) + 1), later)           # the entry just after it
        b = idx[first + np.arange(len(a)) - np.repeat(np.cumsum(later) - later, later)]
        c += np.bincount(a * n_labels + b, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
    c = c + c.T
    c[np.diag_indices(n_labels)] = np.bincount(x.indices, minlength=n_labels)
    return c


def per_label_weights(counts: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """w_l = f_l^(alpha-1) * sum f / sum f^alpha over the labels that occur (0 for those that do not).

    So (w_a f_a) / (w_b f_b) = (f_a / f_b)^alpha and sum w_l f_l = sum f_l.
    """
    f = np.asarray(counts, dtype=np.float64)
    w = np.zeros_like(f)
    seen = f > 0
    if seen.any():
        w[seen] = f[seen] ** (alpha - 1) * f[seen].sum() / (f[seen] ** alpha).sum()
    return w


def per_image_weights(x: sp.csr_matrix, w: np.ndarray) -> np.ndarray:
    """Mean weight of each row's labels; 1.0 for a row with no labels (the mean weight of an occurrence)."""
    k = np.diff(x.indptr)
    total = x @ w
    return np.where(k > 0, total / np.maximum(k, 1), 1.0)


def pos_weights(counts: np.ndarray, n: int, clip: float = 100.0) -> np.ndarray:
    """(N - P_l) / P_l for a weighted BCE, clipped to [1/clip, clip]; ``clip`` for a label with no positives."""
    p = np.asarray(counts, dtype=np.float64)
    out = np.full_like(p, float(clip))
    pos = p > 0
    out[pos] = (n - p[pos]) / p[pos]
    return np.clip(out, 1.0 / clip, clip)


def dense_columns(x: sp.csr_matrix) -> Tuple[np.ndarray, sp.csr_matrix]:
    """The columns of ``x`` that hold any label (sorted), and ``x`` on those columns only.

    What the statistics work on: their size follows the labels that occur, never the
    largest id of the label space."""
    occurring = np.unique(x.indices)
    dense = sp.csr_matrix((x.data, np.searchsorted(occurring, x.indices).astype(np.int32), x.indptr),
                          shape=(x.shape[0], len(occurring)))
    return occurring, dense


def split_stats(image_ids: np.ndarray, x: sp.csr_matrix, space: np.ndarray,
                cfg: StatsConfig, where: str = "split") -> Tuple[Dict[str, pa.Table], List[float]]:
    """All stats tables of one split from its multi-hot matrix, and the embedding fit's
    losses (pure; nothing is written). Co-occurrence and the embedding fit run on the
    labels that occur; the tables still have one row per id of ``space``."""
    occurring, xd = dense_columns(x)
    if len(occurring) > MAX_DENSE_LABELS:
        raise UserError(f"{where}: {len(occurring)} distinct labels; label statistics handle at most "
                        f"{MAX_DENSE_LABELS} (a dense co-occurrence matrix); train with --labels top:N instead")
    cd = cooccurrence(xd)
    counts = np.zeros(len(space), np.int64)
    counts[occurring] = np.diag(cd)
    da, db = np.nonzero(np.triu(cd, k=1))
    a, b = occurring[da], occurring[db]
    vectors, losses = fit_glove(cd, dim=cfg.dim, epochs=cfg.epochs, lr=cfg.lr, x_max=cfg.x_max, seed=cfg.seed,
                                rows=occurring, n_labels=len(space))
    w = per_label_weights(counts, cfg.alpha)
    labels = pa.array(space, pa.int32())
    tables = {
        "label_counts": pa.table([labels, pa.array(counts, pa.int64())], schema=LABEL_COUNTS),
        "cooccurrence": pa.table([pa.array(space[a], pa.int32()), pa.array(space[b], pa.int32()),
                                  pa.array(cd[da, db], pa.int64())], schema=COOCCURRENCE),
        "label_embeddings": pa.table(
            [labels, pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), cfg.dim)],
            schema=label_embeddings_schema(cfg.dim)),
        "label_weights": pa.table([labels, pa.array(counts, pa.int64()), pa.array(w, pa.float32()),
                                   pa.array(pos_weights(counts, x.shape[0], cfg.pos_weight_clip), pa.float32())],
                                  schema=LABEL_WEIGHTS),
        "sample_weights": pa.table([pa.array(image_ids, pa.string()),
                                    pa.array(per_image_weights(x, w), pa.float32())], schema=SAMPLE_WEIGHTS),
    }
    return tables, losses
