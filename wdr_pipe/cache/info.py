"""What is in a store: splits, row counts, failures, feature and embedding configs, label stats and sizes.

Per split it tells the whole truth: how many index rows are fetched, failed and not yet
attempted (``--limit`` or an interrupted run), committed shards out of the shards the
index needs, and the image settings the split was fetched with. Configs are given whole.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

import pyarrow.parquet as pq

from .keys import read_json
from .labels import label_space
from .store import SHARD_RE, Store, StoreLike, as_store, commit_path, failures_path, read_commit


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def config_summary(doc: dict) -> str:
    """The whole of a ``config.json`` on one line: ``Type [sizes] (field=value, ...)``, the numbers
    written beside the config (e.g. ``hog_dim``) first. Never cut: the CLI wraps it."""
    cfg = dict(doc.get("config", {}))
    extra = [f"{k}={v}" for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return " ".join([str(cfg.pop("type", "?")), *extra]) + " (" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"


def image_settings(cfg: Optional[dict]) -> str:
    """``FetchConfig`` as words: ``320 px shorter side, JPEG q95``."""
    if not cfg:
        return "-"
    size, mode = cfg.get("size"), cfg.get("resize_mode")
    shape = {"shorter": f"{size} px shorter side", "longer": f"{size} px longer side",
             "center_crop": f"{size}x{size} centre crop", "pad": f"{size}x{size} padded"}.get(mode, f"{size} px {mode}")
    return f"{shape}, JPEG q{cfg.get('quality')}"


def _fetch_settings(store: Store, split: str) -> dict:
    try:
        return json.loads(store.fetch_settings_path(split).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def split_info(store: Store, split: str) -> dict:
    """One split's counts: index rows, fetched / failed / not yet attempted, shards, image settings."""
    index = store.index_path(split)
    every = store.image_shards(split, committed_only=False)
    done = store.image_shards(split)
    failed: Dict[str, int] = {}
    ok = covered = 0
    for p in done:
        rows = pq.ParquetFile(p).metadata.num_rows
        n_failed = 0
        if failures_path(p).exists():
            status = pq.read_table(failures_path(p), columns=["status"]).column("status")
            for row in status.value_counts().to_pylist():
                failed[row["values"]] = failed.get(row["values"], 0) + row["counts"]
                n_failed += row["counts"]
        marker = read_commit(p) or {}
        span = marker.get("rows")
        ok += rows
        covered += (span[1] - span[0]) if isinstance(span, list) and len(span) == 2 else rows + n_failed
    index_rows = pq.ParquetFile(index).metadata.num_rows if index.exists() else None
    settings = _fetch_settings(store, split)
    shard_size = settings.get("shard_size")
    planned = math.ceil(index_rows / shard_size) if index_rows is not None and shard_size else len(every)
    return {
        "index_rows": index_rows,
        "ok": ok, "failed": sum(failed.values()),
        "not_attempted": None if index_rows is None else max(0, index_rows - covered),
        "failed_by_status": dict(sorted(failed.items())),
        "shards": max(planned, len(every)), "shard_files": len(every), "committed_shards": len(done),
        "shard_size": shard_size,
        "image": image_settings(settings.get("config")), "fetch_config": settings.get("config"),
        "bytes": _du(store.images_dir(split)),
    }


def _derived_info(key: str, config_path: Path, root: Path) -> dict:
    """One feature or embedding key: its config, committed shards per split and size."""
    doc = read_json(config_path)
    shards = {s.name: len([p for p in s.iterdir() if SHARD_RE.match(p.name) and commit_path(p).exists()])
              for s in sorted(root.iterdir()) if s.is_dir()}
    return {"key": key, "config": doc.get("config", {}), "summary": config_summary(doc), "shards": shards,
            "bytes": _du(root)}


def store_info(store: StoreLike) -> dict:
    """Splits, row counts, failures by status, feature configs, stats and sizes, as a JSON-ready dict.

    Row counts come from Parquet footers; only the ``status`` column of failure files is read.
    """
    store = as_store(store)

    info: dict = {"path": str(store.root), "schema_version": store.schema_version,
                  "label_map": store.label_map_path.exists(), "labels": int(len(label_space(store))),
                  "splits": {}, "features": [], "embeddings": [], "stats": {}, "bytes": _du(store.root)}
    for split in sorted(set(store.splits()) | set(store.image_splits())):
        info["splits"][split] = split_info(store, split)
    info["features"] = [_derived_info(key, store.feature_config_path(key), store.features_root(key))
                        for key in store.feature_keys()]
    info["embeddings"] = [_derived_info(key, store.embedding_config_path(key), store.embeddings_root(key))
                          for key in store.embedding_keys()]
    for split in store.stats_splits():
        d = store.stats_dir(split)
        cfg = store.stats_config_path(split)
        doc = read_json(cfg) if cfg.exists() else {}
        info["stats"][split] = {"complete": store.stats_complete(split), "key": doc.get("key"),
                                "config": doc.get("config"), "images": doc.get("images"),
                                "labels": doc.get("labels"), "fit": doc.get("fit"),
                                "summary": config_summary(doc) if doc else "",
                                "files": sorted(p.name for p in d.glob("*.parquet")), "bytes": _du(d)}
    return info
