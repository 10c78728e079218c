"""What is in a store: splits, row counts, failures, feature and embedding configs, label stats and sizes.

Per split it tells the whole truth: how many index rows are fetched, failed and not yet
attempted (``--limit`` or an interrupted run), committed shards out of the shards the
index needs, and the image settings the split was fetched with. Configs are given whole.
``store_info`` returns it as a JSON-ready dict, ``info_lines`` as the text ``wdr-pipe store info`` prints.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import List, Optional

import pyarrow.parquet as pq

from .derived import Derived
from .jsonfile import read_json
from .labels import label_space
from .store import Store, StoreLike, as_store, shard_files
from .tables import fetch_counts


def _du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def config_summary(doc: dict) -> str:
    """The whole of a ``config.json`` on one line: ``Type [sizes] (field=value, ...)``, the numbers
    written beside the config (e.g. ``hog_dim``) first. Never cut: ``info_lines`` wraps it."""
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


def split_info(store: Store, split: str) -> dict:
    """One split's counts: index rows, fetched / failed / not yet attempted, shards, image settings."""
    index = store.index_path(split)
    every = store.image_shards(split, committed_only=False)
    counts = fetch_counts(store, split)
    index_rows = pq.ParquetFile(index).metadata.num_rows if index.exists() else None
    settings = store.fetch_settings(split) or {}
    shard_size = settings.get("shard_size")
    planned = math.ceil(index_rows / shard_size) if index_rows is not None and shard_size else len(every)
    return {
        "index_rows": index_rows,
        "ok": counts["ok"], "failed": counts["failed"],
        "not_attempted": None if index_rows is None else max(0, index_rows - counts["covered"]),
        "failed_by_status": counts["by_status"],
        "shards": max(planned, len(every)), "shard_files": len(every),
        "committed_shards": len(store.image_shards(split)), "shard_size": shard_size,
        "image": image_settings(settings.get("config")), "fetch_config": settings.get("config"),
        "bytes": _du(store.images_dir(split)),
    }


def _derived_info(family: Derived, key: str) -> dict:
    """One feature or embedding key: its config, committed shards per split and size."""
    doc, root = read_json(family.config_path(key)), family.root(key)
    shards = {s.name: len(shard_files(s)) for s in sorted(root.iterdir()) if s.is_dir()}
    return {"key": key, "config": doc.get("config", {}), "summary": config_summary(doc), "shards": shards,
            "bytes": _du(root)}


def store_info(store: StoreLike) -> dict:
    """Splits, row counts, failures by status, feature configs, stats and sizes, as a JSON-ready dict.

    Row counts come from commit markers and Parquet footers; no table is read.
    """
    store = as_store(store)
    info: dict = {"path": str(store.root), "schema_version": store.schema_version,
                  "label_map": store.label_map_path.exists(), "labels": int(len(label_space(store))),
                  "splits": {}, "features": [], "embeddings": [], "stats": {}, "bytes": _du(store.root)}
    for split in sorted(set(store.splits()) | set(store.image_splits())):
        info["splits"][split] = split_info(store, split)
    info["features"] = [_derived_info(store.features, key) for key in store.features.keys()]
    info["embeddings"] = [_derived_info(store.embeddings, key) for key in store.embeddings.keys()]
    for split in store.label_stats_splits():
        d = store.label_stats_dir(split)
        doc = read_json(store.label_stats_config_path(split), missing_ok=True) or {}
        info["stats"][split] = {"complete": store.label_stats_complete(split), "key": doc.get("key"),
                                "config": doc.get("config"), "images": doc.get("images"),
                                "labels": doc.get("labels"), "fit": doc.get("fit"),
                                "summary": config_summary(doc) if doc else "",
                                "files": sorted(p.name for p in d.glob("*.parquet")), "bytes": _du(d)}
    return info


# -- as text -------------------------------------------------------------------------------------
def size_text(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _wrap(text: str, width: int = 100) -> str:
    """Indented and wrapped at ``width`` (configs are long; nothing is cut)."""
    return textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent="      ",
                         break_long_words=False, break_on_hyphens=False)


def _split_lines(info: dict) -> List[str]:
    lines = [f"{'split':<12}{'index':>9}{'fetched':>9}{'failed':>8}{'not yet':>9}{'shards':>11}{'size':>11}  images"]
    for name, s in info["splits"].items():
        index = "-" if s["index_rows"] is None else s["index_rows"]
        todo = "-" if s["not_attempted"] is None else s["not_attempted"]
        lines.append(f"{name:<12}{index:>9}{s['ok']:>9}{s['failed']:>8}{todo:>9}"
                     f"{s['committed_shards']:>6}/{s['shards']:<4}{size_text(s['bytes']):>11}  {s['image']}")
        if s["failed_by_status"]:
            lines.append("    failed: " + ", ".join(f"{k} {v}" for k, v in s["failed_by_status"].items()))
    if any(s["not_attempted"] for s in info["splits"].values()):
        lines.append("    not yet: index rows no fetch has tried (--limit, or an interrupted run); fetch again to do them")
    return lines


def info_lines(info: dict) -> List[str]:
    """``store_info``'s dict as the text ``wdr-pipe store info`` prints."""
    lines = [f"store {info['path']}: schema version {info['schema_version']}, {size_text(info['bytes'])}, "
             f"{info['labels']} labels ({'label_map.parquet' if info['label_map'] else 'no label map'})",
             *_split_lines(info)]
    for family, command in (("features", "features"), ("embeddings", "embed")):
        lines.append(f"{family}:" + ("" if info[family] else f" none (run 'wdr-pipe {command}')"))
        for f in info[family]:
            shards = ", ".join(f"{k} {v}" for k, v in f["shards"].items()) or "no shards"
            lines += [_wrap(f"{f['key']}  {f['summary']}"), f"      shards: {shards}; {size_text(f['bytes'])}"]
    lines.append("label stats:" + ("" if info["stats"] else " none (run 'wdr-pipe stats')"))
    for name, s in info["stats"].items():
        state = "complete" if s["complete"] else "INCOMPLETE (rerun 'wdr-pipe stats')"
        lines.append(_wrap(f"{name}: {state}, key {s['key']}, {size_text(s['bytes'])}  {s['summary']}"))
    return lines
