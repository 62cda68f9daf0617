"""SSNet: joint saliency detection and weakly supervised segmentation (Zeng, Zhuge, Lu & Zhang, ICCV 2019, "Joint
Learning of Saliency Detection and Weakly Supervised Semantic Segmentation", Fig. 2): a segmentation network (SN)
predicting C + 1 maps (background first, then the C classes) and the Saliency Aggregation Module (SAM) predicting a
saliency score v_c in [0, 1] per class and aggregating the class probabilities into a saliency map

    P = softmax(SN(x))                     (B, C + 1, h, w), channel 0 = background
    v = sigmoid(FC(pool(x_deep)))           (B, C)
    S = sum_{c=1..C} v_c P_c                (B, 1, h, w), in [0, 1] since sum_c P_c <= 1 and v_c in [0, 1]

as the official code (github.com/zengxianyu/jsws, ``jls_fcn.py`` / ``jls_deeplab.py`` and the training scripts:
``fg = (softmax(seg)[:, 1:] * v[:, 1:]).sum(1)``).

The SN (``seg_head``):
- "hrnetv2" (stage 1): our HRNetV2 concat head (1x1 conv-BN-ReLU + classifier on the resized and concatenated
  backbone maps), in place of the official stage-1 ``JLSFCN`` (DenseNet-169 with FCN-8s-style 1x1 score convs on
  three strides and transposed-conv upsampling).
- "aspp_l" (stage 2, SSNet-2): the official stage-2 ``JLSDL`` (``jls_deeplab.py``): DeepLab's ASPP-L, four 3x3
  classifiers with dilations 6 / 12 / 18 / 24 (padding = dilation) on one map, their score maps summed
  (``heads/aspp_l.py``). The official runs it on the stride-8 DenseNet map; we run it on the SN's ``in_index`` map(s)
  (HRNet: the stride-4 concatenation) with the rates rescaled to that stride (12 / 24 / 36 / 48 at stride 4) unless
  ``rates`` is given, and leave the upsampling to the loss and the metrics (bilinear) instead of the official
  learned x8 transposed conv.

The image-level class scores (``cls_head``, the input of the multi-label BCE):
- "mean" (stage 1): the spatial mean of the C class logits (official ``weak_seg_full_sal_train.py``:
  ``pred_seg.mean(3).mean(2)[:, 1:]``);
- "fc" (stage 2): a linear classifier on the global average of the SAM's map (official ``jls_deeplab.py``:
  ``cls_fc = Linear(avg_pool2d(feat32, 32))``, trained with BCE in ``self_seg_full_sal_train.py``).

SAM: the official is a 16x16 conv on the 16x16 stride-16 map of a 256x256 input (stage 1; 32x32 on the stride-8 map
in stage 2): a fully connected layer over the whole map. Ours pools the deepest map to ``sam_grid`` x ``sam_grid``
first and applies a ``sam_grid``-wide conv, so any input size works (``sam_grid=1``: global average pooling + FC).
All layers the official ``weight_init`` touches start from N(0, 0.02), bias 0.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .aspp_l import BASE_RATES, ASPPLHead
from .common import DecodeHead, check_feats, init_classifier
from .fcn import HRNetV2Head

SEG_HEADS = ("hrnetv2", "aspp_l")
CLS_HEADS = ("mean", "fc")
OFFICIAL_STD = 0.02  # the official weight_init: N(0, 0.02), bias 0


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
        self.fc = init_classifier(nn.Conv2d(in_channels, num_classes, kernel_size=grid), OFFICIAL_STD)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(self.pool(x)).flatten(1))


@HEADS.register("ssnet")
class SSNetHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, C + 1, H_0, W_0) logits (channel 0 background), "saliency": (B, 1, H_0,
    W_0) S in [0, 1] (a probability, not a logit), "saliency_scores": (B, C) v, "class_logits": (B, C) image-level
    class logits (``cls_head``)}. All four outputs in eval mode too. ``num_classes`` is C; the head's ``num_classes``
    attribute is the output width C + 1. ``in_index``: the maps of the SN (default all four on HRNet); ``sam_index``:
    the map of the SAM and of the "fc" classifier (default the last, deepest one). ``seg_head``: "hrnetv2" or
    "aspp_l" (``rates``: its dilations at the SN map's stride; default DeepLab's 6 / 12 / 18 / 24).

    "ssnet" in ``HEADS`` (train it with data.dataset=weak_saliency, see contextseg/tasks/weak/); stage 2 as the
    paper: ``seg_head="aspp_l", cls_head="fc"``, whose ``rates`` left None are 6 / 12 / 18 / 24 at stride 8 rescaled
    to the SN map's stride (as the "aspp_l" head)."""

    eval_outputs = ("out", "saliency", "saliency_scores", "class_logits")

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index=None, sam_index: int = -1,
                 sam_grid: int = 4, seg_head: str = "hrnetv2", rates: Sequence[int] | None = None,
                 cls_head: str = "mean"):
        super().__init__(in_channels, num_classes + 1, adapter=False)
        n = len(self.in_channels)
        if isinstance(sam_index, bool) or not isinstance(sam_index, int) or not -n <= sam_index < n:
            raise ContextSegError(f"sam_index={sam_index!r} does not pick one of the backbone's {n} maps; give an "
                                  f"index in -{n}..{n - 1}")
        if seg_head not in SEG_HEADS or cls_head not in CLS_HEADS:
            raise ContextSegError(f"SSNet takes seg_head in {SEG_HEADS} and cls_head in {CLS_HEADS}, got "
                                  f"{seg_head!r} / {cls_head!r}")
        if rates is not None and seg_head != "aspp_l":
            raise ContextSegError("rates are the dilations of seg_head=aspp_l; drop them or set seg_head: aspp_l")
        self.num_foreground = num_classes
        self.sam_index = sam_index % n
        self.seg_head, self.cls_head = seg_head, cls_head
        if seg_head == "aspp_l":
            index = list(range(n)) if in_index is None else in_index
            self.seg = ASPPLHead(in_channels, num_classes + 1, index, BASE_RATES if rates is None else rates)
            for branch in self.seg.branches:
                init_classifier(branch, OFFICIAL_STD)
            self.feat_module = "seg.branches.0"
        else:
            self.seg = HRNetV2Head(in_channels, num_classes + 1, in_index)
            self.feat_module = "seg.last_layer.3"
        c_sam = self.in_channels[self.sam_index]
        self.sam = SaliencyAggregation(c_sam, num_classes, sam_grid)
        self.cls_fc = init_classifier(nn.Linear(c_sam, num_classes), OFFICIAL_STD) if cls_head == "fc" else None

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        check_feats(feats, self.in_channels, "SSNetHead")
        logits = self.seg(feats)["out"]
        deep = feats[self.sam_index]
        scores = self.sam(deep).float()
        saliency = aggregate_saliency(logits.float().softmax(1), scores)
        if self.cls_fc is None:
            class_logits = logits[:, 1:].float().mean(dim=(2, 3))
        else:
            class_logits = self.cls_fc(deep.mean(dim=(2, 3))).float()
        return {"out": logits, "saliency": saliency, "saliency_scores": scores, "class_logits": class_logits}

    @classmethod
    def atrous_option(cls, options: dict) -> tuple | None:
        """ASPP-L's rates (6 / 12 / 18 / 24 at stride 8), with seg_head="aspp_l" only."""
        return ("rates", BASE_RATES, 8) if options.get("seg_head") == "aspp_l" else None
