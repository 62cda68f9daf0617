"""Weights from official releases, read from local files (nothing is downloaded).

Understood layouts (the parameter names of our HRNet, FCN and OCR modules are the official ones):

- HRNet-Semantic-Segmentation segmentation models (``seg_hrnet.py`` FCN / ``seg_hrnet_ocr.py`` OCR, e.g.
  ``hrnet_ocr_cs_8162_torch11.pth``): a state_dict whose keys carry the training wrapper's ``model.`` prefix
  (the official test script strips it with ``k[6:]``) and sometimes ``loss.*`` entries.
- HRNet ImageNet classification weights (``hrnetv2_w48_imagenet_pretrained.pth``, ``hrnet_w18_small_model_v2.pth``):
  the backbone only; the classification neck (``incre_modules``, ``downsamp_modules``, ``final_layer``,
  ``classifier``) is dropped, as the official ``init_weights`` does.
- Containers ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.`` (DataParallel) or ``backbone.`` prefixes
  (mmsegmentation files: their HRNet backbone keys are the official ones too; their heads are laid out differently
  and are not read).

Dilated ResNets load torchvision / mmcv ImageNet files through the same function (``ResNet.load_pretrained``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ContextSegError, unreadable_file

WRAPPER_PREFIXES = ("module.", "model.", "backbone.")  # DataParallel, the official FullModel, mmseg / contextseg
DROPPED_PREFIXES = (
    "loss.",  # the official FullModel's criterion
    "incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "fc.",  # ImageNet classification necks
    "decode_head.", "auxiliary_head.",  # mmsegmentation heads (another layout: only their backbone is read)
)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, unwrapped from ``state_dict`` / ``model`` containers and stripped of
    ``module.`` / ``model.`` / ``backbone.`` prefixes; loss and classification-neck entries dropped."""
    path = Path(path)
    if not path.is_file():
        raise ContextSegError(f"no weights file at {str(path)!r}; download the official file on a machine with "
                              f"internet access and give its local path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise unreadable_file(path, exc, "weights file") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ContextSegError(f"{str(path)!r} holds no state_dict of tensors")
    clean = {}
    for k, v in state.items():
        for prefix in WRAPPER_PREFIXES:
            k = k[len(prefix):] if k.startswith(prefix) else k
        if not k.startswith(DROPPED_PREFIXES):
            clean[k] = v
    return clean


def split_backbone_head(state: dict, model: nn.Module) -> tuple[dict, dict, list[str]]:
    """Route official keys to ``model.backbone`` and ``model.head`` by their first name (``conv3x3_ocr.0.weight`` is
    the head's, ``stage2.0...`` the backbone's; an existing ``head.`` prefix is kept; ``read_state_dict`` has
    already removed ``backbone.``).
    Returns (backbone_state, head_state, keys that belong to neither)."""
    head_roots = {k.split(".")[0] for k in model.head.state_dict()}
    body_roots = {k.split(".")[0] for k in model.backbone.state_dict()}
    body, head, other = {}, {}, []
    for k, v in state.items():
        root = k.split(".")[0]
        if root == "head":
            head[k[len("head."):]] = v
        elif root in head_roots and root not in body_roots:
            head[k] = v
        elif root in body_roots:
            body[k] = v
        else:
            other.append(k)
    return body, head, other


def load_fitting(part: nn.Module, state: dict, what: str, path, hint: str) -> None:
    """Load ``state`` into ``part`` when every tensor fits (names and shapes) and every tensor of ``part`` is given
    (BN ``num_batches_tracked`` counters aside: older files lack them); else one error naming the keys and ``hint``."""
    own = part.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
             if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ContextSegError(
            f"{str(path)!r} does not fit the {what}: {len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]}); {hint}"
        )
    part.load_state_dict(state, strict=False)  # everything but num_batches_tracked was checked above


def load_official_weights(model: nn.Module, path: str | os.PathLike, backbone_only: bool = False) -> str:
    """Load an official weights file into a ``Segmentor`` in place. Every tensor the file gives must fit (names and
    shapes), and every tensor of the part(s) it fills must be given. Returns what was loaded: "backbone + head",
    or "backbone" for a classification file or with ``backbone_only`` (e.g. to fine-tune on other classes)."""
    if hasattr(model, "model") and not hasattr(model, "backbone"):  # a MultiScale wrapper
        model = model.model
    state = read_state_dict(path)
    body, head, other = split_backbone_head(state, model)
    if other:
        raise ContextSegError(f"{str(path)!r} has {len(other)} tensors this model has no place for (e.g. "
                              f"{other[:3]}); is it for another architecture than {type(model.head).__name__}?")
    if not body:
        raise ContextSegError(f"{str(path)!r} holds no backbone weights for {type(model.backbone).__name__}")
    name = model.init_args.get("backbone", type(model.backbone).__name__) if hasattr(model, "init_args") else ""
    load_fitting(model.backbone, body, f"backbone {name}", path,
                 "build the model with the backbone the file was trained with (e.g. hrnetv2_w48 for a W48 file)")
    if backbone_only or not head:
        return "backbone"
    classes = [tuple(v.shape) for k, v in head.items() if k.startswith(("cls_head.weight", "last_layer.3.weight"))]
    hint = "build the same head (arch) as the file's"
    if classes and classes[0][0] != model.num_classes:
        hint = (f"the file predicts {classes[0][0]} classes and the model {model.num_classes}: pass "
                f"num_classes={classes[0][0]}, or backbone_only=True to fine-tune the backbone on your classes")
    load_fitting(model.head, head, f"head {type(model.head).__name__}", path, hint)
    return "backbone + head"


def load_official(path: str | os.PathLike, arch: str = "ocr", backbone: str = "hrnetv2_w48", num_classes: int = 19,
                  backbone_only: bool = False, **kwargs) -> nn.Module:
    """``create_model(arch, backbone, num_classes, **kwargs)`` with the weights of an official file (see the module
    docstring), in eval mode. E.g. ``load_official("hrnet_ocr_cs_8162_torch11.pth", "ocr", "hrnetv2_w48", 19)``,
    or an ImageNet file with ``backbone_only`` implied: ``load_official("hrnetv2_w18_small_v2_imagenet.pth",
    "ocr", "hrnetv2_w18_small_v2", num_classes=11)``."""
    from . import create_model

    model = create_model(arch, backbone=backbone, num_classes=num_classes, **kwargs)
    model.loaded_parts = load_official_weights(model, path, backbone_only=backbone_only)
    return model.eval()
