"""Weakly supervised segmentation with SSNet (Zeng et al. ICCV 2019) as the engine sees it.

``contextseg train`` / ``eval`` take this path for ``data.dataset=weak_saliency`` (model.arch "ssnet", loss.name
"ssnet"). Stage 1: every step one batch of segmentation images with image-level labels and one of saliency images
with masks, in one forward pass (data/weak.py), loss = w_cls L_cls + w_sal L_sal (ssnet_loss.py;
``loss.kwargs.saliency``: nll | bce). Stage 2 (the paper's SSNet-2): the same with ``data.kwargs.pseudo_labels``
(folder written by engine/pseudo_labels.py) and the weight ``seg`` for the pseudo-label CE, the classification BCE
kept (weight ``cls``, 1 as the official ``self_seg_full_sal_train.py``), the ASPP-L segmentation head and an FC
classifier (``model.kwargs={seg_head: aspp_l, cls_head: fc}``); or any segmentation model on dataset "pseudo_labels"
through the ordinary path.

Evaluation: segmentation metrics (mIoU, ...) of the C class channels on the segmentation set's val split (its true
labels; the background channel is not a dataset class unless ``background_class`` names one), and the SOD metrics of
the saliency map S on the saliency set's val split, keys prefixed ``sal_`` (``sal_max_f``, ``sal_mae``, ...).
"best" is the highest mIoU (``sal_max_f`` when no segmentation val split is set).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data import eval_transform, train_transform
from ..data.weak import ClassLayout, JointWeakSaliency, WeakImages, WeakSpec, image_labels_for, save_image_labels, unpair
from ..errors import ContextSegError
from ..metrics import format_table
from ..models.resize import align_corners_of
from ..registry import DATASETS
from ..sod_metrics import SODMetrics
from ..ssnet_loss import SSNetLoss
from . import distributed as dist_utils
from .builders import build_model_for, eval_loader
from .evaluator import eval_batches, evaluate
from .runtime import seed_everything, select_device
from .trainer import Trainer


def is_weak_config(cfg: Config) -> bool:
    return getattr(DATASETS.get(cfg.data.dataset), "task", None) == "weak_saliency"


def check_config(cfg: Config, weak: bool) -> None:
    """One clear message when model, loss and data do not belong together."""
    if weak and cfg.model.arch != "ssnet":
        raise ContextSegError(f"dataset 'weak_saliency' trains SSNet: set model.arch=ssnet (got {cfg.model.arch!r}); "
                              f"see configs/weak/")
    if weak and cfg.loss.name != "ssnet":
        raise ContextSegError(f"dataset 'weak_saliency' needs loss.name=ssnet (got {cfg.loss.name!r})")
    if not weak and cfg.model.arch == "ssnet":
        raise ContextSegError(f"model 'ssnet' predicts a background channel plus the classes and trains on "
                              f"data.dataset=weak_saliency, not {cfg.data.dataset!r}; see configs/weak/")


class ClassChannels(nn.Module):
    """SSNet -> {"out": (B, K, h, w)} its logits in the dataset's class order (background channel dropped unless the
    dataset has a background class), for the segmentation metrics and the ensemble-free eval loop."""

    def __init__(self, model: nn.Module, layout: ClassLayout):
        super().__init__()
        self.model = model
        k = len(layout.foreground) + (layout.background_class is not None)
        self.register_buffer("index", torch.from_numpy(layout.class_to_channel[:k].copy()), persistent=False)
        self.train(model.training)  # eval loops restore the wrapper's mode onto the model

    def forward(self, x):
        return {"out": self.model(x)["out"].index_select(1, self.index.to(x.device))}


class SaliencyMap(nn.Module):
    """SSNet -> {"out": (B, 1, h, w) S}, the aggregated saliency map (a probability)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.align_corners = align_corners_of(model)
        self.train(model.training)

    def forward(self, x):
        return {"out": self.model(x)["saliency"]}


