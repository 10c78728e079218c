"""Reading the label statistics of a split (written by ``wdr_pipe.pipeline.stats``)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .store import StoreLike, as_store

MAX_DENSE = 16384  # labels: the largest dense co-occurrence matrix handed out (2 GiB of int64)


def _stats_table(store: StoreLike, split: str, name: str, columns=None) -> pa.Table:
    store = as_store(store)
    path = store.label_stats_file(split, name)
    if not store.label_stats_config_path(split).exists() or not path.exists():
        raise UserError(f"{path}: no label statistics for split {split!r}; "
                        f"run 'wdr-pipe stats --store {store.root} --split {split}'")
    return pq.read_table(path, columns=columns)


def label_counts(store: StoreLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(label ids, counts int64)`` in label-space order (zero counts included)."""
    t = _stats_table(store, split, "label_counts")
    return t.column("label").to_numpy(), t.column("count").to_numpy()


def cooccurrence_matrix(store: StoreLike, split: str) -> np.ndarray:
    """Dense symmetric (L, L) int64 matrix: [i, j] = images with both labels, [i, i] = label count."""
    labels, counts = label_counts(store, split)
    if len(labels) > MAX_DENSE:
        raise UserError(f"{as_store(store).label_stats_file(split, 'cooccurrence')}: {len(labels)} labels would make a "
                        f"{len(labels)} x {len(labels)} matrix; read that table (sparse pairs) instead")
    t = _stats_table(store, split, "cooccurrence")
    a = np.searchsorted(labels, t.column("label_a").to_numpy())
    b = np.searchsorted(labels, t.column("label_b").to_numpy())
    m = np.zeros((len(labels), len(labels)), np.int64)
    m[a, b] = t.column("count").to_numpy()
    m[b, a] = m[a, b]
    m[np.arange(len(labels)), np.arange(len(labels))] = counts
    return m


def label_embeddings(store: StoreLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(label ids, vectors float32 (L, dim))`` in label-space order."""
    t = _stats_table(store, split, "label_embeddings")
    vec = t.column("vector").combine_chunks()
    dim = vec.type.list_size
    return t.column("label").to_numpy(), vec.values.to_numpy().reshape(-1, dim).astype(np.float32)


def label_weights(store: StoreLike, split: str):
    """pandas DataFrame ``label, count, weight, pos_weight`` in label-space order."""
    return _stats_table(store, split, "label_weights").to_pandas()


def sample_weights(store: StoreLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(image_ids, weights float32)`` in image shard order."""
    t = _stats_table(store, split, "sample_weights")
    return t.column("image_id").to_numpy(zero_copy_only=False), t.column("weight").to_numpy()
