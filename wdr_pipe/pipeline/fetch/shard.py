"""One fetch shard: rows of an index -> images, failures and the commit marker.

``fetch_shard(task)`` is the unit of work of ``wdr-pipe fetch`` (one dask
task). It downloads the shard's rows on a bounded thread pool (at most
``per_host`` at once per host), resizes them, and writes
``part-NNNNN.parquet`` (the images, in index order),
``part-NNNNN.failures.parquet`` (every row that failed, with its status) and
last the shard's commit marker (``cache.commit``). In retry mode it fetches
only the given failed rows and merges them into the committed shard.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import __version__
from ...cache import commit, config_dict, config_key, failures_path
from ...cache.atomic import stage_parquet, staging
from ...cache.schema import FAILURES, IMAGES
from ...imaging import ImageRejected, image_task, process
from ..configs import FetchConfig, FetchOptions
from .download import DownloadFailed, Downloader

ROW_GROUP = 256  # rows per Parquet row group: bounded memory for streaming readers


@dataclass(frozen=True)
class FetchShard:
    """One image shard to fetch: rows ``start:end`` of the split's index (``rows``: image id, URLs,
    labels) into ``path``; ``retry_ids``: only these failed rows, merged into the committed shard."""

    split: str
    number: int
    start: int
    end: int
    path: str
    rows: List[Tuple[str, List[str], Optional[List[int]]]]
    cfg: FetchConfig
    opts: FetchOptions
    retry_ids: Optional[Tuple[str, ...]] = None


# -- one shard -------------------------------------------------------------------


def _host(urls: Sequence[str]) -> str:
    try:
        return urlsplit(urls[0]).netloc if urls else ""
    except ValueError:  # e.g. an unclosed IPv6 bracket: the download reports it as bad_url
        return ""


def run_per_host(n: int, hosts: Sequence[str], fn: Callable[[int], None], threads: int, per_host: int) -> None:
    """Call ``fn(i)`` for i in range(n) on ``threads`` threads, at most ``per_host`` at once per host.

    Items wait in one queue per host (in index order); a free thread takes the
    next item of the first host, in round-robin order, that has a free slot, so
    one slow host cannot occupy every thread while others wait. If ``fn`` raises,
    no new item starts, and the first exception is raised here once the running ones end.
    """
    queues: Dict[str, collections.deque] = {}
    for i in range(n):
        queues.setdefault(hosts[i], collections.deque()).append(i)
    ring = collections.deque(queues)  # hosts with pending items, round-robin
    active: Dict[str, int] = collections.Counter()
    cond = threading.Condition()
    errors: List[BaseException] = []

    def take() -> Optional[int]:
        with cond:
            while ring and not errors:
                for _ in range(len(ring)):
                    host = ring[0]
                    ring.rotate(-1)
                    if active[host] < per_host:
                        i = queues[host].popleft()
                        if not queues[host]:
                            ring.remove(host)
                            if not ring:
                                cond.notify_all()  # nothing left: let every waiting thread exit
                        active[host] += 1
                        return i
                cond.wait()
            return None

    def loop() -> None:
        while (i := take()) is not None:
            try:
                fn(i)
            except BaseException as e:  # stop the pool; the caller re-raises it
                with cond:
                    errors.append(e)
                    cond.notify_all()
            finally:
                with cond:
                    active[hosts[i]] -= 1
                    cond.notify()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, min(threads, n)))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


def fetch_shard(task: FetchShard, on_progress: Callable[[dict], None]) -> dict:
    """Download and resize one shard; write images, failures and the commit marker (last). Returns the marker."""
    t0 = time.monotonic()
    wanted = set(task.retry_ids) if task.retry_ids is not None else None
    todo = [i for i, r in enumerate(task.rows) if wanted is None or r[0] in wanted]
    dl = Downloader(replace(task.opts.download, pool_size=max(task.opts.threads, 1)))
    ok_rows: Dict[int, dict] = {}
    fail_rows: Dict[int, dict] = {}
    counters = {"done": 0, "ok": 0, "failed": 0, "nbytes": 0}
    lock = threading.Lock()

    def work(k: int) -> None:
        i = todo[k]
        image_id, urls, labels = task.rows[i]
        url, nbytes = (urls[0] if urls else None), 0
        try:
            data, url = dl.get(urls)
            nbytes = len(data)
            jpeg, (w, h), (sw, sh) = process(data, task.cfg)
            row = dict(image_id=image_id, jpeg=jpeg, width=w, height=h, src_width=sw, src_height=sh, url=url,
                       sha256=hashlib.sha256(data).hexdigest(), labels=labels)
            failure = None
        except DownloadFailed as e:
            failure = dict(image_id=image_id, url=e.url or url, status=e.status, error=str(e))
        except ImageRejected as e:
            failure = dict(image_id=image_id, url=url, status=e.status, error=str(e))
        # anything else is a bug or a broken setup, not a failure of this image: it fails the
        # shard task (run_per_host stops and re-raises it), and nothing of the shard is committed
        with lock:
            if failure is None:
                ok_rows[i] = row
                counters["ok"] += 1
            else:
                fail_rows[i] = failure
                counters["failed"] += 1
            counters["done"] += 1
            counters["nbytes"] += nbytes
            on_progress(dict(counters))

    try:
        with image_task():
            run_per_host(len(todo), [_host(task.rows[i][1]) for i in todo], work, task.opts.threads,
                         task.opts.per_host)
    finally:
        dl.close()
    return _commit(task, ok_rows, fail_rows, counters, time.monotonic() - t0)


def _table(rows: List[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> Table, column by column (10x faster than Table.from_pylist)."""
    return pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in schema}, schema=schema)


