"""``wdr-pipe fetch``: URL indexes -> ``images/<split>/`` Parquet shards.

``fetch(store, indexes, cfg, opts)`` ingests the indexes (``index.py``), cuts
each split into shards of ``opts.shard_size`` rows, runs the shards that are
not committed yet as dask tasks (``fetch_shard.py``), then reports duplicate
content and returns a summary of the whole split (this run and earlier ones).

Resume rules: a shard is skipped when its ``stats.json`` exists and covers
the planned rows; anything else is redone from scratch (a killed run leaves
no file under a final name). With ``retry_failed`` the failed rows of
committed shards are fetched again and merged in. The image settings are
fixed per store (``images/<split>/_fetch.json``): asking for others is refused.
"""
from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import Store, config_dict, config_key, shard_name, stats_path
from ..cache.atomic import remove_stale_tmp, write_parquet_atomic, write_text_atomic
from ..errors import UserError
from ..progress import Hook, log
from . import index as index_mod
from .fetch_shard import FetchConfig, FetchOptions, ShardTask, fetch_shard
from .imageops import RESIZE_MODES
from .runner import run_tasks

__all__ = ["FetchConfig", "FetchOptions", "FetchSummary", "SplitSummary", "fetch", "RESIZE_MODES"]


@dataclass
class SplitSummary:
    split: str
    rows: int = 0                 # rows of the index planned (after --limit)
    shards: int = 0
    shards_run: int = 0           # shards fetched or retried by this run
    ok: int = 0                   # whole split, this run and earlier ones
    failed: int = 0
    by_status: Dict[str, int] = field(default_factory=dict)
    bytes_downloaded: int = 0     # this run
    duplicates: int = 0           # stored images whose content another image_id also has


@dataclass
class FetchSummary:
    key: str
    seconds: float
    splits: List[SplitSummary]

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.splits)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.splits)


