"""Builders shared by the tasks (contextseg/tasks/) and the doctor: datasets, the model and the evaluation loader
from a Config, and a checkpoint's model for evaluation."""
from __future__ import annotations


from torch.utils.data import DataLoader

from ..config import Config
from ..data import build_dataset, eval_transform, train_transform
from ..errors import ContextSegError
from ..models import create_model
from ..models.official import load_official_weights
from ..onnx_graph import is_onnx
from . import distributed as dist_utils
from .checkpoint import load_checkpoint, load_model, load_state_dict_checked, model_args
from .runtime import ShardSampler, loader_workers, select_device


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
    model = create_model(m.arch, backbone=m.backbone, num_classes=num_classes, in_channels=m.in_channels, **m.kwargs)
    if m.pretrained:
        if m.pretrained_parts not in ("auto", "backbone"):
            raise ContextSegError(f"model.pretrained_parts must be 'auto' or 'backbone', got {m.pretrained_parts!r}")
        parts = load_official_weights(model, m.pretrained, backbone_only=m.pretrained_parts == "backbone")
        if dist_utils.is_main():
            print(f"loaded {parts} weights from {m.pretrained}")
    return model


def eval_loader(dataset, cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Whole images in order; in a distributed run each rank loads its shard (indices rank, rank + N, ...)."""
    sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False, sampler=sampler,
                      num_workers=min(loader_workers(cfg.data.num_workers, select_device(cfg.device)), 2))


def load_for_eval(cfg: Config, checkpoint: str, expected: int):
    """The model of a checkpoint (or an .onnx file) for evaluation, checked to predict ``expected`` classes (the
    task's count for the evaluated dataset: 1 for a saliency map)."""
    ckpt = None if is_onnx(checkpoint) else load_checkpoint(checkpoint)
    if ckpt is None:
        model = load_model(checkpoint)  # an OnnxModel: its weights are in the graph
    else:
        args = model_args(ckpt)
        model = create_model(**args) if args else build_model_for(cfg, expected)
    if model.num_classes != expected:
        raise ContextSegError(f"checkpoint {checkpoint!r} predicts {model.num_classes} classes but dataset "
                              f"{cfg.data.dataset!r} needs {expected}; evaluate it on the data it was trained for")
    if ckpt is not None:
        load_state_dict_checked(model, ckpt["model"], source=f"checkpoint {checkpoint!r}")
    return model
