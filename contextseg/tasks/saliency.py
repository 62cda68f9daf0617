"""Salient object detection: a one-logit model (e.g. PFA, Zhao & Wu CVPR 2019), the saliency loss, SOD metrics.

Datasets that declare ``task = "saliency"`` (``ecssd``, ``saliency_folder``) train here. Evaluation: per image,
sigmoid of the logits resized to the mask, quantised to 0..255 as saved saliency maps are, then ``SODMetrics``
(min-max normalised, PySODMetrics' protocol): MAE, max / mean / adaptive F (beta^2 0.3), S-measure, max / mean /
adaptive E, weighted F. "Best" is the highest max F.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import Config
from ..engine import distributed as dist_utils
from ..engine.evaluator import EvalRuntime, eval_batches
from ..errors import ContextSegError
from ..metrics import SODMetrics
from ..models.resize import DEFAULT_ALIGN_CORNERS, resize
from .segmentation import SegmentationTask

SALIENCY_LOSSES = ("edge_hold",)


class SaliencyTask(SegmentationTask):
    name = "saliency"
    datasets = ("saliency",)
    doctor = False
    key_metric = "max_f"

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.loss.name not in SALIENCY_LOSSES:
            raise ContextSegError(f"dataset {cfg.data.dataset!r} is for salient object detection: set loss.name to "
                                  f"{' or '.join(SALIENCY_LOSSES)} (loss.name={cfg.loss.name!r} is a "
                                  f"segmentation loss), e.g. configs/ecssd/pfa_vgg16.yaml")

    def outputs(self, dataset) -> int:
        return 1

    def score(self, model, loader, val_set, runtime: EvalRuntime) -> dict:
        return evaluate_saliency(model, loader, runtime)

    def format(self, result: dict) -> str:
        return format_saliency(result) if result else ""

    def evaluate(self, cfg: Config, checkpoints: list[str], progress: bool, backend: str | None,
                 inference: dict) -> tuple[dict, dict]:
        if len(checkpoints) > 1:
            raise ContextSegError("ensembles average softmax probabilities of segmentation models; evaluate saliency "
                                  "checkpoints one at a time")
        return super().evaluate(cfg, checkpoints, progress, backend, inference)


def saliency_maps(logits: torch.Tensor, size, align_corners: bool = DEFAULT_ALIGN_CORNERS) -> np.ndarray:
    """(B, 1, h, w) logits -> (B, H, W) uint8 saliency maps (sigmoid, bilinear resize with the model's
    ``align_corners``, x255 rounded)."""
    prob = torch.sigmoid(resize(logits.float(), size, align_corners))
    return (prob[:, 0] * 255).round().to(torch.uint8).cpu().numpy()


def score_maps(pairs, runtime: EvalRuntime) -> dict:
    """SOD metrics of (uint8 (B, H, W) maps, labels {0, 1} (B, H, W)) pairs; distributed: the per-image scores of
    every rank are gathered, so every rank returns the whole set's numbers."""
    metrics = SODMetrics()
    for pred_maps, labels in pairs:
        for pred, label in zip(pred_maps, labels.numpy()):
            metrics.update(pred, np.where(label == 1, 255, 0).astype(np.uint8))
    if runtime.distributed:
        metrics = SODMetrics.merged(dist_utils.all_gather_object(metrics))
    result = metrics.compute()
    result["images"] = len(metrics)
    return result


def evaluate_saliency(model, loader, runtime: EvalRuntime = EvalRuntime(), desc: str = "eval") -> dict:
    """SOD metrics of ``model(x)["out"]`` (B, 1, h, w) over ``loader`` of whole (image, label {0, 1}) pairs, each
    scored at its label's size. Restores the model's train/eval mode."""
    def maps():
        for logits, labels in eval_batches(model, loader, runtime, desc):  # already at the labels' size
            if logits.shape[1] != 1:
                raise ContextSegError(f"a saliency model outputs one logit map, this one {logits.shape[1]}; build "
                                      f"it with num_classes=1")
            yield saliency_maps(logits, labels.shape[-2:]), labels

    return score_maps(maps(), runtime)


def format_saliency(result: dict) -> str:
    """One line of the headline SOD numbers."""
    return (f"MAE {result['mae']:.4f}  max F {result['max_f']:.4f}  mean F {result['mean_f']:.4f}  "
            f"S {result['s_measure']:.4f}  max E {result['max_e']:.4f}  weighted F {result['w_f']:.4f}  "
            f"({result.get('images', '?')} images)")
