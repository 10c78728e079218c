"""What moves the weights: timm's optimizer and schedule (``make_optimizer``) and the weights' EMA (``make_ema``)."""
from __future__ import annotations

from typing import Optional

from .config import TrainConfig


def make_optimizer(cfg: TrainConfig, model, updates_per_epoch: int):
    """timm's optimizer over the trainable parameters, and its schedule stepped once per update (None for
    ``--sched none``)."""
    import timm.optim
    import timm.scheduler

    opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.sched == "none":
        return opt, None
    sched, _ = timm.scheduler.create_scheduler_v2(
        opt, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
        decay_epochs=max(1, cfg.epochs // 3), decay_milestones=[max(1, cfg.epochs // 3), max(1, 2 * cfg.epochs // 3)],
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    sched.step_update(num_updates=0)
    return opt, sched


def make_ema(cfg: TrainConfig, model) -> Optional[object]:
    """timm's ``ModelEmaV3`` of ``model`` with ``--ema``, its decay ramping up (useful on short runs too)."""
    if not cfg.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)


__all__ = ["make_ema", "make_optimizer"]
