"""Training the WDR labeler: ``train(cfg)`` and ``resume(run_dir)``, one loop read top to bottom.

As nanoGPT's ``train.py``: device and seed; the store, its label space and
the loaders; the model, optimizer, schedule and EMA; then per step: batch ->
(bf16 autocast on CUDA) -> loss -> backward (accumulated over
``--grad-accum`` batches, clipped) -> optimizer step -> schedule -> EMA. Every
``--eval-every`` steps and at each epoch end the validation split is scored
(loss, micro-F1 at 0.5) into ``RUN/metrics.jsonl`` and the best model is
kept; every ``--checkpoint-every`` steps and at each epoch end ``last.pt`` is
written (``checkpoint.py`` has the folder and the checkpoint dict). At the
end the best model predicts the validation split once and per-label
thresholds are tuned on it.

Under ``torchrun`` (RANK / WORLD_SIZE set) each process trains on its own
share of every epoch (the loader gives every rank the same number of
batches), gradients are averaged by DDP, validation predictions are gathered
and only rank 0 writes files.

A resumed run restores the weights, optimizer, schedule, EMA, the loader's
position and every random generator, so it ends where an uninterrupted run
would have: mid-epoch too.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Optional

import torch

from ..cache import open_store
from ..errors import UserError
from ..progress import Hook, Progress, emit
from ..result import StageResult
from . import trainsetup as setup
from .checkpoint import RunDir, eval_weights, load_checkpoint, rng_state, save_checkpoint, set_rng_state, \
    state_digest, store_identity
from .embed_data import deep_input, use_embeddings
from .trainconfig import TrainConfig

log = logging.getLogger("wdr_pipe")


def train(cfg: TrainConfig, progress: Hook = None) -> StageResult:
    """Train into ``cfg.out``: a new run, the rest of an unfinished one of the same settings, or
    (for a finished one) nothing: its stored result comes back with ``reused`` set."""
    dist = setup.Dist(cfg.device)
    try:
        return _train(cfg, dist, progress)
    finally:
        dist.stop()


def resume(run_dir, progress: Hook = None, cfg: Optional[TrainConfig] = None) -> StageResult:
    """Continue the run in ``run_dir`` with its own settings (``cfg``, if given, must match them)."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise UserError(f"{run.root}: not a wdr-pipe run folder (no config.json of a run); "
                        "pass the --out folder of an earlier 'wdr-pipe train'")
    if cfg is not None:
        run.check_settings(cfg)
    return train(TrainConfig.from_dict({**run.settings(), "out": str(run.root)}), progress)


