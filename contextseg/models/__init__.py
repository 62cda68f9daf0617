"""Models: ``create_model(arch, backbone=..., num_classes=..., in_channels=..., **head_kwargs) -> Segmentor``.

Backbones are registered in ``registry.BACKBONES`` (name -> ``(in_channels=3) -> module``), segmentation
architectures in ``registry.HEADS`` (name -> ``(backbone_module, num_classes, **head_kwargs) -> head``).
"""
from __future__ import annotations

import inspect

from ..errors import ContextSegError
from ..registry import BACKBONES, HEADS
from . import backbones, heads  # noqa: F401  (importing them registers the built-in names)
from .fuse import fuse_conv_bn
from .segmentor import Segmentor

__all__ = ["create_model", "list_models", "list_backbones", "Segmentor", "fuse_conv_bn"]


def _positive_int(name: str, value, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContextSegError(f"{name} must be an integer >= 1, got {value!r}; {hint}")


def create_model(
    arch: str,
    backbone: str = "hrnetv2_w18_small_v2",
    num_classes: int = 19,
    in_channels: int = 3,
    **head_kwargs,
) -> Segmentor:
    """Build ``arch`` (e.g. "fcn", "ocr") on ``backbone`` (e.g. "hrnetv2_w48").

    The model maps a float batch (B, in_channels, H, W) to {"out": (B, num_classes, ceil(H/4), ceil(W/4))}, plus
    "aux" of the same shape in training mode for heads with an auxiliary output (OCR). Any H, W >= 1 works.

    ``model.init_args`` records every argument, so ``create_model(**model.init_args)`` rebuilds the same model
    (same parameter names and shapes; weights are initialised afresh).
    """
    build_head = HEADS.get(arch)
    build_backbone = BACKBONES.get(backbone)
    _positive_int("num_classes", num_classes, "set it to the number of classes in your labels (19 for Cityscapes)")
    _positive_int("in_channels", in_channels, "use 3 for RGB images, 1 for grayscale")
    try:
        inspect.signature(build_head).bind(None, num_classes, **head_kwargs)
    except TypeError:
        accepted = [p for p in inspect.signature(build_head).parameters][2:]
        raise ContextSegError(
            f"model {arch!r} does not take the options {sorted(head_kwargs)}; it accepts: "
            f"{', '.join(accepted) or '(no extra options)'}"
        ) from None
    body = build_backbone(in_channels=in_channels)
    model = Segmentor(body, build_head(body, num_classes, **head_kwargs))
    model.init_args = dict(
        arch=arch, backbone=backbone, num_classes=num_classes, in_channels=in_channels, **head_kwargs
    )
    return model


def list_models() -> list[str]:
    """Names of the segmentation architectures ``create_model`` accepts as ``arch``."""
    return HEADS.names()


def list_backbones() -> list[str]:
    """Names of the backbones ``create_model`` accepts as ``backbone``."""
    return BACKBONES.names()
