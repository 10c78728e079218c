"""The checkpoint of a training run: a plain dict (as nanoGPT's), built and read here alone.

Keys of every checkpoint (``best.safetensors`` holds these alone)::

    model        the model's state dict
    ema          the EMA's state dict (timm ModelEmaV3), or None without --ema
    step         optimizer steps done
    epoch        epochs done (an epoch's last step included)
    samples      images trained on, all ranks
    best         the best validation micro-F1 so far (at 0.5), and
    best_step    the step it was reached at
    settings     TrainConfig.settings() of the run
    label_ids    the store label ids the model predicts, in column order
    world_size   processes that trained it
    phase        the recipe's phase (0-based), the step it started at (phase_start), its own best
                 validation micro-F1 (phase_best) and validations since that improved (stale)

and of a full one (``last.safetensors``), what an exact resume needs besides::

    optimizer    the optimizer's state dict
    scheduler    the schedule's state dict, or None (--sched none)
    loader       the train loader's state_dict() (epoch, per-worker position)
    rng          one entry per rank: python, numpy, torch and cuda generator states
    meter        the running training loss since the last validation (loss, n, images, since)
    watch        the loss watch's record (``train/guards.py``): the first loss, the largest, a warning

``save_checkpoint`` / ``load_checkpoint`` are the one pair that knows the file
format: one safetensors file (``cache.tensorfile``: every tensor and array an
entry, everything else JSON in its metadata), written to a temporary file,
fsynced, renamed (a killed run never leaves half a file; a full disk is one
line and the previous checkpoint stays), read back on the CPU. Nothing is ever
unpickled: a ``torch.save`` file (an earlier wdr-pipe's ``*.pt``, or a crafted
one) is refused with the conversion command (``runs/convert.py``), which is the
one place that reads those, on request. ``checkpoint_dict`` builds the dict,
``restore`` puts a full one back into a run's objects, ``trained_weights`` reads
what the other commands want of one (the weights it validates with, its step,
labels and backbone).
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch

from ...cache.tensorfile import OldFormat, read_skeleton, read_tree, write_tree
from ...errors import DiskFull, UserError

KIND = "checkpoint"  # the tensorfile kind of a checkpoint
SUFFIX = ".safetensors"


@dataclasses.dataclass
class Counters:
    """Where a run is: what a checkpoint records besides the state dicts."""

    step: int = 0
    epoch: int = 0
    samples: int = 0
    best: float = -1.0
    best_step: int = 0
    meter: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"loss": 0.0, "n": 0, "images": 0})
    watch: Dict[str, Any] = dataclasses.field(default_factory=dict)
    phase: int = 0
    phase_start: int = 0
    phase_best: float = -1.0
    stale: int = 0


PHASE_COUNTERS = ("phase", "phase_start", "phase_best", "stale")


def save_checkpoint(path: Path, ckpt: Dict[str, Any]) -> None:
    """The checkpoint as one safetensors file, written beside ``path``, fsynced and renamed onto it.
    A full disk is a ``DiskFull`` line; the checkpoint already at ``path`` is left as it was."""
    path = Path(path)
    try:
        write_tree(path, ckpt, KIND)
    except DiskFull:
        kept = f"the previous {path.name} is kept" if path.exists() else "no earlier checkpoint was written"
        raise DiskFull(f"{path}: no space left on device while writing the checkpoint ({kept}); free some space "
                       "and run the same command again") from None


def convert_command(run_root) -> str:
    return f"wdr-pipe convert-checkpoint {run_root}"


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint dict of ``path``, read without unpickling anything."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no checkpoint; the run has not saved one yet")
    run_root = path.parent.parent
    try:
        return read_tree(path, KIND, "delete it to restart from the previous checkpoint, or start a new run")
    except OldFormat:
        raise OldFormat(f"{path}: a pickle (torch.save), which wdr-pipe never loads because unpickling can run "
                        f"code; if you trust the run, convert it with '{convert_command(run_root)}' (the "
                        "conversion trusts the file)") from None


def saved_step(path: Path) -> int:
    """The step a checkpoint was saved at, from its header alone (0 when there is no readable one)."""
    tree = read_skeleton(path, KIND) if Path(path).exists() else None
    return int(tree.get("step", 0)) if isinstance(tree, dict) else 0


def checkpoint_dict(c: Counters, *, model, ema, settings: Dict[str, Any], label_ids, world_size: int,
                    optimizer=None, scheduler=None, loader=None, rngs: Optional[List[Any]] = None) -> Dict[str, Any]:
    """The checkpoint of this moment; a full one (``optimizer`` given) also holds what resuming needs."""
    ckpt = {"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "step": c.step, "epoch": c.epoch, "samples": c.samples, "best": c.best, "best_step": c.best_step,
            "settings": settings, "label_ids": [int(i) for i in label_ids], "world_size": world_size,
            "watch": c.watch, **{k: getattr(c, k) for k in PHASE_COUNTERS}}
    if optimizer is not None:
        ckpt.update(optimizer=optimizer.state_dict(), loader=loader.state_dict(), rng=rngs, meter=c.meter,
                    scheduler=scheduler.state_dict() if scheduler is not None else None)
    return ckpt


def restore(ckpt: Dict[str, Any], where: Path, *, model, optimizer, scheduler, ema, loader, rank: int,
            world_size: int) -> Counters:
    """Put a full checkpoint back: weights, optimizer, schedule, EMA, the loader's position and this rank's
    random generators; returns the counters (``images`` of the meter restarts: it counts this process's).
    When the new optimizer's rate differs from the checkpoint's (``train --resume RUN --lr X``), the new rate
    and its schedule (built from ``--lr X``) are kept; the optimizer's moments come from the checkpoint."""
    if ckpt["world_size"] != world_size:
        raise UserError(f"{where}: trained on {ckpt['world_size']} processes, resumed on {world_size}; "
                        f"resume with torchrun --nproc_per_node {ckpt['world_size']}")
    model.load_state_dict(ckpt["model"])
    field = "initial_lr" if scheduler is not None else "lr"  # the rate the schedule starts from, or the rate
    fresh = [{k: g[k] for k in ("initial_lr", "lr") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    rate_changed = [f.get(field) for f in fresh] != [g.get(field) for g in optimizer.param_groups]
    if rate_changed:  # resumed with another --lr (a change config.json records): the new rate from here on
        for group, rates in zip(optimizer.param_groups, fresh):
            group.update(rates)
    elif scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"])
    loader.load_state_dict(ckpt["loader"])
    c = Counters(*(ckpt[k] for k in ("step", "epoch", "samples", "best", "best_step")),
                 meter={**ckpt["meter"], "images": 0}, watch=dict(ckpt.get("watch") or {}),
                 **{k: ckpt[k] for k in PHASE_COUNTERS if k in ckpt})
    if rate_changed:  # the loss watch starts again from the first loss: the new rate is judged on its own
        c.watch = {k: v for k, v in c.watch.items() if k in ("first", "first_step")}
    if rate_changed and scheduler is not None:
        scheduler.step_update(num_updates=c.step - c.phase_start)  # the new schedule's rate at this step
    set_rng_state(ckpt["rng"][rank])
    return c


def eval_weights(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights a checkpoint was validated with: the EMA's when the run kept one."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


class Trained(NamedTuple):
    """What scoring, ``--init`` and ``embed --run`` read of a checkpoint."""

    state: Dict[str, torch.Tensor]   # the weights it was validated with
    step: int
    label_ids: List[int]
    backbone: str

    def backbone_state(self) -> Dict[str, torch.Tensor]:
        """The backbone's own weights (the ``backbone.`` prefix taken off)."""
        return {k[len("backbone."):]: v for k, v in self.state.items() if k.startswith("backbone.")}


def trained_weights(path: Path) -> Trained:
    ckpt = load_checkpoint(path)
    return Trained(eval_weights(ckpt), int(ckpt.get("step", 0)), [int(i) for i in ckpt.get("label_ids", [])],
                   ckpt.get("settings", {}).get("backbone", "?"))


def rng_state() -> Dict[str, Any]:
    """Every random generator this process draws from: python, numpy, torch, cuda."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_digest(state: Dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = ["KIND", "SUFFIX", "Counters", "Trained", "checkpoint_dict", "convert_command", "eval_weights",
           "load_checkpoint", "restore", "rng_state", "save_checkpoint", "saved_step", "set_rng_state", "state_digest",
           "trained_weights"]
