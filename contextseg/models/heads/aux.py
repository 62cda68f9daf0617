"""Auxiliary FCN head for deep supervision (Zhao et al. 2017, "Pyramid Scene Parsing Network", Sec. 3.4 and
Fig. 4: an extra loss on ResNet's res4b22, i.e. c4, weighted 0.4, used in training only). Layout as
mmsegmentation's ``auxiliary_head`` of its ResNet configs (``FCNHead``, one 3x3 conv of 256 channels, Dropout2d 0.1).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .common import DecodeHead, conv_bn_relu


class AuxFCNHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> (B, K, H_a, W_a) logits of the map picked by ``in_index`` (c4 on a dilated ResNet:
    stride 8 at OS 8, 16 at OS 16).

        h   = ReLU(BN(conv3x3(x)))          (B, channels, H_a, W_a)
        aux = conv1x1(Dropout2d(h)) + b     (B, K, H_a, W_a)

    Parameters: 9 * C * channels + 2 * channels + channels * K + K (C the width of the picked map).
    ``Segmentor`` calls it in training mode only and returns its logits as "aux" (loss weight ``loss.weights.aux``,
    0.4 by default as in PSPNet).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -2,
                 channels: int = 256, dropout: float = 0.1):
        super().__init__(in_channels, num_classes, in_index)
        self.conv = conv_bn_relu(self.inputs.out_channels, channels, kernel_size=3)
        self.add_classifier(channels, dropout)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.classify(self.conv(self.inputs(feats)))
