"""What is in a store: splits, row counts, failures, feature and embedding configs, label stats and sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pyarrow.parquet as pq

from .keys import read_json
from .labels import label_space
from .store import SHARD_RE, StoreLike, as_store, commit_path, failures_path


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
    store = as_store(store)

    info: dict = {"path": str(store.root), "schema_version": store.schema_version,
                  "label_map": store.label_map_path.exists(), "labels": int(len(label_space(store))),
                  "splits": {}, "features": [], "embeddings": [], "stats": {}, "bytes": _du(store.root)}
    for split in sorted(set(store.splits()) | set(store.image_splits())):
        index = store.index_path(split)
        d = store.images_dir(split)
        every = store.image_shards(split, committed_only=False)
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
        doc = read_json(store.feature_config_path(key))
        root = store.features_root(key)
        shards = {s.name: len([p for p in s.iterdir() if SHARD_RE.match(p.name) and commit_path(p).exists()])
                  for s in sorted(root.iterdir()) if s.is_dir()}
        info["features"].append({"key": key, "config": doc.get("config", {}), "summary": config_summary(doc),
                                 "shards": shards, "bytes": _du(root)})
    for key in store.embedding_keys():  # wdr-pipe embed: the same shape as a feature key
        doc = read_json(store.embedding_config_path(key))
        root = store.embeddings_root(key)
        shards = {s.name: len([p for p in s.iterdir() if SHARD_RE.match(p.name) and commit_path(p).exists()])
                  for s in sorted(root.iterdir()) if s.is_dir()}
        info["embeddings"].append({"key": key, "config": doc.get("config", {}), "summary": config_summary(doc),
                                   "shards": shards, "bytes": _du(root)})
    for split in store.stats_splits():
        d = store.stats_dir(split)
        cfg = store.stats_config_path(split)
        doc = read_json(cfg) if cfg.exists() else {}
        info["stats"][split] = {"complete": store.stats_complete(split),
                                 "key": doc.get("key"), "summary": config_summary(doc) if doc else "",
                                 "files": sorted(p.name for p in d.glob("*.parquet")), "bytes": _du(d)}
    return info
