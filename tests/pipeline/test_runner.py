import time

import pytest

from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.runner import TaskFailed, run_tasks


def _square(task, on_progress):
    on_progress({"done": 1, "ok": 1, "failed": 0, "nbytes": task})
    return task * task


def _boom(task, on_progress):
    if task == 2:
        raise UserError("task 2: disk full")
    return task


@pytest.mark.parametrize("where", ["inline", "cluster"])
def test_results_in_task_order_and_progress_totals(where, request):
    scheduler = "inline" if where == "inline" else request.getfixturevalue("dask_cluster")
    seen = []
    out = run_tasks(_square, [1, 2, 3, 4], stage="sq", total=4, scheduler=scheduler,
                    progress=seen.append, final=lambda r: {"done": 1, "ok": 1})
    assert out == [1, 4, 9, 16]
    assert seen and seen[-1].done == 4 and seen[-1].ok == 4 and seen[-1].total == 4


def test_task_error_reaches_the_caller(dask_cluster):
    with pytest.raises(UserError, match="disk full"):
        run_tasks(_boom, [1, 2, 3], stage="b", scheduler=dask_cluster)


def test_unreachable_scheduler_is_a_user_error_at_once():
    t = time.monotonic()
    with pytest.raises(UserError, match="cannot reach dask scheduler 'tcp://127.0.0.1:9'.*drop --scheduler"):
        run_tasks(_square, [1], stage="x", scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - t < 5, "a refused connection must not wait out the connect timeout"


def _bug(task, on_progress):
    if task == 2:
        {}["no such key"]  # a programming error inside a task
    return task


@pytest.mark.parametrize("scheduler", ["inline", None])
def test_an_unexpected_error_fails_the_task_with_one_line_and_a_log(scheduler, tmp_path):
    log = tmp_path / "_logs" / "b.log"
    with pytest.raises(TaskFailed) as e:
        run_tasks(_bug, [1, 2, 3], stage="b", scheduler=scheduler, workers=2, describe=lambda t: f"shard {t}",
                  log_path=log)
    message = str(e.value)
    assert "\n" not in message and message.startswith("b: shard 2 failed with KeyError: 'no such key'")
    assert f"the traceback is in {log}" in message and e.value.log_path == log
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "_bug" in text and "KeyError" in text


def test_workers_and_scheduler_are_checked_before_anything_starts():
    with pytest.raises(UserError, match=r"--workers 0: use 1 to"):
        run_tasks(_square, [1], stage="x", workers=0)
    with pytest.raises(UserError, match=r"--scheduler 'nonsense': give 'inline' or a dask scheduler address"):
        run_tasks(_square, [1], stage="x", scheduler="nonsense")
