"""Pyramid Feature Attention head for salient object detection (Zhao & Wu 2019, "Pyramid Feature Attention Network
for Saliency Detection", Fig. 2; layout of the official Keras ``model.py``): context-aware pyramid features with
channel attention on the high-level maps (conv3_3 to conv5_3), spatial attention on the low-level ones (conv1_2,
conv2_2) computed from the high-level result, fused into one saliency logit map at the input resolution.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from ..attention import SEBlock, SpatialAttention
from ..resize import DEFAULT_ALIGN_CORNERS, resize
from .common import AtrousConv2d, DecodeHead, conv_bn_relu


class CPFE(nn.Module):
    """Context-aware pyramid feature extraction (Sec. 3.2, Fig. 3): a 1x1 conv and three 3x3 atrous convs (rates 3,
    5, 7), ``width`` channels each, no bias, concatenated, BN + ReLU. (B, C, H, W) -> (B, 4 * width, H, W).
    Parameters: 28 * C * width + 8 * width."""

    def __init__(self, in_channels: int, width: int = 32, rates: Sequence[int] = (3, 5, 7)):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, width, 1, bias=False)]
            + [AtrousConv2d(in_channels, width, 3, padding=r, dilation=r, bias=False) for r in rates]
        )
        self.bn = nn.BatchNorm2d(width * (len(rates) + 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(torch.cat([b(x) for b in self.branches], dim=1)))


@HEADS.register("pfa")
class PFAHead(DecodeHead):
    """[conv1_2, conv2_2, conv3_3, conv4_3, conv5_3] (VGG-16, strides 1 to 16) -> {"out": (B, K, H, W)} logits at
    the resolution of conv1_2 (the input's); K = 1 for saliency (sigmoid for the probability).

        h   = concat[CPFE(conv3_3), up(CPFE(conv4_3)), up(CPFE(conv5_3))]     (B, 384, H/4, W/4)
        h   = h * CA(h)                                                       CA: SE block, reduction 4 (Sec. 3.3)
        h   = up(ReLU(BN(conv1x1(h))))                                        (B, 64, H, W)
        l   = ReLU(BN(conv3x3(concat[g(conv3x3(conv1_2)), up(g(conv3x3(conv2_2)))])))   (B, 64, H, W)
        l   = l * SA(h)                                                       SA: SpatialAttention, k = 9
        out = conv3x3(concat[l, h]) + b                                       (B, K, H, W)

    up = bilinear resize to the target map's exact size (any input size works), with the model's align_corners
    (default True, as the official Keras ``BilinearUpsampling`` layer). The official
    Keras code adds an L1 activity regulariser on the CA weights; it is not in the paper and not here. "pfa" in
    ``HEADS`` (num_classes=1: one saliency logit per pixel).

    Ablations (the paper's Sec. 4.3 study of its two attention modules): ``channel_attention=False`` drops CA
    (h is used as it is), ``spatial_attention=False`` drops SA (l is not reweighted); both True is the paper's network.
    """

    feat_module = "fuse"  # its input is the penultimate representation (Segmentor(..., return_feat=True))
    backbone_options = ()

    def __init__(self, in_channels: Sequence[int], num_classes: int = 1, width: int = 32, channels: int = 64,
                 channel_attention: bool = True, spatial_attention: bool = True):
        in_channels = list(in_channels)
        if len(in_channels) != 5:
            raise ContextSegError(f"PFAHead needs the five VGG-16 taps (conv1_2 ... conv5_3), got a backbone with "
                                  f"{len(in_channels)} outputs; use backbone='vgg16'")
        super().__init__(in_channels, num_classes, adapter=False)
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's setting (models/resize.py)
        self.c1_conv = conv_bn_relu(in_channels[0], channels, 3, bias=True)
        self.c2_conv = conv_bn_relu(in_channels[1], channels, 3, bias=True)
        self.cpfe = nn.ModuleList(CPFE(c, width) for c in in_channels[2:])
        high = 3 * 4 * width
        self.channel_attention = SEBlock(high, reduction=4) if channel_attention else nn.Identity()
        self.c345_conv = conv_bn_relu(high, channels, 1, bias=True)
        self.spatial_attention = SpatialAttention(channels) if spatial_attention else None
        self.c12_conv = conv_bn_relu(2 * channels, channels, 3, bias=True)
        self.fuse = nn.Conv2d(2 * channels, num_classes, 3, padding=1)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(feats) != 5:
            raise ContextSegError(f"PFAHead got {len(feats)} feature maps; it needs the five VGG-16 taps")
        c1, c2, c3, c4, c5 = feats
        pyramid = [cpfe(f) for cpfe, f in zip(self.cpfe, (c3, c4, c5))]
        ac, size0, size1 = self.align_corners, pyramid[0].shape[-2:], c1.shape[-2:]
        high = torch.cat([pyramid[0]] + [resize(p, size0, ac) for p in pyramid[1:]], dim=1)
        high = resize(self.c345_conv(self.channel_attention(high)), size1, ac)
        low = torch.cat([self.c1_conv(c1), resize(self.c2_conv(c2), size1, ac)], dim=1)
        low = self.c12_conv(low)
        if self.spatial_attention is not None:
            low = low * self.spatial_attention(high)
        return {"out": self.fuse(torch.cat([low, high], dim=1))}
