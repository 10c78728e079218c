"""What moves the weights: timm's optimizer and schedule (``make_optimizer``) and the weights' EMA (``make_ema``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from .config import TrainConfig

if TYPE_CHECKING:
    from .recipe import Phase


def make_optimizer(cfg: Union[TrainConfig, "Phase"], model, updates_per_epoch: int, epochs: Optional[int] = None):
    """timm's optimizer over the trainable parameters, and its schedule stepped once per update (None for
    ``--sched none``), for ``epochs`` (default ``cfg.epochs``). With a ``layer_decay`` (a recipe's phase),
    timm's layer-wise groups over the model's ``group_matcher``: each layer group below the head trains at
    ``layer_decay`` times the rate of the one above (the schedule applies the groups' ``lr_scale``)."""
    import timm.optim
    import timm.scheduler

    epochs = epochs or cfg.epochs
    layer_decay = getattr(cfg, "layer_decay", None)
    opt = timm.optim.create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         layer_decay=layer_decay)
    if cfg.sched == "none":
        for g in opt.param_groups:  # no schedule to apply the layer groups' scales: applied once
            g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
        return opt, None
    sched, _ = timm.scheduler.create_scheduler_v2(
        opt, sched=cfg.sched, num_epochs=epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
        decay_epochs=max(1, epochs // 3), decay_milestones=[max(1, epochs // 3), max(1, 2 * epochs // 3)],
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
