"""Training (wdr_pipe.wdr.train): it learns, it resumes exactly after a SIGKILL, DDP ranks agree,
settings and inputs are checked, and the loss options do what they say.

A store written by the real stages over a generated data set (160 train and
60 validation images, stored at 96 px, trained at 64 px), the real
``tf_efficientnet_lite0``, real subprocesses for the kill and for torchrun.
"""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from click.testing import CliRunner
from helpers import drawn_store, subprocess_env
from wdr_pipe.cli import cli
from wdr_pipe.cache import load_labels
from wdr_pipe.errors import UserError
from wdr_pipe.wdr.runs.checkpoint import load_checkpoint
from wdr_pipe.wdr.runs.folder import RunFolder
from wdr_pipe.wdr.train.loop import resume, train
from wdr_pipe.wdr.train.config import TrainConfig, settings_diff
from wdr_pipe.wdr.train.loss import Criterion

SMALL = dict(image_size=64, batch_size=16, loader_workers=0, checkpoint_every=0)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-store")
    return drawn_store(root, {"train": 160, "validation": 60, "test": 8}, seed=1, size_range=(200, 300), size=96)[0]


def cfg_for(store, out, **kw) -> TrainConfig:
    return TrainConfig(store=str(store), out=str(out), **{**SMALL, **kw})


@pytest.fixture(scope="module")
def learned(store, tmp_path_factory):
    """A finished run: pretrained lite0, 3 epochs of 10 steps."""
    cfg = cfg_for(store, tmp_path_factory.mktemp("runs") / "learned", pretrained=True, epochs=3, lr=1e-3)
    seen = []
    return cfg, train(cfg, progress=seen.append), seen


def metrics(out):
    return RunFolder(out).read_metrics()


# -- 1. it learns --------------------------------------------------------------------------------
def prior_baseline(store) -> float:
    """Validation micro-F1 of the best fixed set of the most frequent training labels."""
    _, ytr = load_labels(store, "train")
    _, yva = load_labels(store, "validation")
    order, best = np.argsort(-ytr.sum(0), kind="stable"), 0.0
    for k in range(1, ytr.shape[1] + 1):
        pred = np.zeros(ytr.shape[1], bool)
        pred[order[:k]] = True
        tp, fp, fn = yva[:, pred].sum(), (1 - yva[:, pred]).sum(), yva[:, ~pred].sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def test_it_learns_beyond_the_label_prior(store, learned):
    cfg, result, seen = learned
    baseline = prior_baseline(store)
    f1 = result.details["val_f1_at_0.5"]
    assert f1 >= baseline + 0.05, (f1, baseline)
    assert result.details["val_f1_tuned"] >= f1  # per-label thresholds tuned on the same predictions
    assert result.counts == {"steps": 30, "samples": 480, "skipped": 0} and (result.ran, result.reused) == (30, 0)
    run = RunFolder(cfg.out)
    rows = metrics(cfg.out)
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["loss"] < rows[0]["loss"]
    assert {"epoch", "loss", "lr", "images_per_s", "samples", "val_loss", "val_f1"} <= set(rows[0])
    assert json.loads(run.result.read_text())["details"]["best_val_f1"] == max(r["val_f1"] for r in rows)
    doc = json.loads(run.config.read_text())
    assert doc["settings"] == cfg.settings() and doc["labels"]["ids"] == list(range(1, 25))
    assert doc["backbone"]["weights_digest"] and doc["store"]["fingerprint"] and doc["data_config"]["size"] == 64
    assert json.loads(run.thresholds.read_text())["thresholds"].keys() == {str(i) for i in range(1, 25)}
    assert [p.done for p in seen] == list(range(1, 31)) and seen[-1].total == 30 and "img/s" in seen[-1].message
    assert load_checkpoint(run.best)["step"] == result.details["best_step"]


