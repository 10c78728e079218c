"""The training loss: ``Criterion``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


class Criterion(torch.nn.Module):
    """The loss: per image, the mean over labels of BCE (with ``pos_weight``) or of timm's asymmetric
    loss (so a batch's mean is ASL's sum divided by its element count: learning rates carry over);
    per batch, the mean over images, each weighted by ``weight`` when given (``--weighting loss``)."""

    def __init__(self, loss: str = "bce", pos_weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.loss = loss
        if loss == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            self.asl = AsymmetricLossMultiLabel(reduction="none", pos_weight=pos_weight)
        self.register_buffer("pos_weight", pos_weight)

    def per_image(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "asl":
            return self.asl(logits.float(), labels).mean(1)
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=self.pos_weight,
                                                  reduction="none").mean(1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None):
        per_image = self.per_image(logits, labels)
        return (per_image if weight is None else per_image * weight).mean()


__all__ = ["Criterion"]
