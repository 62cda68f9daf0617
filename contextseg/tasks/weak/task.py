"""Weakly supervised segmentation with SSNet (Zeng et al. ICCV 2019) as the engine sees it.

``contextseg train`` / ``eval`` run this task for ``data.dataset=weak_saliency`` (model.arch "ssnet", loss.name
"ssnet"). Stage 1: every step one batch of segmentation images with image-level labels and one of saliency images
with masks, in one forward pass (data/weak.py), loss = w_cls L_cls + w_sal L_sal (losses/ssnet.py;
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

from pathlib import Path

import torch
from torch import nn

from ...config import Config
from ...data import eval_transform, train_transform
from ...data.weak import ClassLayout, JointWeakSaliency, WeakImages, WeakSpec, image_labels_for, save_image_labels, unpair
from ...engine import distributed as dist_utils
from ...engine.builders import build_model_for, eval_loader
from ...engine.checkpoint import load_checkpoint, model_from_checkpoint
from ...engine.evaluator import EvalRuntime, eval_batches, evaluate
from ...engine.runtime import select_device
from ...errors import ContextSegError
from ...losses import SSNetLoss
from ...metrics import format_table
from ...onnx_graph import is_onnx
from ..base import Setup, Task, one_pt_checkpoint, refuse_inference_options
from ..saliency import score_maps
from ..segmentation import SegmentationTask


class WeakTask(Task):
    name = "weak"
    datasets = ("weak_saliency",)

    def check(self, cfg: Config) -> None:
        if cfg.model.arch != "ssnet":
            raise ContextSegError(f"dataset 'weak_saliency' trains SSNet: set model.arch=ssnet (got "
                                  f"{cfg.model.arch!r}); see configs/weak/")
        if cfg.loss.name != "ssnet":
            raise ContextSegError(f"dataset 'weak_saliency' needs loss.name=ssnet (got {cfg.loss.name!r})")
        if cfg.data.mix != "none":
            raise ContextSegError(f"data.mix={cfg.data.mix!r} is not supported for SSNet (image-level labels do not "
                                  f"follow a pasted box); set data.mix=none")

    def setup(self, cfg: Config, progress: bool) -> Setup:
        d = cfg.data
        rank = dist_utils.get_rank()
        spec = WeakSpec.parse(d.kwargs)
        tf = train_transform(crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range),
                             hflip=0.5 if d.hflip else 0.0, jitter=d.jitter)
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
        if spec.saliency is None and loss.weights["saliency"]:
            raise ContextSegError("data.kwargs.saliency is null (no saliency set) but loss.weights.saliency is "
                                  f"{loss.weights['saliency']:g}; set loss.weights={{cls: 1.0, saliency: 0.0}} for "
                                  "stage 1 from image labels alone")
        if loss.weights["seg"] and spec.pseudo_labels is None and rank == 0:
            print("note: loss weight seg is set but data.kwargs.pseudo_labels is not: stage 1 trains without it")
        seg_val, sal_val = _val_sets(cfg, spec)
        evaluate_fn = None
        if seg_val is not None or sal_val is not None:
            runtime = EvalRuntime.from_config(cfg, progress=progress)
            evaluate_fn = make_evaluator(cfg, seg_val, sal_val, layout, runtime)
        key = "mIoU" if seg_val is not None else "sal_max_f"
        return Setup(model, loss, train_set, evaluate_fn, {"classes": layout.names, "palette": layout.palette}, key,
                     unpair)

    def format(self, result: dict) -> str:
        lines = [format_table(result)] if result.get("per_class_iou") else []
        if "sal_max_f" in result:
            lines.append(f"saliency map S: MAE {result['sal_mae']:.4f}  max F {result['sal_max_f']:.4f}  S-measure "
                         f"{result['sal_s_measure']:.4f}  max E {result['sal_max_e']:.4f}  "
                         f"({result['sal_images']} images)")
        return "\n".join(lines)

    def evaluate(self, cfg: Config, checkpoints: list[str], progress: bool, backend: str | None,
                 inference: dict) -> tuple[dict, dict]:
        """Segmentation metrics on the val split and SOD metrics of S, for one SSNet checkpoint."""
        checkpoint = one_pt_checkpoint(checkpoints, "SSNet")
        if inference.pop("skip_bad", False):
            raise ContextSegError("--skip-bad is not supported for SSNet checkpoints (two validation sets); fix or "
                                  "remove the bad files, or evaluate without it")
        refuse_inference_options(inference, "SSNet")
        spec = WeakSpec.parse(cfg.data.kwargs)
        seg_val, sal_val = _val_sets(cfg, spec)
        if seg_val is None and sal_val is None:
            raise ContextSegError("nothing to evaluate: set data.val_split or data.kwargs.saliency.val_split")
        layout = spec.layout(seg_val if seg_val is not None else spec.segmentation_set(cfg.data.train_split))
        device = select_device(cfg.device)
        model = load_ssnet(checkpoint, layout, device)
        runtime = EvalRuntime(device, cfg.train.amp, cfg.train.channels_last, progress)
        return make_evaluator(cfg, seg_val, sal_val, layout, runtime)(model), {}

    def predict(self, checkpoints: list, inputs, out_dir, options: dict) -> str:
        """Label maps of the C + 1 channels (background first), as a segmentation model's."""
        return SegmentationTask().predict(checkpoints, inputs, out_dir, options)


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
        self.model = model  # align_corners_of(SaliencyMap) finds the model's setting here
        self.train(model.training)

    def forward(self, x):
        return {"out": self.model(x)["saliency"]}


