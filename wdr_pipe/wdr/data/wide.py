"""The Wide part's input: HOG and colour histogram side by side, as one (N, D) float32 matrix.

- ``wide_matrix(table)``: the ``hog`` and ``color_hist`` columns of a feature
  shard's rows -> (N, D1 + D2) float32, a row whose features failed (null) all
  NaN. What the loader gives the model, and what the statistics are taken over.
- ``wide_stats(store, split, key)``: the training split's mean and standard
  deviation of that matrix (rows with failed features left out), which the
  model standardises with.
- ``photo_wide(store, key, jpegs)``: the same matrix for new photos, computed
  by the features stage's own per-image code (``pipeline.features``) with the
  store's feature config, so a photo gets exactly the numbers the store would.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...cache import Store, feature_config, fixed_matrix
from ...errors import UserError


def wide_dim(schema: pa.Schema) -> int:
    """D = D1 + D2 of a feature shard's schema."""
    return schema.field("hog").type.list_size + schema.field("color_hist").type.list_size


def wide_matrix(table: pa.Table) -> np.ndarray:
    """(N, D1 + D2) float32 from the ``hog`` and ``color_hist`` columns; null rows become NaN."""
    hog, hist = table.column("hog"), table.column("color_hist")
    d1 = hog.type.list_size
    out = np.empty((table.num_rows, d1 + hist.type.list_size), np.float32)
    fixed_matrix(hog, out[:, :d1], 0)
    fixed_matrix(hist, out[:, d1:], 0)
    return out


def wide_stats(store: Store, split: str, key: str, compute: bool = True) -> Tuple[int, np.ndarray, np.ndarray]:
    """``(dim, mean, std)`` of the wide input over ``split``, one feature shard at a time (float64 sums;
    rows whose features failed are left out). ``compute=False``: the dimension only, with mean 0 and std 1
    (a resumed run's model gets its statistics from its checkpoint)."""
    shards = [f for _, f in store.features.shards(key, split)]
    dim = wide_dim(pq.read_schema(shards[0]))
    if not compute:
        return dim, np.zeros(dim, np.float32), np.ones(dim, np.float32)
    total, sq, n = np.zeros(dim), np.zeros(dim), 0
    for p in shards:
        x = wide_matrix(pq.read_table(p, columns=["hog", "color_hist"]))
        x = x[~np.isnan(x).any(axis=1)].astype(np.float64)
        total, sq, n = total + x.sum(0), sq + (x * x).sum(0), n + len(x)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean * mean, 0.0))
    return dim, mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def photo_wide(store: Store, key: str, jpegs: List[bytes]) -> np.ndarray:
    """(N, D) float32 wide input of stored-JPEG bytes (new photos resized as fetch stores them), computed
    with the store's feature config ``key`` by the features stage's per-image code."""
    from ...pipeline.configs import FeatureConfig
    from ...pipeline.features.stage import compute_batch

    doc = dict(feature_config(store, key)["config"])
    doc.pop("type", None)
    hog, hist, errors = compute_batch(jpegs, FeatureConfig(**doc))
    bad = [e for e in errors if e]
    if bad:
        raise UserError(f"an image's wide features failed ({bad[0]}); pass another photo")
    return np.concatenate([hog, hist], axis=1).astype(np.float32)


__all__ = ["photo_wide", "wide_dim", "wide_matrix", "wide_stats"]
