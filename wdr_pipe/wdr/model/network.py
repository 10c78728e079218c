"""The Wide, Deep and Recurrent (WDR) labeler on a timm backbone.

Parts (``ModelConfig.parts``, always with ``deep``), for an image with
optional wide features ``w`` and L labels:

- Deep: ``x = backbone(image)``, the timm model's pooled features
  (``num_classes=0``), then ``x = Dropout(drop_rate)(x)``. The dropout sits in
  :meth:`WDRModel.forward_head`, not in the backbone, so it also applies when
  the head trains from cached features and when the backbone is frozen (in
  eval mode).
- Wide: ``u = ReLU(W_w z + b_w)`` with ``z = nan_to_num((w - wide_mean) /
  wide_std)`` (NaN and inf -> 0). ``wide_mean`` / ``wide_std`` are buffers the
  trainer computes on the training split; they travel in ``state_dict()``.
- Recurrent, as in the authors' released code: label embeddings E (L, d);
  ``h0_fwd = W_f x + b_f``, ``h0_bwd = W_b x + b_b`` (``rnn_hidden`` each); a
  bidirectional GRU (batch_first) runs over the labels 0..L-1 in order with
  those initial states and returns every step, ``G`` (B, L, 2*rnn_hidden).
  It runs in float32 with autocast off (it is tiny; cuDNN's reduced-precision
  RNN paths are not worth the risk). E is a buffer (``frozen``, the stored
  co-occurrence vectors), a Parameter (``trainable``, initialised from them),
  or a Parameter drawn from N(0, 1) with ``embed_dim`` columns (``random``,
  what the released code did). All three use the state_dict key
  ``recurrent.embeddings``.

Combination (the authors' final ``Dense(L)`` over the concatenation)::

    logits = head(concat(x, u, flatten(G)))      # parts absent are left out

``head`` is ``Linear(D, L)`` (``linear``), or the VGG-16 paper's "two layers
stacked on top": ``Linear(D, h) -> ReLU -> Dropout -> Linear(h, h) -> ReLU ->
Dropout -> Linear(h, L)`` (``mlp``, h = ``head_hidden``, p = ``head_dropout``).
With ``parts=("deep",)`` this is just the Deep head. The recurrent term is the
faithful flatten: L * 2H * L weights in the final layer (2.1 M for L = 228,
H = 20), small next to any backbone, so no cheaper per-label projection is
offered.

Fine-tuning (the WDR table's rows, plus the VGG-16 paper's layer freeze):
``fixed`` freezes every backbone weight; ``half`` the first ``n // 2`` of the
n coarse groups of ``backbone.group_matcher(coarse=True)`` (timm's
``group_parameters``; e.g. stem and blocks 0-2 of 8 groups for EfficientNet);
``tune`` none. ``freeze_first N`` also freezes the first N weight layers
(conv / linear modules in registration order) and every parameter met before
the (N+1)-th one (the BatchNorms between them). Freezing sets
``requires_grad=False``; it does not swap in ``FrozenBatchNorm2d``
(``timm.utils.freeze``), so the state_dict is the same in every mode and a
checkpoint loads into any of them. Instead :meth:`WDRModel.train` puts every
backbone submodule whose parameters are all frozen into eval mode (BatchNorm
running stats, dropout and drop-path included), judged from ``requires_grad``
at each call: a trainer that freezes the backbone by hand gets the same.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ...checks import check_all
from ...errors import BadSetting, UserError
from ..checks import MODEL_BOUNDS
from .backbone import create_backbone, weights_digest

log = logging.getLogger("wdr_pipe")

PARTS = ("deep", "wide", "recurrent")
DEEP_MODES = ("fixed", "half", "tune")
HEADS = ("linear", "mlp")
EMBEDDINGS = ("random", "frozen", "trainable")


def _bad(field: str, value, fix: str) -> BadSetting:
    return BadSetting(f"model config {field}={value!r}: {fix}", field)


@dataclass(frozen=True)
class ModelConfig:
    """What to build; validates itself (a ``UserError`` naming the field)."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = False
    weights: Optional[str] = None       # local weights file (exclusive with pretrained)
    deep: str = "tune"                  # "fixed" | "half" | "tune"
    freeze_first: int = 0               # VGG-16 paper: the first N weight layers fixed
    head: str = "linear"                # "linear" | "mlp"
    head_hidden: int = 512
    head_dropout: float = 0.5
    drop_rate: float = 0.0              # dropout on the pooled deep features
    parts: Tuple[str, ...] = ("deep",)  # subset of PARTS containing "deep", stored in canonical order
    wide_hidden: int = 100
    rnn_hidden: int = 20
    label_embeddings: str = "frozen"    # "random" | "frozen" | "trainable"
    embed_dim: int = 20                 # used with "random"; otherwise the stored vectors' dim

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise _bad("backbone", self.backbone, "name a timm model, e.g. tf_efficientnet_lite0")
        if not isinstance(self.pretrained, bool):
            raise _bad("pretrained", self.pretrained, "use true or false")
        if self.weights is not None:
            if not isinstance(self.weights, str) and not hasattr(self.weights, "__fspath__"):
                raise _bad("weights", self.weights, "pass the path of a .pth or .safetensors file")
            object.__setattr__(self, "weights", str(os.fspath(self.weights)))
            if self.pretrained:
                raise _bad("weights", self.weights, "pass either --pretrained or --weights PATH, not both")
        for field, choices in (("deep", DEEP_MODES), ("head", HEADS), ("label_embeddings", EMBEDDINGS)):
            if getattr(self, field) not in choices:
                raise _bad(field, getattr(self, field), f"use one of {', '.join(choices)}")
        check_all("model config", self, MODEL_BOUNDS)
        parts = (self.parts,) if isinstance(self.parts, str) else tuple(self.parts)
        unknown = [p for p in parts if p not in PARTS]
        shown = ",".join(map(str, parts))
        if unknown:
            raise _bad("parts", shown, f"{unknown[0]!r} is not a part; use a subset of {', '.join(PARTS)}")
        if "deep" not in parts:
            raise _bad("parts", shown, "the deep part is always needed; add deep")
        object.__setattr__(self, "parts", tuple(p for p in PARTS if p in parts))

    def to_dict(self) -> Dict:
        """Plain JSON-able dict; ``ModelConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d


def _group_name(names: List[str]) -> str:
    """A readable name for a group of parameter names: 'blocks.0', 'layer1', 'conv_stem,bn1'."""
    heads: List[str] = []
    for n in names:  # up to the first numbered part: blocks.0.0.conv_dw.weight -> blocks.0
        bits = n.split(".")
        head = ".".join(bits[:2]) if len(bits) > 2 and bits[1].isdigit() else bits[0]
        if head not in heads:
            heads.append(head)
    split = [h.split(".") for h in heads]
    common = [c[0] for c in zip(*split) if len(set(c)) == 1]
    return ".".join(common) if len(heads) > 1 and common else ",".join(heads)


def backbone_groups(backbone: nn.Module) -> List[Tuple[str, List[str]]]:
    """(name, parameter names) of each coarse group of ``backbone.group_matcher``, in order."""
    from timm.models import group_parameters

    try:
        matcher = backbone.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError) as e:
        raise UserError(f"backbone {type(backbone).__name__} has no stage grouping (group_matcher) for --deep half; "
                        "use --deep fixed, --deep tune or --freeze-first N") from e
    groups = group_parameters(backbone, matcher)
    return [(_group_name(groups[k]), list(groups[k])) for k in sorted(groups)]


def weight_layers(backbone: nn.Module) -> List[str]:
    """Names of the conv / linear modules with weights, in registration order."""
    return [n for n, m in backbone.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, nn.Parameter)]


def _first_layers_params(backbone: nn.Module, n: int) -> Tuple[List[str], List[str]]:
    """(the first n weight layers, every parameter name met before the (n+1)-th weight layer)."""
    layers = weight_layers(backbone)
    if n > len(layers):
        raise UserError(f"--freeze-first {n}: backbone {type(backbone).__name__} has only {len(layers)} weight "
                        f"layers; use a number up to {len(layers)}")
    stop = layers[n] if n < len(layers) else None
    params: List[str] = []
    for name, module in backbone.named_modules():
        if name == stop:
            break
        params += [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
    return layers[:n], params


def label_vector_tensor(mode: str, num_labels: int, vectors: Optional[np.ndarray]) -> Optional[Tensor]:
    """The stored label vectors as a float32 (L, d) tensor, checked; ``None`` for ``random``."""
    if mode == "random":
        return None
    if vectors is None:
        raise UserError(f"--label-embeddings {mode} needs the stored label vectors (the stats stage's "
                        "label embeddings); run stats first or use --label-embeddings random")
    e = torch.as_tensor(np.asarray(vectors), dtype=torch.float32).clone()
    if e.ndim != 2 or e.shape[0] != num_labels or e.shape[1] < 1:
        raise UserError(f"label vectors of shape {tuple(e.shape)} do not fit {num_labels} labels; "
                        "rerun the stats stage on this label space or use --label-embeddings random")
    if not torch.isfinite(e).all():
        raise UserError("label vectors contain NaN or inf; rerun the stats stage or use --label-embeddings random")
    return e


class Recurrent(nn.Module):
    """Bi-GRU over the label embeddings, initial states from x; returns flatten(G) (B, L * 2H)."""

    def __init__(self, num_labels: int, in_features: int, hidden: int, mode: str, embed_dim: int,
                 vectors: Optional[np.ndarray]) -> None:
        super().__init__()
        e = label_vector_tensor(mode, num_labels, vectors)
        if mode == "random":
            self.embeddings = nn.Parameter(torch.randn(num_labels, embed_dim))
        elif mode == "trainable":
            self.embeddings = nn.Parameter(e)
        else:
            self.register_buffer("embeddings", e)
        dim = self.embeddings.shape[1]
        self.h0_fwd = nn.Linear(in_features, hidden)
        self.h0_bwd = nn.Linear(in_features, hidden)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.out_features = num_labels * 2 * hidden

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            h0 = torch.stack([self.h0_fwd(x), self.h0_bwd(x)])               # (2, B, H)
            seq = self.embeddings.float().unsqueeze(0).expand(x.shape[0], -1, -1).contiguous()
            g, _ = self.gru(seq, h0)                                         # (B, L, 2H)
        return g.flatten(1)


def _head(cfg: ModelConfig, in_features: int, num_labels: int) -> nn.Module:
    if cfg.head == "linear":
        return nn.Linear(in_features, num_labels)
    h, p = cfg.head_hidden, cfg.head_dropout
    return nn.Sequential(nn.Linear(in_features, h), nn.ReLU(inplace=True), nn.Dropout(p),
                         nn.Linear(h, h), nn.ReLU(inplace=True), nn.Dropout(p), nn.Linear(h, num_labels))


class WDRModel(nn.Module):
    """Deep (+ Wide) (+ Recurrent) multi-label model; see the module doc for the formula."""

    def __init__(self, cfg: ModelConfig, backbone: nn.Module, num_labels: int, *, wide_dim: int = 0,
                 wide_mean: Optional[np.ndarray] = None, wide_std: Optional[np.ndarray] = None,
                 label_vectors: Optional[np.ndarray] = None) -> None:
        super().__init__()
        import timm

        if not isinstance(num_labels, int) or num_labels < 1:
            raise UserError(f"num_labels={num_labels!r}: the label space is empty; index a labelled split first")
        self.cfg = cfg
        self.num_labels = num_labels
        self.backbone = backbone
        # width of backbone(image): timm's head_hidden_size where the pooled output is wider than the
        # last feature map (VGG's fc6/fc7 "pre_logits": 4096 against num_features 512), else num_features
        self.num_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.data_config = timm.data.resolve_model_data_config(backbone)
        self.drop = nn.Dropout(cfg.drop_rate)
        in_features = self.num_features
        self.wide_dim = 0
        self.wide: Optional[nn.Module] = None
        if "wide" in cfg.parts:
            self.wide_dim = int(wide_dim)
            mean, std = self._wide_stats(self.wide_dim, wide_mean, wide_std)
            self.register_buffer("wide_mean", mean)
            self.register_buffer("wide_std", std)
            self.wide = nn.Sequential(nn.Linear(self.wide_dim, cfg.wide_hidden), nn.ReLU(inplace=True))
            in_features += cfg.wide_hidden
        self.recurrent: Optional[Recurrent] = None
        if "recurrent" in cfg.parts:
            self.recurrent = Recurrent(num_labels, self.num_features, cfg.rnn_hidden, cfg.label_embeddings,
                                       cfg.embed_dim, label_vectors)
            in_features += self.recurrent.out_features
        self.head = _head(cfg, in_features, num_labels)
        self.frozen_groups: List[str] = []   # names of the groups --deep half froze
        self.frozen_layers: List[str] = []   # names of the weight layers --freeze-first froze
        self.weights_digest: Optional[str] = None  # set by build_model
        self._freeze()

    @staticmethod
    def _wide_stats(dim: int, mean, std) -> Tuple[Tensor, Tensor]:
        """Checked float32 (mean, std); std 1 where it is 0 or undefined (constant features)."""
        if dim < 1 or mean is None or std is None:
            raise UserError("parts include wide but no wide features were given (wide_dim, wide_mean, wide_std); "
                            "compute features for the store (the features stage) or drop wide from --parts")
        m = torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(np.asarray(std), dtype=torch.float32).reshape(-1)
        if m.numel() != dim or s.numel() != dim:
            raise UserError(f"wide_mean / wide_std have {m.numel()} / {s.numel()} values for {dim} wide features; "
                            "recompute them on the training split's features")
        bad = ~torch.isfinite(s) | (s <= 0)
        if bad.any():
            log.info("wide: %d constant or undefined features get std 1", int(bad.sum()))
        return torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), torch.where(bad, torch.ones_like(s), s)

    def _freeze(self) -> None:
        cfg, frozen = self.cfg, set()
        names = [n for n, _ in self.backbone.named_parameters()]
        if cfg.deep == "fixed":
            frozen.update(names)
        elif cfg.deep == "half":
            groups = backbone_groups(self.backbone)
            half = groups[: len(groups) // 2]
            if not half:
                log.warning("--deep half: %s has %d group(s), so nothing is frozen", cfg.backbone, len(groups))
            self.frozen_groups = [g for g, _ in half]
            for _, params in half:
                frozen.update(params)
        if cfg.freeze_first:
            self.frozen_layers, params = _first_layers_params(self.backbone, cfg.freeze_first)
            frozen.update(params)
        for n, p in self.backbone.named_parameters():
            p.requires_grad_(n not in frozen)
        log.info("backbone %s: %d of %d parameter tensors frozen (deep=%s, freeze_first=%d)",
                 cfg.backbone, len(frozen), len(names), cfg.deep, cfg.freeze_first)

    def set_deep(self, deep: str) -> None:
        """Freeze the backbone as ``deep`` says (a recipe's phase changes it; the state dict stays the same)."""
        self.cfg = dataclasses.replace(self.cfg, deep=deep)
        self._freeze()

    def group_matcher(self, coarse: bool = False):
        """timm's layer groups (``param_groups_layer_decay``): the backbone's own, in order (one group where it
        has none), then the Wide, Recurrent and head parts together in the last, whose rate is undecayed."""
        from timm.models import group_parameters

        has = hasattr(self.backbone, "group_matcher")
        layers = group_parameters(self.backbone, self.backbone.group_matcher(coarse), reverse=True) if has else {}
        last = max(layers.values(), default=0) + 1
        return lambda name: (layers.get(name[9:], 0) if name.startswith("backbone.") else last,)

    def frozen_modules(self) -> List[str]:
        """Largest backbone submodules whose parameters are all frozen (``''`` = the whole backbone)."""
        out: List[str] = []

        def visit(prefix: str, module: nn.Module) -> None:
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                out.append(prefix)
                return
            for name, child in module.named_children():
                visit(f"{prefix}.{name}" if prefix else name, child)

        visit("", self.backbone)
        return out

    def train(self, mode: bool = True) -> "WDRModel":
        super().train(mode)
        if mode:
            for name in self.frozen_modules():
                self.backbone.get_submodule(name).eval()
        return self

    def forward_features(self, image: Tensor) -> Tensor:
        """Pooled deep features x (B, num_features), before dropout."""
        return self.backbone(image)

    def forward_head(self, x: Tensor, wide: Optional[Tensor] = None) -> Tensor:
        """Logits (B, L) from pooled features (and wide features when the model has the wide part)."""
        x = self.drop(x)
        parts = [x]
        if self.wide is not None:
            if wide is None:
                raise UserError("this model has the wide part but got no wide features; "
                                "load batches with the store's feature key")
            if wide.shape[-1] != self.wide_dim:
                raise UserError(f"wide features have {wide.shape[-1]} values, the model expects {self.wide_dim}; "
                                "use the features the model was trained with")
            z = (wide.float() - self.wide_mean) / self.wide_std
            parts.append(self.wide(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)))
        if self.recurrent is not None:
            parts.append(self.recurrent(x))
        z = torch.cat([p.to(x.dtype) for p in parts], dim=1) if len(parts) > 1 else x
        return self.head(z)

    def forward(self, image: Tensor, wide: Optional[Tensor] = None) -> Tensor:
        """Logits (B, num_labels)."""
        return self.forward_head(self.forward_features(image), wide)


