"""Semantic segmentation as the engine sees it: datasets, model, loss and evaluation built from a Config."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data import build_dataset, eval_transform, train_transform
from ..errors import ContextSegError
from ..data.mix import build_batch_mix
from ..losses import build_loss_for
from ..metrics import format_table
from ..models import create_model
from ..models.multiscale import configure_inference, inference_spec
from .checkpoint import load_checkpoint, load_state_dict_checked
from .evaluator import evaluate
from .runtime import seed_everything, select_device
from .trainer import Trainer


def build_datasets(cfg: Config, train: bool = True):
    d = cfg.data
    kwargs = dict(d.kwargs)
    train_set = None
    if train:
        tf = train_transform(crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range), hflip=0.5 if d.hflip else 0.0,
                             jitter=d.jitter)
        train_set = build_dataset(d.dataset, d.train_split, root=d.root, transform=tf, **kwargs)
    val_set = build_dataset(d.dataset, d.val_split, root=d.root, transform=eval_transform(), **kwargs) if d.val_split else None
    return train_set, val_set


def build_model_for(cfg: Config, num_classes: int):
    m = cfg.model
    if m.num_classes is not None and m.num_classes != num_classes:
        raise ContextSegError(f"model.num_classes={m.num_classes} but dataset {cfg.data.dataset!r} has {num_classes} "
                              f"classes; remove model.num_classes or set it to {num_classes}")
    return create_model(m.arch, backbone=m.backbone, num_classes=num_classes, in_channels=m.in_channels, **m.kwargs)


def eval_loader(dataset, cfg: Config) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False,
                      num_workers=min(cfg.data.num_workers, 2))


def train(cfg: Config, resume: str | None = None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train a segmentation model as `cfg` says; returns the summary written to OUTPUT_DIR/summary.json."""
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_datasets(cfg)
    model = build_model_for(cfg, train_set.num_classes)
    loss = build_loss_for(cfg, train_set, progress=progress)
    batch_transform = build_batch_mix(cfg.data, ignore_index=train_set.ignore_index)
    device = select_device(cfg.device)
    evaluate_fn = None
    if val_set is not None:
        loader = eval_loader(val_set, cfg)

        def evaluate_fn(model):
            return evaluate(model, loader, val_set.num_classes, val_set.classes, val_set.ignore_index, device,
                            cfg.train.amp, cfg.train.channels_last, progress)

    meta = {"classes": list(train_set.classes), "palette": [tuple(c) for c in train_set.palette]}
    trainer = Trainer(cfg, model, loss, train_set, evaluate_fn, meta=meta, progress=progress,
                      batch_transform=batch_transform)
    summary = trainer.fit(resume=resume, stop_at=stop_at)
    if summary.get("final", {}).get("per_class_iou"):
        print(format_table(summary["final"]))
    return summary


def evaluate_checkpoint(cfg: Config, checkpoint: str, split: str | None = None, progress: bool = True,
                        out: str | None = None, scales=None, merge: str | None = None, flip: bool = False,
                        window=None, stride=None) -> dict:
    """Evaluate a checkpoint on cfg's validation split (or `split`); prints the per-class table.

    scales / merge / flip / window / stride are test-time options (``contextseg.models.multiscale.
    configure_inference``): e.g. scales=[0.5, 1.0, 1.5], merge="avg", flip=True; none given = as trained."""
    if split:
        cfg.data.val_split = split
    _, val_set = build_datasets(cfg, train=False)
    ckpt = load_checkpoint(checkpoint)
    args = ckpt.get("model_args") or {}
    model = create_model(**args) if args else build_model_for(cfg, val_set.num_classes)
    if model.num_classes != val_set.num_classes:
        raise ContextSegError(f"checkpoint {checkpoint!r} predicts {model.num_classes} classes but dataset "
                              f"{cfg.data.dataset!r} has {val_set.num_classes}; evaluate it on the data it was trained for")
    load_state_dict_checked(model, ckpt["model"], source=f"checkpoint {checkpoint!r}")
    model = configure_inference(model, scales=scales, merge=merge, flip=flip, window=window, stride=stride)
    device = select_device(cfg.device)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    result = evaluate(model, eval_loader(val_set, cfg), val_set.num_classes, val_set.classes, val_set.ignore_index,
                      device, cfg.train.amp, cfg.train.channels_last, progress)
    print(format_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            json.dump({"checkpoint": str(checkpoint), "split": cfg.data.val_split, "inference": inference_spec(model),
                       **result}, f, indent=2)
    return result
