"""``TrainConfig``: every setting of ``wdr-pipe train``, checked once, and how two runs' settings differ.

Field names are the command's flags with dashes turned into underscores
(``--batch-size`` -> ``batch_size``), so an error can name the flag to fix.
``TrainConfig`` checks itself in ``__post_init__`` and normalises what a
command line gives as text: ``parts`` may be ``"deep,wide"``, ``pos_weight``
``"2"`` or ``"stats"``, paths become absolute.

The model's own fields (backbone .. label_embeddings) are handed to
``wdr_pipe.wdr.model.ModelConfig`` unchanged (``model_config()``), which
checks them too.

What some settings mean:

- ``checkpoint_every`` / ``eval_every``: in optimizer steps; 0 = only at each
  epoch end (where both always happen). A step is ``grad_accum`` batches; an
  epoch's last step may take fewer (its loss is averaged over those).
- ``sched``: timm's schedule, stepped per update; warmup starts at lr / 100.
  ``step`` decays by 0.1 every ``epochs // 3`` epochs, ``multistep`` at 1/3 and
  2/3 of the epochs; ``none`` keeps ``lr``.
- ``ema``: ``timm.utils.ModelEmaV3`` with warmup (its decay ramps up to
  ``ema_decay``); validation, the best checkpoint and thresholds then use it.
- ``amp``: ``auto`` = bf16 autocast on CUDA, float32 elsewhere; ``bf16``
  forces autocast (CPU too); ``off`` never.
- ``loss``: ``bce``, or ``asl`` (timm's AsymmetricLossMultiLabel, gamma_neg 4,
  gamma_pos 1, clip 0.05), both averaged over labels and images.
- ``weighting``: ``loss`` multiplies each image's loss by its stored weight,
  ``sample`` draws images in proportion to it, ``none`` neither.
- ``pos_weight``: K (every label's positives weigh K) or ``stats`` (per label,
  ``stats/<train split>/label_weights.parquet``); also with ``asl``.
- ``labels``: ``top:N`` trains, scores and tunes thresholds on the N most
  frequent training labels only (ties: the lower id).
- ``init``: another run folder; its best weights of the same name and shape
  are loaded (the backbone always, the head only for the same labels).
- ``thresholds``: ``auto`` (per label, per label with twice ``min_positives``,
  or one global threshold: whichever has the best out-of-fold micro-F1,
  ``metrics/rules.py``; that figure is in the result), ``tune`` (per label,
  Fan-Lin, on the validation split), ``cv`` (the same, plus its 5-fold
  out-of-fold micro-F1 in the result) or ``none`` (0.5); labels under
  ``min_positives`` positives get the global one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from ...checks import check_all
from ...errors import BadSetting, UserError
from ..checks import POS_WEIGHT, TRAIN_BOUNDS, check_device

MODEL_FIELDS = ("backbone", "pretrained", "weights", "deep", "freeze_first", "head", "head_hidden",
                "head_dropout", "drop_rate", "parts", "wide_hidden", "rnn_hidden", "label_embeddings")
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "none")
AMP = ("auto", "bf16", "off")
LOSSES = ("bce", "asl")
WEIGHTING = ("none", "loss", "sample")
THRESHOLDS = ("auto", "tune", "cv", "none")
# settings that may differ between a run and the command that resumes it: the run folder itself
NOT_SETTINGS = ("out",)
# earlier names of settings, still read (a run folder's config.json, a [train.NAME] table): old -> new
ALIASES = {"workers": "loader_workers"}
# what a run made before a setting existed had, where that is not the setting's default (a run before recipes)
BEFORE = {"recipe": "single", "bn": "train", "patience": 0}


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig:
    store: str
    out: str
    train_split: str = "train"
    val_split: str = "validation"
    recipe: Optional[str] = None    # lp-ft, fixed or single; None: train/recipe.py's rule (settled in __post_init__)
    # the model (ModelConfig's fields)
    backbone: str = "tf_efficientnet_lite0"
    pretrained: Optional[bool] = None   # None: where the weights ship offline
    weights: Optional[str] = None
    deep: Optional[str] = None
    freeze_first: int = 0
    head: str = "linear"
    head_hidden: int = 512
    head_dropout: float = 0.5
    drop_rate: float = 0.0
    parts: Tuple[str, ...] = ("deep",)
    wide_hidden: int = 100
    rnn_hidden: int = 20
    label_embeddings: str = "frozen"
    # data
    feature_key: Optional[str] = None
    image_size: Optional[int] = None
    stream_images: bool = False     # --deep fixed: images every batch instead of the cached embeddings
    labels: str = "all"
    # optimisation (None: the recipe's value; epochs, patience and eval_every may stay None: scaled to the data)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[Union[float, str]] = None
    head_lr: Optional[Union[float, str]] = None
    optimizer: Optional[str] = None
    weight_decay: Optional[float] = None
    sched: Optional[str] = None
    warmup_epochs: Optional[float] = None
    layer_decay: Optional[float] = None
    bn: Optional[str] = None
    patience: Optional[int] = None
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    ema: bool = False
    ema_decay: float = 0.9998
    loss: str = "bce"
    weighting: str = "none"
    pos_weight: Optional[Union[float, str]] = None
    init: Optional[str] = None
    # running
    seed: int = 0
    loader_workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    checkpoint_every: int = 500
    eval_every: Optional[int] = None
    # after training
    thresholds: str = "auto"
    min_positives: int = 5

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise in place)
        check = lambda ok, name, fix: _check(ok, name, getattr(self, name), fix)  # noqa: E731
        for name in ("store", "out", "init", "weights"):
            value = getattr(self, name)
            if value is not None:
                if not str(value).strip():
                    raise BadSetting(f"{flag(name)} is empty; pass a {'file' if name == 'weights' else 'folder'}")
                if name != "weights":  # ModelConfig takes the weights file as given
                    put(name, os.path.abspath(os.path.expanduser(str(value))))
        if isinstance(self.parts, str):
            put("parts", tuple(p.strip() for p in self.parts.split(",") if p.strip()))
        put("parts", tuple(self.parts))
        put("pos_weight", _pos_weight(self.pos_weight))
        for name in ("lr", "head_lr"):  # a number, or auto: the learning-rate finder
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() == "auto":
                put(name, "auto")
        from .recipe import BN_MODES, settle

        settled = settle(self)
        object.__setattr__(self, "why", settled.pop("why"))  # not a setting: how the recipe was chosen
        for name, value in settled.items():
            put(name, value)
        check_all("train config", self, {k: b for k, b in TRAIN_BOUNDS.items() if getattr(self, k) != "auto"})
        check(self.epochs is None or self.warmup_epochs < self.epochs, "warmup_epochs",
              f"use 0 or more and fewer than --epochs {self.epochs}")
        check(self.bn in BN_MODES, "bn", f"use one of {', '.join(BN_MODES)}")
        check(self.sched in SCHEDULES, "sched", f"use one of {', '.join(SCHEDULES)}")
        check(self.amp in AMP, "amp", f"use one of {', '.join(AMP)}")
        check(self.loss in LOSSES, "loss", f"use one of {', '.join(LOSSES)}")
        check(self.weighting in WEIGHTING, "weighting", f"use one of {', '.join(WEIGHTING)}")
        check(self.thresholds in THRESHOLDS, "thresholds", f"use one of {', '.join(THRESHOLDS)}")
        check(self.labels == "all" or re.fullmatch(r"top:[1-9][0-9]*", str(self.labels)) is not None, "labels",
              "use 'all' or 'top:N' (the N most frequent training labels), e.g. top:20")
        check(self.train_split != self.val_split, "val_split",
              "is the training split too; validate on another split")
        check_device(self.device)
        check(not self.stream_images or self.deep == "fixed" or self.recipe != "single", "stream_images",
              "only --deep fixed and the heads phase train from cached embeddings; the other modes always stream "
              "images")
        check(self.feature_key is None or "wide" in self.parts, "feature_key",
              "only the wide part reads image features; add wide to --parts or leave --feature-key out")
        import timm.optim

        check(self.optimizer in timm.optim.list_optimizers(), "optimizer",
              "use an optimizer timm knows (timm.optim.list_optimizers()), e.g. nadam, adamw, sgd")
        from ..model.backbone import check_name

        try:
            check_name(self.backbone)
            put("parts", tuple(self.model_config().parts))  # ModelConfig checks the model's fields
        except UserError as e:  # "model config deep='x': fix" / "backbone 'x' is ...": name the flag
            text = re.sub(r"^model config (\w+)=", lambda m: flag(m.group(1)) + " ", str(e))
            raise type(e)(re.sub(r"^backbone ", "--backbone ", text)) from None

    # -- views ---------------------------------------------------------------------------
    @property
    def top_labels(self) -> Optional[int]:
        """N of ``--labels top:N``; None for all labels."""
        return None if self.labels == "all" else int(self.labels.split(":")[1])

    def model_config(self, **overrides):
        from ..model.network import ModelConfig

        fields = {k: getattr(self, k) for k in MODEL_FIELDS}
        fields.update(overrides)
        return ModelConfig(**fields)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "TrainConfig":
        """The config of a settings dict (a run's ``config.json``, a TOML table); earlier names are read too."""
        doc = {ALIASES.get(k, k): v for k, v in doc.items()}
        unknown = sorted(set(doc) - setting_names())
        if unknown:
            raise UserError(f"settings {', '.join(unknown)} are unknown to this wdr-pipe; "
                            "resume the run with the wdr-pipe version that made it")
        return cls(**doc)

    def settings(self) -> Dict[str, Any]:
        """The settings that define a run (everything but the run folder), JSON-ready."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_SETTINGS}

    def key(self) -> str:
        """Short stable hash of ``settings()``."""
        payload = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def setting_names(aliases: bool = False) -> set:
    """The names ``TrainConfig`` takes (with ``aliases``, also the earlier names ``from_dict`` reads)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return names | set(ALIASES) if aliases else names


def settings_diff(run: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``["--lr 0.001 (the run has 0.0003)", ...]`` for every setting that differs. A setting added to
    wdr-pipe after a run was made counts as its default there; one renamed since, under its new name."""
    defaults = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **BEFORE}
    run = {ALIASES.get(k, k): v for k, v in run.items()}
    out = []
    for k in sorted(set(run) | set(new)):
        if k in NOT_SETTINGS:
            continue
        a, b = run.get(k, defaults.get(k)), new.get(k)
        if _norm(a) != _norm(b):
            out.append(f"{flag(k)} {_show(b)} (the run has {_show(a)})")
    return out


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return "(none)" if v is None else str(v)


def _pos_weight(v):
    if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
        return None
    if isinstance(v, str) and v.strip() == "stats":
        return "stats"
    try:
        k = float(v) if not isinstance(v, bool) else None
    except (TypeError, ValueError):
        k = None
    problem = POS_WEIGHT.problem(k) if k is not None else f"not a number; use {POS_WEIGHT.text()}"
    if problem:
        raise BadSetting(f"train config: pos_weight {v!r} (--pos-weight): {problem} (positives weigh K times), "
                        "or 'stats' (per label, from the store's label statistics)")
    return k


def check_same_settings(root, run_settings: Dict[str, Any], cfg: TrainConfig) -> None:
    """A UserError naming every setting of ``cfg`` that differs from those of the run in ``root``."""
    diff = settings_diff(run_settings, cfg.settings())
    if diff:
        raise UserError(f"{root}: a run with other settings: {'; '.join(diff)}; "
                        "pass the run's settings to continue it, or a new --out for a new run")


def _check(ok: bool, name: str, value, fix: str) -> None:
    if not ok:
        raise BadSetting(f"{flag(name)} {_show(value)}: {fix}", name)

__all__ = ["ALIASES", "TrainConfig", "check_same_settings", "flag", "setting_names", "settings_diff"]
