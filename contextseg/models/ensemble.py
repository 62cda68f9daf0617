"""Ensembles of segmentation models: the mean of their softmax probabilities.

    p(x) = 1/M * sum_m softmax(up(f_m(x)))        up: bilinear resize of model m's logits to the input size

Each member is upsampled to the input's (H, W) before its softmax, so members with different output strides
(H/4 for HRNet heads, H/8 for a dilated ResNet) average pixel for pixel, and a member may itself be a
``MultiScale`` wrapper (pyramid, flip, sliding window). The output keeps the model contract: ``{"out": log p}``,
(B, 3, H, W) -> (B, K, H, W), so that ``softmax(out)`` is exactly the averaged probability and ``argmax(out)`` the
ensemble's prediction; losses, metrics and the Predictor take it as they take logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import ContextSegError
from .resize import align_corners_of, resize


class Ensemble(nn.Module):
    """Average the softmax probabilities of ``models`` (all with the same classes and input channels).

    names: optional labels of the members (checkpoint paths) for error messages and reports."""

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        models = list(models)
        if not models:
            raise ContextSegError("an ensemble needs at least one model (give one or more --checkpoint files)")
        names = [str(n) for n in names] if names is not None else [f"model {i}" for i in range(len(models))]
        for attr in ("num_classes", "in_channels"):
            values = [getattr(m, attr, None) for m in models]
            if len(set(values)) > 1:
                listing = ", ".join(f"{n}: {v}" for n, v in zip(names, values))
                raise ContextSegError(f"the ensemble's models differ in {attr} ({listing}); "
                                      f"ensemble only models trained for the same classes and inputs")
        self.members = nn.ModuleList(models)
        self.names = names
        self.num_classes = getattr(models[0], "num_classes", None)
        self.in_channels = getattr(models[0], "in_channels", 3)
        for attr in ("classes", "palette"):
            setattr(self, attr, getattr(models[0], attr, None))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        probs = None
        for model in self.members:
            logits = resize(model(x)["out"].float(), size, align_corners_of(model))
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
        probs = probs / len(self.members)
        return {"out": probs.clamp_min(torch.finfo(probs.dtype).tiny).log()}
