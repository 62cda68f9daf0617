"""Non-local (self-attention) context head (Wang, Girshick, Gupta & He 2018, "Non-local Neural Networks"), the
relational-context baseline of the OCR paper, laid out as mmsegmentation's ``NLHead`` (an FCN head with two 3x3
conv-BN-ReLU layers and the non-local block between them, the input concatenated back before the classifier).
The block itself is ``contextseg.models.attention.NonLocal2d`` (embedded Gaussian, 1/sqrt(C') scaling).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...registry import HEADS
from ..attention import NonLocal2d
from .common import DecodeHead, conv_bn_relu


@HEADS.register("nonlocal")
class NonLocalHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)}, H, W the size of the chosen map.

        x    = adapter(feats)                                       (B, C, H, W)
        r    = ReLU(BN(conv3x3(x)))                                  (B, M, H, W)   reduce
        a    = NonLocal2d(r)                                         (B, M, H, W)   r + BN(W_z softmax(theta^T phi) g)
        h    = ReLU(BN(conv3x3(a)))                                  (B, M, H, W)
        h    = ReLU(BN(conv3x3(concat[x, h])))                       (B, M, H, W)   only with concat_input
        out  = conv1x1(Dropout2d(h)) + b                             (B, K, H, W)

    M = ``channels`` (512), C' = M // ``reduction`` (256). Parameters, with N = 3*(M*C' + C') + C'*M + 2M the block:
    9*C*M + 2M + N + 9*M*M + 2M [+ 9*(C + M)*M + 2M] + M*K + K.

    Memory grows as (H*W)^2 (the pairwise weights): use it on stride-8 maps (ResNet OS 8, or ``in_index=1`` on
    HRNet) for large images; the HRNet default (all four maps at stride 4) is fine for small crops.
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 channels: int = 512, reduction: int = 2, use_scale: bool = True, concat_input: bool = True,
                 dropout: float = 0.1):
        super().__init__(in_channels, num_classes, in_index)
        c = self.inputs.out_channels
        self.reduce = conv_bn_relu(c, channels, kernel_size=3)
        self.nl_block = NonLocal2d(channels, reduction=reduction, use_scale=use_scale)
        self.conv = conv_bn_relu(channels, channels, kernel_size=3)
        self.conv_cat = conv_bn_relu(c + channels, channels, kernel_size=3) if concat_input else None
        self.add_classifier(channels, dropout)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.inputs(feats)
        h = self.conv(self.nl_block(self.reduce(x)))
        if self.conv_cat is not None:
            h = self.conv_cat(torch.cat([x, h], dim=1))
        return {"out": self.classify(h)}
