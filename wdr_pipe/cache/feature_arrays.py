"""Stored HOG and colour-histogram features of a store as dense matrices.

Nothing here decodes an image. Feature shards are read only where both the
image shard and its feature shard are committed, current and row-aligned
(``store.features.shards``).

    >>> ids, hog, hist = load_features(store, "train")  # (N,), (N, D1), (N, D2)
    >>> data = load_split(store, "train", as_="torch")  # dict of tensors
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .jsonfile import read_json
from .labels import label_space, multi_hot
from .store import StoreLike, as_store, read_columns

log = logging.getLogger("wdr_pipe")


def feature_config(store: StoreLike, key: Optional[str] = None) -> dict:
    """The ``config.json`` of a feature key: ``{"key": ..., "config": {...}}``."""
    store = as_store(store)
    return read_json(store.features.config_path(store.features.resolve_key(key)))


def fixed_matrix(col: pa.ChunkedArray, out: np.ndarray, start: int) -> None:
    """Copy a fixed_size_list column into ``out[start:]``; null rows become NaN."""
    dim = out.shape[1]
    for chunk in col.chunks:
        n = len(chunk)
        vals = chunk.values.slice(chunk.offset * dim, n * dim).to_numpy(zero_copy_only=False)
        block = out[start:start + n]
        block[:] = vals.reshape(n, dim)
        if chunk.null_count:
            block[~chunk.is_valid().to_numpy(zero_copy_only=False)] = np.nan
        start += n


def _read_features(shards: List[Path]):
    """image_ids, hog, color_hist and ok mask of feature shards, copied once into preallocated arrays."""
    schema = pq.read_schema(shards[0])
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    mats = {}
    for name in ("hog", "color_hist"):
        typ = schema.field(name).type
        mats[name] = np.empty((n, typ.list_size), typ.value_type.to_pandas_dtype())
    ids, ok, start = [], np.ones(n, bool), 0
    for p in shards:
        t = pq.read_table(p, columns=["image_id", "hog", "color_hist"])
        for name, m in mats.items():
            fixed_matrix(t.column(name), m, start)
        ok[start:start + t.num_rows] = t.column("hog").is_valid().to_numpy(zero_copy_only=False)
        ids.append(t.column("image_id").to_numpy(zero_copy_only=False))
        start += t.num_rows
    return np.concatenate(ids), mats["hog"], mats["color_hist"], ok


def _keep(ok: np.ndarray, *arrays):
    """``arrays`` restricted to rows where ``ok``; no copy when every row is ok."""
    return arrays if ok.all() else tuple(None if a is None else a[ok] for a in arrays)


def load_features(store: StoreLike, split: str, key: Optional[str] = None,
                  drop_failed: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image_ids, hog (N, D1), color_hist (N, D2))`` of ``split`` under feature ``key``.

    ``key=None`` takes the store's only feature config. Rows of images that
    failed to decode are dropped, or kept as NaN rows with ``drop_failed=False``.
    Arrays keep the stored dtype (float32, or float16 if the features were stored so).
    """
    store = as_store(store)
    key = store.features.resolve_key(key)
    ids, hog, hist, ok = _read_features([f for _, f in store.features.shards(key, split, complete=False)])
    if drop_failed and not ok.all():
        log.info("%s/%s: dropped %d rows whose image failed to decode", key, split, int((~ok).sum()))
        ids, hog, hist = _keep(ok, ids, hog, hist)
    return ids, hog, hist


def load_split(store: StoreLike, split: str, key: Optional[str] = None, as_: str = "numpy"):
    """Features and labels of ``split`` together, one row per decodable image.

    Only image shards that also have committed feature shards are read.
    ``as_="numpy"``: dict with ``image_id`` (N,), ``hog``, ``color_hist``,
    ``labels`` (multi-hot uint8 (N, L), or None for an unlabelled split).
    ``as_="torch"``: the same with tensors (``image_id`` stays a list of str).
    ``as_="pandas"``: a DataFrame with one row per image, array-valued cells.
    """
    if as_ not in ("numpy", "pandas", "torch"):
        raise UserError(f"as_={as_!r}: use 'numpy', 'pandas' or 'torch'")
    store = as_store(store)
    key = store.features.resolve_key(key)
    pairs = store.features.shards(key, split, complete=False)
    ids, hog, hist, ok = _read_features([f for _, f in pairs])
    lab = read_columns([p for p, _ in pairs], ["image_id", "labels"])
    if not np.array_equal(lab.column("image_id").to_numpy(zero_copy_only=False), ids):
        store.features.misaligned(store.features.dir(key, split), split,
                                  f"its image_ids are not those of {store.images_dir(split)} in the same order")
    labelled = lab.num_rows > 0 and lab.column("labels").null_count < lab.num_rows
    space = label_space(store) if labelled else None
    labels = multi_hot(lab.column("labels"), space, where=str(store.images_dir(split))) if labelled else None
    out = dict(zip(["image_id", "hog", "color_hist", "labels"], _keep(ok, ids, hog, hist, labels)))
    if as_ == "torch":
        import torch

        return {k: (v.tolist() if k == "image_id" else None if v is None else torch.from_numpy(v))
                for k, v in out.items()}
    if as_ == "pandas":
        import pandas as pd

        cols = {"image_id": out["image_id"], "hog": list(out["hog"]), "color_hist": list(out["color_hist"])}
        if labelled:  # the label ids of each image, as in the store
            cols["labels"] = lab.column("labels").filter(pa.array(ok)).to_numpy(zero_copy_only=False)
        return pd.DataFrame(cols)
    return out
