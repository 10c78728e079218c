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
from typing import Tuple, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import Store, config_dict, config_key, failures_path, read_commit, shard_name, write_result
from ..cache.atomic import remove_stale_tmp, write_parquet_atomic, write_text_atomic
from ..errors import UserError
from ..progress import Hook, log
from ..result import StageResult
from . import index as index_mod
from .fetch_shard import FetchConfig, FetchOptions, ShardTask, fetch_shard
from .imageops import RESIZE_MODES
from .runner import check_scheduler, check_workers, run_tasks

__all__ = ["FetchConfig", "FetchOptions", "fetch", "RESIZE_MODES"]


def _split_counts(rows: int, shards: int, shards_run: int) -> dict:
    """What ``fetch`` reports per split: rows planned, shards, shards run now; then totals of the
    whole split (this run and earlier ones) and what this run downloaded."""
    return {"rows": rows, "shards": shards, "shards_run": shards_run, "ok": 0, "failed": 0, "by_status": {},
            "bytes_downloaded": 0, "duplicates": 0}


def _check_settings(store: Store, split: str, cfg: FetchConfig, opts: FetchOptions) -> None:
    """One image setting and one shard size per split; record them on first use."""
    marker = store.fetch_settings_path(split)
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
        stats = read_commit(path)
        rows = list(zip(ids[start:end], urls[start:end], labels[start:end]))
        task = ShardTask(split, number, start, end, str(path), rows, cfg, opts)
        if stats is None or not path.exists() or stats["rows"][0] != start or stats["rows"][1] < end:
            tasks.append(task)
        elif retry_failed and stats["failed"] > 0:
            failed = pq.read_table(failures_path(path), columns=["image_id"])["image_id"].to_pylist()
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
    path = store.duplicates_path(split)
    if dups or path.exists():
        write_parquet_atomic(pa.table({"sha256": list(dups), "image_ids": list(dups.values())}), path)
    extra = sum(len(ids) - 1 for ids in dups.values())
    if extra:
        log.warning("%s: %d images repeat the content of another image_id (same sha256); see %s",
                    split, extra, path)
    return extra


def _split_totals(store: Store, split: str, s: dict) -> None:
    by_status: Dict[str, int] = collections.Counter()
    for shard in store.image_shards(split):
        st = read_commit(shard) or {}
        s["ok"] += st.get("ok", 0)
        s["failed"] += st.get("failed", 0)
        by_status.update(st.get("status_counts", {}))
    s["by_status"] = dict(sorted(by_status.items()))


def fetch(store_root, indexes: Sequence, cfg: FetchConfig = FetchConfig(), opts: FetchOptions = FetchOptions(), *,
          split: Optional[str] = None, label_map=None, limit: Optional[int] = None, retry_failed: bool = False,
          workers: Optional[int] = None, scheduler: Optional[str] = None, progress: Hook = None,
          timeout: Optional[float] = None, holdout: Optional[Tuple[str, float]] = None) -> StageResult:
    """Fetch every split named by ``indexes`` into the store at ``store_root``; see the module doc.
    ``holdout=(NAME, FRACTION)`` cuts split NAME from the one labelled input split (``index.ingest``)."""
    t0 = time.monotonic()
    check_workers(workers)
    check_scheduler(scheduler)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit {limit!r}: use 1 or more (or leave it out for every row)")
    store = Store(store_root, create=True)
    splits = index_mod.ingest(store, indexes, split=split, label_map=label_map, holdout=holdout)
    tasks: List[ShardTask] = []
    summaries = {}
    for name in splits:
        split_tasks, rows, shards = plan_split(store, name, cfg, opts, limit, retry_failed)
        tasks += split_tasks
        summaries[name] = _split_counts(rows, shards, len(split_tasks))
    total = sum(len(t.rows) if t.retry_ids is None else len(t.retry_ids) for t in tasks)
    log.info("fetch: %d shards to run (%d images), %d already done", len(tasks), total,
             sum(s["shards"] for s in summaries.values()) - len(tasks))
    results = run_tasks(fetch_shard, tasks, stage="fetch", total=total, scheduler=scheduler, workers=workers,
                        progress=progress, timeout=timeout, final=lambda st: st["this_run"],
                        describe=lambda t: f"shard {t.path}", log_path=store.log_path("fetch"))
    for task, st in zip(tasks, results):
        summaries[task.split]["bytes_downloaded"] += st["bytes_downloaded"]
    for name, s in summaries.items():
        _split_totals(store, name, s)
        s["duplicates"] = find_duplicates(store, name)
    total = lambda name: sum(s[name] for s in summaries.values())  # noqa: E731
    result = StageResult("fetch", config_key(cfg), str(store.images_root), time.monotonic() - t0,
                         ran=len(tasks), reused=total("shards") - len(tasks),
                         counts={"ok": total("ok"), "failed": total("failed")}, splits=summaries,
                         details={"bytes_downloaded": total("bytes_downloaded"), "duplicates": total("duplicates")})
    write_result(store.images_root, result)
    return result
