"""Small pieces shared by heads: the feature adapter that picks and merges backbone outputs."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ContextSegError


def resize_concat(feats: Sequence[Tensor], size: Sequence[int] | None = None) -> Tensor:
    """Bilinearly resize every map to ``size`` (default: the first map's size) and concatenate along channels.

    [(B, C_0, H_0, W_0), (B, C_1, H_1, W_1), ...] -> (B, sum C_i, H_0, W_0); align_corners=False, as the HRNetV2
    representation head (Wang et al. 2019, Sec. 3, "HRNetV2": rescale low-resolution maps to the high resolution
    with bilinear upsampling and concatenate).
    """
    if size is None:
        size = feats[0].shape[-2:]
    size = tuple(size)
    maps = [
        f if tuple(f.shape[-2:]) == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in feats
    ]
    return torch.cat(maps, dim=1)


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
