"""DANet head (Fu, Liu, Tian, Li, Bao, Fang & Lu 2019, "Dual Attention Network for Scene Segmentation", Fig. 2 and
Sec. 3.4; laid out as the official ``DANetHead``): a position-attention branch and a channel-attention branch, each
reduced by a 3x3 conv before and refined by one after its attention module, summed and classified. The relational
baseline beside self-attention in the OCR paper's comparison. Blocks: ``contextseg.models.attention``.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ...registry import HEADS
from ..attention import ChannelAttention, PositionAttention
from .common import DecodeHead, classifier, conv_bn_relu


@HEADS.register("danet")
class DANetHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)} (+ "pam", "cam" in training), H, W the size of the chosen map.

        x    = adapter(feats)                                      (B, C, H, W)
        p    = conv51(PositionAttention(conv5a(x)))                (B, M, H, W)   conv5a/conv51: 3x3 conv-BN-ReLU
        c    = conv52(ChannelAttention(conv5c(x)))                 (B, M, H, W)
        out  = conv8(p + c), pam = conv6(p), cam = conv7(c)        (B, K, H, W)   Dropout2d 0.1 + 1x1 classifier

    M = ``channels`` (512, the official C / 4 for C = 2048). The official training sums the three losses with
    equal weights: ``loss.weights={out: 1.0, pam: 1.0, cam: 1.0}``. Parameters:
    2 * (9*C*M + 2M) + 2 * (M*M/8 + M/8) + M*M + M + 1 + 1 + 2 * (9*M*M + 2M) + 3 * (M*K + K).
    """

    feat_module = "conv8.1"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 channels: int = 512, dropout: float = 0.1):
        super().__init__(in_channels, num_classes, in_index)
        c = self.inputs.out_channels
        self.conv5a = conv_bn_relu(c, channels, kernel_size=3)
        self.pam = PositionAttention(channels)
        self.conv51 = conv_bn_relu(channels, channels, kernel_size=3)
        self.conv5c = conv_bn_relu(c, channels, kernel_size=3)
        self.cam = ChannelAttention()
        self.conv52 = conv_bn_relu(channels, channels, kernel_size=3)
        self.conv6 = classifier(channels, num_classes, dropout)
        self.conv7 = classifier(channels, num_classes, dropout)
        self.conv8 = classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.inputs(feats)
        p = self.conv51(self.pam(self.conv5a(x)))
        c = self.conv52(self.cam(self.conv5c(x)))
        out = {"out": self.conv8(p + c)}
        if self.training:
            out.update(pam=self.conv6(p), cam=self.conv7(c))
        return out
