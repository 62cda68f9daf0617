"""FCN-8s (Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation", Sec. 4.2 and
Fig. 3): class scores predicted from three depths of the backbone (strides 32, 16 and 8) and fused coarse to fine by
learnable 2x upsampling (transposed convolution initialised to bilinear interpolation) and summation (the skips).

Our output stays at stride 8 (the paper's final fixed 8x bilinear upsampling is left to losses, metrics and
prediction, as everywhere in contextseg).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .common import DecodeHead, check_feats


def bilinear_kernel(kernel_size: int) -> Tensor:
    """The (kernel_size, kernel_size) bilinear interpolation kernel of the classic FCN ``get_upsampling_weight``:

        factor = ceil(k / 2);  center = factor - 1 (k odd) or factor - 0.5 (k even)
        kernel[i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor)

    For k = 4 (the 2x upsampling) the 1-D profile is [0.25, 0.75, 0.75, 0.25]; for k = 16 (8x), 1/16, 3/16, ..., 15/16,
    15/16, ..., 1/16.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ContextSegError(f"bilinear kernel size must be a positive integer, got {kernel_size!r}; use 2 * factor")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    profile = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(profile, profile)


def bilinear_upsampling_weight(channels: int, kernel_size: int) -> Tensor:
    """ConvTranspose2d weight (channels, channels, k, k) that upsamples every channel on its own by bilinear
    interpolation: ``weight[c, c] = bilinear_kernel(k)`` and zero off the diagonal (FCN's ``get_upsampling_weight``).
    """
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = bilinear_kernel(kernel_size)
    return weight


def bilinear_upsample_2x(channels: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """2x upsampling: ConvTranspose2d(channels, channels, kernel 4, stride 2, padding 1, no bias), bilinear init.

    Maps (B, C, n, m) -> (B, C, 2n, 2m). Relation to interpolation: with the bilinear weight it equals
    ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` at every output pixel except the
    one-pixel frame: output 2i takes 0.75 x[i] + 0.25 x[i-1] and 2i+1 takes 0.75 x[i] + 0.25 x[i+1] in both, but at
    the border the transposed conv reads the zero padding (output 0 is 0.75 x[0]) where interpolate clamps to the
    edge (x[0]). A constant map c thus becomes c inside, 0.75 c on the edges and 0.5625 c at the corners.
    """
    up = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_upsampling_weight(channels, 4).to(up.weight.dtype))
    up.weight.requires_grad_(learnable)
    return up


def _fit(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop the upsampled map to the skip's size (2n may exceed ceil(H/s) by one pixel; FCN's Crop layer). Pixel 0 of
    both maps covers the same image corner, so the crop keeps the top-left. A smaller map (not produced by the
    backbones here) is resized instead."""
    h, w = size
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return x[..., :h, :w]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def pick_strides(strides: Sequence[int], wanted: Sequence[int] = (8, 16, 32)) -> list[int]:
    """Indices of the deepest backbone map at each wanted stride, e.g. HRNet [4, 8, 16, 32] -> [1, 2, 3]."""
    index = []
    for s in wanted:
        hits = [i for i, t in enumerate(strides) if t == s]
        if not hits:
            raise ContextSegError(
                f"FCN-8s needs backbone maps at strides {list(wanted)}, but the backbone's strides are "
                f"{list(strides)}; use an HRNet backbone or a ResNet with output_stride=32"
            )
        index.append(hits[-1])
    return index


@HEADS.register("fcn8s")
class FCN8sHead(DecodeHead):
    """FCN-8s: [(B, C_i, H_i, W_i)] -> {"out": (B, K, ceil(H/8), ceil(W/8))} for an (H, W) image.

    With x8, x16, x32 the backbone maps at strides 8, 16, 32 (chosen by ``backbone.strides``):

        s32  = score_fr(x32)                                   1x1 conv + bias, (B, K, H/32, W/32)
        s16  = score_pool4(x16) + crop(upscore2(s32))          (B, K, H/16, W/16)
        out  = score_pool3(x8) + crop(upscore_pool4(s16))      (B, K, H/8,  W/8)

    ``upscore2`` and ``upscore_pool4`` are ConvTranspose2d(K, K, 4, stride 2, padding 1, no bias) initialised to
    bilinear interpolation and learned (paper Sec. 3.3 and 4.2). The score layers start at zero, as the paper's class
    scoring layers do (it found random initialisation gave neither better results nor faster convergence), so the
    net starts from a zero prediction and the skips start as no-ops.

    Parameters: K * (C8 + C16 + C32 + 3) + 2 * 16 * K^2  (three 1x1 score layers with bias, two 4x4 K->K deconvs).
    Layer names follow the paper's Caffe net (score_fr, score_pool4, score_pool3, upscore2, upscore_pool4).
    "fcn8s" in ``HEADS``: on the backbone maps at strides 8, 16, 32 (HRNet; ResNet with output_stride=32).
    """

    feat_module = "score_pool3"  # its input (the stride-8 backbone map) is "feat" (Segmentor return_feat)
    backbone_options = ()

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int,
                 learnable_upsampling: bool = True):
        super().__init__(in_channels, num_classes, adapter=False)
        self.in_index = pick_strides(strides)
        c8, c16, c32 = (self.in_channels[i] for i in self.in_index)
        self.score_fr = nn.Conv2d(c32, num_classes, kernel_size=1)
        self.score_pool4 = nn.Conv2d(c16, num_classes, kernel_size=1)
        self.score_pool3 = nn.Conv2d(c8, num_classes, kernel_size=1)
        for conv in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.upscore2 = bilinear_upsample_2x(num_classes, learnable_upsampling)
        self.upscore_pool4 = bilinear_upsample_2x(num_classes, learnable_upsampling)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        check_feats(feats, self.in_channels, type(self).__name__)
        x8, x16, x32 = (feats[i] for i in self.in_index)
        s16 = self.score_pool4(x16)
        s16 = s16 + _fit(self.upscore2(self.score_fr(x32)), s16.shape[-2:])
        s8 = self.score_pool3(x8)
        return {"out": s8 + _fit(self.upscore_pool4(s16), s8.shape[-2:])}

    def extra_repr(self) -> str:
        return f"in_index={self.in_index}"

    @classmethod
    def from_backbone(cls, backbone: nn.Module, num_classes: int, **options) -> FCN8sHead:
        """FCN-8s on ``backbone`` (its ``out_channels`` and ``strides``)."""
        return cls(backbone.out_channels, backbone.strides, num_classes, **options)
