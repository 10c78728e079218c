"""Label statistics of the labelled splits, under ``STORE/stats/<split>/``.

From the ``labels`` column of a split's committed image shards (the images
actually fetched) it writes:

- ``label_counts.parquet``: ``label int32, count int64``, one row per id of the label space;
- ``cooccurrence.parquet``: ``label_a int32, label_b int32, count int64`` for label_a < label_b
  and count > 0 only (the matrix is symmetric; its diagonal is ``label_counts``);
- ``label_embeddings.parquet``: ``label int32, vector fixed_size_list<float32>[dim]`` (GloVe-style, see embed.py);
- ``label_weights.parquet``: ``label int32, count int64, weight float32, pos_weight float32``;
- ``sample_weights.parquet``: ``image_id string, weight float32`` in image shard order;
- ``config.json``, written last: the ``StatsConfig``, its key and the digest of the inputs.

A rerun with the same config and the same committed image shards does no work.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ..cache import Store, as_store, config_key, label_columns, label_space, read_columns, write_result
from ..cache.atomic import publish, remove_stale_tmp, stage_parquet
from ..cache.keys import config_text, read_json
from ..cache.schema import COOCCURRENCE, LABEL_COUNTS, LABEL_WEIGHTS, SAMPLE_WEIGHTS, embeddings_schema
from ..errors import UserError
from ..progress import Hook, Progress, emit
from ..result import StageResult
from .checks import STATS_BOUNDS, check_all
from .glove import fit_glove

log = logging.getLogger("wdr_pipe")

MAX_DENSE_LABELS = 8192  # distinct labels of a split: its (L, L) co-occurrence is computed dense


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Settings of the label statistics; hashed, they key ``stats/<split>/``."""

    dim: int = 20                  # label embedding dimension (the WDR paper uses 20)
    alpha: float = 0.75            # exponent of the label weights (as in GloVe)
    epochs: int = 1000             # full-batch Adagrad epochs of the embedding fit
    lr: float = 0.05               # Adagrad learning rate
    x_max: float = 100.0           # GloVe weighting: f(c) = min(1, (c / x_max)^0.75)
    seed: int = 0                  # embedding initialisation
    pos_weight_clip: float = 100.0  # pos_weight is clipped to [1 / clip, clip]
    version: int = 2               # bump when the computation changes (2: fitted on the labels that occur)

    def __post_init__(self):
        check_all("stats config", self, STATS_BOUNDS)


# -- the numbers -------------------------------------------------------------------
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


# -- the stage ---------------------------------------------------------------------
def inputs_digest(store: Store, split: str, space: np.ndarray) -> str:
    """Digest of what the stats of ``split`` read: committed image shards and the label space."""
    return store.fingerprint(split, hashlib.sha256(np.ascontiguousarray(space).tobytes()).hexdigest())


def _is_current(store: Store, split: str, key: str, digest: str) -> bool:
    if not store.stats_complete(split):
        return False
    try:
        doc = read_json(store.stats_config_path(split))
    except ValueError:
        return False
    return doc.get("key") == key and doc.get("inputs") == digest


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
            schema=embeddings_schema(cfg.dim)),
        "label_weights": pa.table([labels, pa.array(counts, pa.int64()), pa.array(w, pa.float32()),
                                   pa.array(pos_weights(counts, x.shape[0], cfg.pos_weight_clip), pa.float32())],
                                  schema=LABEL_WEIGHTS),
        "sample_weights": pa.table([pa.array(image_ids, pa.string()),
                                    pa.array(per_image_weights(x, w), pa.float32())], schema=SAMPLE_WEIGHTS),
    }
    return tables, losses


def compute_stats(store, splits: Optional[Sequence[str]] = None, cfg: StatsConfig = StatsConfig(),
                  progress: Hook = None, rebuild: bool = False) -> StageResult:
    """Write ``stats/<split>/`` for each labelled split (default: every split of the store);
    ``rebuild`` recomputes them even when they are up to date.

    The result's ``splits`` holds ``{split: {"status": "computed" | "cached" | "skipped", ...}}``.
    """
    start = time.monotonic()
    store = as_store(store)
    have = store.splits()
    splits = list(have if splits is None else splits)
    unknown = [s for s in splits if s not in have]
    if unknown:
        raise UserError(f"--split {unknown[0]}: no such split in {store.root} (splits: {', '.join(have) or 'none'})")
    space = label_space(store)
    key = config_key(cfg)
    summary: Dict[str, dict] = {}
    emit(progress, Progress("stats", total=len(splits)))
    for i, split in enumerate(splits):
        summary[split] = _one_split(store, split, cfg, key, space, rebuild)
        emit(progress, Progress("stats", done=i + 1, total=len(splits), ok=i + 1, message=split))
    counts = collections.Counter(s["status"] for s in summary.values())
    result = StageResult("stats", key, str(store.stats_root), time.monotonic() - start, ran=counts["computed"],
                         reused=counts["cached"], counts=dict(sorted(counts.items())), splits=summary)
    if summary:
        write_result(store.stats_root, result)
    return result


def _one_split(store: Store, split: str, cfg: StatsConfig, key: str, space: np.ndarray, rebuild: bool) -> dict:
    out = store.stats_dir(split)
    remove_stale_tmp(out)  # what a killed run left
    if not store.image_shards(split):
        log.info("stats: skipping %s (no committed image shards)", split)
        return {"status": "skipped", "reason": "no committed image shards"}
    digest = inputs_digest(store, split, space)
    if not rebuild and _is_current(store, split, key, digest):
        log.info("stats: %s is up to date (%s)", split, out)
        return {"status": "cached", "dir": str(out), "key": key}
    t = read_columns(store.image_shards(split), ["image_id", "labels"])
    image_ids, labels = t.column("image_id").to_numpy(zero_copy_only=False), t.column("labels")
    if labels.null_count == len(labels):
        log.info("stats: skipping %s (no labels: an unlabelled split)", split)
        return {"status": "skipped", "reason": "no labels"}
    x = multi_hot_csr(labels, space, where=str(store.images_dir(split)))
    tables, losses = split_stats(image_ids, x, space, cfg, where=str(store.images_dir(split)))
    fit = {"loss_start": losses[0], "loss_end": losses[-1]}
    # every table is written beside the old one first: the previous statistics stay complete
    # and readable until all new files are, and config.json (the commit) comes last
    staged: Dict = {}
    try:
        for name, table in tables.items():
            staged[store.stats_file(split, name)] = stage_parquet(table, store.stats_file(split, name))
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    publish(staged, store.stats_config_path(split),
            config_text(cfg, inputs=digest, images=int(x.shape[0]), labels=len(space), fit=fit))
    log.info("stats: %s: %d images, %d labels, embedding loss %.3f -> %.4f", split, x.shape[0], len(space),
             losses[0], losses[-1])
    return {"status": "computed", "dir": str(out), "key": key, "images": int(x.shape[0]), "labels": len(space),
            **fit}


__all__: List[str] = ["StatsConfig", "compute_stats", "cooccurrence", "multi_hot_csr", "per_image_weights",
                      "per_label_weights", "pos_weights", "split_stats"]
