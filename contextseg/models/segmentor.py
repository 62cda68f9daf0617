"""Backbone + head -> a dict of logits (the one model contract of contextseg)."""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ContextSegError
from .resize import DEFAULT_ALIGN_CORNERS


class Segmentor(nn.Module):
    """(B, C_in, H, W) float image batch -> {"out": (B, K, h, w)} (+ "aux" in training mode when the head has one).

    Logits stay at the head's resolution: stride 4 for heads on all HRNet maps, i.e. h = ceil(H / 4), w = ceil(W / 4)
    (every stride-2 conv of the stem maps n -> ceil(n / 2)); the output stride (8 or 16) for heads on a dilated ResNet. Upsampling to the label size belongs to losses, metrics and
    prediction, never to the model.

    In eval mode only "out" is returned (or the outputs a head lists in ``eval_outputs``: the classification
    heads of heads/saol.py, whose "out" is (B, K)); ``model(x, return_aux=True)`` keeps "aux" too (OCR's soft object
    regions, an auxiliary head's logits), e.g. to compare with the official model, which returns both. Heads that can skip their auxiliary branch check ``self.training``
    themselves; OCR always computes its soft object regions, since "out" needs them.

    ``model(x, return_feat=True)`` adds "feat": the head's penultimate representation, i.e. the input of the
    head's module named by its ``feat_module`` attribute (the final classifier, e.g. "cls_head" for OCR: the
    512-channel object-contextual representations; after the head's dropout where one precedes the classifier,
    so dropped out in training), (B, feat_channels, h, w) at the logits' resolution. It is
    read with a forward pre-hook for that one call, so heads need no extra output. Attention over scales
    (``contextseg.MultiScale``) feeds it to its attention net, as Attention to Scale used DeepLab's fc7 and
    hierarchical multi-scale attention used OCR's mid features.

    ``aux_head`` (optional, e.g. ``AuxFCNHead`` on ResNet's c4 as PSPNet) adds its logits as "aux" in training mode
    (deep supervision); a head with its own "aux" output (OCR's soft object regions) cannot take one.

    Attributes:
        num_classes, in_channels: the model's output and input widths.
        align_corners: how every bilinear resize of the model (and of its losses, metrics and predictions) aligns
            the grids; ``create_model`` sets it in all submodules (``models/resize.py``).
        init_args: the keyword arguments of ``create_model`` that rebuild this model (set by ``create_model``,
            saved next to the weights in checkpoints).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.in_channels: int = backbone.in_channels
        self.num_classes: int = head.num_classes
        self.init_args: dict = {}
        self.align_corners = DEFAULT_ALIGN_CORNERS

    def _feat_module(self) -> nn.Module:
        name = getattr(self.head, "feat_module", None)
        if not name:
            raise ContextSegError(
                f"head {type(self.head).__name__} declares no feat_module, so its features cannot be returned; "
                f"use merge='avg' or 'max' for multi-scale inference with this model"
            )
        return self.head.get_submodule(name)

    @property
    def feat_channels(self) -> int:
        """Width of the "feat" output (the in_channels of the head's ``feat_module``)."""
        return int(self._feat_module().in_channels)

    def forward(self, x: Tensor, return_feat: bool = False, return_aux: bool = False) -> dict[str, Tensor]:
        if not x.is_floating_point():
            raise ContextSegError(
                f"the model takes a float image batch, got dtype {x.dtype}; convert with x.float() / 255 "
                f"(and normalize) before calling it"
            )
        if not return_feat:
            return self._heads(self.backbone(x), return_aux)
        seen: list[Tensor] = []
        hook = self._feat_module().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            out = self._heads(self.backbone(x), return_aux)
        finally:
            hook.remove()
        out["feat"] = seen[0]
        return out

    def _heads(self, feats: list[Tensor], return_aux: bool = False) -> dict[str, Tensor]:
        out = self.head(feats)
        if not self.training:  # a head may keep more outputs in eval mode (SAOL: "gap", "attention", ...)
            keep = tuple(getattr(self.head, "eval_outputs", ("out",))) + (("aux",) if return_aux else ())
            out = {k: out[k] for k in keep if k in out}
            if return_aux and self.aux_head is not None:
                out["aux"] = self.aux_head(feats)
            return out
        out = dict(out)
        if self.aux_head is not None:
            if "aux" in out:
                raise ContextSegError(f"head {type(self.head).__name__} already returns 'aux'; build the model "
                                      f"with aux=False")
            out["aux"] = self.aux_head(feats)
        return out
