"""Image classification as the engine sees it (SAOL, Kim et al. CVPR 2020; or a plain GAP-FC classifier).

``contextseg train`` / ``eval`` / ``predict`` take this path when the dataset declares ``task = "classification"``
("cifar10", "image_folder"): CIFAR augmentation (pad 4, random crop, flip; ``data.kwargs.pad``), CutMix on label
pairs (``data.mix=cutmix``), the SAOL objective (saol_loss.py), and top-1 accuracy of the model's "out" (SAOL) and,
when it has one, of its "gap" output (the self-distilled GAP-FC branch): keys ``top1``, ``top1_gap``,
``mean_class_acc``, ``per_class_acc``, ``images``. "Best" is the highest top-1 of "out".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import Config
from ..data import build_dataset, build_label_mix, classification_train_transform, eval_transform, read_image
from ..errors import ContextSegError
from ..registry import CLASSIFIERS, DATASETS
from ..saol_loss import WithSourceLogits, build_classification_loss
from ..visualize import heatmap
from . import distributed as dist_utils
from .builders import build_model_for, eval_loader, load_for_eval
from .runtime import autocast, seed_everything, select_device
from .trainer import Trainer

KEY_METRIC = "top1"


def is_classification_config(cfg: Config) -> bool:
    """True when cfg.data.dataset is a classification dataset (its builder declares ``task``)."""
    return getattr(DATASETS.get(cfg.data.dataset), "task", None) == "classification"


def check_arch(cfg: Config, classification: bool) -> None:
    """One clear message when model and data are of different tasks."""
    if classification and cfg.model.arch not in CLASSIFIERS:
        raise ContextSegError(f"dataset {cfg.data.dataset!r} is for image classification: set model.arch to "
                              f"{' or '.join(CLASSIFIERS.names())} (model.arch={cfg.model.arch!r} is a segmentation "
                              f"head), e.g. configs/cifar10/saol_resnet20.yaml")
    if not classification and cfg.model.arch in CLASSIFIERS:
        raise ContextSegError(f"model.arch={cfg.model.arch!r} is an image classifier; train it on a classification "
                              f"dataset (cifar10, image_folder), not {cfg.data.dataset!r}")


def build_datasets(cfg: Config, train: bool = True):
    """(train set with the CIFAR augmentation or None, val set or None); ``data.kwargs.pad`` (4) is the crop padding."""
    d = cfg.data
    kwargs = dict(d.kwargs)
    pad = kwargs.pop("pad", 4)
    train_set = None
    if train:
        tf = classification_train_transform(tuple(d.crop_size), pad=pad, hflip=d.hflip)
        train_set = build_dataset(d.dataset, d.train_split, root=d.root, transform=tf, **kwargs)
    val_set = build_dataset(d.dataset, d.val_split, root=d.root, transform=eval_transform(), **kwargs) \
        if d.val_split else None
    return train_set, val_set


@torch.no_grad()
def evaluate_classification(model, loader, num_classes: int, classes=None, device="cpu", amp: str = "none",
                            channels_last: bool = False, progress: bool = True, distributed: bool = False,
                            desc: str = "eval") -> dict:
    """Top-1 accuracy of ``model(x)["out"]`` (and of "gap" when present) over (image, label) batches; per-class
    accuracy of "out". Restores the model's mode. Distributed: counts are summed over the ranks' shards."""
    device = torch.device(device)
    k = num_classes
    confusion = torch.zeros(k * k, dtype=torch.long)  # truth * K + prediction of "out"
    gap = torch.zeros(2, dtype=torch.long)  # correct, counted
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = model(images)
            pred = out["out"].float().argmax(1).cpu()
            confusion += torch.bincount(labels * k + pred, minlength=k * k)
            if "gap" in out:
                gap += torch.tensor([int((out["gap"].float().argmax(1).cpu() == labels).sum()), len(labels)])
    finally:
        model.train(was_training)
    if distributed:
        confusion, gap = dist_utils.all_reduce_sum(confusion), dist_utils.all_reduce_sum(gap)
    confusion = confusion.view(k, k).double()
    total, support = confusion.sum().item(), confusion.sum(1)
    per_class = (confusion.diag() / support.clamp_min(1)).tolist()
    names = list(classes) if classes else [str(i) for i in range(k)]
    result = {"top1": confusion.diag().sum().item() / max(total, 1), "images": int(total),
              "mean_class_acc": float(np.mean([a for a, s in zip(per_class, support.tolist()) if s > 0] or [0.0])),
              "per_class_acc": dict(zip(names, per_class))}
    if gap[1] > 0:
        result["top1_gap"] = gap[0].item() / gap[1].item()
    return result


def format_classification(result: dict) -> str:
    gap = f"  GAP-FC top-1 {100 * result['top1_gap']:.2f}%" if "top1_gap" in result else ""
    return (f"top-1 {100 * result['top1']:.2f}%{gap}  mean class acc {100 * result['mean_class_acc']:.2f}%  "
            f"({result['images']} images)")


def train_classification(cfg: Config, resume=None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train a classifier as ``cfg`` says (called by engine.segmentation.train, which owns the process group)."""
    check_arch(cfg, True)
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    progress = progress and rank == 0
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_datasets(cfg)
    model = build_model_for(cfg, train_set.num_classes)
    loss = build_classification_loss(cfg.loss.name, cfg.loss.weights, **cfg.loss.kwargs)
    device = dist_utils.device_for(cfg.device)
    evaluate_fn = None
    if val_set is not None:
        loader = eval_loader(val_set, cfg, rank, world)

        def evaluate_fn(model):
            return evaluate_classification(model, loader, val_set.num_classes, val_set.classes, device, cfg.train.amp,
                                           cfg.train.channels_last, progress, distributed=world > 1)

    meta = {"classes": list(train_set.classes), "palette": [tuple(c) for c in train_set.palette]}
    mix = build_label_mix(cfg.data)
    if mix is not None and loss.needs_source_logits:  # L_ss2's targets: the unmixed source images' spatial logits
        mix = WithSourceLogits(mix, model)
    trainer = Trainer(cfg, model, loss, train_set, evaluate_fn, meta=meta, progress=progress,
                      batch_transform=mix, key_metric=KEY_METRIC)
    summary = trainer.fit(resume=resume, stop_at=stop_at)
    if rank == 0 and summary.get("final"):
        print(format_classification(summary["final"]))
    return summary


