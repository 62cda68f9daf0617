"""SSNet training objective (Zeng et al. ICCV 2019, Sec. 3 and Fig. 2; official training scripts of
github.com/zengxianyu/jsws) on one forward pass over a joint batch: the first B_s rows are segmentation images with
image-level labels (and, in stage 2, pseudo labels), the last B_t rows saliency images with masks.

    L = w_cls  BCE(sigmoid(mean_hw z_c), y_c)             multi-label classification from the class maps (rows :B_s)
      + w_sal  BCE(S, m) over the non-ignored pixels        saliency map S = sum_c v_c P_c vs the mask (rows B_s:)
      + w_seg  CE(z, pseudo) ignoring 255                   stage 2: the pseudo labels of stage 1 (rows :B_s)

z: (B, C + 1, h, w) logits resized (bilinear) to the label size for CE; S (B, 1, h, w) resized likewise.
Followed: the image-level scores are the spatial mean of the class logits with sigmoid BCE over the C foreground
classes (official ``binary_cross_entropy_with_logits(pred_seg.mean(3).mean(2)[:, 1:], gt_cls[:, 1:])``); stage 2
adds CE on the stage-1 predictions (official ``cross_entropy(pred_seg, plbl_seg)``). Departures: the saliency term is
the binary cross-entropy on S, log(1 - S) for non-salient pixels; the official scripts apply NLL to the probability
pair (P_0, S), i.e. -mean(m S + (1 - m) P_0) without a log (the paper's own equation could not be checked here).
The official extra classification loss on the stride-32 score map (and stage 2's separate FC classifier) are not
here: our head has one score map.

Weights ``loss.weights``: {cls: 1.0, saliency: 1.0, seg: 1.0}; a term whose targets are absent is skipped.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ContextSegError

TERMS = ("cls", "saliency", "seg")
DEFAULT_WEIGHTS = {"cls": 1.0, "saliency": 1.0, "seg": 1.0}
PACKAGE_DEFAULT_WEIGHTS = {"out": 1.0, "aux": 0.4}  # LossConfig's default: means "not set" here


def saliency_bce(saliency: Tensor, mask: Tensor, ignore_index: int = 255, eps: float = 1e-6) -> Tensor:
    """(B, 1, h, w) probabilities S, (B, H, W) masks {0, 1, ignore} -> mean BCE over the non-ignored pixels."""
    if saliency.shape[-2:] != mask.shape[-2:]:
        saliency = F.interpolate(saliency.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    s = saliency.float()[:, 0].clamp(eps, 1 - eps)
    valid = mask != ignore_index
    if not valid.any():
        return s.sum() * 0.0
    target = (mask == 1).float()
    bce = -(target * s.log() + (1 - target) * (1 - s).log())
    return bce[valid].mean()


class SSNetLoss(nn.Module):
    """(outputs of the joint batch, targets {"labels": (B_s, C), ["mask": (B_t, H, W)], ["pseudo": (B_s, H, W)
    channel indices or 255]}) -> (total, {"cls", "saliency", "seg"} parts)."""

    def __init__(self, weights: dict | None = None, ignore_index: int = 255):
        super().__init__()
        weights = dict(DEFAULT_WEIGHTS if not weights or dict(weights) == PACKAGE_DEFAULT_WEIGHTS else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ContextSegError(f"loss.weights {unknown} are not SSNet terms; use {{cls: 1.0, saliency: 1.0, "
                                  f"seg: 1.0}} (seg: stage 2 with pseudo labels)")
        self.weights = {k: float(weights.get(k, 0.0)) for k in TERMS}
        self.ignore_index = ignore_index

    def forward(self, outputs: dict, targets: dict):
        labels = targets["labels"]
        bs = labels.shape[0]
        parts: dict[str, Tensor] = {}
        if self.weights["cls"]:
            logits = outputs["class_logits"][:bs].float()
            if logits.shape != labels.shape:
                raise ContextSegError(f"image labels {tuple(labels.shape)} do not match the class scores "
                                      f"{tuple(logits.shape)}; the model predicts another number of classes")
            parts["cls"] = F.binary_cross_entropy_with_logits(logits, labels.float())
        if self.weights["saliency"] and "mask" in targets:
            parts["saliency"] = saliency_bce(outputs["saliency"][bs:], targets["mask"], self.ignore_index)
        if self.weights["seg"] and "pseudo" in targets:
            pseudo = targets["pseudo"]
            z = outputs["out"][:bs].float()
            if z.shape[-2:] != pseudo.shape[-2:]:
                z = F.interpolate(z, size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
            parts["seg"] = (F.cross_entropy(z, pseudo, ignore_index=self.ignore_index)
                            if (pseudo != self.ignore_index).any() else z.sum() * 0.0)
        if not parts:
            raise ContextSegError("no SSNet loss term applies to this batch: set loss.weights cls / saliency / seg > 0 "
                                  "(seg needs data.kwargs.pseudo_labels)")
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}
