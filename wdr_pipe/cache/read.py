"""Reading a store as a library: labels, features and label statistics as arrays.

Nothing here decodes an image or reads the ``jpeg`` column. A shard counts
only once its ``part-NNNNN.stats.json`` exists (the commit marker).

Labels are the dataset's own ids; a multi-hot vector has one column per id
of :func:`label_space`, in that order (column = position in the array).

    >>> store = open_store("store/")
    >>> ids, Y = load_labels(store, "train")            # (N,), (N, L) uint8
    >>> ids, hog, hist = load_features(store, "train")  # (N,), (N, D1), (N, D2)
    >>> data = load_split(store, "train", as_="torch")  # dict of tensors
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UserError
from .keys import read_json
from .store import Store, open_store, stats_path

log = logging.getLogger("wdr_pipe")

StoreLike = Union[Store, str, Path]
STATS_FILES = ("label_counts", "cooccurrence", "label_embeddings", "label_weights", "sample_weights")

__all__ = [
    "open_store", "label_space", "load_labels", "load_features", "load_split", "feature_config",
    "label_counts", "cooccurrence_matrix", "label_embeddings", "label_weights", "sample_weights",
    "label_columns", "multi_hot", "multi_hot_positions", "read_shards", "store_info",
]


def _store(store: StoreLike) -> Store:
    return store if isinstance(store, Store) else open_store(store)


def _check_split(store: Store, split: str) -> None:
    if not store.image_shards(split):
        have = [s for s in store.splits() if store.image_shards(s)]
        raise UserError(f"{store.images_dir(split)}: no committed image shards for split {split!r} "
                        f"(splits with images: {', '.join(have) or 'none'}); run 'wdr-pipe fetch' first")


def read_shards(paths: List[Path], columns: List[str]) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in paths]
    # permissive: a shard written by another version may differ in nullability flags only
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({c: [] for c in columns})


# -- labels ----------------------------------------------------------------------
def label_space(store: StoreLike) -> np.ndarray:
    """The label ids, sorted (int32): from ``label_map.parquet`` if there is one,
    else ``1 .. max id`` seen in any split's index or image shards."""
    store = _store(store)
    if store.label_map_path.exists():
        ids = pq.read_table(store.label_map_path, columns=["labelId"]).column("labelId").to_numpy()
        return np.unique(ids).astype(np.int32)
    top, files = 0, []
    for split in sorted(set(store.splits()) | set(_image_splits(store))):
        index = store.index_path(split)  # image shards copy the index's labels: read them only without one
        files += [index] if index.exists() else store.image_shards(split)
    for f in files:
        m = pc.max(pc.list_flatten(pq.read_table(f, columns=["labels"]).column("labels"))).as_py()
        top = max(top, m or 0)
    return np.arange(1, top + 1, dtype=np.int32)


def _image_splits(store: Store) -> List[str]:
    d = store.root / "images"
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def label_columns(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray,
                  where: str = "labels") -> Tuple[np.ndarray, np.ndarray]:
    """``(offsets (N+1,), columns)`` of a list<int32> column: row i's labels sit at positions
    ``columns[offsets[i]:offsets[i+1]]`` of ``space``. Null lists count as empty.
    An id outside ``space`` is a ``UserError`` naming ``where``."""
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if labels.null_count:
        labels = labels.fill_null(pa.scalar([], labels.type))
    offsets = labels.offsets.to_numpy().astype(np.int64)
    values = labels.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    offsets -= offsets[0]
    if len(space) == 0:
        cols, bad = np.zeros(len(values), np.int32), np.ones(len(values), bool)
    elif space[0] >= 0 and space[-1] < 50_000_000:  # small ids: a lookup table, no search
        top = int(space[-1])
        lut = np.full(top + 2, -1, np.int32)       # lut[-1] and lut[top + 1] stay -1
        lut[space] = np.arange(len(space), dtype=np.int32)
        cols = lut[np.clip(values, -1, top + 1)]
        bad = cols < 0
    else:
        cols = np.searchsorted(space, values).astype(np.int32)
        bad = (cols >= len(space)) | (space[np.minimum(cols, len(space) - 1)] != values)
    if bad.any():
        raise UserError(f"{where}: label id {int(values[bad][0])} is not in the label space "
                        f"({len(space)} ids); fix label_map.parquet or remove it to use 1..max id")
    return offsets, cols


def multi_hot_positions(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray,
                        where: str = "labels") -> Tuple[np.ndarray, np.ndarray]:
    """(row, column) of every label in a list<int32> column, columns being positions in ``space``."""
    offsets, cols = label_columns(labels, space, where)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), cols


def multi_hot(labels: Union[pa.Array, pa.ChunkedArray], space: np.ndarray, where: str = "labels") -> np.ndarray:
    """Dense multi-hot uint8 (N, len(space)) of a list<int32> column; column j = id ``space[j]``."""
    rows, cols = multi_hot_positions(labels, space, where)
    y = np.zeros((len(labels), len(space)), np.uint8)
    y[rows, cols] = 1
    return y


def _labels_table(store: Store, split: str) -> pa.Table:
    _check_split(store, split)
    return read_shards(store.image_shards(split), ["image_id", "labels"])