@torch.no_grad()
def evaluate_saliency_map(model, loader, runtime: EvalRuntime = EvalRuntime()) -> dict:
    """SOD metrics (metrics/sod.py) of S resized (bilinear) to each mask, quantised to 0..255."""
    def maps():
        for sal, labels in eval_batches(SaliencyMap(model), loader, runtime, "eval saliency"):
            sal = sal.clamp(0, 1)  # eval_batches resized it to the mask
            yield (sal[:, 0] * 255).round().to(torch.uint8).cpu().numpy(), labels

    return score_maps(maps(), runtime)


def _val_sets(cfg: Config, spec: WeakSpec):
    seg_split = cfg.data.val_split
    seg_val = spec.segmentation_set(seg_split, eval_transform()) if seg_split else None
    sal_val = spec.saliency_set("val", eval_transform()) if (spec.saliency or {}).get("val_split", "val") else None
    return seg_val, sal_val


def make_evaluator(cfg: Config, seg_val, sal_val, layout: ClassLayout, runtime: EvalRuntime):
    """model -> {mIoU, per_class_iou, ..., sal_mae, sal_max_f, ...} on the two validation sets."""
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    seg_loader = eval_loader(seg_val, cfg, rank, world) if seg_val is not None else None
    sal_loader = eval_loader(sal_val, cfg, rank, world) if sal_val is not None else None

    def evaluate_fn(model) -> dict:
        result = {}
        if seg_loader is not None:
            result.update(evaluate(ClassChannels(model, layout), seg_loader, seg_val.num_classes, seg_val.classes,
                                   seg_val.ignore_index, runtime))
        if sal_loader is not None:
            sal = evaluate_saliency_map(model, sal_loader, runtime)
            result.update({f"sal_{k}": v for k, v in sal.items()})
        return result

    return evaluate_fn


def load_ssnet(checkpoint, layout: ClassLayout, device="cpu"):
    """An SSNet checkpoint whose classes fit ``layout``, in eval mode (loaded once)."""
    if is_onnx(checkpoint):
        raise ContextSegError("SSNet is evaluated from its .pt checkpoint (its saliency outputs are not exported)")
    ckpt = load_checkpoint(checkpoint)
    arch = (ckpt.get("model_args") or {}).get("arch")
    if arch != "ssnet":
        raise ContextSegError(f"checkpoint {str(checkpoint)!r} is a {arch!r} model, not SSNet; train one with a "
                              f"configs/weak/ssnet_*.yaml config")
    model = model_from_checkpoint(ckpt, device, source=str(checkpoint))
    if model.head.num_foreground != layout.num_foreground:
        raise ContextSegError(f"checkpoint {str(checkpoint)!r} predicts {model.head.num_foreground} classes, the "
                              f"dataset has {layout.num_foreground}; use the checkpoint trained on it")
    return model
