"""Run one task per shard on dask.distributed, with progress and a bound.

``run_tasks(fn, tasks)`` calls ``fn(task, on_progress)`` for every task and
returns the results in task order. ``on_progress(counters)`` takes the
task's running totals (``done``, ``ok``, ``failed``, ``nbytes``); the runner
sums them over tasks and hands a ``Progress`` to the caller's hook.

Where it runs:
- ``scheduler=None``: a ``LocalCluster`` of ``workers`` processes (default:
  every core), one thread each, started for this call and closed after;
- ``scheduler="ADDRESS"``: an existing dask.distributed cluster
  (``tcp://HOST:PORT``, ``tls://...``, ``ws(s)://...``, ``ucx://...`` or ``HOST:PORT``);
- ``scheduler="inline"``: in this process, one task after another (debugging).
Workers report progress through dask's event log (``log_event`` /
``subscribe_topic``), so it works the same on a remote cluster.

Failures: a ``UserError`` raised by a task reaches the caller as it is. Any other
exception is a bug or a broken setup, not a failure of one image: the task fails, the
traceback is written to ``log_path``, the other tasks are cancelled (finished shards are
kept) and ``TaskFailed`` is raised with one line that names the task and the log.
Ctrl-C kills a local cluster's worker processes at once instead of waiting for them.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..checks import Bound, setting
from ..errors import BadSetting, UserError, first_line
from ..progress import Hook, Progress, emit

log = logging.getLogger("wdr_pipe")

Counters = Dict[str, int]
TaskFn = Callable[[Any, Callable[[Counters], None]], Any]
WORKERS_PER_CORE = 4  # the most local worker processes per core a run may ask for
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
ADDRESS_RE = re.compile(r"^(?:(?P<scheme>[A-Za-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
SCHEDULER_HELP = "give 'inline' or a dask scheduler address such as tcp://HOST:8786"


class TaskFailed(Exception):
    """A task raised something other than a ``UserError``: a bug or a broken setup.
    ``str()`` is one line naming the task, the error and ``log_path`` (the traceback)."""

    def __init__(self, message: str, log_path: Optional[Path] = None):
        super().__init__(message)
        self.log_path = log_path


class TaskCrashed(Exception):
    """What a worker sends back for an unexpected exception: its type name, message and traceback text."""

    def __init__(self, kind: str, message: str, trace: str):
        super().__init__(kind, message, trace)
        self.kind, self.message, self.trace = kind, message, trace


def max_workers() -> int:
    """The most local worker processes a run may start: ``WORKERS_PER_CORE`` per core."""
    return WORKERS_PER_CORE * (os.cpu_count() or 1)


WORKERS = Bound("--workers", 1, None, optional=True)  # None: one per core; and at most max_workers()


def workers_problem(workers: Optional[int]) -> Optional[str]:
    """Why ``workers`` is not ``None`` or 1 .. ``max_workers()`` (this machine's); ``None`` when it is fine."""
    return None if workers is None else Bound("--workers", 1, max_workers()).problem(workers)


def scheduler_problem(scheduler: Optional[str]) -> Optional[str]:
    """Why ``scheduler`` is not ``None``, ``'inline'`` or a scheduler address; ``None`` when it is fine."""
    if scheduler is None or scheduler == "inline":
        return None
    m = ADDRESS_RE.match(scheduler) if isinstance(scheduler, str) else None
    if m is None:
        return SCHEDULER_HELP
    if m.group("scheme") and m.group("scheme").lower() not in SCHEMES:
        return f"unknown protocol {m.group('scheme')!r} (use {', '.join(SCHEMES)}); {SCHEDULER_HELP}"
    if not 1 <= int(m.group("port")) <= 65535:
        return f"port {int(m.group('port'))} is not in 1..65535; {SCHEDULER_HELP}"
    return None


@dataclass(frozen=True)
class Cluster:
    """Where a data stage runs its shard tasks: the command line's ``--workers`` / ``--scheduler``
    and the top-level ``workers`` / ``scheduler`` of a ``run`` file. Checked when made, so a stage
    that makes one first refuses a bad value before any work."""

    workers: Optional[int] = setting(
        None, bound=WORKERS, check=workers_problem,
        help=f"Local worker processes, at most {WORKERS_PER_CORE} per core [default: one per core].")
    scheduler: Optional[str] = setting(
        None, check=scheduler_problem, metavar="ADDRESS",
        help="dask.distributed scheduler to run on (tcp://HOST:8786); default: a local cluster of --workers "
             "processes; 'inline': in this process, one shard after another.")

    def __post_init__(self):
        problem = workers_problem(self.workers)
        if problem:
            raise BadSetting(f"--workers {self.workers!r}: {problem} ({WORKERS_PER_CORE} per core of this machine), "
                             "or leave it out for one per core", "workers")
        problem = scheduler_problem(self.scheduler)
        if problem:
            raise BadSetting(f"--scheduler {self.scheduler!r}: {problem}", "scheduler")


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
        emit(self.hook, p)


def _throttled(send: Callable[[Counters], None], every: float = 0.5) -> Callable[[Counters], None]:
    last = [0.0]

    def on_progress(counters: Counters, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= every:
            last[0] = now
            send(dict(counters))

    return on_progress


def _call(fn: TaskFn, task: Any, on_progress: Callable[[Counters], None]) -> Any:
    """``fn(task, on_progress)``; an exception other than a ``UserError`` becomes a ``TaskCrashed``
    carrying its traceback (formatted where it happened, so it survives the trip from a worker)."""
    try:
        return fn(task, on_progress)
    except UserError:
        raise
    except Exception as e:
        raise TaskCrashed(type(e).__name__, str(e), traceback.format_exc()) from None


def _remote_call(fn: TaskFn, task: Any, task_no: int, topic: str) -> Any:
    """Runs on a dask worker: call ``fn`` with a progress sender bound to the event log."""
    from distributed import get_worker

    worker = get_worker()
    return _call(fn, task, _throttled(lambda c: worker.log_event(topic, (task_no, c))))


class _Failure:
    """Turns a task's unexpected exception into ``TaskFailed``, its traceback into the log file."""

    def __init__(self, stage: str, describe: Callable[[Any], str], log_path: Optional[Path]):
        self.stage, self.describe, self.log_path = stage, describe, log_path

    def __call__(self, task: Any, kind: str, message: str, trace: str) -> TaskFailed:
        what = self.describe(task)
        first = first_line(message)
        where = "no log written"
        if self.log_path is not None:
            from ..cache.atomic import write_text_atomic

            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            try:
                write_text_atomic(self.log_path, f"wdr-pipe {self.stage}: {what} failed at {stamp}\n\n{trace}")
                where = f"the traceback is in {self.log_path}"
            except (OSError, UserError) as e:
                where = f"could not write the traceback to {self.log_path} ({e})"
        log.debug("%s: %s failed:\n%s", self.stage, what, trace)
        return TaskFailed(f"{self.stage}: {what} failed with {kind}: {first}; {where}; finished shards are kept "
                          "(an unexpected error: a bug or a broken setup, please report it with that file)",
                          self.log_path)


def run_tasks(fn: TaskFn, tasks: Sequence[Any], *, stage: str, total: Optional[int] = None,
              scheduler: Optional[str] = None, workers: Optional[int] = None,
              progress: Hook = None, timeout: Optional[float] = None,
              final: Optional[Callable[[Any], Counters]] = None,
              describe: Optional[Callable[[Any], str]] = None, log_path: Optional[Path] = None) -> List[Any]:
    """Run ``fn`` over ``tasks``; see the module doc. ``final(result)`` gives a task's last counters;
    ``describe(task)`` names a task in an error; ``log_path`` receives the traceback of a failed task."""
    Cluster(workers, scheduler)
    tasks = list(tasks)
    totals = _Totals(stage, total, progress)
    fail = _Failure(stage, describe or (lambda t: f"task {tasks.index(t)}"), log_path)
    if not tasks:
        emit(progress, Progress(stage, total=total))
        return []
    if scheduler == "inline":
        out = []
        for i, t in enumerate(tasks):
            try:
                res = _call(fn, t, _throttled(lambda c, i=i: totals.update(i, c), every=0.2))
            except TaskCrashed as e:
                raise fail(t, e.kind, e.message, e.trace) from None
            if final is not None:
                totals.update(i, final(res))
            out.append(res)
        return out
    return _run_dask(fn, tasks, totals, scheduler, workers, timeout, final, fail)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a ``tcp://HOST:PORT`` address (dask's client would
    retry a refused connection until its whole timeout has passed)."""
    import socket
    from urllib.parse import urlsplit

    if address.startswith("tcp://"):
        parts = urlsplit(address)
        if parts.hostname and parts.port:
            socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()


def _local_cluster(workers: Optional[int]):
    import multiprocessing

    import dask
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    # forkserver: workers fork from a clean server process instead of re-importing
    # everything (spawn), about 2 CPU-seconds less per run; not available on Windows.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    # The worker's statistical profiler samples every thread each 10 ms for a dashboard
    # that this cluster does not run: off.
    with dask.config.set({"distributed.worker.multiprocessing-method": method,
                          "distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                            dashboard_address=None, silence_logs=logging.ERROR)


def _kill_workers(cluster) -> None:
    """Ctrl-C: end a local cluster's worker processes now (their tasks may be stuck in a download);
    their nannies are told first, so they neither restart them nor wait for them."""
    import signal

    for nanny in list(getattr(cluster, "workers", {}).values()):
        try:
            nanny.close_gracefully()
            pid = nanny.process.process.pid
            if pid:
                os.kill(pid, signal.SIGKILL)
        except (AttributeError, OSError, ValueError):  # not started, already gone, another dask version
            pass


def _connect(scheduler: str):
    from distributed import Client

    try:
        _probe(scheduler)
        return Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(
            f"cannot reach dask scheduler {scheduler!r} ({e}); check the address or drop --scheduler to run locally"
        ) from e


def _run_dask(fn, tasks, totals: _Totals, scheduler, workers, timeout, final, fail: _Failure) -> List[Any]:
    """The tasks on a cluster; on Ctrl-C a local cluster's workers are killed first, then everything closes."""
    from distributed import Client

    cluster = client = topic = None
    futures: List[Any] = []
    try:
        if scheduler:
            client = _connect(scheduler)
        else:
            cluster = _local_cluster(workers)
            client = Client(cluster)
        topic = f"wdr-progress-{uuid.uuid4().hex}"
        client.subscribe_topic(topic, lambda event: totals.update(*event[1]))
        futures = [client.submit(_remote_call, fn, t, i, topic, pure=False, key=f"{totals.stage}-{i}-{topic[-8:]}")
                   for i, t in enumerate(tasks)]
        return _collect(futures, tasks, totals, timeout, final, fail)
    except KeyboardInterrupt:
        if cluster is not None:
            _kill_workers(cluster)
        raise
    finally:
        if client is not None:
            if topic is not None:
                client.unsubscribe_topic(topic)
            for f in futures:
                f.cancel()
            client.close(timeout=5)
        if cluster is not None:
            cluster.close(timeout=10)


def _collect(futures, tasks, totals: _Totals, timeout, final, fail: _Failure) -> List[Any]:
    """The futures' results in task order as they finish; the first failure or the timeout ends it."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    results: List[Any] = [None] * len(tasks)
    try:
        for fut in as_completed(futures, timeout=timeout):
            i = index[fut.key]
            try:
                results[i] = fut.result()
            except (UserError, KeyboardInterrupt):
                raise
            except TaskCrashed as e:
                raise fail(tasks[i], e.kind, e.message, e.trace) from None
            except Exception as e:  # a worker that died (KilledWorker), a task that cannot be sent...
                raise fail(tasks[i], type(e).__name__, str(e), traceback.format_exc()) from None
            if final is not None:
                totals.update(i, final(results[i]))
    except TimeoutError as e:
        raise UserError(
            f"{totals.stage}: not finished after {timeout:.0f}s; finished shards are kept, rerun to resume"
        ) from e
    return results