class HeadOnly(nn.Module):
    """A model from its pooled deep features on (``forward_head``): what compile and DDP wrap, and what
    scores, when batches hold the backbone's cached embeddings instead of images."""

    def __init__(self, model: WDRModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, wide: Optional[Tensor] = None) -> Tensor:
        return self.model.forward_head(x, wide)


def build_model(cfg: ModelConfig, num_labels: int, *, wide_dim: int = 0,
                wide_mean: Optional[np.ndarray] = None, wide_std: Optional[np.ndarray] = None,
                label_vectors: Optional[np.ndarray] = None) -> WDRModel:
    """The backbone (with its weights) and the parts ``cfg`` asks for."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise UserError(f"num_labels={num_labels!r}: the label space is empty; index a labelled split first")
    if "wide" in cfg.parts:  # cheap checks before the backbone and its weights are loaded
        WDRModel._wide_stats(int(wide_dim), wide_mean, wide_std)
    if "recurrent" in cfg.parts:
        label_vector_tensor(cfg.label_embeddings, num_labels, label_vectors)
    backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)
    model = WDRModel(cfg, backbone, num_labels, wide_dim=wide_dim, wide_mean=wide_mean, wide_std=wide_std,
                     label_vectors=label_vectors)
    model.weights_digest = weights_digest(cfg.backbone, cfg.pretrained, cfg.weights)
    return model
