"""Backbone + head -> a dict of logits (the one model contract of contextseg)."""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ContextSegError


class Segmentor(nn.Module):
    """(B, C_in, H, W) float image batch -> {"out": (B, K, h, w)} (+ "aux" in training mode when the head has one).

    Logits stay at the head's resolution: stride 4 for heads on all HRNet maps, i.e. h = ceil(H / 4), w = ceil(W / 4)
    (every stride-2 conv of the stem maps n -> ceil(n / 2)); the output stride (8 or 16) for heads on a dilated ResNet. Upsampling to the label size belongs to losses, metrics and
    prediction, never to the model.

    In eval mode only "out" is returned. Heads that can skip their auxiliary branch check ``self.training``
    themselves; OCR always computes its soft object regions, since "out" needs them.

    Attributes:
        num_classes, in_channels: the model's output and input widths.
        init_args: the keyword arguments of ``create_model`` that rebuild this model (set by ``create_model``,
            saved next to the weights in checkpoints).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_channels: int = backbone.in_channels
        self.num_classes: int = head.num_classes
        self.init_args: dict = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not x.is_floating_point():
            raise ContextSegError(
                f"the model takes a float image batch, got dtype {x.dtype}; convert with x.float() / 255 "
                f"(and normalize) before calling it"
            )
        out = self.head(self.backbone(x))
        if not self.training:
            out = {"out": out["out"]}
        return out
