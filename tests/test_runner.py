import time

import pytest

from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.runner import run_tasks


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
