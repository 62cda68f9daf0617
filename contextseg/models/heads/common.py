"""Small pieces shared by heads: the feature adapter that picks and merges backbone outputs, conv-BN-ReLU,
classifier init and input checks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ..resize import DEFAULT_ALIGN_CORNERS, resize


def resize_concat(feats: Sequence[Tensor], size: Sequence[int] | None = None,
                  align_corners: bool = DEFAULT_ALIGN_CORNERS) -> Tensor:
    """Bilinearly resize every map to ``size`` (default: the first map's size) and concatenate along channels.

    [(B, C_0, H_0, W_0), (B, C_1, H_1, W_1), ...] -> (B, sum C_i, H_0, W_0), as the HRNetV2
    representation head (Wang et al. 2019, Sec. 3, "HRNetV2": rescale low-resolution maps to the high resolution
    with bilinear upsampling and concatenate; the official code with align_corners=True).
    """
    if size is None:
        size = feats[0].shape[-2:]
    return torch.cat([resize(f, size, align_corners) for f in feats], dim=1)


def check_feats(feats: Sequence[Tensor], in_channels: Sequence[int], head: str) -> None:
    """Raise a clear error when a head gets feature maps that do not match the widths it was built for."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    got = [int(f.shape[1]) for f in feats]
    if got != list(in_channels):
        raise ContextSegError(
            f"{head} was built for backbone widths {list(in_channels)} but got feature maps with {got} channels; "
            f"build the head with in_channels={got} (create_model does this from backbone.out_channels)"
        )


def default_in_index(backbone: nn.Module) -> int | list[int]:
    """The maps a head uses when none are named: the backbone's ``default_in_index`` attribute.

    HRNet declares [0, 1, 2, 3] (all four branches, resized and concatenated: the HRNetV2 representation);
    ResNet declares -1 (the last, stride-8 or stride-16 map, as PSPNet and DeepLab use it). -1 if not declared.
    """
    index = getattr(backbone, "default_in_index", -1)
    return index if isinstance(index, int) else list(index)


class FeatureAdapter(nn.Module):
    """Picks the map(s) a head runs on, as mmsegmentation's ``in_index`` / ``resize_concat`` (no parameters).

    One explicit choice, ``in_index``:
        an int i             -> feats[i]                                             (B, C_i, H_i, W_i)
        a list [i, j, ...]   -> resize_concat([feats[i], feats[j], ...]) at the size of feats[i]
                                                                                      (B, C_i + C_j + ..., H_i, W_i)
    Negative indices count from the end. ``out_channels`` is the width of the result.

    Args:
        in_channels: the widths of all backbone outputs (``backbone.out_channels``), checked on every call.
        in_index: which output(s) to use.
        head: the owning head's name, for error messages.
    """

    def __init__(self, in_channels: Sequence[int], in_index: int | Sequence[int] = -1, head: str = "head"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.head = head
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's setting (models/resize.py)
        n = len(self.in_channels)
        self.concat = not isinstance(in_index, int)
        index = [in_index] if isinstance(in_index, int) else list(in_index)
        if not index or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in index):
            raise ContextSegError(
                f"{head}: in_index={in_index!r} does not pick backbone outputs; the backbone has {n} maps, give an "
                f"index in -{n}..{n - 1} (one map) or a non-empty list of them (resized to the first and concatenated)"
            )
        self.in_index = [i % n for i in index]
        self.out_channels = sum(self.in_channels[i] for i in self.in_index)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        check_feats(feats, self.in_channels, self.head)
        if not self.concat:
            return feats[self.in_index[0]]
        return resize_concat([feats[i] for i in self.in_index], align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"in_index={self.in_index}, concat={self.concat}, out_channels={self.out_channels}"


def stride_of(backbone: nn.Module, index: int | Sequence[int]) -> int | None:
    """Stride of the map a head runs on (the first listed one for a concatenation); None for a bad index (the head's
    adapter then reports it)."""
    first = index if isinstance(index, int) else (list(index) or [None])[0]
    n = len(backbone.strides)
    valid = isinstance(first, int) and not isinstance(first, bool) and -n <= first < n
    return backbone.strides[first] if valid else None


def scale_rates(rates: Sequence[int], stride: int, at_stride: int) -> tuple[int, ...]:
    """Atrous rates given for a map of stride ``at_stride``, rescaled to a map of stride ``stride`` so that they
    cover the same field of view in image pixels: round(r * at_stride / stride), at least 1. E.g. DeepLab v3's
    6/12/18 at stride 16 become 12/24/36 at stride 8 and 24/48/72 on HRNet's stride-4 concatenation."""
    return tuple(max(1, round(r * at_stride / stride)) for r in rates)


def conv_bn_relu(in_c: int, out_c: int, kernel_size: int = 1, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv + BN + ReLU, padding keeping the size: (B, in_c, H, W) -> (B, out_c, H, W). The conv has no bias unless
    ``bias`` (the official OCR code and the Keras PFA code keep one).

    Parameters: k*k*in_c*out_c (+ out_c with bias) + 2*out_c.
    """
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=bias),
        nn.BatchNorm2d(out_c),
        nn.ReLU(inplace=True),
    )


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """Classifier init N(0, std), bias 0 (DeepLab's fc8 / mmsegmentation's conv_seg)."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def check_pooled_batch(x: Tensor, head: str) -> None:
    """BatchNorm after a global (1x1) pooling sees one value per channel when the batch is 1 in training mode,
    which torch rejects deep inside ``batch_norm``; say so plainly instead."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    if x.shape[0] == 1:
        raise ContextSegError(
            f"{head} has a global-pooling branch with BatchNorm, which cannot train on a batch of 1; "
            f"use batch_size >= 2 for training, or call model.eval() for inference"
        )
