"""Grad-CAM saliency maps of a run's model, per image and predicted label (hooks, no extra package).

``grad_cam(model, image, wide, targets, layer)``: for image b and each label
column c of ``targets[b]``, A = the layer's activation map (C, h, w), the
weights ``w_k = mean over (h, w) of d logit_c / d A_k``, and the map
``relu(sum_k w_k A_k)``, min-max scaled to [0, 1], resized to the input size
(bilinear, OpenCV) and scaled again: the same steps and numbers as the
``grad-cam`` package's ``GradCAM`` with one ``ClassifierOutputTarget`` per
image and label (checked in the tests). Each (image, label) pair is one row of
one batch, so a single backward pass gives all maps (BatchNorm is in eval
mode, so rows do not mix). The wide features stay fixed inputs.

The layer: the input of the backbone's global pooling when it has one (the
last feature map: ``bn2`` of EfficientNet, ``layer4`` of ResNet), else the
last module of timm's ``feature_info`` (VGG's last conv block).

Why not the package: it needs the model to take one tensor (a wrapper for the
wide input), pulls in ``ttach`` and ships as a source archive only, and for
this one method its maps are these. ``benchmarks/bench_saliency.py`` times
both (the figures are in docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn


def target_layer(backbone: nn.Module) -> Tuple[str, nn.Module, bool]:
    """``(name, module, use_input)``: where the last feature map of ``backbone`` is taken."""
    pool = getattr(backbone, "global_pool", None)
    if isinstance(pool, nn.Module):
        return "global_pool (its input)", pool, True
    info = getattr(backbone, "feature_info", None)
    if info:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return name, backbone.get_submodule(name), False
    convs = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1][0], convs[-1][1], False


def _scale(maps: np.ndarray, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Per map: minus its min, over (1e-7 + its max), then resized to ``size`` (w, h) as grad-cam does."""
    out = []
    for m in maps:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        out.append(cv2.resize(m, size) if size is not None else m)
    return np.float32(out)


def grad_cam(model: nn.Module, image: torch.Tensor, wide: Optional[torch.Tensor], targets: Sequence[Sequence[int]],
             layer: Optional[Tuple[str, nn.Module, bool]] = None) -> np.ndarray:
    """(B, K, H, W) float32 maps in [0, 1]: one per image of ``image`` (a normalised batch) and label
    column in ``targets[b]`` (K each)."""
    _, module, use_input = layer or target_layer(model.backbone)
    k = len(targets[0])
    if any(len(t) != k for t in targets) or len(targets) != image.shape[0]:
        raise ValueError("targets: one list of the same number of label columns per image")
    rows = torch.arange(image.shape[0]).repeat_interleave(k)
    cols = torch.tensor([c for t in targets for c in t])
    seen: Dict[str, torch.Tensor] = {}

    def hook(_module, inputs, output):
        seen["a"] = inputs[0] if use_input else output

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.autocast(image.device.type, enabled=False):
            x = image[rows].detach().float().requires_grad_(True)  # so the graph reaches a frozen backbone too
            w = None if wide is None else wide[rows].float()
            logits = model(x, w)
            acts = seen["a"]
            grads, = torch.autograd.grad(logits[torch.arange(len(rows)), cols].sum(), acts)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts.detach().float()).sum(dim=1)).cpu().numpy()
    h, w_ = image.shape[2], image.shape[3]
    maps = _scale(_scale(cam, (w_, h)))  # per layer, then over the (one) layer, as grad-cam aggregates
    return maps.reshape(image.shape[0], k, h, w_)


__all__ = ["grad_cam", "target_layer"]
