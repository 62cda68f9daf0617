"""The package's one bilinear resize, and the model setting that fixes its corner alignment.

``align_corners=True`` maps the corner pixels of the input and output grids onto each other; ``False`` (torch's
default) aligns pixel centres at half-pixel offsets. The official HRNet-OCR code resizes with ``True`` everywhere
(``MODEL.ALIGN_CORNERS``, default True in ``lib/config/default.py``): HRNet's fusion, the HRNetV2 concat, OCR's
context, the loss and the test-time upsampling. A model trained one way and run the other way gives other logits
(28-30% of the logit scale for official HRNet weights), so the setting belongs to the model: ``create_model(...,
align_corners=...)`` records it in ``init_args`` (hence in checkpoints), ``set_align_corners`` writes it into every
module that resizes, and losses, metrics and prediction read it back with ``align_corners_of(model)``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_ALIGN_CORNERS = True  # the official code of HRNet-OCR, openseg, PSPNet (semseg), DANet and DeepLab (Caffe)
LEGACY_ALIGN_CORNERS = False  # checkpoints written before the setting existed were trained this way


def resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear; returned unchanged when it already has that size."""
    size = tuple(size)  # no int(): under torch.export the sizes are symbols and must stay so
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def set_align_corners(model: nn.Module, value: bool) -> nn.Module:
    """Write ``value`` into every submodule that declares an ``align_corners`` attribute (and the model itself)."""
    value = bool(value)
    for module in model.modules():
        if hasattr(module, "align_corners"):
            module.align_corners = value
    model.align_corners = value
    return model


def align_corners_of(model, default: bool = LEGACY_ALIGN_CORNERS) -> bool:
    """The model's setting, looked up through DDP / compile / inference wrappers nested in any order (``.module``,
    ``._orig_mod``, ``.source``, ``.model``); ``default`` for foreign modules."""
    while not hasattr(model, "align_corners"):
        inner = next((getattr(model, a) for a in ("module", "_orig_mod", "source", "model")
                      if isinstance(getattr(model, a, None), nn.Module)), None)
        if inner is None:
            break
        model = inner
    return bool(getattr(model, "align_corners", default))
