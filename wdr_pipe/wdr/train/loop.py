"""Training the WDR labeler: ``train(cfg)`` and ``resume(run_dir)``, one loop read top to bottom.

As nanoGPT's ``train.py``: device and seed; the store's inputs and the
loaders; the model, optimizer, schedule and EMA; then per step: batch ->
(bf16 autocast on CUDA) -> loss -> backward (accumulated over
``--grad-accum`` batches, clipped) -> optimizer step -> schedule -> EMA. Every
``--eval-every`` steps and at each epoch end the validation split is scored
(loss, micro-F1 at 0.5; the scorer's own loop, ``score.scorer.predict_loader``)
into ``RUN/metrics.jsonl`` and the best model is kept; every
``--checkpoint-every`` steps and at each epoch end ``last.safetensors`` is written
(``runs/folder.py`` has the folder, ``runs/checkpoint.py`` the checkpoint dict).
At the end the best model predicts the validation split once and per-label
thresholds are tuned on it (``retune.fit_thresholds``).

Under ``torchrun`` (RANK / WORLD_SIZE set) each process trains on its own
share of every epoch (the loader gives every rank the same number of
batches), gradients are averaged by DDP, validation predictions are gathered
and only rank 0 writes files.

A resumed run restores the weights, optimizer, schedule, EMA, the loader's
position and every random generator, so it ends where an uninterrupted run
would have: mid-epoch too.

The recipe (``recipe.py``) cuts the run into phases (``lp-ft``: the heads on
the cached embeddings, then the fine-tune): each has its own loaders,
optimizer, schedule and early stopping, and starts from the best weights so
far; the step count, the best checkpoint and ``metrics.jsonl`` (a ``phase``
column) run on across them, and the checkpoint names the phase it was taken in.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from typing import Any, Dict, Optional

import torch

from ...errors import UserError
from ...progress import Hook, Progress, emit
from ...result import StageResult
from ..dist import Dist
from ..metrics.scores import micro, predict
from ..model.network import HeadOnly
from ..runs.checkpoint import (Counters, checkpoint_dict, load_checkpoint, restore, rng_state, save_checkpoint,
                               state_digest, trained_weights)
from ..runs.folder import RunFolder, open_run, store_identity
from ..score.scorer import predict_loader
from .config import TrainConfig, check_same_settings
from .guards import annotate, diverged, resume_settings, run_guard, watch_loss
from .inputs import TrainInputs
from .lr_find import phase_rate
from .optim import make_ema, make_optimizer
from .recipe import Phase, enter, length, outcome, phases, rate_flag, record, start, stopped, train_mode
from .retune import fit_thresholds, threshold_lines
from .setup import phase_loaders, prepare

log = logging.getLogger("wdr_pipe")


def train(cfg: TrainConfig, progress: Hook = None, changes: Optional[Dict[str, Any]] = None) -> StageResult:
    """Train into ``cfg.out``: a new run, the rest of an unfinished one of the same settings, or
    (for a finished one) nothing: its stored result comes back with ``reused`` set. ``changes``: a resume's
    (``guards.resume_settings``), recorded in ``config.json`` once the run folder is locked."""
    dist = Dist().start(cfg.device)
    try:
        with run_guard(cfg, dist, changes):  # one process per run folder (an OS file lock)
            return _train(cfg, dist, progress)
    finally:
        dist.stop()


def resume(run_dir, progress: Hook = None, cfg: Optional[TrainConfig] = None,
           given: Optional[Dict[str, Any]] = None) -> StageResult:
    """Continue the run in ``run_dir`` with its own settings (``cfg``, if given, must match them); ``given``:
    the options given with ``--resume``, refused where they differ from the run's except ``--lr``."""
    run = open_run(run_dir, "--resume", kinds=("train",))
    if cfg is not None:
        check_same_settings(run.root, run.settings, cfg)
    settings, changes = resume_settings(run, given or {})
    return train(TrainConfig.from_dict({**settings, "out": str(run.root)}), progress, changes)


