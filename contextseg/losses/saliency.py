"""Saliency loss of the Pyramid Feature Attention network (Zhao & Wu 2019, Sec. 3.4, Eqs. 5-7; official Keras
``EdgeHoldLoss``): binary cross-entropy on the saliency logits plus an edge-preservation term, a cross-entropy
between the Laplacian edges of the predicted and the true saliency maps.

    L   = w_s * BCE(x, y; pos_weight) + w_e * BCE(edge(sigmoid(x)), edge(y))
    edge(m) = ReLU(tanh(laplace3x3 * m)),  laplace = [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]] (zero padding)

Defaults as the official code: w_s = 0.7, w_e = 0.3, pos_weight = 1.12. Logits (B, 1, h, w) are resized
(bilinear) to the labels (B, H, W) in {0, 1}; pixels labelled ``ignore_index`` (crop padding) count in neither
term. Registered as loss "edge_hold" (``loss.name=edge_hold``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError
from ..models.resize import DEFAULT_ALIGN_CORNERS, resize
from ..registry import LOSSES

LAPLACE = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]).view(1, 1, 3, 3)


def laplace_edges(m: Tensor) -> Tensor:
    """(B, 1, H, W) map in [0, 1] -> (B, 1, H, W) edge strength in [0, 1): ReLU(tanh(Laplacian))."""
    return F.relu(torch.tanh(F.conv2d(m, LAPLACE.to(m), padding=1)))


@LOSSES.register("edge_hold")
class EdgePreservingLoss(nn.Module):
    """logits (B, 1, h, w), labels (B, H, W) {0, 1, ignore_index} -> scalar (see the module docstring)."""

    def __init__(self, saliency_weight: float = 0.7, edge_weight: float = 0.3, pos_weight: float = 1.12,
                 ignore_index: int = 255, eps: float = 1e-7):
        super().__init__()
        self.saliency_weight, self.edge_weight = float(saliency_weight), float(edge_weight)
        self.pos_weight, self.ignore_index, self.eps = float(pos_weight), ignore_index, eps
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's, set by the trainer

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.dim() != 4 or logits.shape[1] != 1:
            raise ContextSegError(f"the saliency loss takes one logit map (B, 1, H, W), got {tuple(logits.shape)}; "
                                  f"build the model with num_classes=1")
        logits = resize(logits, labels.shape[-2:], self.align_corners).float()
        valid = (labels != self.ignore_index).unsqueeze(1).float()
        target = (labels == 1).unsqueeze(1).float()
        if (labels[labels != self.ignore_index] > 1).any():
            raise ContextSegError("saliency labels must be 0 (background) or 1 (salient); binarise the masks")
        denom = valid.sum().clamp_min(1.0)
        pos = torch.tensor(self.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos, reduction="none")
        loss = self.saliency_weight * (bce * valid).sum() / denom
        if self.edge_weight:
            pred_edge = laplace_edges(torch.sigmoid(logits) * valid).clamp(self.eps, 1 - self.eps)
            true_edge = laplace_edges(target * valid)
            edge = -(true_edge * pred_edge.log() + (1 - true_edge) * (1 - pred_edge).log())  # BCE, autocast-safe
            loss = loss + self.edge_weight * (edge * valid).sum() / denom
        return loss
