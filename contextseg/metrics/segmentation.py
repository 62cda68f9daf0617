"""Confusion-matrix metrics for semantic segmentation: mIoU, per-class IoU, pixel and mean accuracy.

IoU_k = TP_k / (TP_k + FP_k + FN_k); classes that never occur in either the labels or the
predictions are left out of the mean (NaN per class), as mmsegmentation does. (The official HRNet code
averages tp / max(1, union) over all classes, so an absent class counts as 0 there; on a val set where every
class occurs, as CamVid's and Cityscapes', both give the same mIoU.)
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.resize import DEFAULT_ALIGN_CORNERS, resize


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix (rows: ground truth, columns: prediction) of int64 maps of the same shape."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    keep = label != ignore_index
    index = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


class SegMetric:
    """Accumulates a confusion matrix over batches; `compute()` returns the summary dict."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, label: torch.Tensor,
               align_corners: bool = DEFAULT_ALIGN_CORNERS) -> None:
        """Take logits (B, K, h, w), resized here to the label size (B, H, W) (bilinear; pass the model's
        ``align_corners``), or a prediction (B, H, W)."""
        if logits_or_pred.dim() == 4:
            logits_or_pred = resize(logits_or_pred.float(), label.shape[-2:], align_corners).argmax(1)
        self.matrix += confusion_matrix(logits_or_pred, label, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix.numpy(), self.class_names)


def metrics_from_confusion(matrix: np.ndarray, class_names: list[str] | None = None) -> dict:
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    gt = m.sum(1)
    pr = m.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt + pr - tp)
        acc = tp / gt
    names = class_names or [str(k) for k in range(len(tp))]
    total = m.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "per_class_acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, acc)},
    }


def format_table(result: dict) -> str:
    """A per-class table (IoU and accuracy in percent) followed by the summary line."""
    names = list(result["per_class_iou"])
    width = max(8, max(len(n) for n in names))
    fmt = lambda v: "   n/a" if v is None else f"{100 * v:6.2f}"
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for n in names:
        lines.append(f"{n:<{width}}  {fmt(result['per_class_iou'][n])}  {fmt(result['per_class_acc'][n])}")
    lines.append(
        f"{'mean':<{width}}  {100 * result['mIoU']:6.2f}  {100 * result['mean_acc']:6.2f}"
        f"   pixel acc {100 * result['pixel_acc']:.2f}"
    )
    return "\n".join(lines)
