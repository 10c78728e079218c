"""Guards that guard (issue 19 §5), with real processes where the guard is between processes.

- ``train --init`` from a run of another backbone loads no backbone tensor (BatchNorm's step counters and the
  head do not count) and is refused; ``train --resume RUN`` refuses the options that differ from the run's,
  naming them (``--lr`` alone may change: tests/wdr/train/test_train.py runs the divergence advice's command).
- A loss that grows by orders of magnitude is a warning in the log and the result, exit 0.
- Two ``train`` processes on one ``--out``: the second is one line naming the first's pid.
- Two ``fetch`` processes of one index on one store, over the loopback server: the second is one line naming
  the first's pid, and the rerun after it does no work. Refusing (rather than waiting) keeps every command
  bounded, and the stage runs on dask workers that may be on other hosts, where a per-shard wait would need
  locks inside the workers; the rerun reuses every shard the first one wrote.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli_run, error_line, subprocess_env
from wdr_pipe.cache import Store
from wdr_pipe.cache.lock import FileLock, Locked
from wdr_pipe.demo.serve import ImageServer

SMALL = ["--image-size", "64", "--batch-size", "16", "--loader-workers", "0", "--checkpoint-every", "0"]




def wdr_pipe_process(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", *map(str, args)], env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until ``path`` holds its holder's record (the lock is taken), or fail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"{path} never appeared (the process ended: {proc.poll()}, {proc.stderr.read()[-2000:]})")


def test_init_from_another_backbone_is_refused_and_counters_do_not_count(shared, tmp_path):
    line = error_line(cli_run("train", "--store", shared.store, "--out", tmp_path / "r18", "--init", shared.run,
                              "--backbone", "resnet18", "--epochs", "1", *SMALL))
    assert "not one backbone tensor of it fits --backbone resnet18" in line and not (tmp_path / "r18").exists()
    from wdr_pipe.wdr.model.network import ModelConfig, build_model
    from wdr_pipe.wdr.train.init import load_init

    model = build_model(ModelConfig(backbone="resnet18"), 24)
    with pytest.raises(Exception, match="not one backbone tensor"):  # the library refuses it too
        load_init(model, str(shared.run), list(range(1, 25)))
    same = load_init(build_model(ModelConfig(), 24), str(shared.run), list(range(1, 25)))
    assert same["backbone_tensors"] == same["backbone_of"] and not [k for k in same["not_loaded"]
                                                                    if k.endswith("num_batches_tracked")]


def test_resume_refuses_other_options_naming_them(shared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shared.run, run)
    (run / "result.json").unlink()  # unfinished
    line = error_line(cli_run("train", "--resume", run, "--epochs", "5", "--lr", "5", "--backbone", "resnet18",
                              "--out", tmp_path / "elsewhere", "--store", shared.store))
    for named in ("--epochs 5 (the run has 2)", "--backbone resnet18 (the run has tf_efficientnet_lite0)",
                  f"--out {tmp_path / 'elsewhere'} (the run is {run})"):
        assert named in line
    assert "--lr 5" not in line and "--store" not in line  # the rate may change; the same store is no change
    shutil.copy(shared.run / "result.json", run / "result.json")
    assert "the run is finished" in error_line(cli_run("train", "--resume", run, "--lr", "1e-4"))
    assert json.loads((run / "config.json").read_text()) == json.loads((shared.run / "config.json").read_text())


def test_a_loss_grown_by_orders_of_magnitude_is_a_warning_in_the_result(shared, tmp_path):
    res = cli_run("train", "--store", shared.store, "--out", tmp_path / "hot", "--epochs", "1", "--lr", "10",
                  "--sched", "none", *SMALL)
    assert res.exit_code == 0, res.output
    details = json.loads((tmp_path / "hot" / "result.json").read_text())["details"]
    warning = details["loss_warning"]
    assert "the training loss grew" in warning and "diverged at --lr 10" in warning and "lower --lr (e.g. 1)" in warning
    assert f"warning: {warning}" in res.output
    assert max(r["loss"] for r in map(json.loads, open(tmp_path / "hot" / "metrics.jsonl"))) > 100


def test_a_second_train_on_one_out_is_one_line_naming_the_first(shared, tmp_path):
    out = tmp_path / "run"
    first = wdr_pipe_process("train", "--store", shared.store, "--out", out, "--epochs", "3", *SMALL)
    try:
        wait_for(out / ".lock", first)
        second = wdr_pipe_process("train", "--store", shared.store, "--out", out, "--epochs", "3", *SMALL)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1 and f"by pid {first.pid} " in err and "already running" in err, err
        assert [line for line in err.splitlines() if line.startswith("Error:")] == [err.strip().splitlines()[-1]]
    finally:
        first.kill()
        first.wait()
    FileLock(out / ".lock", "test").acquire().release()  # the killed process let go of it


def test_a_second_fetch_of_one_index_on_one_store_is_one_line_and_the_rerun_does_no_work(synth_data, tmp_path):
    root, records = synth_data
    train = [r for r in records if r.split == "train"][:16]
    store = tmp_path / "store"
    with ImageServer(root) as srv:
        # every other image drips until its 0.5 s deadline: 8 shards of 2, one after the other, take seconds
        rows = [{"image_id": r.image_id, "url": srv.fault_url("drip", r.path) if i % 2 else srv.url(r.path)}
                for i, r in enumerate(train)]
        index = tmp_path / "train.json"
        index.write_text(json.dumps({"images": [{"imageId": x["image_id"], "url": x["url"]} for x in rows]}))
        args = ["fetch", index, "--store", store, "--size", "64", "--shard-size", "2", "--threads", "2",
                "--deadline", "0.5", "--timeout", "0.5", "--scheduler", "inline"]
        first = wdr_pipe_process(*args)
        wait_for(store / "images" / "train" / ".lock", first)
        second = wdr_pipe_process(*args)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1 and f"by pid {first.pid} " in err and "wdr-pipe fetch" in err, err
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
        assert "ran 8, reused 0" in out
        again = wdr_pipe_process(*args)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0 and "ran 0, reused 8" in out, err
    assert not (store / "images" / "train" / ".lock").exists()


def test_stats_and_features_lock_their_output_too(shared, tmp_path):
    from wdr_pipe.pipeline.features import compute_features
    from wdr_pipe.pipeline.stats import compute_stats

    store = tmp_path / "store"
    shutil.copytree(shared.store, store)
    s = Store(store)
    for folder, call in ((s.label_stats_dir("train"), lambda: compute_stats(store, ["train"])),
                         (s.features.dir(
                             __import__("wdr_pipe.pipeline.configs", fromlist=["FeatureConfig"]).FeatureConfig().key,
                             "train"), lambda: compute_features(store, ["train"], scheduler="inline"))):
        with FileLock(folder / ".lock", "another wdr-pipe"):
            with pytest.raises(Locked, match=rf"by pid {os.getpid()} .*run '.*' again: it reuses every shard"):
                call()
