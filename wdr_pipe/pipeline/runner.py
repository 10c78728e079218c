"""Run one task per shard on dask.distributed, with progress and a bound.

``run_tasks(fn, tasks)`` calls ``fn(task, on_progress)`` for every task and
returns the results in task order. ``on_progress(counters)`` takes the
task's running totals (``done``, ``ok``, ``failed``, ``nbytes``); the runner
sums them over tasks and hands a ``Progress`` to the caller's hook.

Where it runs:
- ``scheduler=None``: a ``LocalCluster`` of ``workers`` processes (default:
  every core), one thread each, started for this call and closed after;
- ``scheduler="ADDRESS"``: an existing dask.distributed cluster;
- ``scheduler="inline"``: in this process, one task after another (debugging).
Workers report progress through dask's event log (``log_event`` /
``subscribe_topic``), so it works the same on a remote cluster.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import UserError
from ..progress import Hook, Progress, report

Counters = Dict[str, int]
TaskFn = Callable[[Any, Callable[[Counters], None]], Any]


class _Totals:
    """Latest counters per task, summed into one Progress for the hook (thread-safe)."""

    def __init__(self, stage: str, total: Optional[int], hook: Hook):
        self.stage, self.total, self.hook = stage, total, hook
        self.per_task: Dict[int, Counters] = {}
        self.lock = threading.Lock()

    def update(self, task_no: int, counters: Counters) -> None:
        with self.lock:
            self.per_task[task_no] = counters
            p = Progress(self.stage, total=self.total)
            for c in self.per_task.values():
                p.done += c.get("done", 0)
                p.ok += c.get("ok", 0)
                p.failed += c.get("failed", 0)
                p.nbytes += c.get("nbytes", 0)
        report(self.hook, p)


def _throttled(send: Callable[[Counters], None], every: float = 0.5) -> Callable[[Counters], None]:
    last = [0.0]

    def on_progress(counters: Counters, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= every:
            last[0] = now
            send(dict(counters))

    return on_progress


def _remote_call(fn: TaskFn, task: Any, task_no: int, topic: str) -> Any:
    """Runs on a dask worker: call ``fn`` with a progress sender bound to the event log."""
    from distributed import get_worker

    worker = get_worker()
    on_progress = _throttled(lambda c: worker.log_event(topic, (task_no, c)))
    result = fn(task, on_progress)
    return result


def run_tasks(fn: TaskFn, tasks: Sequence[Any], *, stage: str, total: Optional[int] = None,
              scheduler: Optional[str] = None, workers: Optional[int] = None,
              progress: Hook = None, timeout: Optional[float] = None,
              final: Optional[Callable[[Any], Counters]] = None) -> List[Any]:
    """Run ``fn`` over ``tasks``; see the module doc. ``final(result)`` gives a task's last counters."""
    tasks = list(tasks)
    totals = _Totals(stage, total, progress)
    if not tasks:
        report(progress, Progress(stage, total=total))
        return []
    if scheduler == "inline":
        out = []
        for i, t in enumerate(tasks):
            res = fn(t, _throttled(lambda c, i=i: totals.update(i, c), every=0.2))
            if final is not None:
                totals.update(i, final(res))
            out.append(res)
        return out
    return _run_dask(fn, tasks, totals, scheduler, workers, timeout, final)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a ``tcp://HOST:PORT`` address (dask's client would
    retry a refused connection until its whole timeout has passed)."""
    import socket
    from urllib.parse import urlsplit

    if address.startswith("tcp://"):
        parts = urlsplit(address)
        if parts.hostname and parts.port:
            socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()


def _run_dask(fn, tasks, totals: _Totals, scheduler, workers, timeout, final) -> List[Any]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler:
            try:
                _probe(scheduler)
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise UserError(
                    f"cannot reach dask scheduler {scheduler!r} ({e}); check the address or drop --scheduler to run locally"
                ) from e
        else:
            import multiprocessing

            import dask

            n = workers or os.cpu_count() or 1
            # forkserver: workers fork from a clean server process instead of re-importing
            # everything (spawn), about 2 CPU-seconds less per run; not available on Windows.
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            # The worker's statistical profiler samples every thread each 10 ms for a dashboard
            # that this cluster does not run: off.
            with dask.config.set({"distributed.worker.multiprocessing-method": method,
                                  "distributed.worker.profile.enabled": False}):
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
            client = Client(cluster)
        topic = f"wdr-progress-{uuid.uuid4().hex}"
        client.subscribe_topic(topic, lambda event: totals.update(*event[1]))
        futures = [client.submit(_remote_call, fn, t, i, topic, pure=False, key=f"{totals.stage}-{i}-{topic[-8:]}")
                   for i, t in enumerate(tasks)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: List[Any] = [None] * len(tasks)
        try:
            for fut in as_completed(futures, timeout=timeout):
                i = index[fut.key]
                results[i] = fut.result()
                if final is not None:
                    totals.update(i, final(results[i]))
        except TimeoutError as e:
            raise UserError(
                f"{totals.stage}: not finished after {timeout:.0f}s; finished shards are kept, rerun to resume"
            ) from e
        finally:
            client.unsubscribe_topic(topic)
            for f in futures:
                f.cancel()
            client.close()
        return results
    finally:
        if cluster is not None:
            cluster.close()