# -- 2. exact resume after SIGKILL -----------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_ends_with_the_same_weights(store, tmp_path):
    kw = dict(epochs=2, drop_rate=0.3, ema=True, ema_decay=0.9, lr=1e-3, loader_workers=1, checkpoint_every=4,
              eval_every=3)  # dropout: the RNG state must come back too
    killed = cfg_for(store, tmp_path / "killed", **kw)
    code = ("import json, sys; from wdr_pipe.wdr.train.loop import train; from wdr_pipe.wdr.train.config import "
            "TrainConfig; train(TrainConfig(**json.loads(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(killed.to_dict())], env=subprocess_env(),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = RunFolder(killed.out).last
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader worker
    _, err = proc.communicate()
    assert last.exists(), err.decode()[-2000:]
    assert not RunFolder(killed.out).result.exists()  # killed before the end
    at = load_checkpoint(last)["step"]
    assert 0 < at < 10, at  # mid-epoch (10 steps an epoch)

    resumed = resume(killed.out)
    whole = train(cfg_for(store, tmp_path / "whole", **kw))
    assert (resumed.reused, resumed.ran) == (at, 20 - at) and whole.ran == 20
    assert resumed.counts == whole.counts == {"steps": 20, "samples": 320, "skipped": 0}  # no sample twice
    a, b = load_checkpoint(RunFolder(killed.out).last), load_checkpoint(RunFolder(whole.output).last)
    for part in ("model", "ema"):
        for k, v in b[part].items():
            assert torch.allclose(a[part][k].float(), v.float(), rtol=1e-5, atol=1e-6), (part, k)
    ra, rb = metrics(killed.out), metrics(whole.output)
    assert [(r["step"], r["samples"]) for r in ra] == [(r["step"], r["samples"]) for r in rb]
    assert np.allclose([r["val_loss"] for r in ra], [r["val_loss"] for r in rb], rtol=1e-4)
    assert a["loader"] == b["loader"]
    if importlib.util.find_spec("tensorboard"):  # TensorBoard shows each evaluation once, as metrics.jsonl
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        steps = [e.step for e in EventAccumulator(str(RunFolder(killed.out).tb)).Reload().Scalars("val_loss")]
        assert steps == [r["step"] for r in rb]


# -- 3. DDP ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights_and_one_set_of_files(store, tmp_path):
    cfg = cfg_for(store, tmp_path / "run", epochs=1, checkpoint_every=2, eval_every=3, head="mlp")
    script = tmp_path / "ddp_train.py"
    script.write_text("import json, os, sys\nfrom wdr_pipe.wdr.train.loop import train\n"
                      "from wdr_pipe.wdr.train.config import TrainConfig\n"
                      "r = train(TrainConfig(**json.loads(sys.argv[1])))\n"
                      "open(os.path.join(sys.argv[2], 'rank%s.json' % os.environ['RANK']), 'w')"
                      ".write(json.dumps(r.to_dict()))\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), json.dumps(cfg.to_dict()), str(tmp_path)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["details"]["final_weights_digest"] == r1["details"]["final_weights_digest"]
    assert r0["details"]["world_size"] == 2 and r0["counts"] == {"steps": 5, "samples": 160, "skipped": 0}
    assert r0["details"]["val_images"] == 60  # the padded rows of the last rank counted once
    files = sorted(str(p.relative_to(cfg.out)) for p in Path(cfg.out).rglob("*"))
    events = [f for f in files if f.startswith("tb/")]  # rank 0's TensorBoard file, where tensorboard is installed
    assert files == sorted(["checkpoints", "checkpoints/best.safetensors", "checkpoints/last.safetensors",
                            "config.json", "metrics.jsonl", "result.json", "thresholds.json"] + (["tb", *events] if events else []))
    assert len(events) == (1 if importlib.util.find_spec("tensorboard") else 0)  # rank 0 alone writes it
    assert [r["step"] for r in metrics(cfg.out)] == [3, 5]
    assert len(load_checkpoint(RunFolder(cfg.out).last)["rng"]) == 2
    RunFolder(cfg.out).result.unlink()  # as if killed at the very end
    with pytest.raises(UserError, match=r"trained on 2 processes, resumed on 1; resume with torchrun "
                                        r"--nproc_per_node 2"):
        resume(cfg.out)


# -- 4. runs, settings and bad input ----------------------------------------------------------------
def test_tensorboard_holds_every_metrics_row(learned):
    """With tensorboard installed, RUN/tb/ holds each evaluation's numbers, as metrics.jsonl has them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, _ = learned
    rows = metrics(cfg.out)
    assert len(rows) >= 3  # one per epoch at least
    events = EventAccumulator(str(RunFolder(cfg.out).tb)).Reload()
    assert {"loss", "lr", "val_f1", "epoch"} <= set(events.Tags()["scalars"])
    for tag in ("loss", "val_f1", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in logged] == [r["step"] for r in rows]
        np.testing.assert_allclose([v for _, v in logged], [r[tag] for r in rows], rtol=1e-6)


def test_finished_run_is_reused(learned):
    cfg, first, _ = learned
    before = (RunFolder(cfg.out).metrics.read_text(), RunFolder(cfg.out).last.stat().st_mtime_ns)
    again = train(cfg)
    assert (again.ran, again.reused) == (0, 30) and again.details == first.details
    assert (RunFolder(cfg.out).metrics.read_text(), RunFolder(cfg.out).last.stat().st_mtime_ns) == before
    assert resume(cfg.out).ran == 0


def test_other_settings_are_refused_naming_them(learned, tmp_path):
    cfg, _, _ = learned
    other = TrainConfig(**{**cfg.to_dict(), "lr": 0.01, "head": "mlp"})
    for call in (lambda: train(other), lambda: resume(cfg.out, cfg=other)):
        with pytest.raises(UserError, match=r"--head mlp \(the run has linear\); --lr 0.01 \(the run has 0.001\)"):
            call()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a wdr-pipe run folder"):
        train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path)}))
    with pytest.raises(UserError, match="not a wdr-pipe run folder"):
        resume(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert settings_diff(cfg.settings(), cfg.settings()) == []


def test_unfinished_run_resumes_and_a_changed_store_is_refused(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    cfg = cfg_for(copy, tmp_path / "run", epochs=1, batch_size=32)
    first = train(cfg)
    RunFolder(cfg.out).result.unlink()  # killed while tuning thresholds, say
    again = train(cfg)
    assert (again.ran, again.reused) == (0, 5) and again.details["final_weights_digest"] == first.details["final_weights_digest"]
    RunFolder(cfg.out).result.unlink()
    marker = sorted((copy / "images" / "train").glob("*.stats.json"))[0]
    marker.write_text(marker.read_text() + " ")
    with pytest.raises(UserError, match=r"the store .* changed since this run started .* start a new run"):
        resume(cfg.out)


def test_init_starts_from_another_runs_weights(store, learned, tmp_path):
    """The paper's second phase: deep fixed, wide and recurrent added, from phase one's weights."""
    cfg, _, _ = learned
    phase2 = cfg_for(store, tmp_path / "p2", init=cfg.out, deep="fixed", parts="deep,wide,recurrent", epochs=1)
    result = train(phase2)
    init = json.loads(RunFolder(phase2.out).config.read_text())["init"]
    assert init["step"] == load_checkpoint(RunFolder(cfg.out).best)["step"]
    assert "head.weight" in init["not_loaded"] and not any(k.startswith("backbone.") for k in init["not_loaded"])
    src, dst = load_checkpoint(RunFolder(cfg.out).best)["model"], load_checkpoint(RunFolder(phase2.out).last)["model"]
    fixed = [k for k in src if k.startswith("backbone.") and src[k].is_floating_point()]
    assert fixed and all(torch.equal(src[k], dst[k]) for k in fixed)  # frozen: still phase one's
    assert result.details["val_f1_at_0.5"] > 0


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    # a learning rate high enough to diverge is refused (--lr: up to 10), so the loss turns nan by hand
    forward, calls = Criterion.forward, []

    def nan_from_the_second_step(self, *args, **kw):
        calls.append(1)
        loss = forward(self, *args, **kw)
        return loss * float("nan") if len(calls) > 1 else loss

    monkeypatch.setattr(Criterion, "forward", nan_from_the_second_step)
    cfg = cfg_for(store, tmp_path / "nan", lr=1e-3, sched="none", epochs=1, checkpoint_every=1)
    with pytest.raises(UserError, match=r"diverged at step 2: the loss is nan at --lr 0.001; the last good "
                                        r"checkpoint \(step 1\) is kept in .*; continue at a lower rate with "
                                        r"'wdr-pipe train --resume .* --lr 0.0001'") as refused:
        train(cfg)
    ckpt = load_checkpoint(RunFolder(cfg.out).last)
    assert ckpt["step"] == 1 and all(v.isfinite().all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not RunFolder(cfg.out).result.exists()
    # the advice is one command that works: run exactly it (the loss is finite again)
    monkeypatch.undo()
    command = re.search(r"'wdr-pipe (train --resume .*)'", str(refused.value)).group(1).split()
    res = CliRunner().invoke(cli, command + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(RunFolder(cfg.out).config.read_text())
    assert doc["settings"]["lr"] == 1e-4 and [(c["setting"], c["from"], c["to"], c["at_step"]) for c in
                                              doc["changes"]] == [("lr", 1e-3, 1e-4, 1)]
    rows = metrics(cfg.out)
    assert rows[-1]["step"] == 10 and rows[-1]["lr"] == pytest.approx(1e-4)  # the new rate from step 2 on
    result = json.loads(RunFolder(cfg.out).result.read_text())
    assert result["details"]["changes"] == doc["changes"] and result["ran"] == 9


def test_compile_without_a_cpp_compiler_is_one_line_before_any_work(store, tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    cfg = cfg_for(store, tmp_path / "compiled", compile=True, device="cpu")
    with pytest.raises(UserError, match=r"--compile: No working C\+\+ compiler .*no-such-c\+\+.*; install a C\+\+ "
                                        r"compiler .* or train without --compile"):
        train(cfg)
    assert not (tmp_path / "compiled").exists()


@pytest.fixture
def bare_store(store, tmp_path):
    """The store without features and label statistics."""
    dst = tmp_path / "bare"
    shutil.copytree(store, dst)
    shutil.rmtree(dst / "features")
    shutil.rmtree(dst / "stats")
    return dst


@pytest.mark.parametrize("kw, message", [
    (dict(parts="deep,wide"), r"--parts deep,wide: the wide part needs image features and the store .* has no "
                              r"image features; run 'wdr-pipe features"),
    (dict(parts="deep,recurrent"), r"--label-embeddings frozen: .* label statistics, which are missing; run "
                                   r"'wdr-pipe stats .* or use --label-embeddings random"),
    (dict(weighting="loss"), r"--weighting loss: .* missing; run 'wdr-pipe stats"),
    (dict(weighting="sample"), r"--weighting sample: .* missing; run 'wdr-pipe stats"),
    (dict(pos_weight="stats"), r"--pos-weight stats: .* missing; run 'wdr-pipe stats"),
    (dict(labels="top:25"), r"--labels top:25: the store's label space has only 24 labels"),
    (dict(val_split="valid"), r"--val-split valid: the store .* has no committed images of that split "
                              r"\(it has: test, train, validation\); pick one of those"),
    (dict(val_split="test"), r"--val-split test: an unlabelled split \(no image has labels\); train and "
                             r"validate on labelled splits"),
    (dict(init="elsewhere"), r"--init .*elsewhere: not a wdr-pipe run folder; pass the --out folder"),
    pytest.param(dict(device="cuda"), r"--device cuda: no CUDA device is available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(bare_store, tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        train(cfg_for(bare_store, tmp_path / "run", **kw))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kw, message", [
    (dict(backbone="resnet_51"), r"--backbone 'resnet_51' is not a timm model; did you mean"),
    (dict(lr=0), r"train config: lr 0 \(--lr\): use more than 0 up to 10"),
    (dict(head_dropout=1.5), r"model config: head_dropout 1.5 \(--head-dropout\): use 0 or more and less than 1"),
    (dict(batch_size=0), r"train config: batch_size 0 \(--batch-size\): use 1 to 65,536 images"),
    (dict(image_size=1), r"train config: image_size 1 \(--image-size\): use 16 to 4,096 px"),
    (dict(lr=float("nan")), r"train config: lr nan \(--lr\): use a finite number"),
    (dict(seed=-1), r"train config: seed -1 \(--seed\): use 0 to 4,294,967,295"),
    (dict(optimizer="adamz"), r"--optimizer adamz: use an optimizer timm knows"),
    (dict(labels="top:x"), r"--labels top:x: use 'all' or 'top:N'"),
    (dict(pos_weight="-2"), r"pos_weight '-2' \(--pos-weight\): use more than 0 up to 1,000,000 .* or 'stats'"),
    (dict(deep="some"), r"--deep 'some': use one of fixed, half, tune"),
    (dict(feature_key="abc"), r"--feature-key abc: only the wide part reads image features"),
    (dict(warmup_epochs=3, epochs=2), r"--warmup-epochs 3: use 0 or more and fewer than --epochs 2"),
])
def test_bad_settings_name_the_flag(kw, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(store="s", out="o", **kw)


# -- 5. loss options ------------------------------------------------------------------------------
def test_criterion_formulas():
    from timm.loss import AsymmetricLossMultiLabel

    torch.manual_seed(0)
    x, y, w = torch.randn(6, 5) * 3, (torch.rand(6, 5) < 0.3).float(), torch.rand(6) * 2
    p = torch.sigmoid(x)
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    assert torch.allclose(Criterion("bce")(x, y), bce.mean(), atol=1e-6)
    assert torch.allclose(Criterion("bce")(x, y, w), (bce.mean(1) * w).mean(), atol=1e-6)
    k = torch.full((5,), 3.0)
    assert torch.allclose(Criterion("bce", k)(x, y), (bce + 2 * y * -p.log()).mean(), atol=1e-5)
    asl = AsymmetricLossMultiLabel(reduction="sum")(x, y) / y.numel()
    assert torch.allclose(Criterion("asl")(x, y), asl, atol=1e-6)


def first_step_loss(store, out, **kw) -> float:
    train(cfg_for(store, out, epochs=1, batch_size=80, eval_every=1, **kw))
    return metrics(out)[0]["loss"]


def test_loss_options_train_and_change_the_loss(store, tmp_path):
    plain = first_step_loss(store, tmp_path / "plain")
    assert first_step_loss(store, tmp_path / "pw", pos_weight=3) > plain  # positives weigh 3x
    assert first_step_loss(store, tmp_path / "asl", loss="asl") < plain / 2  # focusing: easy terms shrink
    wide = first_step_loss(store, tmp_path / "all", weighting="loss", pos_weight="stats", labels="top:10",
                           parts="deep,wide,recurrent", label_embeddings="trainable")
    run = RunFolder(tmp_path / "all")
    doc = json.loads(run.config.read_text())
    assert np.isfinite(wide) and len(doc["labels"]["ids"]) == 10 and doc["feature_key"] and doc["wide_dim"] > 0
    top = np.argsort(-np.array(json.loads(RunFolder(tmp_path / "plain").config.read_text())["labels"]["train_positives"]),
                     kind="stable")[:10] + 1
    assert doc["labels"]["ids"] == sorted(top.tolist())  # the 10 most frequent training labels
    assert sorted(map(int, json.loads(run.thresholds.read_text())["thresholds"])) == doc["labels"]["ids"]
    assert np.isfinite(first_step_loss(store, tmp_path / "sample", weighting="sample", grad_accum=2, clip_grad=1.0))
