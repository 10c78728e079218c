"""The training recipes (wdr_pipe.wdr.train.recipe): which phases a command means, lp-ft end to end, exact
resume after a SIGKILL in either phase with 2 and 3 loader workers, the learning-rate finder, bad input.

The session's small store (48 train and 16 validation images, stored at 96 px, trained at 64 px; copied
where a run writes its cached embeddings into it), the real pretrained ``tf_efficientnet_lite0``, real
subprocesses for the kills.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from helpers import subprocess_env
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.wdr.runs.checkpoint import load_checkpoint
from wdr_pipe.wdr.runs.folder import RunFolder
from wdr_pipe.wdr.train.config import TrainConfig
from wdr_pipe.wdr.train.loop import resume, train
from wdr_pipe.wdr.train.recipe import fit_batch, phases

# lp-ft kept short: phase 1 stops after 2 validations without a gain, phase 2 trains 1 epoch of 6 steps
TINY = dict(image_size=64, batch_size=8, checkpoint_every=2, epochs=1, patience=2, recipe="lp-ft")


# -- which recipe a command means ---------------------------------------------------------------------
def test_flags_of_the_training_shape_mean_the_single_phase_and_the_recipe_takes_the_rest():
    default = TrainConfig(store="s", out="o")
    assert (default.recipe, default.pretrained, default.batch_size, default.lr, default.head_lr) == \
        ("lp-ft", True, 32, 1e-3, 3e-2)
    assert [p.name for p in phases(default)] == ["heads", "fine-tune"] and "ImageNet weights offline" in default.why
    assert phases(default)[0].embeddings and not phases(default)[1].embeddings
    # a command written before recipes: today's single phase, with today's defaults
    old = TrainConfig(store="s", out="o", epochs=3, pretrained=True)
    assert (old.recipe, old.deep, old.lr, old.optimizer, old.batch_size, old.patience, old.eval_every) == \
        ("single", "tune", 3e-4, "nadam", 64, 0, 0)
    assert "--epochs given" in old.why
    # with an explicit recipe, --lr and --epochs set its last phase, --head-lr the first
    mine = phases(TrainConfig(store="s", out="o", recipe="lp-ft", lr=2e-4, epochs=4, head_lr=0.01))
    assert (mine[0].lr, mine[0].epochs, mine[1].lr, mine[1].epochs) == (0.01, None, 2e-4, 4)
    assert phases(TrainConfig(store="s", out="o", recipe="fixed", lr=0.1))[0].lr == 0.1
    # no weights: nothing to probe, so the single phase, and a line that says how to get weights
    bare = TrainConfig(store="s", out="o", backbone="resnet18")
    assert bare.recipe == "single" and not bare.pretrained and "--weights FILE" in bare.why
    assert TrainConfig(store="s", out="o", lr="auto").recipe == "lp-ft"  # auto is the finder, not a shape
    # the heads' rate: 3e-2 for the linear head alone, 3e-3 where Wide or Recurrent train too
    wdr = TrainConfig(store="s", out="o", parts="deep,wide,recurrent")
    assert (wdr.head_lr, TrainConfig(store="s", out="o", recipe="fixed", parts="deep,recurrent").lr) == (3e-3, 3e-3)
    assert TrainConfig(**{**default.to_dict()}).settings() == default.settings()  # settled values round-trip
    assert fit_batch(224, 64) == 56 and fit_batch(224, 32) == 32 and fit_batch(30, 64) == 30


@pytest.mark.parametrize("kw, message", [
    (dict(recipe="lpft"), r"--recipe lpft: use one of lp-ft, fixed, single"),
    (dict(recipe="lp-ft", pretrained=False), r"--recipe lp-ft: it starts from the backbone's features and "
                                             r"tf_efficientnet_lite0 has no weights here .* --recipe single"),
    (dict(recipe="fixed", backbone="resnet18"), r"--recipe fixed: .* pass --pretrained or --weights FILE"),
    (dict(recipe="lp-ft", deep="fixed"), r"--deep fixed: --recipe lp-ft fine-tunes the backbone in phase 2; "
                                         r"use --recipe fixed"),
    (dict(epochs=3, head_lr=0.1), r"--head-lr 0.1: only --recipe lp-ft has a heads phase"),
    (dict(lr="fast"), r"lr 'fast' \(--lr\): not a number; use more than 0 up to 10"),
    (dict(bn="off"), r"--bn off: use one of train, frozen"),
    (dict(layer_decay=1.5), r"layer_decay 1.5 \(--layer-decay\): use more than 0 up to 1"),
])
def test_bad_recipe_settings_are_one_line_before_any_work(kw, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(store="s", out="o", **kw)


def test_a_set_smaller_than_a_batch_trains_on_all_of_it_each_step(copy_store, tmp_path):
    # --batch-size is the most images per step: 48 training images at 64 are one batch of 48, not a refusal
    res = train(TrainConfig(store=str(copy_store), out=str(tmp_path / "run"), batch_size=64, image_size=64,
                            recipe="fixed", epochs=2, eval_every=0, patience=0))
    assert res.counts["steps"] == 2 and res.counts["samples"] == 2 * 48


# -- lp-ft end to end, and exact resume after SIGKILL in either phase ---------------------------------------
def start(args, what="train"):
    code = ("import json, sys; from wdr_pipe.wdr.train.loop import train, resume; from wdr_pipe.wdr.train.config "
            "import TrainConfig; " + ("train(TrainConfig(**json.loads(sys.argv[1])))" if what == "train" else
                                      "resume(sys.argv[1])"))
    return subprocess.Popen([sys.executable, "-c", code, args], env=subprocess_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_in_phase(proc, run: RunFolder, phase: int) -> dict:
    """SIGKILL the trainer (and its loader workers) at its first checkpoint inside ``phase`` (past the one a phase
    starts with); that checkpoint."""
    seen, deadline = None, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            stat = run.last.stat()
        except FileNotFoundError:
            time.sleep(0.005)
            continue
        if (stat.st_ino, stat.st_mtime_ns) != seen:
            seen = (stat.st_ino, stat.st_mtime_ns)
            ckpt = load_checkpoint(run.last) if phase else {"phase": 0, "step": 1, "phase_start": 0}
            if ckpt["phase"] == phase and ckpt["step"] > ckpt["phase_start"]:
                break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert run.last.exists() and not run.result.exists(), err.decode()[-2000:]
    return load_checkpoint(run.last)


@pytest.mark.parametrize("workers", [2, 3])
def test_lp_ft_killed_mid_epoch_in_each_phase_resumes_to_the_same_bits(copy_store, tmp_path, workers):
    cfg = TrainConfig(store=str(copy_store), out=str(tmp_path / "killed"), loader_workers=workers, **TINY)
    whole = train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "whole")}))
    run = RunFolder(cfg.out)
    first = kill_in_phase(start(json.dumps(cfg.to_dict())), run, 0)
    second = kill_in_phase(start(cfg.out, "resume"), run, 1)
    for ckpt, phase in ((first, 0), (second, 1)):  # mid-epoch: 48 images are 6 batches of 8
        assert ckpt["phase"] == phase and (ckpt["step"] - ckpt["phase_start"]) % 6, (phase, ckpt["step"])
    assert sum(ckpt["loader"]["consumed"]) > 0 and len(second["loader"]["consumed"]) == workers
    done = resume(cfg.out)
    assert done.counts == whole.counts and done.reused == second["step"]
    for name in ("last", "best"):
        a, b = load_checkpoint(getattr(run, name)), load_checkpoint(getattr(RunFolder(whole.output), name))
        assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), name
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa: E731
    assert timeless(run.read_metrics()) == timeless(RunFolder(whole.output).read_metrics())
    d, w = done.details, whole.details
    assert d["phases"] == "heads,fine-tune" and d["best_phase"] == w["best_phase"] and d["why"] == w["why"]
    assert {k: d[k] for k in d if k.startswith(("heads_", "fine-tune_"))} == \
        {k: w[k] for k in w if k.startswith(("heads_", "fine-tune_"))}
    assert d["val_f1_at_0.5"] == w["val_f1_at_0.5"] and d["heads_ended"] == "patience"
    assert d["best_val_f1"] == max(d["heads_best_val_f1"], d["fine-tune_best_val_f1"])  # never below its phase 1
    rows = run.read_metrics()
    assert {r["phase"] for r in rows} == {"heads", "fine-tune"} and rows == sorted(rows, key=lambda r: r["step"])
    doc = json.loads(run.config.read_text())
    assert [p["name"] for p in doc["recipe"]["phases"]] == ["heads", "fine-tune"] and doc["embedding_key"] is None
    assert doc["recipe"]["phases"][1]["layer_decay"] == 0.75 and doc["recipe"]["phases"][1]["epochs"] == 1


def test_lp_ft_under_torchrun_two_processes_agree(copy_store, tmp_path):
    cfg = TrainConfig(store=str(copy_store), out=str(tmp_path / "run"), loader_workers=1, **TINY)
    script = tmp_path / "ddp.py"
    script.write_text("import json, os, sys\nfrom wdr_pipe.wdr.train.loop import train\n"
                      "from wdr_pipe.wdr.train.config import TrainConfig\n"
                      "r = train(TrainConfig(**json.loads(sys.argv[1])))\n"
                      "open(os.path.join(sys.argv[2], 'rank%s.json' % os.environ['RANK']), 'w').write(json.dumps(r.to_dict()))\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), json.dumps(cfg.to_dict()), str(tmp_path)], env=subprocess_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["details"]["final_weights_digest"] == r1["details"]["final_weights_digest"]
    assert r0["details"]["phases"] == "heads,fine-tune" and r0["details"]["world_size"] == 2
    assert {r["phase"] for r in RunFolder(cfg.out).read_metrics()} == {"heads", "fine-tune"}
    assert r0["counts"]["samples"] == r0["counts"]["steps"] * 8 * 2  # 24 images a rank: 3 full batches of 8


# -- the learning-rate finder ---------------------------------------------------------------------------------
def test_lr_find_on_the_cached_embeddings_is_deterministic_and_writes_its_curve(copy_store, tmp_path):
    args = ["lr-find", "--store", str(copy_store), "--image-size", "64", "--loader-workers", "0", "--json"]
    runs = [CliRunner().invoke(cli, args + ["--out", str(tmp_path / name)]) for name in ("a", "b")]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    docs = [json.loads((tmp_path / name / "lr_find.json").read_text()) for name in ("a", "b")]
    assert docs[0]["loss"] == docs[1]["loss"] and docs[0]["suggestion"] == docs[1]["suggestion"]
    assert docs[0]["phase"] == "heads" and docs[0]["method"] == "steep" and 1e-7 <= docs[0]["suggestion"] <= 10
    assert 20 < docs[0]["points"] <= 100 and (tmp_path / "a" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(runs[0].stdout)["details"]["suggestion"] == docs[0]["suggestion"]
    res = CliRunner().invoke(cli, ["lr-find", "--store", str(tmp_path), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "not a wdr-pipe store" in res.output and len(res.output.strip().splitlines()) == 1
    inside = CliRunner().invoke(cli, ["lr-find", "--store", str(copy_store), "--out", str(copy_store / "lrf")])
    assert inside.exit_code == 1 and "inside the store" in inside.output and not (copy_store / "lrf").exists()


def test_lr_auto_trains_at_the_finders_rate_and_reuses_it_on_resume(copy_store, tmp_path):
    cfg = TrainConfig(store=str(copy_store), out=str(tmp_path / "run"), recipe="fixed", lr="auto", patience=1,
                      image_size=64, batch_size=8, loader_workers=0, checkpoint_every=0)
    result = train(cfg)
    found = json.loads((tmp_path / "run" / "lr_find" / "heads.json").read_text())["suggestion"]
    rows = RunFolder(cfg.out).read_metrics()
    assert rows[0]["lr"] == pytest.approx(found, rel=0.05)  # cosine from the found peak, barely decayed yet
    assert result.details["recipe"] == "fixed" and result.details["phases"] == "heads"
    assert result.details["heads_ended"] == "patience" and result.details["best_phase"] == "heads"