def load_labels(store: StoreLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(image_ids, multi_hot uint8 (N, L))`` of the fetched images of ``split``, in shard order."""
    store = _store(store)
    t = _labels_table(store, split)
    if t.num_rows and t.column("labels").null_count == t.num_rows:
        raise UserError(f"{store.images_dir(split)}: split {split!r} has no labels (an unlabelled split); "
                        "load its features with load_features instead")
    y = multi_hot(t.column("labels"), label_space(store), where=str(store.images_dir(split)))
    return t.column("image_id").to_numpy(zero_copy_only=False), y


# -- features --------------------------------------------------------------------
def _resolve_key(store: Store, key: Optional[str]) -> str:
    keys = store.feature_keys()
    if key is None:
        if len(keys) == 1:
            return keys[0]
        if not keys:
            raise UserError(f"{store.root}: no image features yet; run 'wdr-pipe features --store {store.root}'")
        raise UserError(f"{store.root}: several feature configs ({', '.join(keys)}); pass key=one of them")
    if key not in keys:
        raise UserError(f"{store.root}: no feature config {key!r}; the store has: {', '.join(keys) or 'none'}")
    return key


def feature_config(store: StoreLike, key: Optional[str] = None) -> dict:
    """The ``config.json`` of a feature key: ``{"key": ..., "config": {...}}``."""
    store = _store(store)
    return read_json(store.features_root(_resolve_key(store, key)) / "config.json")


def _feature_shards(store: Store, key: str, split: str) -> List[Path]:
    """Feature shards of ``split`` committed on both sides (image shard and feature shard)."""
    _check_split(store, split)
    d = store.features_dir(key, split)
    shards = [d / p.name for p in store.image_shards(split) if stats_path(d / p.name).exists()]
    if not shards:
        raise UserError(f"{d}: no committed feature shards for split {split!r}; "
                        f"run 'wdr-pipe features --store {store.root}'")
    return shards


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
    store = _store(store)
    key = _resolve_key(store, key)
    ids, hog, hist, ok = _read_features(_feature_shards(store, key, split))
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
    store = _store(store)
    key = _resolve_key(store, key)
    shards = _feature_shards(store, key, split)
    ids, hog, hist, ok = _read_features(shards)
    lab = read_shards([store.images_dir(split) / p.name for p in shards], ["image_id", "labels"])
    if not np.array_equal(lab.column("image_id").to_numpy(zero_copy_only=False), ids):
        raise UserError(f"{store.features_dir(key, split)}: feature shards are not row-aligned with "
                        f"{store.images_dir(split)}; delete {store.features_root(key)} and rerun 'wdr-pipe features'")
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


# -- label statistics (written by wdr_pipe.pipeline.stats) -----------------------
def _stats_table(store: StoreLike, split: str, name: str, columns=None) -> pa.Table:
    store = _store(store)
    path = store.stats_dir(split) / f"{name}.parquet"
    if not (store.stats_dir(split) / "config.json").exists() or not path.exists():
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


# -- what is in a store ----------------------------------------------------------
def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def config_summary(doc: dict, width: int = 100) -> str:
    """One short line for a ``config.json``: ``Type [sizes] (field=value, ...)``, the
    numbers written beside the config (e.g. ``hog_dim``) first."""
    cfg = dict(doc.get("config", {}))
    extra = [f"{k}={v}" for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    text = " ".join([cfg.pop("type", "?"), *extra]) + " (" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
    return text if len(text) <= width else text[: width - 3] + "..."


def store_info(store: StoreLike) -> dict:
    """Splits, row counts, failures by status, feature configs, stats and sizes, as a JSON-ready dict.

    Row counts come from Parquet footers; only the ``status`` column of failure files is read.
    """
    store = _store(store)
    from .store import SHARD_RE, failures_path

    info: dict = {"path": str(store.root), "schema_version": read_json(store.root / "_store.json")["schema_version"],
                  "label_map": store.label_map_path.exists(), "labels": int(len(label_space(store))),
                  "splits": {}, "features": [], "stats": {}, "bytes": _du(store.root)}
    for split in sorted(set(store.splits()) | set(_image_splits(store))):
        index = store.index_path(split)
        d = store.images_dir(split)
        every = [p for p in sorted(d.iterdir()) if SHARD_RE.match(p.name)] if d.is_dir() else []
        done = store.image_shards(split)
        failed: Dict[str, int] = {}
        for p in done:
            if failures_path(p).exists():
                status = pq.read_table(failures_path(p), columns=["status"]).column("status")
                for row in status.value_counts().to_pylist():
                    failed[row["values"]] = failed.get(row["values"], 0) + row["counts"]
        info["splits"][split] = {
            "index_rows": pq.ParquetFile(index).metadata.num_rows if index.exists() else None,
            "shards": len(every), "committed_shards": len(done),
            "ok": sum(pq.ParquetFile(p).metadata.num_rows for p in done),
            "failed": sum(failed.values()), "failed_by_status": dict(sorted(failed.items())),
            "bytes": _du(d)}
    for key in store.feature_keys():
        doc = read_json(store.features_root(key) / "config.json")
        root = store.features_root(key)
        shards = {s.name: len([p for p in s.iterdir() if SHARD_RE.match(p.name) and stats_path(p).exists()])
                  for s in sorted(root.iterdir()) if s.is_dir()}
        info["features"].append({"key": key, "config": doc.get("config", {}), "summary": config_summary(doc),
                                 "shards": shards, "bytes": _du(root)})
    stats_root = store.root / "stats"
    for d in sorted(stats_root.iterdir()) if stats_root.is_dir() else []:
        cfg = d / "config.json"
        doc = read_json(cfg) if cfg.exists() else {}
        info["stats"][d.name] = {"complete": cfg.exists() and all((d / f"{n}.parquet").exists() for n in STATS_FILES),
                                 "key": doc.get("key"), "summary": config_summary(doc) if doc else "",
                                 "files": sorted(p.name for p in d.glob("*.parquet")), "bytes": _du(d)}
    return info