def _train(cfg: TrainConfig, dist: "setup.Dist", progress: Hook) -> StageResult:
    t0 = time.time()
    run = RunDir(cfg.out)
    state = dist.on_main(lambda: _run_state(run, cfg))
    if state == "finished":
        done = run.read_result()
        done.reused, done.ran, done.seconds = int(done.counts.get("steps", 0)), 0, 0.0
        log.info("%s: finished run of the same settings; nothing to do", run.root)
        return done
    resuming = run.last.exists()
    device, main = dist.device, dist.rank == 0
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank

    # -- the store: splits, label space, features, statistics
    store = open_store(cfg.store)
    data = setup.prepare_data(store, cfg, need_wide_stats=not resuming)

    # -- the model
    model = setup.build(cfg, data)
    init = setup.load_init(model, cfg.init, data.label_ids) if cfg.init and not resuming else None
    dcfg = setup.data_config_of(model, cfg.image_size)
    model.to(device, memory_format=torch.channels_last)  # as the loader's images: 2x faster on CPU too
    criterion = setup.criterion(cfg, data.pos_weight, device)
    # --deep fixed: the backbone's vectors from the store's cached embeddings (made first where missing)
    head, make_loader = use_embeddings(store, cfg, data, model, dcfg, dist, progress)

    # -- the loaders: every rank its own equal share of each epoch, in an order drawn from the seed
    loader_args = dict(feature_key=data.feature_key, config=dcfg, seed=cfg.seed, rank=dist.rank,
                       world_size=dist.world, device=device, num_workers=cfg.workers)
    train_loader = make_loader(store, cfg.train_split, cfg.batch_size, train=True, drop_last=True,
                               weighted=cfg.weighting == "sample", **loader_args)
    val_loader = make_loader(store, cfg.val_split, cfg.batch_size, train=False, **loader_args)
    batches = len(train_loader)
    if batches == 0:
        raise UserError(f"--batch-size {cfg.batch_size}: larger than the {train_loader.dataset.plan.num_rows} "
                        f"training images per process; lower --batch-size")
    updates_per_epoch = math.ceil(batches / cfg.grad_accum)
    steps = cfg.epochs * updates_per_epoch

    # -- optimizer, schedule, EMA, compile, DDP
    optimizer, scheduler = setup.optimizer(cfg, model, updates_per_epoch)
    ema = setup.ema(cfg, model)
    fwd = _compiled(head, device) if cfg.compile else head
    if dist.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    # -- the run folder: a new run writes its config; a resumed one restores its checkpoint
    identity = store_identity(store, [cfg.train_split, cfg.val_split], data.feature_key)
    if main:
        run.clean()
        if run.is_run():
            run.check_store(identity)
        else:
            run.write_config(setup.run_doc(cfg, data, model, dcfg, identity, init, dist.world))
    step = epoch = samples = 0
    best, best_step, meter = -1.0, 0, {"loss": 0.0, "n": 0, "images": 0}
    if resuming:
        ckpt = load_checkpoint(run.last)
        if ckpt["world_size"] != dist.world:
            raise UserError(f"{run.root}: trained on {ckpt['world_size']} processes, resumed on {dist.world}; "
                            f"resume with torchrun --nproc_per_node {ckpt['world_size']}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        train_loader.load_state_dict(ckpt["loader"])
        step, epoch, samples, best, best_step = (ckpt[k] for k in ("step", "epoch", "samples", "best", "best_step"))
        meter = {**ckpt["meter"], "images": 0}  # images/s counts this process's images only
        set_rng_state(ckpt["rng"][dist.rank])
        log.info("%s: resumed at step %d of %d (epoch %d)", run.root, step, steps, epoch)
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # dropout differs between ranks
    if main:
        run.truncate_metrics(step)
    started_at, last_saved = step, step
    writer = setup.tensorboard(run, step) if main else None

    def checkpoint(path, full=True):
        """The checkpoint dict of this moment (every rank takes part: the RNG states are gathered)."""
        dist.sync_buffers(*[m for m in (model, ema) if m is not None])
        rngs = dist.gather(rng_state())
        if not setup.finite(model):
            raise setup.diverged(step, cfg, run, last_saved, "the weights hold NaN or inf")
        if not main:
            return
        ckpt = {"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "step": step, "epoch": epoch, "samples": samples, "best": best, "best_step": best_step,
                "settings": cfg.settings(), "label_ids": data.label_ids.tolist(), "world_size": dist.world}
        if full:
            ckpt.update(optimizer=optimizer.state_dict(), loader=train_loader.state_dict(), rng=rngs, meter=meter,
                        scheduler=scheduler.state_dict() if scheduler is not None else None)
        save_checkpoint(path, ckpt)

    def evaluate():
        nonlocal best, best_step
        dist.sync_buffers(*[m for m in (model, ema) if m is not None])
        scored = setup.predict(ema.module if ema is not None else model, val_loader, data.columns, amp, dist,
                               criterion)
        row = {"step": step, "epoch": round(step / updates_per_epoch, 4), "samples": samples,
               "loss": meter["loss"] / max(1, meter["n"]), "lr": optimizer.param_groups[0]["lr"],
               "images_per_s": meter["images"] / max(1e-9, time.time() - meter["since"]),
               **{f"val_{k}": v for k, v in setup.scores(scored).items()}}
        meter.update(loss=0.0, n=0, images=0, since=time.time())
        if main:
            run.append_metrics(row)
            if writer is not None:  # flushed at once: a killed run keeps what it logged
                for k in sorted(row.keys() - {"step"}):
                    writer.add_scalar(k, row[k], step)
                writer.flush()
        if row["val_f1"] > best:
            best, best_step = row["val_f1"], step
            checkpoint(run.best, full=False)
        return row

    # -- the loop
    t_step = time.time()
    meter["since"] = t_step
    try:
        while epoch < cfg.epochs:
            model.train()
            first = (step - epoch * updates_per_epoch) * cfg.grad_accum  # batches of this epoch already done
            loss_sum = torch.zeros((), device=device)
            for i, batch in enumerate(train_loader, start=first):
                group = min(cfg.grad_accum, batches - (i // cfg.grad_accum) * cfg.grad_accum)
                stepping = (i + 1) % cfg.grad_accum == 0 or i + 1 == batches
                labels = batch["labels"][:, data.columns] if data.columns is not None else batch["labels"]
                sync = contextlib.nullcontext() if stepping or dist.world == 1 else fwd.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = fwd(deep_input(batch), batch.get("wide"))
                    loss = criterion(logits, labels, batch["weight"] if cfg.weighting == "loss" else None) / group
                    loss.backward()
                loss_sum += loss.detach()
                n_images = len(batch["image_id"]) * dist.world
                samples += n_images
                meter["images"] += n_images
                if not stepping:
                    continue
                value = dist.mean(loss_sum).item()  # one sync per step: a NaN stops the run right here
                if not math.isfinite(value):
                    raise setup.diverged(step + 1, cfg, run, last_saved, f"the loss is {value}")
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates=step)
                if ema is not None:
                    ema.update(model, step=step)
                meter["loss"] += value
                meter["n"] += 1
                loss_sum = torch.zeros((), device=device)
                now = time.time()
                emit(progress, Progress(stage="train", done=step, total=steps,
                                          message=f"loss {value:.3f}, {n_images / max(1e-9, now - t_step):.0f} img/s"))
                t_step = now
                end_of_epoch = i + 1 == batches
                if cfg.eval_every and step % cfg.eval_every == 0 and not end_of_epoch:
                    evaluate()
                    model.train()
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch:
                    checkpoint(run.last)
                    last_saved = step
            epoch += 1
            evaluate()
            checkpoint(run.last)
            last_saved = step

        # -- the end: the best model predicts the validation split once, for per-label thresholds
        dist.sync_buffers(model)
        digest = state_digest(model.state_dict())
        model.load_state_dict(dist.broadcast(eval_weights(load_checkpoint(run.best)) if main else None))
        scored = setup.predict(model, val_loader, data.columns, amp, dist, criterion)
    except torch.OutOfMemoryError as e:
        raise UserError(f"out of memory on {device} at --batch-size {cfg.batch_size}: lower --batch-size "
                        "(--grad-accum keeps the effective batch size)") from e
    tuned = setup.thresholds(cfg, data, scored, run) if main else {}
    if writer is not None:
        writer.close()
    rows = run.read_metrics() if main else []
    result = StageResult(
        stage="train", key=cfg.key(), output=str(run.root), seconds=time.time() - t0, ran=step - started_at,
        reused=started_at,
        counts={"steps": step, "samples": samples, "skipped": sum(train_loader.skipped.values())},
        details={"best_val_f1": best, "best_step": best_step, "epochs": cfg.epochs, "labels": len(data.label_ids),
                 "val_images": int(scored["labels"].shape[0]), **tuned, "weights_digest": digest,
                 "world_size": dist.world, "device": str(device), "embedding_key": data.embedding_key,
                 "images_per_s": rows[-1]["images_per_s"] if rows else None})
    if main:
        run.write_result(result)
    dist.barrier()
    return result


def _compiled(module, device: torch.device):
    """``torch.compile(module)``; on the CPU, a ``UserError`` first if inductor has no C++ compiler to use
    (it would fail at the first step, deep in a traceback)."""
    if device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler
            raise UserError(f"--compile: {str(e).splitlines()[0]}; install a C++ compiler (g++ or clang++, "
                            f"or name one in CXX) or train without --compile") from None
    return torch.compile(module)


def _run_state(run: RunDir, cfg: TrainConfig) -> str:
    state = run.state()
    if state != "new":
        run.check_settings(cfg)
    return state


__all__ = ["resume", "train"]
