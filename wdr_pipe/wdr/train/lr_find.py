"""The learning-rate finder: ``wdr-pipe lr-find`` and ``train --lr auto`` / ``--head-lr auto``.

The range test of fastai's ``lr_find`` (after Smith's LR range test): from the
phase's starting weights, ``NUM_IT`` updates of the phase's own optimizer at a
rate growing exponentially from ``START`` to ``END``, the training loss
smoothed (an exponential moving average, ``BETA``, with bias correction); the
test stops early once the smoothed loss passes 4x its minimum. On the cached
embeddings (the heads phase) it decodes no image and takes about a second.

Suggestions, on the curve less its first tenth and last 5 points (as fastai):
``steep`` (where the smoothed loss falls fastest against log lr), ``valley``
(fastai's default: the middle of the longest stretch of falling loss) and
``minimum`` (a tenth of the rate of the lowest loss). The one used is ``steep``:
against the heads' fixed 3e-2 of the recipe it lands at 1.5e-2 on the real-photo set and 1.2e-1 on
the demo's data, where ``valley`` lands at 1.6e-3 (docs/benchmarks.md; ``benchmarks/recipe_lab.py
lrfind`` sets fastai's own suggestion functions beside ours on the same curve). Deterministic: the phase's seed draws the
batches and the dropout; the weights, the random generators and the training
loader are left as they were. Curve and suggestions go to ``NAME.json`` and
``NAME.png`` (matplotlib, Agg).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ...cache.jsonfile import read_json, write_json
from ...progress import Hook, Progress, emit
from ...result import StageResult
from ..model.network import HeadOnly
from ..runs.checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .optim import make_optimizer
from .recipe import Phase, phases, train_mode

log = logging.getLogger("wdr_pipe")
START, END, NUM_IT, BETA = 1e-7, 10.0, 100, 0.98
USED = "steep"


def range_test(model, loader, phase: Phase, criterion, columns=None, weighting: str = "none", amp: bool = False,
               seed: int = 0, num_it: int = NUM_IT, progress: Hook = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(rates, smoothed losses)`` of the range test on ``loader`` (a training loader of its own: it is moved)."""
    device = next(model.parameters()).device
    before, rngs = {k: v.detach().clone() for k, v in model.state_dict().items()}, rng_state()
    net = HeadOnly(model) if loader.deep_key == "embedding" else model
    optimizer, _ = make_optimizer(dataclasses.replace(phase, lr=START, sched="none"), model, 1, 1)
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    lrs, losses, avg, low = [], [], 0.0, math.inf
    torch.manual_seed(seed)
    try:
        train_mode(model, phase)
        batches = iter(loader)
        for i in range(num_it):
            lr = START * (END / START) ** (i / max(1, num_it - 1))
            for g, scale in zip(optimizer.param_groups, scales):
                g["lr"] = lr * scale
            batch = next(batches, None)
            if batch is None:  # another epoch of the loader
                batches = iter(loader)
                batch = next(batches)
            labels = batch["labels"][:, columns] if columns is not None else batch["labels"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = criterion(net(batch[loader.deep_key], batch.get("wide")), labels,
                                 batch["weight"] if weighting == "loss" else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg = BETA * avg + (1 - BETA) * float(loss.detach())
            smooth = avg / (1 - BETA ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            emit(progress, Progress(stage="lr-find", done=i + 1, total=num_it, message=f"lr {lr:.1e}, loss {smooth:.3f}"))
            low = min(low, smooth)
            if not math.isfinite(smooth) or smooth > 4 * low:
                break
    finally:
        model.load_state_dict(before)
        set_rng_state(rngs)
    return np.asarray(lrs), np.asarray(losses)


def suggestions(lrs: np.ndarray, losses: np.ndarray) -> Dict[str, float]:
    """``steep``, ``valley`` and ``minimum`` (module doc) of a range test's curve."""
    cut = slice(len(lrs) // 10, max(len(lrs) // 10 + 2, len(lrs) - 5))
    lr, loss = lrs[cut], np.where(np.isfinite(losses[cut]), losses[cut], np.inf)
    slope = np.diff(loss) / np.diff(np.log(lr))
    steep = float(lr[int(np.argmin(slope))]) if slope.size else float(lr[0])
    # valley: the longest run of ever lower losses (longest decreasing subsequence ending anywhere), its middle
    n = len(loss)
    run = np.ones(n, int)
    for i in range(1, n):
        lower = loss[:i] > loss[i]
        if lower.any():
            run[i] = run[:i][lower].max() + 1
    end = int(np.argmax(run))
    begin = end - int(run[end]) + 1
    third = (end - begin) / 3
    valley = float(lr[begin + int(third) + int(third / 2)])
    return {"steep": steep, "valley": valley, "minimum": float(lr[int(np.argmin(loss))] / 10)}


def write_curve(folder: Path, name: str, phase: str, lrs: np.ndarray, losses: np.ndarray, seconds: float
                ) -> Dict[str, Any]:
    """``NAME.json`` (the curve, the suggestions, the one used) and ``NAME.png`` in ``folder``; returns the JSON."""
    sug = suggestions(lrs, losses)
    doc = {"phase": phase, "suggestion": sug[USED], "method": USED, "suggestions": sug, "points": len(lrs),
           "seconds": round(seconds, 3), "lr": lrs.tolist(), "loss": losses.tolist(),
           "range": {"start": START, "end": END, "num_it": NUM_IT, "beta": BETA}}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{name}.json", doc)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(lrs, losses, color="C0")
    ax.set_xscale("log")
    for (key, value), colour in zip(sug.items(), ("C1", "C2", "C3")):
        ax.axvline(value, color=colour, ls="-" if key == USED else "--",
                   label=f"{key} {value:.1e}" + (" (used)" if key == USED else ""))
    ax.set(xlabel="learning rate", ylabel="training loss (smoothed)", title=f"learning-rate range test: {phase}")
    ax.legend()
    fig.savefig(folder / f"{name}.png", bbox_inches="tight")
    plt.close(fig)
    return doc


def phase_rate(phase: Phase, model, make_loader: Callable[[], Any], inputs, criterion, cfg: TrainConfig, dist, run,
               amp: bool) -> Phase:
    """``phase`` with its rate found by the range test where it says ``auto`` (rank 0 runs it; every rank gets its
    suggestion); a run's earlier test (``RUN/lr_find/PHASE.json``) is reused on resume."""
    if phase.lr != "auto":
        return phase
    path = Path(run.root) / "lr_find" / f"{phase.name}.json"

    def find() -> float:
        done = read_json(path, missing_ok=True)
        if done is not None:
            return float(done["suggestion"])
        t0 = time.perf_counter()
        lrs, losses = range_test(model, make_loader(), phase, criterion, inputs.columns, cfg.weighting, amp, cfg.seed)
        doc = write_curve(path.parent, phase.name, phase.name, lrs, losses, time.perf_counter() - t0)
        log.info("lr-find, %s: %s rate %.2e (valley %.2e, minimum / 10 %.2e); curve in %s", phase.name, USED,
                 doc["suggestion"], doc["suggestions"]["valley"], doc["suggestions"]["minimum"], path.with_suffix(".png"))
        return doc["suggestion"]

    return dataclasses.replace(phase, lr=dist.on_main(find, "lr-find"))


def lr_find(cfg: TrainConfig, phase_name: Optional[str] = None, progress: Hook = None) -> StageResult:
    """``wdr-pipe lr-find``: the range test of one phase of ``cfg``'s recipe (default its first: the heads on the
    cached embeddings, made first where missing) -> ``OUT/lr_find.json`` and ``OUT/lr_find.png``."""
    from ...errors import UserError
    from ..dist import Dist
    from ..runs.outputs import check_run_out
    from .setup import phase_loaders, prepare

    t0 = time.time()
    check_run_out(cfg.out)  # a folder of its own: not in a store or a run folder
    plan = phases(cfg)
    names = [p.name for p in plan]
    if phase_name is not None and phase_name not in names:
        raise UserError(f"--phase {phase_name}: --recipe {cfg.recipe} has the phases {', '.join(names)}; pick one")
    k = names.index(phase_name) if phase_name else 0
    dist = Dist().start(cfg.device)
    store, inputs, model, _, dcfg, criterion = prepare(cfg, dist, progress=progress)
    model.set_deep(plan[k].deep)
    loader_args = dict(feature_key=inputs.feature_key, config=dcfg, seed=cfg.seed, rank=0, world_size=1,
                       device=dist.device, num_workers=cfg.loader_workers)
    loader, _ = phase_loaders(store, cfg, plan[k], inputs, loader_args, 0 if plan[k].embeddings else None)
    t1 = time.perf_counter()
    lrs, losses = range_test(model, loader, plan[k], criterion, inputs.columns, cfg.weighting, False, cfg.seed,
                             progress=progress)
    doc = write_curve(Path(cfg.out), "lr_find", plan[k].name, lrs, losses, time.perf_counter() - t1)
    sug = doc["suggestions"]
    flag = "head-lr" if plan[k].name == "heads" and cfg.recipe == "lp-ft" else "lr"
    lines = [f"lr-find, {plan[k].name} ({'cached embeddings' if loader.deep_key == 'embedding' else 'images'}, "
             f"{len(lrs)} steps): suggested rate {doc['suggestion']:.2e} ({USED}); valley {sug['valley']:.2e}, "
             f"minimum / 10 {sug['minimum']:.2e}",
             f"curve: {Path(cfg.out) / 'lr_find.png'}; pass it as --{flag} {doc['suggestion']:.2g}, or train with "
             f"--{flag} auto"]
    return StageResult(stage="lr-find", key=cfg.key(), output=str(Path(cfg.out) / "lr_find.json"), seconds=time.time() - t0, ran=1,
                       counts={"steps": len(lrs)}, details={k2: v for k2, v in doc.items() if k2 not in ("lr", "loss")},
                       summary=lines)


__all__ = ["USED", "lr_find", "phase_rate", "range_test", "suggestions", "write_curve"]