def _read_stats(path: Path) -> Optional[dict]:
    try:
        return json.loads(stats_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s: unreadable stats file, the shard will be fetched again", stats_path(path))
        return None


def _check_settings(store: Store, split: str, cfg: FetchConfig, opts: FetchOptions) -> None:
    """One image setting and one shard size per split; record them on first use."""
    marker = store.images_dir(split) / "_fetch.json"
    if marker.exists():
        doc = json.loads(marker.read_text(encoding="utf-8"))
        if doc["key"] != config_key(cfg):
            old = doc["config"]
            raise UserError(
                f"{store.images_dir(split)} holds images fetched with size={old['size']} "
                f"resize_mode={old['resize_mode']} quality={old['quality']}; pass the same options or fetch into a new --store"
            )
        if doc["shard_size"] != opts.shard_size:
            raise UserError(
                f"{store.images_dir(split)} was cut into shards of {doc['shard_size']} rows; "
                f"pass --shard-size {doc['shard_size']} (or fetch into a new --store)"
            )
        return
    write_text_atomic(marker, json.dumps({"key": config_key(cfg), "config": config_dict(cfg),
                                          "shard_size": opts.shard_size}, indent=2) + "\n")


def plan_split(store: Store, split: str, cfg: FetchConfig, opts: FetchOptions, limit: Optional[int],
               retry_failed: bool) -> tuple[List[ShardTask], int, int]:
    """Tasks for the shards of ``split`` that need work; also (rows, shards) planned."""
    table = pq.read_table(store.index_path(split))
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    ids = table["image_id"].to_pylist()[:n]
    urls = table["urls"].to_pylist()[:n]
    labels = table["labels"].to_pylist()[:n]
    _check_settings(store, split, cfg, opts)
    folder = store.images_dir(split)
    remove_stale_tmp(folder)
    tasks = []
    shards = range(0, n, opts.shard_size)
    for number, start in enumerate(shards):
        end = min(start + opts.shard_size, n)
        path = folder / f"{shard_name(number)}.parquet"
        stats = _read_stats(path)
        rows = list(zip(ids[start:end], urls[start:end], labels[start:end]))
        task = ShardTask(split, number, start, end, str(path), rows, cfg, opts)
        if stats is None or not path.exists() or stats["rows"][0] != start or stats["rows"][1] < end:
            tasks.append(task)
        elif retry_failed and stats["failed"] > 0:
            failed = pq.read_table(path.with_name(path.name.replace(".parquet", ".failures.parquet")),
                                   columns=["image_id"])["image_id"].to_pylist()
            task.retry_ids = failed
            tasks.append(task)
    return tasks, n, len(shards)


def find_duplicates(store: Store, split: str) -> int:
    """Write ``_duplicates.parquet`` (sha256 -> image_ids) for content stored under several ids."""
    groups: Dict[str, List[str]] = collections.defaultdict(list)
    for shard in store.image_shards(split):
        t = pq.read_table(shard, columns=["image_id", "sha256"])
        for image_id, sha in zip(t["image_id"].to_pylist(), t["sha256"].to_pylist()):
            groups[sha].append(image_id)
    dups = {sha: ids for sha, ids in groups.items() if len(ids) > 1}
    path = store.images_dir(split) / "_duplicates.parquet"
    if dups or path.exists():
        write_parquet_atomic(pa.table({"sha256": list(dups), "image_ids": list(dups.values())}), path)
    extra = sum(len(ids) - 1 for ids in dups.values())
    if extra:
        log.warning("%s: %d images repeat the content of another image_id (same sha256); see %s",
                    split, extra, path)
    return extra


def _split_totals(store: Store, split: str, s: SplitSummary) -> None:
    by_status: Dict[str, int] = collections.Counter()
    for shard in store.image_shards(split):
        st = _read_stats(shard) or {}
        s.ok += st.get("ok", 0)
        s.failed += st.get("failed", 0)
        by_status.update(st.get("status_counts", {}))
    s.by_status = dict(sorted(by_status.items()))


def fetch(store_root, indexes: Sequence, cfg: FetchConfig = FetchConfig(), opts: FetchOptions = FetchOptions(), *,
          split: Optional[str] = None, label_map=None, limit: Optional[int] = None, retry_failed: bool = False,
          workers: Optional[int] = None, scheduler: Optional[str] = None, progress: Hook = None,
          timeout: Optional[float] = None) -> FetchSummary:
    """Fetch every split named by ``indexes`` into the store at ``store_root``; see the module doc."""
    t0 = time.monotonic()
    if cfg.resize_mode not in RESIZE_MODES:
        raise UserError(f"unknown resize mode {cfg.resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
    if cfg.size < 8 or not 1 <= cfg.quality <= 100 or opts.shard_size < 1 or opts.threads < 1:
        raise UserError("--size must be >= 8, --quality 1..100, --shard-size and --threads >= 1")
    store = Store(store_root, create=True)
    splits = index_mod.ingest(store, indexes, split=split, label_map=label_map)
    tasks: List[ShardTask] = []
    summaries = {}
    for name in splits:
        split_tasks, rows, shards = plan_split(store, name, cfg, opts, limit, retry_failed)
        tasks += split_tasks
        summaries[name] = SplitSummary(name, rows=rows, shards=shards, shards_run=len(split_tasks))
    total = sum(len(t.rows) if t.retry_ids is None else len(t.retry_ids) for t in tasks)
    log.info("fetch: %d shards to run (%d images), %d already done", len(tasks), total,
             sum(s.shards for s in summaries.values()) - len(tasks))
    results = run_tasks(fetch_shard, tasks, stage="fetch", total=total, scheduler=scheduler, workers=workers,
                        progress=progress, timeout=timeout,
                        final=lambda st: st["this_run"])
    for task, st in zip(tasks, results):
        summaries[task.split].bytes_downloaded += st["bytes_downloaded"]
    for name, s in summaries.items():
        _split_totals(store, name, s)
        s.duplicates = find_duplicates(store, name)
    return FetchSummary(config_key(cfg), time.monotonic() - t0, list(summaries.values()))
