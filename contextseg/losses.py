"""Segmentation losses. Each takes logits (B, K, h, w) and labels (B, H, W) and resizes the
logits to the labels (bilinear) before comparing, so models keep their stride-4 outputs.

`OutputsLoss` combines losses over a model's output dict by name, e.g. OCR's
CE(out) + 0.4 * CE(aux) (Yuan et al. 2020, Sec. 3.3).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import LOSSES


def resize_to(logits: torch.Tensor, size) -> torch.Tensor:
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with an ignore index and optional per-class weights."""

    def __init__(self, ignore_index: int = 255, class_weights: list[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        w = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = resize_to(logits, labels.shape[-2:]).float()
        if (labels == self.ignore_index).all():
            return logits.sum() * 0.0  # keeps the graph; an all-ignore crop contributes nothing
        return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.ignore_index)


class OutputsLoss(nn.Module):
    """Weighted sum of one pixel loss over named model outputs: sum_k w_k * loss(outputs[k], labels).

    Outputs that are absent (e.g. "aux" from an FCN head) are skipped. Returns (total, parts).
    """

    def __init__(self, criterion: nn.Module, weights: dict[str, float]):
        super().__init__()
        self.criterion = criterion
        self.weights = dict(weights)

    def forward(self, outputs: dict, labels: torch.Tensor):
        parts = {}
        total = None
        for name, w in self.weights.items():
            if name not in outputs or w == 0:
                continue
            value = self.criterion(outputs[name], labels)
            parts[name] = value.detach()
            total = w * value if total is None else total + w * value
        if total is None:
            raise KeyError(f"none of the loss outputs {list(self.weights)} is in the model's outputs {list(outputs)}")
        return total, parts


def build_loss(name: str = "ce", weights: dict[str, float] | None = None, ignore_index: int = 255, **kwargs) -> OutputsLoss:
    criterion = LOSSES.get(name)(ignore_index=ignore_index, **kwargs)
    return OutputsLoss(criterion, weights or {"out": 1.0, "aux": 0.4})
