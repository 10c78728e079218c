"""Grad-CAM (wdr_pipe.wdr.model.saliency): the maps equal those of the grad-cam package (pytorch_grad_cam),
for a Deep model and for a Wide + Deep + Recurrent one whose wide input the package sees as fixed.

Real timm models (tf_efficientnet_lite0 at 64 px, random weights: Grad-CAM's arithmetic does not
care whether the model is trained) and real images; the package is the oracle, as scikit-learn is
for the metrics.
"""
import numpy as np
import pytest
import torch
from torch import nn

from wdr_pipe.wdr.model.network import ModelConfig, build_model
from wdr_pipe.wdr.model.saliency import grad_cam, target_layer

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class FixedWide(nn.Module):
    """The WDR model as a one-tensor model for the package: its wide input fixed per row."""

    def __init__(self, model, wide):
        super().__init__()
        self.model, self.wide = model, wide

    def forward(self, x):
        return self.model(x, self.wide)


def package_maps(model, x, wide, targets):
    rows = [b for b, t in enumerate(targets) for _ in t]
    wrapped = FixedWide(model, None if wide is None else wide[rows])
    # a frozen backbone (--deep fixed) gives the package no gradient unless the input asks for one
    with GradCAM(model=wrapped, target_layers=[model.backbone.bn2]) as cam:
        cam.compute_input_gradient = True
        maps = cam(input_tensor=x[rows], targets=[ClassifierOutputTarget(c) for t in targets for c in t])
    return maps.reshape(len(targets), len(targets[0]), *maps.shape[1:])


@pytest.mark.parametrize("parts", ["deep", "deep,wide,recurrent"])
def test_grad_cam_equals_the_grad_cam_package(parts):
    torch.manual_seed(0)
    wide_dim = 30
    model = build_model(ModelConfig(parts=tuple(parts.split(",")), label_embeddings="random", deep="fixed"), 12,
                        wide_dim=wide_dim, wide_mean=np.zeros(wide_dim), wide_std=np.ones(wide_dim)).eval()
    x = torch.randn(3, 3, 64, 64)
    wide = torch.randn(3, wide_dim) if "wide" in parts else None
    targets = [[0, 5], [3, 11], [7, 7]]
    ours = grad_cam(model, x, wide, targets)
    assert ours.shape == (3, 2, 64, 64) and ours.min() >= 0 and ours.max() <= 1
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: nothing accumulated in the model
    theirs = package_maps(model, x, wide, targets)
    assert np.allclose(ours, theirs, atol=1e-4), np.abs(ours - theirs).max()
    assert not np.allclose(ours[0, 0], ours[0, 1], atol=1e-2)  # one map per label, not per image
    assert target_layer(model.backbone)[0] == "global_pool (its input)"  # = bn2's output for EfficientNet