def _train(cfg: TrainConfig, dist: Dist, progress: Hook) -> StageResult:
    t0 = time.time()
    run = RunFolder(cfg.out)
    if dist.on_main(lambda: _run_state(run, cfg)) == "finished":
        done = run.read_result()
        done.reused, done.ran, done.seconds = int(done.counts.get("steps", 0)), 0, 0.0
        log.info("%s: finished run of the same settings; nothing to do", run.root)
        return done
    resuming = run.last.exists()
    device, main = dist.device, dist.main
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    if main:
        log.info("%s", cfg.why)  # the recipe and the weights, and why
    if cfg.compile:
        _compiled(None, device)  # a compiler to compile with, before any work
    store, inputs, model, init, dcfg, criterion = prepare(cfg, dist, resuming, progress)
    plan = phases(cfg)

    # -- the loaders of each phase: every rank its own equal share of each epoch, in an order drawn from the seed
    loader_args = dict(feature_key=inputs.feature_key, config=dcfg, seed=cfg.seed, rank=dist.rank,
                       world_size=dist.world, device=device, num_workers=cfg.loader_workers)
    loaders = [phase_loaders(store, cfg, p, inputs, loader_args) for p in plan]
    lengths = [length(p, math.ceil(len(tl) / cfg.grad_accum), tl.dataset.layout.num_rows)
               for p, (tl, _) in zip(plan, loaders)]
    steps = sum(n.steps for n in lengths)

    # -- the run folder: a new run writes its config; a resumed one restores its checkpoint
    identity = store_identity(store, [cfg.train_split, cfg.val_split], inputs.feature_key)
    if main:
        run.clean()
        if run.is_run():
            run.check_store(identity)
        else:
            run.write_config(_config_doc(cfg, inputs, model, dcfg, identity, init, dist.world, plan, lengths,
                                         loaders[-1][1].dataset.embedding_key, loaders[-1][0].dataset.layout.num_rows))
    ckpt = load_checkpoint(run.last) if resuming else None
    c = Counters()
    started_at = last_saved = int(ckpt["step"]) if ckpt else 0
    if main:
        run.truncate_metrics(started_at)
    writer = _tensorboard(run, started_at) if main else None

    # -- the phases, each from the best weights so far
    t_step = time.time()
    try:
        for k, (phase, (train_loader, val_loader), n) in enumerate(zip(plan, loaders, lengths)):
            if ckpt is not None and k < ckpt.get("phase", 0):
                continue
            enter(model, phase)  # the backbone frozen or trained, as the phase says
            if ckpt is None and k > 0:
                model.load_state_dict(dist.broadcast(trained_weights(run.best).state if main else None))
            phase = phase_rate(phase, model, lambda: phase_loaders(store, cfg, phase, inputs, loader_args,
                                                                       0 if phase.embeddings else cfg.loader_workers)[0], inputs,
                               criterion, cfg, dist, run, amp)  # --lr auto: the learning-rate finder's
            optimizer, scheduler = make_optimizer(phase, model, n.updates_per_epoch, n.epochs)
            ema = make_ema(cfg, model)
            fwd = HeadOnly(model) if train_loader.deep_key == "embedding" else model
            fwd = _compiled(fwd, device) if cfg.compile else fwd
            if dist.world > 1:
                fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda"
                                                                else None)
            save = functools.partial(_save, model=model, ema=ema, optimizer=optimizer, scheduler=scheduler,
                                     loader=train_loader, cfg=cfg, inputs=inputs, dist=dist, run=run, phase=phase)
            if ckpt is not None:
                c = restore(ckpt, run.root, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                            loader=train_loader, rank=dist.rank, world_size=dist.world)
                ckpt = None
                log.info("%s: resumed at step %d of %d (%s, epoch %d)", run.root, c.step, steps, phase.name, c.epoch)
            else:
                start(c, k)
                torch.manual_seed(cfg.seed + dist.rank + k * dist.world)  # dropout differs between ranks
                if k > 0:  # a run killed before this phase's first checkpoint starts it again from here
                    save(run.last, c, last_saved)
                    last_saved = c.step
            log.info("phase %d of %d, %s: %d epochs of %d steps at lr %g (%s)", k + 1, len(plan), phase.name,
                     n.epochs, n.updates_per_epoch, phase.lr, "cached embeddings" if train_loader.deep_key ==
                     "embedding" else "images")
            validate = functools.partial(_validate, save=save, model=model, ema=ema, loader=val_loader, inputs=inputs,
                                         criterion=criterion, amp=amp, dist=dist, optimizer=optimizer,
                                         updates_per_epoch=n.updates_per_epoch, run=run, writer=writer, phase=phase,
                                         k=k)
            batches = len(train_loader)
            c.meter["since"] = t_step
            while c.epoch < n.epochs and not stopped(c, phase):
                train_mode(model, phase)
                first = (c.step - c.phase_start - c.epoch * n.updates_per_epoch) * cfg.grad_accum  # done this epoch
                loss_sum = torch.zeros((), device=device)
                for i, batch in enumerate(train_loader, start=first):
                    group = min(cfg.grad_accum, batches - (i // cfg.grad_accum) * cfg.grad_accum)
                    stepping = (i + 1) % cfg.grad_accum == 0 or i + 1 == batches
                    labels = batch["labels"][:, inputs.columns] if inputs.columns is not None else batch["labels"]
                    sync = contextlib.nullcontext() if stepping or dist.world == 1 else fwd.no_sync()
                    with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        logits = fwd(batch[train_loader.deep_key], batch.get("wide"))
                        loss = criterion(logits, labels, batch["weight"] if cfg.weighting == "loss" else None) / group
                        loss.backward()
                    loss_sum += loss.detach()
                    n_images = len(batch["image_id"]) * dist.world
                    c.samples += n_images
                    c.meter["images"] += n_images
                    if not stepping:
                        continue
                    value = dist.mean(loss_sum).item()  # one sync per step: a NaN stops the run right here
                    if not math.isfinite(value):
                        raise diverged(c.step + 1, rate_flag(cfg, phase), run, last_saved, f"the loss is {value}")
                    if cfg.clip_grad is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    c.step += 1
                    if scheduler is not None:
                        scheduler.step_update(num_updates=c.step - c.phase_start)
                    if ema is not None:
                        ema.update(model, step=c.step - c.phase_start)
                    c.meter["loss"] += value
                    c.meter["n"] += 1
                    watch_loss(c, value, rate_flag(cfg, phase))  # a loss grown 100x: a warning
                    loss_sum = torch.zeros((), device=device)
                    now = time.time()
                    emit(progress, Progress(stage="train", done=c.step, total=steps,
                                            message=f"{phase.name}: loss {value:.3f}, "
                                                    f"{n_images / max(1e-9, now - t_step):.0f} img/s"))
                    t_step = now
                    end_of_epoch = i + 1 == batches
                    if n.eval_every and (c.step - c.phase_start) % n.eval_every == 0 and not end_of_epoch:
                        validate(c, last_saved=last_saved)
                        if stopped(c, phase):
                            break  # early stop mid-epoch: no epoch-end validation
                        train_mode(model, phase)
                    if cfg.checkpoint_every and c.step % cfg.checkpoint_every == 0 and not end_of_epoch:
                        save(run.last, c, last_saved)
                        last_saved = c.step
                else:
                    c.epoch += 1
                    validate(c, last_saved=last_saved)
                save(run.last, c, last_saved)
                last_saved = c.step
            loaders[k] = (None, val_loader)  # its worker processes end

        # -- the end: the best model predicts the validation split once, for the thresholds
        dist.sync_buffers(model)
        digest = state_digest(model.state_dict())
        model.load_state_dict(dist.broadcast(trained_weights(run.best).state if main else None))
        scored = predict_loader(model, val_loader, columns=inputs.columns, amp=amp, criterion=criterion, dist=dist)
    except torch.OutOfMemoryError as e:
        raise UserError(f"out of memory on {device} at --batch-size {cfg.batch_size}: lower --batch-size "
                        "(--grad-accum keeps the effective batch size)") from e
    tuned = fit_thresholds(run, inputs.label_ids, scored.labels, scored.probs, cfg.thresholds, cfg.min_positives,
                           cfg.seed) if main else {}
    if writer is not None:
        writer.close()
    rows = run.read_metrics() if main else []
    outcome_of = outcome(plan, rows, lengths, c.best_step) if main else {}
    result = StageResult(
        stage="train", key=cfg.key(), output=str(run.root), seconds=time.time() - t0, ran=c.step - started_at,
        reused=started_at, counts={"steps": c.step, "samples": c.samples,
                                   "skipped": sum(train_loader.skipped.values())},
        details={"best_val_f1": c.best, "best_step": c.best_step, "epochs": cfg.epochs, "recipe": cfg.recipe,
                 **outcome_of,
                 "labels": len(inputs.label_ids), "val_images": int(scored.labels.shape[0]), **tuned,
                 "final_weights_digest": digest, "world_size": dist.world, "device": str(device),
                 "embedding_key": inputs.embedding_key,
                 "images_per_s": rows[-1]["images_per_s"] if rows else None},
        summary=([f"recipe {cfg.recipe}; kept {outcome_of['why']}"] if "why" in outcome_of else [])
        + (threshold_lines(tuned) if tuned else []))
    if main:
        run.write_result(annotate(result, run, c))
    dist.barrier()
    return result


# -- the helpers the loop names ---------------------------------------------------------------
def _run_state(run: RunFolder, cfg: TrainConfig) -> str:
    """``new``, ``unfinished`` or ``finished`` (the last two: of the same settings, else a UserError)."""
    state = run.state()
    if state != "new":
        check_same_settings(run.root, run.settings, cfg)
    return state


def _save(path, c: Counters, last_saved: int, full: bool = True, *, model, ema, optimizer, scheduler, loader,
          cfg: TrainConfig, inputs: TrainInputs, dist: Dist, run: RunFolder, phase: Phase) -> None:
    """Write the checkpoint of this moment (every rank takes part: the RNG states are gathered)."""
    dist.sync_buffers(*[m for m in (model, ema) if m is not None])
    rngs = dist.gather(rng_state())
    if not bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()):
        raise diverged(c.step, rate_flag(cfg, phase), run, last_saved, "the weights hold NaN or inf")
    if dist.main:
        resume_with = dict(optimizer=optimizer, scheduler=scheduler, loader=loader, rngs=rngs) if full else {}
        save_checkpoint(path, checkpoint_dict(c, model=model, ema=ema, settings=cfg.settings(),
                                              label_ids=inputs.label_ids, world_size=dist.world, **resume_with))


def _validate(c: Counters, last_saved: int, *, save, model, ema, loader, inputs: TrainInputs, criterion, amp: bool,
              dist: Dist, optimizer, updates_per_epoch: int, run: RunFolder, writer, phase: Phase, k: int
              ) -> Dict[str, Any]:
    """Score the validation split with the weights validation uses (the EMA's when kept), log the row
    (``metrics.jsonl``, TensorBoard), keep the best model and count the phase's validations without a gain."""
    dist.sync_buffers(*[m for m in (model, ema) if m is not None])
    scored = predict_loader(ema.module if ema is not None else model, loader, columns=inputs.columns, amp=amp, criterion=criterion, dist=dist)
    val = {"loss": float(scored.loss.mean()), **micro(scored.labels.astype(bool), predict(scored.probs, 0.5))}
    row = {"step": c.step, "phase": phase.name, "epoch": round((c.step - c.phase_start) / updates_per_epoch, 4),
           "samples": c.samples,
           "loss": c.meter["loss"] / max(1, c.meter["n"]), "lr": max(g["lr"] for g in optimizer.param_groups),
           "images_per_s": c.meter["images"] / max(1e-9, time.time() - c.meter["since"]),
           **{f"val_{k}": v for k, v in val.items()}}
    c.meter.update(loss=0.0, n=0, images=0, since=time.time())
    if dist.main:
        run.append_metrics(row)
        if writer is not None:  # flushed at once: a killed run keeps what it logged
            for key in sorted(row.keys() - {"step", "phase"}):
                writer.add_scalar(key, row[key], c.step)
            writer.add_scalar("phase", k + 1, c.step)
            writer.flush()
    record(c, row["val_f1"], phase)
    if row["val_f1"] > c.best:
        c.best, c.best_step = row["val_f1"], c.step
        save(run.best, c, last_saved, full=False)
    return row


def _compiled(module, device: torch.device):
    """``torch.compile(module)``; on the CPU, a ``UserError`` first if inductor has no C++ compiler to use
    (it would fail at the first step, deep in a traceback; ``module`` None: that check alone)."""
    if device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler
            raise UserError(f"--compile: {str(e).splitlines()[0]}; install a C++ compiler (g++ or clang++, "
                            f"or name one in CXX) or train without --compile") from None
    return torch.compile(module) if module is not None else None


def _tensorboard(run: RunFolder, step: int = 0):
    """A TensorBoard writer into ``RUN/tb/`` (None without tensorboard). Resumed at ``step``, it hides what
    a killed run logged after its last checkpoint, as ``metrics.jsonl`` is cut back to it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run.tb), purge_step=step if step > 0 else None)


def _config_doc(cfg: TrainConfig, inputs: TrainInputs, model, dcfg, identity, init, world: int, plan, lengths,
                scoring_key: Optional[str], train_images: int) -> Dict[str, Any]:
    """What ``RUN/config.json`` records besides its kind (``embedding_key``: what the run is scored from, the last
    phase's input; ``recipe``: each phase's settings and length)."""
    import timm

    from ... import __version__

    return {"settings": cfg.settings(), "key": cfg.key(), "store": identity, "feature_key": inputs.feature_key,
            "embedding_key": scoring_key, "train_images": train_images,
            "recipe": {"name": cfg.recipe, "why": cfg.why, "phases": [{**p.doc(), **dataclasses.asdict(n)}
                                                                     for p, n in zip(plan, lengths)]},
            "labels": {"mode": cfg.labels, "ids": inputs.label_ids.tolist(), "of": inputs.space_size,
                       "train_positives": inputs.train_counts.tolist()},
            "backbone": {"name": cfg.backbone, "pretrained": cfg.pretrained, "weights": cfg.weights,
                         "weights_digest": model.weights_digest, "num_features": model.num_features},
            "data_config": dataclasses.asdict(dcfg), "model_config": model.cfg.to_dict(),
            "wide_dim": inputs.wide_dim, "init": init, "world_size": world,
            "versions": {"wdr_pipe": __version__, "torch": torch.__version__, "timm": timm.__version__}}


__all__ = ["resume", "train"]