def evaluate_classification_checkpoint(cfg: Config, checkpoints: list[str], split: str | None = None,
                                       progress: bool = True, out: str | None = None, **inference) -> dict:
    """Top-1 of one classification checkpoint on cfg's validation split (or ``split``); prints one line."""
    check_arch(cfg, True)
    if len(checkpoints) != 1 or Path(checkpoints[0]).suffix.lower() == ".onnx":
        raise ContextSegError("classification checkpoints are evaluated one at a time, from the .pt file")
    used = sorted(k for k, v in inference.items() if v not in (None, False))
    if used:
        raise ContextSegError(f"test-time options {used} are for dense prediction; a classifier takes none")
    if split:
        cfg.data.val_split = split
    _, val_set = build_datasets(cfg, train=False)
    if val_set is None:
        raise ContextSegError("no split to evaluate: set data.val_split or pass --split")
    model = load_for_eval(cfg, checkpoints[0], val_set)
    device = select_device(cfg.device)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    result = evaluate_classification(model, eval_loader(val_set, cfg), val_set.num_classes, val_set.classes, device,
                                     cfg.train.amp, cfg.train.channels_last, progress)
    print(format_classification(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": checkpoints[0], "split": cfg.data.val_split, **result}
        Path(out).write_text(json.dumps(report, indent=2))
    return result


def is_classifier_checkpoint(path) -> bool:
    """True for a .pt checkpoint of a classification model (arch "saol" or "gap")."""
    from .checkpoint import load_checkpoint

    if Path(path).suffix.lower() == ".onnx":
        return False
    return (load_checkpoint(path).get("model_args") or {}).get("arch") in CLASSIFIERS


@torch.no_grad()
def predict_files(checkpoint, inputs, out_dir, device: str = "auto", amp: str = "none", progress: bool = True) -> list:
    """Classify images with a checkpoint: prints ``NAME: class (prob)`` per image, writes OUT/predictions.json and,
    for a SAOL model, OUT/STEM_attention.png (the image beside its spatial attention map, upsampled bilinearly and
    shown as a heatmap scaled to its maximum). Images of another size than the training crop are resized to it."""
    from .checkpoint import load_checkpoint, load_model
    from .predictor import collect_images

    dev = select_device(device)
    model = load_model(checkpoint, device=dev)
    crop = tuple((load_checkpoint(checkpoint).get("config") or {}).get("data", {}).get("crop_size") or ())
    classes = model.classes or [str(i) for i in range(model.num_classes)]
    transform, out_dir = eval_transform(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in tqdm(collect_images(inputs), desc="predict", disable=not progress, leave=False, dynamic_ncols=True):
        image = read_image(path)
        if len(crop) == 2 and image.shape[:2] != crop:
            image = cv2.resize(image, (int(crop[1]), int(crop[0])), interpolation=cv2.INTER_AREA)
        with autocast(dev, amp):
            out = model(transform(image, None)[0][None].to(dev))
        probs = out["out"].float().softmax(1)[0].cpu()
        k = int(probs.argmax())
        row = {"image": str(path), "class": classes[k], "index": k, "prob": float(probs[k])}
        if "gap" in out:
            row["gap_class"] = classes[int(out["gap"].argmax(1)[0])]
        if "attention" in out:
            row["attention"] = str(out_dir / f"{path.stem}_attention.png")
            picture = attention_picture(image, out["attention"].float()[0, 0].cpu().numpy())
            Image.fromarray(picture).save(row["attention"])
        print(f"{path.name}: {row['class']} ({100 * row['prob']:.1f}%)")
        rows.append(row)
    (out_dir / "predictions.json").write_text(json.dumps(rows, indent=2))
    return rows


def attention_picture(image: np.ndarray, attention: np.ndarray, min_side: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 image and (h, w) attention -> image | heatmap side by side, enlarged to >= min_side px."""
    f = max(1, math.ceil(min_side / min(image.shape[:2])))
    big = cv2.resize(image, (image.shape[1] * f, image.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    att = cv2.resize(attention.astype(np.float32), big.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    heat = heatmap(att, 0.0, float(att.max()) or 1.0)
    blend = (0.4 * big.astype(np.float32) + 0.6 * heat.astype(np.float32)).astype(np.uint8)
    return np.concatenate([big, blend], axis=1)
