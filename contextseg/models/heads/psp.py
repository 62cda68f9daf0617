"""PSPNet head (Zhao, Shi, Qi, Wang & Jia 2017, "Pyramid Scene Parsing Network", Sec. 3.2-3.3 and Fig. 3): the
pyramid pooling module pools the feature map into 1x1, 2x2, 3x3 and 6x6 bins, reduces each pooled map with a
1x1 conv, upsamples them back, and concatenates them with the input before the final conv and classifier.
Layout as mmsegmentation's ``PSPHead`` (``psp_modules``, ``bottleneck``, Dropout2d 0.1, classifier).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...registry import HEADS
from ..resize import DEFAULT_ALIGN_CORNERS, resize
from .common import DecodeHead, check_pooled_batch, conv_bn_relu


@HEADS.register("psp")
class PSPHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)}, H, W the size of the chosen map (stride 8 on ResNet OS 8).

        x     = adapter(feats)                                          (B, C, H, W)
        p_b   = ReLU(BN(conv1x1(AdaptiveAvgPool_b(x))))                 (B, P, b, b)  for b in bins (1, 2, 3, 6)
        u_b   = bilinear-resize(p_b, (H, W))                            (B, P, H, W), the model's align_corners
        h     = ReLU(BN(conv3x3(concat[x, u_1, u_2, u_3, u_6])))        (B, M, H, W)
        out   = conv1x1(Dropout2d(h)) + b                               (B, K, H, W)

    P = ``pool_channels`` (C / 4 by default, the paper's choice), M = ``channels`` (512).
    Parameters: len(bins) * (C*P + 2P) + 9*(C + len(bins)*P)*M + 2M + M*K + K.

    Training needs a batch of at least 2 (BatchNorm after the 1x1 pooled bin).
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 bins: Sequence[int] = (1, 2, 3, 6), pool_channels: int | None = None, channels: int = 512,
                 dropout: float = 0.1):
        super().__init__(in_channels, num_classes, in_index)
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's setting (models/resize.py)
        c = self.inputs.out_channels
        p = pool_channels or max(1, c // 4)
        self.bins = tuple(bins)
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(c, p)) for b in bins)
        self.bottleneck = conv_bn_relu(c + len(self.bins) * p, channels, kernel_size=3)
        self.add_classifier(channels, dropout)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.inputs(feats)
        if self.training and 1 in self.bins:
            check_pooled_batch(x, type(self).__name__)
        size = x.shape[-2:]
        pyramid = [x] + [resize(branch(x), size, self.align_corners) for branch in self.psp_modules]
        return {"out": self.classify(self.bottleneck(torch.cat(pyramid, dim=1)))}