@torch.no_grad()
def evaluate_saliency_map(model, loader, device="cpu", amp: str = "none", channels_last: bool = False,
                          progress: bool = True, distributed: bool = False) -> dict:
    """SOD metrics (sod_metrics.py) of S resized (bilinear) to each mask, quantised to 0..255."""
    metrics = SODMetrics()
    for sal, labels in eval_batches(SaliencyMap(model), loader, device, amp, channels_last, progress, "eval saliency"):
        sal = sal.clamp(0, 1)  # eval_batches resized it to the mask
        maps = (sal[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
        for pred, label in zip(maps, labels.numpy()):
            metrics.update(pred, np.where(label == 1, 255, 0).astype(np.uint8))
    if distributed:
        metrics = SODMetrics.merged(dist_utils.all_gather_object(metrics))
    result = metrics.compute()
    result["images"] = len(metrics)
    return result


def _val_sets(cfg: Config, spec: WeakSpec, split: str | None = None):
    seg_split = split or cfg.data.val_split
    seg_val = spec.segmentation_set(seg_split, eval_transform()) if seg_split else None
    sal_val = spec.saliency_set("val", eval_transform()) if spec.saliency.get("val_split", "val") else None
    return seg_val, sal_val


def make_evaluator(cfg: Config, seg_val, sal_val, layout: ClassLayout, device, progress: bool, rank: int = 0,
                   world: int = 1):
    """model -> {mIoU, per_class_iou, ..., sal_mae, sal_max_f, ...} on the two validation sets."""
    seg_loader = eval_loader(seg_val, cfg, rank, world) if seg_val is not None else None
    sal_loader = eval_loader(sal_val, cfg, rank, world) if sal_val is not None else None
    amp, cl = cfg.train.amp, cfg.train.channels_last

    def evaluate_fn(model) -> dict:
        result = {}
        if seg_loader is not None:
            result.update(evaluate(ClassChannels(model, layout), seg_loader, seg_val.num_classes, seg_val.classes,
                                   seg_val.ignore_index, device, amp, cl, progress, distributed=world > 1))
        if sal_loader is not None:
            sal = evaluate_saliency_map(model, sal_loader, device, amp, cl, progress, distributed=world > 1)
            result.update({f"sal_{k}": v for k, v in sal.items()})
        return result

    return evaluate_fn


def format_weak(result: dict) -> str:
    lines = [format_table(result)] if result.get("per_class_iou") else []
    if "sal_max_f" in result:
        lines.append(f"saliency map S: MAE {result['sal_mae']:.4f}  max F {result['sal_max_f']:.4f}  S-measure "
                     f"{result['sal_s_measure']:.4f}  max E {result['sal_max_e']:.4f}  ({result['sal_images']} images)")
    return "\n".join(lines)


def train_weak(cfg: Config, resume=None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train SSNet as ``cfg`` says (called by engine.segmentation.train, which owns the process group)."""
    check_config(cfg, True)
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    progress = progress and rank == 0
    seed_everything(cfg.seed, cfg.deterministic)
    d = cfg.data
    if d.mix != "none":
        raise ContextSegError(f"data.mix={d.mix!r} is not supported for SSNet (image-level labels do not follow a "
                              f"pasted box); set data.mix=none")
    spec = WeakSpec.parse(d.kwargs)
    tf = train_transform(crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range), hflip=0.5 if d.hflip else 0.0,
                         jitter=d.jitter)
    seg_train = spec.segmentation_set(d.train_split)
    layout = spec.layout(seg_train)
    labels = image_labels_for(seg_train, spec.image_labels, spec.min_fraction, progress)
    if spec.image_labels is None and rank == 0:  # the labels this run used, for the record
        save_image_labels(Path(cfg.output_dir) / "image_labels.json", seg_train, labels, spec.min_fraction)
    weak = WeakImages(seg_train, labels, layout, tf, spec.pseudo_labels)
    train_set = JointWeakSaliency(weak, spec.saliency_set("train", tf))
    model = build_model_for(cfg, layout.num_foreground)
    unknown = sorted(set(cfg.loss.kwargs) - {"saliency"})
    if unknown:
        raise ContextSegError(f"loss.kwargs {unknown} are not options of loss 'ssnet'; it takes saliency: nll | bce")
    loss = SSNetLoss(cfg.loss.weights, saliency=cfg.loss.kwargs.get("saliency", "nll"))
    if loss.weights["seg"] and spec.pseudo_labels is None and rank == 0:
        print("note: loss weight seg is set but data.kwargs.pseudo_labels is not: stage 1 trains without it")
    device = dist_utils.device_for(cfg.device)
    seg_val, sal_val = _val_sets(cfg, spec)
    evaluate_fn = None
    if seg_val is not None or sal_val is not None:
        evaluate_fn = make_evaluator(cfg, seg_val, sal_val, layout, device, progress, rank, world)
    key = "mIoU" if seg_val is not None else "sal_max_f"
    trainer = Trainer(cfg, model, loss, train_set, evaluate_fn, meta={"classes": layout.names, "palette": layout.palette},
                      progress=progress, batch_transform=unpair, key_metric=key)
    summary = trainer.fit(resume=resume, stop_at=stop_at)
    if rank == 0 and summary.get("final"):
        print(format_weak(summary["final"]))
    return summary


def load_ssnet(checkpoint, layout: ClassLayout, device="cpu"):
    """An SSNet checkpoint whose classes fit ``layout``, in eval mode."""
    from .checkpoint import load_checkpoint, load_model

    if Path(checkpoint).suffix.lower() == ".onnx":
        raise ContextSegError("SSNet is evaluated from its .pt checkpoint (its saliency outputs are not exported)")
    arch = (load_checkpoint(checkpoint).get("model_args") or {}).get("arch")
    if arch != "ssnet":
        raise ContextSegError(f"checkpoint {checkpoint!r} is a {arch!r} model, not SSNet; train one with a "
                              f"configs/weak/ssnet_*.yaml config")
    model = load_model(checkpoint, device=device)
    if model.head.num_foreground != layout.num_foreground:
        raise ContextSegError(f"checkpoint {checkpoint!r} predicts {model.head.num_foreground} classes, the dataset "
                              f"has {layout.num_foreground}; use the checkpoint trained on it")
    return model


def evaluate_weak_checkpoint(cfg: Config, checkpoints: list[str], split: str | None = None, progress: bool = True,
                             out: str | None = None, **inference) -> dict:
    """Segmentation metrics on the val split (or ``split``) and SOD metrics of S, for one SSNet checkpoint."""
    check_config(cfg, True)
    if len(checkpoints) != 1:
        raise ContextSegError("SSNet checkpoints are evaluated one at a time")
    used = sorted(k for k, v in inference.items() if v not in (None, False))
    if used:
        raise ContextSegError(f"test-time options {used} are not supported for SSNet; evaluate without them")
    spec = WeakSpec.parse(cfg.data.kwargs)
    seg_val, sal_val = _val_sets(cfg, spec, split)
    if seg_val is None and sal_val is None:
        raise ContextSegError("nothing to evaluate: set data.val_split or data.kwargs.saliency.val_split")
    layout = spec.layout(seg_val if seg_val is not None else spec.segmentation_set(cfg.data.train_split))
    device = select_device(cfg.device)
    model = load_ssnet(checkpoints[0], layout, device)
    result = make_evaluator(cfg, seg_val, sal_val, layout, device, progress)(model)
    print(format_weak(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"checkpoint": checkpoints[0], "split": split or cfg.data.val_split, **result},
                                        indent=2))
    return result
