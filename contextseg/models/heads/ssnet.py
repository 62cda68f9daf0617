"""SSNet: joint saliency detection and weakly supervised segmentation (Zeng, Zhuge, Lu & Zhang, ICCV 2019, "Joint
Learning of Saliency Detection and Weakly Supervised Semantic Segmentation", Fig. 2): a segmentation network (SN)
predicting C + 1 maps (background first, then the C classes) and the Saliency Aggregation Module (SAM) predicting a
saliency score v_c in [0, 1] per class and aggregating the class probabilities into a saliency map

    P = softmax(SN(x))                     (B, C + 1, h, w), channel 0 = background
    v = sigmoid(FC(pool(x_deep)))           (B, C)
    S = sum_{c=1..C} v_c P_c                (B, 1, h, w), in [0, 1] since sum_c P_c <= 1 and v_c in [0, 1]

as the official code (github.com/zengxianyu/jsws, ``jls_fcn.py`` and the training scripts: ``fg = (softmax(seg)[:, 1:]
* v[:, 1:]).sum(1)``). Departures: the SN is our HRNetV2 concat head (FCN-style 1x1 conv-BN-ReLU + classifier on the
resized and concatenated backbone maps) instead of their DenseNet-169 FCN with transposed-conv skips; the official SAM
is a 16x16 conv on the 16x16 stride-16 map of a 256x256 input (a fully connected layer over the whole map), ours
pools the deepest map to ``sam_grid`` x ``sam_grid`` first and applies a ``sam_grid``-wide conv, so any input size
works (``sam_grid=1``: global average pooling + FC).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .common import check_feats, default_in_index
from .fcn import HRNetV2Head


def aggregate_saliency(probs: Tensor, scores: Tensor) -> Tensor:
    """SAM's saliency map: (B, C + 1, h, w) class probabilities (channel 0 background), (B, C) scores in [0, 1]
    -> (B, 1, h, w) S = sum_{c >= 1} v_c P_c (background contributes nothing)."""
    if probs.shape[1] != scores.shape[1] + 1:
        raise ContextSegError(f"SAM needs C + 1 probability maps for C scores, got {probs.shape[1]} and "
                              f"{scores.shape[1]}")
    return (probs[:, 1:] * scores[:, :, None, None]).sum(1, keepdim=True)


class SaliencyAggregation(nn.Module):
    """SAM scores: (B, C_in, h, w) -> (B, C) v = sigmoid(conv_{g x g}(adaptive_avg_pool_g(x))).

    Parameters: g * g * C_in * C + C (the official 16x16 conv is g = 16 on a 16x16 map)."""

    def __init__(self, in_channels: int, num_classes: int, grid: int = 4):
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ContextSegError(f"sam_grid must be an integer >= 1, got {grid!r}")
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Conv2d(in_channels, num_classes, kernel_size=grid)
        nn.init.normal_(self.fc.weight, std=0.02)  # the official weight_init: N(0, 0.02), bias 0
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(self.pool(x)).flatten(1))


class SSNetHead(nn.Module):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, C + 1, H_0, W_0) logits (channel 0 background), "saliency": (B, 1, H_0,
    W_0) S in [0, 1] (a probability, not a logit), "saliency_scores": (B, C) v, "class_logits": (B, C) the spatial mean
    of the C class logits (image-level scores for the multi-label loss, as the official ``pred_seg.mean(3).mean(2)[:,
    1:]``)}. All four outputs in eval mode too. ``num_classes`` is C; the head's ``num_classes`` attribute is the output
    width C + 1. ``in_index``: the maps of the SN (default all four on HRNet); ``sam_index``: the map of the SAM
    (default the last, deepest one)."""

    feat_module = "seg.last_layer.3"
    eval_outputs = ("out", "saliency", "saliency_scores", "class_logits")

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index=None, sam_index: int = -1,
                 sam_grid: int = 4):
        super().__init__()
        self.in_channels = list(in_channels)
        n = len(self.in_channels)
        if isinstance(sam_index, bool) or not isinstance(sam_index, int) or not -n <= sam_index < n:
            raise ContextSegError(f"sam_index={sam_index!r} does not pick one of the backbone's {n} maps; give an "
                                  f"index in -{n}..{n - 1}")
        self.num_foreground = num_classes
        self.num_classes = num_classes + 1
        self.sam_index = sam_index % n
        self.seg = HRNetV2Head(in_channels, num_classes + 1, in_index)
        self.sam = SaliencyAggregation(self.in_channels[self.sam_index], num_classes, sam_grid)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        check_feats(feats, self.in_channels, "SSNetHead")
        logits = self.seg(feats)["out"]
        scores = self.sam(feats[self.sam_index]).float()
        saliency = aggregate_saliency(logits.float().softmax(1), scores)
        return {"out": logits, "saliency": saliency, "saliency_scores": scores,
                "class_logits": logits[:, 1:].float().mean(dim=(2, 3))}


@HEADS.register("ssnet")
def build_ssnet(backbone: nn.Module, num_classes: int, in_index=None, sam_index: int = -1,
                sam_grid: int = 4) -> SSNetHead:
    """"ssnet": SSNet's segmentation network (C + 1 maps) + Saliency Aggregation Module; num_classes = C, the
    foreground classes (train it with data.dataset=weak_saliency, see contextseg/engine/weak.py)."""
    index = default_in_index(backbone) if in_index is None else in_index
    return SSNetHead(backbone.out_channels, num_classes, index, sam_index, sam_grid)