def _commit(task: FetchShard, ok_rows: Dict[int, dict], fail_rows: Dict[int, dict], counters: dict,
            seconds: float) -> dict:
    path = Path(task.path)
    images = _table([ok_rows[i] for i in sorted(ok_rows)], IMAGES)
    failures = _table([fail_rows[i] for i in sorted(fail_rows)], FAILURES)
    if task.retry_ids is not None:  # merge with what the shard already had, in index order
        order = {r[0]: i for i, r in enumerate(task.rows)}
        old = pq.read_table(path, schema=IMAGES)
        images = pa.concat_tables([old, images])
        ids = images["image_id"].to_pylist()
        images = images.take(sorted(range(len(ids)), key=lambda j: order[ids[j]]))
        old_f = pq.read_table(failures_path(path), schema=FAILURES)
        still = old_f.filter(pc.invert(pc.is_in(old_f["image_id"], value_set=pa.array(list(task.retry_ids)))))
        failures = pa.concat_tables([still, failures])
    # both files complete beside the old ones first; the old shard stays committed until they are
    with staging() as staged:
        staged[path] = stage_parquet(images, path, row_group_size=ROW_GROUP)
        staged[failures_path(path)] = stage_parquet(failures, failures_path(path))
    by_status = collections.Counter(failures["status"].to_pylist())
    examples: Dict[str, list] = {}
    for r in failures.to_pylist():
        if len(examples.setdefault(r["status"], [])) < 3:
            examples[r["status"]].append({"image_id": r["image_id"], "url": r["url"], "error": r["error"]})
    marker = {
        "shard": task.number, "split": task.split, "rows": [task.start, task.end],
        "ok": images.num_rows, "failed": failures.num_rows, "status_counts": dict(sorted(by_status.items())),
        "failure_examples": examples, "bytes_downloaded": counters["nbytes"],
        "bytes_stored": int(pc.sum(pc.binary_length(images["jpeg"])).as_py() or 0),
        "seconds": round(seconds, 3), "retried": task.retry_ids is not None,
        "this_run": {"done": counters["done"], "ok": counters["ok"], "failed": counters["failed"],
                     "nbytes": counters["nbytes"]},
        "config": config_dict(task.cfg), "config_key": config_key(task.cfg),
        "options": {"threads": task.opts.threads, "per_host": task.opts.per_host,
                    "download": asdict(task.opts.download)},
        "wdr_pipe_version": __version__, "written_at": time.time(),
    }
    commit(staged, path, marker)  # the commit marker, last
    return marker
