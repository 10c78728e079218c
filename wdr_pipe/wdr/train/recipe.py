"""The recipes of ``wdr-pipe train --recipe``: which phases a ``TrainConfig`` means and how each trains.

- ``lp-ft`` (the default where the backbone has weights): linear probe, then fine-tune.
  Phase 1, ``heads``: the backbone frozen, the heads (Deep, and Wide and Recurrent where
  configured) trained on the store's cached embeddings (no image decoded), AdamW at a rate
  that suits heads (``--head-lr``), until validation micro-F1 stops improving
  (``--patience``) or a step budget scaled to the data runs out. Phase 2, ``fine-tune``:
  from phase 1's best heads, the backbone unfrozen (``--deep``: tune, or half), images
  streamed with augmentation, AdamW with a warm-up, a lower peak rate (``--lr``), layer-wise
  rate decay (``--layer-decay``, timm's ``param_groups_layer_decay``), BatchNorm as
  ``--bn`` says, early stopping on validation micro-F1. The best checkpoint of both
  phases is kept, so the run never ends below its own phase 1 on validation.
- ``fixed``: phase 1 alone (a linear probe, or the Wide and Recurrent heads, on the embeddings).
- ``single``: one phase as the flags say: the trainer before recipes (``--deep tune``,
  10 epochs, NAdam at 3e-4, batches of 64, no early stopping).

Which recipe when ``--recipe`` is not given (``settle``): ``single`` where a flag that
shapes the training is given (``SHAPE``: --deep, --epochs, --lr, --optimizer,
--weight-decay, --sched, --warmup-epochs, and --init, --freeze-first, --stream-images),
so every command, run file and script written before recipes trains as it did, and where
the backbone has no weights (random features: nothing to probe); ``lp-ft`` otherwise.

Flags and phases: --lr, --epochs, --optimizer, --weight-decay, --sched, --warmup-epochs,
--layer-decay and --bn set the recipe's last phase (single's only one, fixed's phase 1,
lp-ft's phase 2); --head-lr sets lp-ft's phase 1; --batch-size (the most images per step:
an epoch is cut into equal batches), --patience, --eval-every and every model, data and
running flag apply to every phase. A setting left unset takes the recipe's value (the
tables below); ``--lr auto`` / ``--head-lr auto`` run the learning-rate finder
(``lr_find.py``) at the start of that phase.

The heads' rate (``heads_lr``) is 3e-2 for the Deep part's linear head alone and 3e-3 where
the Wide or Recurrent part trains too.

Phase lengths scale with the data (``length``): the heads train for
``max(HEADS_EPOCHS, HEADS_STEPS / updates per epoch)`` epochs (300 updates on small sets, 5
epochs on large ones), validated about ``validations`` times per phase; the fine-tune for
``ceil(FT_IMAGES / training images)`` epochs, within 2 to 5.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple, Union

RECIPES = ("lp-ft", "fixed", "single")
BN_MODES = ("train", "frozen")
# flags that shape the training: given without --recipe, they mean single (their value when not given)
SHAPE = {"deep": None, "epochs": None, "lr": None, "optimizer": None, "weight_decay": None, "sched": None,
         "warmup_epochs": None, "init": None, "freeze_first": 0, "stream_images": False}
# the recipes' values of the settings left unset
SINGLE = dict(deep="tune", epochs=10, lr=3e-4, optimizer="nadam", weight_decay=0.0, sched="cosine",
              warmup_epochs=0.0, batch_size=64, bn="train", patience=0, eval_every=0)
HEADS = dict(lr=3e-2, optimizer="adamw", weight_decay=0.0, sched="cosine", warmup_epochs=0.0, bn="train",
             patience=5, validations=20)
FINETUNE = dict(deep="tune", lr=1e-3, optimizer="adamw", weight_decay=0.01, sched="cosine", layer_decay=0.75,
                bn="frozen", patience=2, validations=5)
HEADS_WDR_LR = 3e-3  # the heads' rate where Wide or Recurrent train too (their hidden layers diverge at 3e-2)
RECIPE_BATCH = 32
HEADS_STEPS, HEADS_EPOCHS = 300, 5
FT_IMAGES, FT_EPOCHS = 100_000, (2, 5)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase: what trains, from what, and how (the names of ``TrainConfig``'s fields, so ``optim.py``
    takes either); ``epochs`` / ``eval_every`` None: scaled to the data by ``length``."""

    name: str                          # "heads", "fine-tune" or "single"
    deep: str                          # the backbone: fixed, half or tune
    embeddings: bool                   # from the cached embeddings (where the backbone has weights)
    lr: Union[float, str]              # or "auto": the learning-rate finder
    optimizer: str
    weight_decay: float
    sched: str
    warmup_epochs: float
    layer_decay: Optional[float]
    bn: str
    patience: int                      # validations without a gain before the phase stops; 0: never
    epochs: Optional[int] = None
    eval_every: Optional[int] = None
    validations: int = 0               # about how many per phase, where eval_every is None

    def doc(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Length:
    """A phase's length on its data: epochs, updates per epoch, validation interval in updates (0: epoch ends)."""

    epochs: int
    updates_per_epoch: int
    eval_every: int

    @property
    def steps(self) -> int:
        return self.epochs * self.updates_per_epoch


# -- the settings ------------------------------------------------------------------------------
def _check(ok: bool, name: str, fix: str, value: Any = None) -> None:
    if not ok:
        from ...errors import BadSetting

        flag = "--" + name.replace("_", "-")
        raise BadSetting(f"{flag}{'' if value is None else ' ' + str(value)}: {fix}", name)


def settle(cfg) -> Dict[str, Any]:
    """The values ``TrainConfig.__post_init__`` puts in its unset fields: the recipe, ``pretrained``, and the
    recipe's settings; plus ``why`` (a line saying how the recipe and the weights were chosen)."""
    from ..model.backbone import has_offline_weights

    out: Dict[str, Any] = {}
    pretrained = cfg.pretrained
    if pretrained is None:
        pretrained = cfg.weights is None and has_offline_weights(cfg.backbone)
        out["pretrained"] = pretrained
        weights = (f"{cfg.backbone}: ImageNet weights offline (--no-pretrained: random weights)" if pretrained else
                   f"{cfg.backbone}: no ImageNet weights offline; random weights (pass --weights FILE, or "
                   "--pretrained to fetch them from timm's source)" if cfg.weights is None else "")
    else:
        weights = ""
    has_weights = bool(pretrained or cfg.weights or cfg.init)
    given = [k for k, unset in SHAPE.items() if getattr(cfg, k) not in (unset, "auto")]
    recipe = cfg.recipe
    if recipe is None:
        recipe = "single" if given or not has_weights else "lp-ft"
        why = (f"recipe single: {', '.join('--' + k.replace('_', '-') for k in given)} given (pass --recipe lp-ft "
               "for the default recipe with them)" if given else
               "recipe single: the backbone has no weights to probe" if not has_weights else
               "recipe lp-ft: heads on the cached embeddings, then the fine-tune")
    else:
        why = f"recipe {recipe}"
    _check(recipe in RECIPES, "recipe", f"use one of {', '.join(RECIPES)}", recipe)
    _check(recipe == "single" or has_weights, "recipe",
           f"it starts from the backbone's features and {cfg.backbone} has no weights here (--no-pretrained); pass "
           "--pretrained or --weights FILE, or --recipe single to train from random weights", recipe)
    _check(cfg.head_lr is None or recipe == "lp-ft", "head_lr",
           "only --recipe lp-ft has a heads phase before the fine-tune; set the one phase with --lr", cfg.head_lr)
    out["recipe"], out["why"] = recipe, "; ".join(filter(None, [why, weights]))
    unset = lambda k: getattr(cfg, k) is None  # noqa: E731
    if recipe == "single":
        out.update({k: v for k, v in SINGLE.items() if unset(k)})
        return out
    _check(cfg.deep in (None, "fixed") if recipe == "fixed" else cfg.deep != "fixed", "deep",
           "--recipe fixed trains the heads alone (--deep fixed)" if recipe == "fixed" else
           "--recipe lp-ft fine-tunes the backbone in phase 2; use --recipe fixed for the heads alone", cfg.deep)
    last = {**HEADS, "lr": heads_lr(cfg.parts)} if recipe == "fixed" else FINETUNE
    out.update({k: v for k, v in last.items() if k in ("lr", "optimizer", "weight_decay", "sched", "bn") and unset(k)})
    if unset("batch_size"):
        out["batch_size"] = RECIPE_BATCH
    if recipe == "fixed":
        _check(cfg.layer_decay is None, "layer_decay", "--recipe fixed trains no backbone layer", cfg.layer_decay)
        out.update({k: v for k, v in (("deep", "fixed"), ("warmup_epochs", 0.0)) if unset(k)})
    else:
        out.update({k: v for k, v in (("deep", FINETUNE["deep"]), ("layer_decay", FINETUNE["layer_decay"]),
                                      ("head_lr", heads_lr(cfg.parts))) if unset(k)})
        if unset("warmup_epochs"):
            out["warmup_epochs"] = 1.0 if cfg.epochs is None else min(1.0, cfg.epochs / 2)
    return out


def heads_lr(parts) -> float:
    """The heads phase's rate: 3e-2 for the Deep part's linear head alone; ``HEADS_WDR_LR`` where the Wide or
    Recurrent part trains too (on the demo's data at 3e-2 their loss reached 10 in the first epoch and the heads
    ended at 0.863 micro-F1, at 3e-3 at 0.882; docs/benchmarks.md)."""
    return HEADS["lr"] if set(parts) <= {"deep"} else HEADS_WDR_LR


def phases(cfg) -> List[Phase]:
    """The phases of a settled ``TrainConfig``, in order."""
    last = dict(lr=cfg.lr, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, sched=cfg.sched,
                warmup_epochs=cfg.warmup_epochs, layer_decay=cfg.layer_decay, bn=cfg.bn, epochs=cfg.epochs,
                eval_every=cfg.eval_every)
    if cfg.recipe == "single":
        return [Phase("single", cfg.deep, cfg.deep == "fixed" and not cfg.stream_images,
                      patience=cfg.patience, **last)]
    heads = dict(deep="fixed", embeddings=not cfg.stream_images, validations=HEADS["validations"],
                 patience=HEADS["patience"] if cfg.patience is None else cfg.patience)
    if cfg.recipe == "fixed":
        return [Phase("heads", **heads, **last)]
    first = Phase("heads", **heads, lr=cfg.head_lr, **{k: HEADS[k] for k in ("optimizer", "weight_decay", "sched",
                                                                              "warmup_epochs", "bn")},
                  layer_decay=None, eval_every=cfg.eval_every)
    return [first, Phase("fine-tune", cfg.deep, False, validations=FINETUNE["validations"],
                         patience=FINETUNE["patience"] if cfg.patience is None else cfg.patience, **last)]


def rate_flag(cfg, phase: Phase) -> Tuple[str, float]:
    """The flag that sets ``phase``'s rate (lp-ft's heads: --head-lr; every other phase: --lr) and the rate."""
    return ("--head-lr" if phase.name == "heads" and cfg.recipe == "lp-ft" else "--lr"), float(phase.lr)


def fit_batch(rows: int, batch_size: int) -> int:
    """The batch that cuts ``rows`` into ``ceil(rows / batch_size)`` batches as equal as they come (224 images
    at 64: 4 x 56, not 3 x 64 and 32 left over)."""
    k = max(1, -(-rows // batch_size))
    return max(1, -(-rows // k))


def length(phase: Phase, updates_per_epoch: int, rows: int) -> Length:
    """How long ``phase`` trains on ``rows`` training images (module doc)."""
    epochs = phase.epochs
    if epochs is None and phase.name == "heads":
        epochs = max(HEADS_EPOCHS, -(-HEADS_STEPS // updates_per_epoch))
    elif epochs is None:
        epochs = min(FT_EPOCHS[1], max(FT_EPOCHS[0], -(-FT_IMAGES // max(1, rows))))
    every = phase.eval_every
    if every is None:
        every = 0 if epochs >= phase.validations else -(-epochs * updates_per_epoch // phase.validations)
        every = 0 if every >= updates_per_epoch else every
    return Length(epochs, updates_per_epoch, every)


# -- while training ---------------------------------------------------------------------------------
def enter(model, phase: Phase) -> None:
    """Freeze or unfreeze the backbone as the phase says (the state dict stays the same)."""
    if model.cfg.deep != phase.deep:
        model.set_deep(phase.deep)


def train_mode(model, phase: Phase):
    """``model.train()``, with every BatchNorm of the backbone in eval mode under ``--bn frozen`` (running
    statistics used and kept; scale and shift still train)."""
    import torch

    model.train()
    if phase.bn == "frozen":
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def record(c, f1: float, phase: Phase) -> bool:
    """Count a validation of the phase; True when the phase is to stop (no gain in ``patience`` of them)."""
    if f1 > c.phase_best:
        c.phase_best, c.stale = f1, 0
    else:
        c.stale += 1
    return stopped(c, phase)


def stopped(c, phase: Phase) -> bool:
    return bool(phase.patience) and c.stale >= phase.patience


def start(c, k: int) -> None:
    """Counters at the start of phase ``k`` (global step and the best of all phases carry on)."""
    c.phase, c.phase_start, c.epoch, c.phase_best, c.stale = k, c.step, 0, -1.0, 0


def outcome(plan: List[Phase], rows: List[Dict[str, Any]], lengths: List[Length], best_step: int) -> Dict[str, Any]:
    """What ``result.json`` says of the phases, as flat figures: ``phases`` (their names), and per phase ``NAME_steps``,
    ``NAME_planned_steps``, ``NAME_epochs``, ``NAME_best_val_f1`` and ``NAME_ended`` (patience or budget); which
    phase the kept weights come from (``best_phase``) and why."""
    out: Dict[str, Any] = {"phases": ",".join(p.name for p in plan)}
    begin, best = 0, []
    for p, n in zip(plan, lengths):
        mine = [r for r in rows if r.get("phase") == p.name]
        end = mine[-1]["step"] if mine else begin
        f1 = max((r["val_f1"] for r in mine), default=None)
        out.update({f"{p.name}_steps": end - begin, f"{p.name}_planned_steps": n.steps, f"{p.name}_epochs": n.epochs,
                    f"{p.name}_best_val_f1": f1, f"{p.name}_ended": "patience" if end - begin < n.steps else "budget"})
        best.append((p.name, f1, begin < best_step <= end))
        begin = end
    won = next((b for b in best if b[2]), best[0])
    why = f"{won[0]}: the best validation micro-F1" + (f" ({won[1]:.4f})" if won[1] is not None else "")
    others = [b for b in best if b is not won and b[1] is not None]
    if others:
        why += ", against " + ", ".join(f"{f1:.4f} of {name}" for name, f1, _ in others)
    if len(best) > 1 and won is best[0]:
        why += "; the fine-tune did not beat the heads, so the heads' weights are kept"
    out.update(best_phase=won[0], why=why)
    return out


__all__ = ["BN_MODES", "FINETUNE", "HEADS", "Length", "Phase", "RECIPES", "SHAPE", "SINGLE", "enter", "fit_batch", "heads_lr", "rate_flag",
           "length", "outcome", "phases", "record", "settle", "start", "stopped", "train_mode"]
