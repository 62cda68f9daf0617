"""DeepLab v3 ASPP head (Chen, Papandreou, Schroff & Adam 2017, "Rethinking Atrous Convolution for Semantic Image
Segmentation", Sec. 3.3 and Fig. 5): atrous spatial pyramid pooling with image-level features. One 1x1 conv and
three 3x3 atrous convs (rates 6, 12, 18 at output stride 16, doubled to 12, 24, 36 at output stride 8), each
256 channels with BN, plus global average pooling -> 1x1 conv; concatenated, projected by a 1x1 conv (256, BN)
and classified by a final 1x1 conv. Dropout 0.1 before the classifier, as the official TF code (keep 0.9).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .common import DecodeHead, check_pooled_batch, conv_bn_relu

BASE_RATES = (6, 12, 18)  # at output stride 16


@HEADS.register("aspp")
class ASPPHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)}, H, W the size of the chosen map.

        x    = adapter(feats)                                        (B, C, H, W)
        a_0  = ReLU(BN(conv1x1(x)))                                  (B, A, H, W)
        a_r  = ReLU(BN(conv3x3_dilation_r(x)))  for r in rates       (B, A, H, W)
        a_p  = resize(ReLU(BN(conv1x1(GAP(x)))), (H, W))             (B, A, H, W)   image pooling
        h    = ReLU(BN(conv1x1(concat[a_0, a_r..., a_p])))           (B, A, H, W)   projection
        out  = conv1x1(Dropout2d(h)) + b                             (B, K, H, W)

    A = ``channels`` (256). Parameters: (2 + 9 * len(rates)) * C*A + (len(rates) + 2) * A*A + 2A * (len(rates) + 3)
    + A*K + K.

    Training needs a batch of at least 2 (BatchNorm after the global pooling). "aspp" in ``HEADS``: ``rates`` left
    None are 6/12/18 at stride 16 rescaled to the chosen map's stride (12/24/36 on ResNet OS 8).
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))
    atrous = ("rates", BASE_RATES, 16)

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 rates: Sequence[int] = (12, 24, 36), channels: int = 256, dropout: float = 0.1):
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ContextSegError(f"ASPP rates must be positive integers, got {rates!r}; e.g. rates=[6, 12, 18]")
        super().__init__(in_channels, num_classes, in_index)
        self.rates = tuple(rates)
        c, a = self.inputs.out_channels, channels
        self.aspp = nn.ModuleList(
            [conv_bn_relu(c, a)] + [conv_bn_relu(c, a, kernel_size=3, dilation=r) for r in self.rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(c, a))
        self.project = conv_bn_relu((len(self.rates) + 2) * a, a)
        self.add_classifier(a, dropout)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.inputs(feats)
        if self.training:
            check_pooled_batch(x, type(self).__name__)
        branches = [branch(x) for branch in self.aspp]
        branches.append(self.image_pool(x).expand(-1, -1, *x.shape[-2:]))  # 1x1 -> (h, w): any bilinear resize is this
        return {"out": self.classify(self.project(torch.cat(branches, dim=1)))}
