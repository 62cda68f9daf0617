"""Salient object detection as the engine sees it: a one-logit model, the saliency loss, SOD-metric evaluation.

``contextseg train`` / ``eval`` take this path when the dataset declares ``task = "saliency"`` (``ecssd``,
``saliency_folder``). Evaluation: per image, sigmoid of the logits resized to the mask, quantised to 0..255 as
saved saliency maps are, then ``SODMetrics`` (min-max normalised, PySODMetrics' protocol): MAE, max / mean /
adaptive F (beta^2 0.3), S-measure, max / mean / adaptive E, weighted F. "Best" is the highest max F.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ContextSegError
from ..models.resize import DEFAULT_ALIGN_CORNERS, resize
from ..sod_metrics import SODMetrics
from .evaluator import eval_batches

KEY_METRIC = "max_f"
SALIENCY_LOSSES = ("edge_hold",)


def saliency_maps(logits: torch.Tensor, size, align_corners: bool = DEFAULT_ALIGN_CORNERS) -> np.ndarray:
    """(B, 1, h, w) logits -> (B, H, W) uint8 saliency maps (sigmoid, bilinear resize with the model's
    ``align_corners``, x255 rounded)."""
    prob = torch.sigmoid(resize(logits.float(), size, align_corners))
    return (prob[:, 0] * 255).round().to(torch.uint8).cpu().numpy()


def evaluate_saliency(model, loader, device="cpu", amp: str = "none", channels_last: bool = False,
                      progress: bool = True, distributed: bool = False, desc: str = "eval") -> dict:
    """SOD metrics of ``model(x)["out"]`` (B, 1, h, w) over ``loader`` of whole (image, label {0, 1}) pairs, each
    scored at its label's size. Restores the model's train/eval mode. Distributed: every rank scores its shard and
    the per-image scores are gathered, so every rank returns the whole set's numbers."""
    metrics = SODMetrics()
    for logits, labels in eval_batches(model, loader, device, amp, channels_last, progress, desc):
        if logits.shape[1] != 1:
            raise ContextSegError(f"a saliency model outputs one logit map, this one {logits.shape[1]}; build it "
                                  f"with num_classes=1")
        maps = saliency_maps(logits, labels.shape[-2:])
        for pred, label in zip(maps, labels.numpy()):
            metrics.update(pred, np.where(label == 1, 255, 0).astype(np.uint8))
    if distributed:
        from .distributed import all_gather_object

        metrics = SODMetrics.merged(all_gather_object(metrics))
    result = metrics.compute()
    result["images"] = len(metrics)
    return result


def format_saliency(result: dict) -> str:
    """One line of the headline SOD numbers."""
    return (f"MAE {result['mae']:.4f}  max F {result['max_f']:.4f}  mean F {result['mean_f']:.4f}  "
            f"S {result['s_measure']:.4f}  max E {result['max_e']:.4f}  weighted F {result['w_f']:.4f}  "
            f"({result.get('images', '?')} images)")
