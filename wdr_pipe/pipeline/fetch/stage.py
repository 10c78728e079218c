"""``wdr-pipe fetch``: URL indexes -> ``images/<split>/`` Parquet shards.

``fetch(store, indexes, cfg, opts)`` ingests the indexes (``index/``), cuts
each split into shards of ``opts.shard_size`` rows, runs the shards that are
not committed yet as dask tasks (``shard.py``), then reports duplicate
content and returns a summary of the whole split (this run and earlier ones),
with a line per split for a person.

One fetch at a time writes a split: its ``images/<split>/`` folder is locked while the
run works (``Store.writing``), so a second fetch of the same split is one line naming
the first one's pid instead of downloading every shard again beside it.

Resume rules: a shard is skipped when its commit marker exists and covers
the planned rows; anything else is redone from scratch (a killed run leaves
no file under a final name). With ``retry_failed`` the failed rows of
committed shards are fetched again and merged in. The image settings are
fixed per store (``images/<split>/_fetch.json``): asking for others is refused.
"""
from __future__ import annotations

import collections
import time
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from ...cache import Store, config_dict, config_key, failures_path, fetch_counts, read_commit, write_result
from ...cache.atomic import remove_stale_tmp, write_parquet_atomic
from ...errors import BadSetting, UserError
from ...progress import Hook, log
from ...result import StageResult
from ..configs import LIMIT, FetchConfig, FetchOptions
from ..index import ingest
from ..runner import Cluster, run_tasks
from .shard import FetchShard, fetch_shard

__all__ = ["fetch", "find_duplicates", "plan_split"]


def _check_settings(store: Store, split: str, cfg: FetchConfig, opts: FetchOptions) -> None:
    """One image setting and one shard size per split; record them on first use."""
    doc = store.fetch_settings(split)
    if doc is None:
        store.write_fetch_settings(split, config_key(cfg), config_dict(cfg), opts.shard_size)
        return
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


def plan_split(store: Store, split: str, cfg: FetchConfig, opts: FetchOptions, limit: Optional[int],
               retry_failed: bool) -> Tuple[List[FetchShard], int, int]:
    """Tasks for the shards of ``split`` that need work; also (rows, shards) planned."""
    table = pq.read_table(store.index_path(split))
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    ids = table["image_id"].to_pylist()[:n]
    urls = table["urls"].to_pylist()[:n]
    labels = table["labels"].to_pylist()[:n]
    _check_settings(store, split, cfg, opts)
    remove_stale_tmp(store.images_dir(split))
    tasks = []
    shards = range(0, n, opts.shard_size)
    for number, start in enumerate(shards):
        end = min(start + opts.shard_size, n)
        path = store.image_shard_path(split, number)
        marker = read_commit(path)
        rows = list(zip(ids[start:end], urls[start:end], labels[start:end]))
        if marker is None or not path.exists() or marker["rows"][0] != start or marker["rows"][1] < end:
            tasks.append(FetchShard(split, number, start, end, str(path), rows, cfg, opts))
        elif retry_failed and marker["failed"] > 0:
            failed = pq.read_table(failures_path(path), columns=["image_id"])["image_id"].to_pylist()
            tasks.append(FetchShard(split, number, start, end, str(path), rows, cfg, opts, retry_ids=tuple(failed)))
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


def _split_summary(store: Store, split: str, rows: int, shards: int, shards_run: int, downloaded: int) -> dict:
    """What ``fetch`` reports per split: rows planned, shards, shards run now; then totals of the
    whole split (this run and earlier ones) and what this run downloaded."""
    counts = fetch_counts(store, split)
    return {"rows": rows, "shards": shards, "shards_run": shards_run, "ok": counts["ok"],
            "failed": counts["failed"], "by_status": counts["by_status"], "bytes_downloaded": downloaded,
            "duplicates": find_duplicates(store, split)}


def _summary_line(store: Store, split: str, s: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in s["by_status"].items()) or "none"
    return (f"{split}: {s['ok']} ok, {s['failed']} failed ({reasons}); {s['shards_run']} of {s['shards']} "
            f"shards run now, {s['bytes_downloaded'] / 2**20:.1f} MiB downloaded"
            + (f", {s['duplicates']} duplicate images (see {store.duplicates_path(split)})" if s["duplicates"] else ""))


def fetch(store_root, indexes: Sequence, cfg: FetchConfig = FetchConfig(), opts: FetchOptions = FetchOptions(), *,
          split: Optional[str] = None, label_map=None, limit: Optional[int] = None, retry_failed: bool = False,
          workers: Optional[int] = None, scheduler: Optional[str] = None, progress: Hook = None,
          timeout: Optional[float] = None, holdout: Optional[Tuple[str, float]] = None) -> StageResult:
    """Fetch every split named by ``indexes`` into the store at ``store_root``; see the module doc.
    ``holdout=(NAME, FRACTION)`` cuts split NAME from the one labelled input split (``index.ingest``)."""
    t0 = time.monotonic()
    Cluster(workers, scheduler)
    problem = LIMIT.problem(limit)
    if problem:
        raise BadSetting(f"--limit {limit!r}: {problem} (or leave it out for every row)", "limit")
    store = Store(store_root, create=True)
    splits = ingest(store, indexes, split=split, label_map=label_map, holdout=holdout)
    with store.writing("fetch", [store.images_dir(name) for name in splits]):  # one fetch per split at a time
        return _fetch(store, splits, cfg, opts, limit, retry_failed, workers, scheduler, progress, timeout, t0)


def _fetch(store: Store, splits: List[str], cfg: FetchConfig, opts: FetchOptions, limit: Optional[int],
           retry_failed: bool, workers: Optional[int], scheduler: Optional[str], progress: Hook,
           timeout: Optional[float], t0: float) -> StageResult:
    tasks: List[FetchShard] = []
    planned = {}
    for name in splits:
        split_tasks, rows, shards = plan_split(store, name, cfg, opts, limit, retry_failed)
        tasks += split_tasks
        planned[name] = (rows, shards, len(split_tasks))
    total = sum(len(t.rows) if t.retry_ids is None else len(t.retry_ids) for t in tasks)
    log.info("fetch: %d shards to run (%d images), %d already done", len(tasks), total,
             sum(shards for _, shards, _ in planned.values()) - len(tasks))
    results = run_tasks(fetch_shard, tasks, stage="fetch", total=total, scheduler=scheduler, workers=workers,
                        progress=progress, timeout=timeout, final=lambda marker: marker["this_run"],
                        describe=lambda t: f"shard {t.path}", log_path=store.log_path("fetch"))
    downloaded: Dict[str, int] = collections.Counter()
    for task, marker in zip(tasks, results):
        downloaded[task.split] += marker["bytes_downloaded"]
    summaries = {name: _split_summary(store, name, *planned[name], downloaded[name]) for name in splits}
    total = lambda name: sum(s[name] for s in summaries.values())  # noqa: E731
    result = StageResult("fetch", config_key(cfg), str(store.images_root), time.monotonic() - t0,
                         ran=len(tasks), reused=total("shards") - len(tasks),
                         counts={"ok": total("ok"), "failed": total("failed")}, splits=summaries,
                         details={"bytes_downloaded": total("bytes_downloaded"), "duplicates": total("duplicates")},
                         summary=[_summary_line(store, name, s) for name, s in summaries.items()])
    write_result(store.images_root, result)
    return result
