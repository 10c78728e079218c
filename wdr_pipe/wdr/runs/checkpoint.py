"""The checkpoint of a training run: a plain dict (as nanoGPT's), built and read here alone.

Keys of every checkpoint (``best.pt`` holds these alone)::

    model        the model's state dict
    ema          the EMA's state dict (timm ModelEmaV3), or None without --ema
    step         optimizer steps done
    epoch        epochs done (an epoch's last step included)
    samples      images trained on, all ranks
    best         the best validation micro-F1 so far (at 0.5), and
    best_step    the step it was reached at
    phase        the recipe's phase (0-based), the step it started at (phase_start), its own best
                 validation micro-F1 (phase_best) and validations since that improved (stale)
    settings     TrainConfig.settings() of the run
    label_ids    the store label ids the model predicts, in column order
    world_size   processes that trained it

and of a full one (``last.pt``), what an exact resume needs besides::

    optimizer    the optimizer's state dict
    scheduler    the schedule's state dict, or None (--sched none)
    loader       the train loader's state_dict() (epoch, per-worker position)
    rng          one entry per rank: python, numpy, torch and cuda generator states
    meter        the running training loss since the last validation (loss, n, images, since)

``save_checkpoint`` / ``load_checkpoint`` are the one pair that knows the file
format: ``torch.save`` to a temporary file, fsynced, renamed (a killed run never
leaves half a file), read back on the CPU. ``checkpoint_dict`` builds the dict,
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

from ...cache.atomic import atomic_path
from ...errors import UserError


@dataclasses.dataclass
class Counters:
    """Where a run is: what a checkpoint records besides the state dicts."""

    step: int = 0
    epoch: int = 0
    samples: int = 0
    best: float = -1.0
    best_step: int = 0
    meter: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"loss": 0.0, "n": 0, "images": 0})
    phase: int = 0
    phase_start: int = 0
    phase_best: float = -1.0
    stale: int = 0

PHASE_COUNTERS = ("phase", "phase_start", "phase_best", "stale")


def save_checkpoint(path: Path, ckpt: Dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename."""
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no checkpoint; the run has not saved one yet")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint from elsewhere, or a damaged file
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                        "delete it to restart from the previous one, or start a new run") from e


def checkpoint_dict(c: Counters, *, model, ema, settings: Dict[str, Any], label_ids, world_size: int,
                    optimizer=None, scheduler=None, loader=None, rngs: Optional[List[Any]] = None) -> Dict[str, Any]:
    """The checkpoint of this moment; a full one (``optimizer`` given) also holds what resuming needs."""
    ckpt = {"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "step": c.step, "epoch": c.epoch, "samples": c.samples, "best": c.best, "best_step": c.best_step,
            "settings": settings, "label_ids": [int(i) for i in label_ids], "world_size": world_size,
            **{k: getattr(c, k) for k in PHASE_COUNTERS}}
    if optimizer is not None:
        ckpt.update(optimizer=optimizer.state_dict(), loader=loader.state_dict(), rng=rngs, meter=c.meter,
                    scheduler=scheduler.state_dict() if scheduler is not None else None)
    return ckpt


def restore(ckpt: Dict[str, Any], where: Path, *, model, optimizer, scheduler, ema, loader, rank: int,
            world_size: int) -> Counters:
    """Put a full checkpoint back: weights, optimizer, schedule, EMA, the loader's position and this rank's
    random generators; returns the counters (``images`` of the meter restarts: it counts this process's)."""
    if ckpt["world_size"] != world_size:
        raise UserError(f"{where}: trained on {ckpt['world_size']} processes, resumed on {world_size}; "
                        f"resume with torchrun --nproc_per_node {ckpt['world_size']}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"])
    loader.load_state_dict(ckpt["loader"])
    c = Counters(*(ckpt[k] for k in ("step", "epoch", "samples", "best", "best_step")),
                 meter={**ckpt["meter"], "images": 0}, **{k: ckpt[k] for k in PHASE_COUNTERS if k in ckpt})
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


__all__ = ["Counters", "Trained", "checkpoint_dict", "eval_weights", "load_checkpoint", "restore", "rng_state",
           "save_checkpoint", "set_rng_state", "state_digest", "trained_weights"]
