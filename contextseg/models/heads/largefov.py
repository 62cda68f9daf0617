"""DeepLab-LargeFOV head (Chen, Papandreou, Kokkinos, Murphy & Yuille 2015, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", Sec. 4.1 and Table 2, "DeepLab-LargeFOV": kernel 3x3, input stride
(rate) 12, 1024 channels; also DeepLab v2, Fig. 4(a)): VGG's fc6/fc7 made convolutional and thinned to 1024
channels, fc6 atrous at rate 12 on the stride-8 map; ReLU and dropout 0.5 after each, then the fc8 classifier.
No BatchNorm (the 2015 network has none).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .common import AtrousConv2d, DecodeHead, init_classifier


@HEADS.register("largefov")
class LargeFOVHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)}, H, W the size of the chosen map.

        x    = adapter(feats)                                         (B, C, H, W)
        h6   = Dropout(ReLU(conv3x3_dilation_d(x) + b))               (B, F, H, W)   fc6, d = ``dilation`` (12)
        h7   = Dropout(ReLU(conv1x1(h6) + b))                         (B, F, H, W)   fc7
        out  = conv1x1(h7) + b                                        (B, K, H, W)   fc8

    F = ``channels`` (1024). Parameters: 9*C*F + F + F*F + F + F*K + K. "largefov" in ``HEADS``: ``dilation`` left
    None is 12 at stride 8 rescaled to the chosen map's stride.
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))
    atrous = ("dilation", 12, 8)

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 dilation: int = 12, channels: int = 1024, dropout: float = 0.5):
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ContextSegError(f"LargeFOV dilation must be a positive integer, got {dilation!r}; e.g. 12")
        super().__init__(in_channels, num_classes, in_index)
        self.dilation = dilation
        c = self.inputs.out_channels
        self.fc6 = nn.Sequential(
            AtrousConv2d(c, channels, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.fc7 = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.cls_head = init_classifier(nn.Conv2d(channels, num_classes, kernel_size=1))

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"out": self.cls_head(self.fc7(self.fc6(self.inputs(feats))))}
