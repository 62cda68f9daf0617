"""Pixel losses over a model's named outputs (``OutputsLoss``), and their construction from a config.

``loss.weights`` maps output names (or glob patterns) to weights; None (the config default) is the segmentation
default {out: 1.0, aux: 0.4}: OCR's CE(out) + 0.4 CE(aux) (Yuan et al. 2020, Sec. 3.3; official
``LOSS.BALANCE_WEIGHTS`` [0.4, 1]).
"""
from __future__ import annotations

import fnmatch
import inspect

import torch
import torch.nn as nn

from ..errors import ContextSegError
from ..registry import LOSSES
from .pixel import CrossEntropy, median_frequency_weights

SEGMENTATION_WEIGHTS = {"out": 1.0, "aux": 0.4}


# ----------------------------------------------------------------------------- outputs by name


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


class OutputsLoss(nn.Module):
    """Weighted sum of pixel losses over named model outputs: sum_k w_k * loss_k(outputs[k], labels), where loss_k is
    ``criterion`` for the final output "out" and ``others`` (default: ``criterion`` too) for every other one, e.g.
    OHEM on "out" and plain CE on OCR's "aux" (``build_loss("ohem", ...)``).

    Keys of ``weights`` are output names or glob patterns (fnmatch: ``*``, ``?``, ``[...]``); an exact
    name wins over a pattern, and among patterns the first listed that matches wins. Example:
    {"out": 1.0, "aux": 0.4, "out_s*": 0.4} weights "out" 1.0, "aux" 0.4 and every per-scale output
    ("out_s0.5", "out_s2.0", ...) 0.4; outputs matched by no key ("attention") are not in the loss.
    Keys that match nothing (e.g. "aux" from an FCN head) are skipped. Returns (total, parts).
    """

    def __init__(self, criterion: nn.Module, weights: dict[str, float], others: nn.Module | None = None):
        super().__init__()
        self.criterion = criterion
        self.others = others
        self.weights = {str(k): float(v) for k, v in dict(weights).items()}
        self._patterns = [(k, v) for k, v in self.weights.items() if _is_pattern(k)]

    def weight_of(self, name: str) -> float:
        if name in self.weights:
            return self.weights[name]
        for pattern, w in self._patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return w
        return 0.0

    def forward(self, outputs: dict, labels: torch.Tensor):
        parts = {}
        total = None
        for name, value in outputs.items():
            w = self.weight_of(name)
            if w == 0:
                continue
            criterion = self.criterion if name == "out" or self.others is None else self.others
            loss = criterion(value, labels)
            parts[name] = loss.detach()
            total = w * loss if total is None else total + w * loss
        if total is None:
            raise KeyError(f"none of the loss outputs {list(self.weights)} is in the model's outputs {list(outputs)}")
        return total, parts


# ----------------------------------------------------------------------------- construction


def build_loss(name: str = "ce", weights: dict[str, float] | None = None, ignore_index: int = 255, **kwargs) -> OutputsLoss:
    """A registered pixel loss ("ce", "ohem", "focal") wrapped in OutputsLoss; kwargs go to the loss. "ohem" is applied
    to the final output "out" only and plain CE (same class weights) to the others, as the official code."""
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            known = [k for k in params if k != "ignore_index"]
            raise ContextSegError(f"loss {name!r} has no argument(s) {unknown}; its arguments (loss.kwargs) are: "
                                  f"{', '.join(known) or 'none'}")
    criterion = cls(ignore_index=ignore_index, **kwargs)
    others = CrossEntropy(ignore_index, kwargs.get("class_weights")) if name == "ohem" else None
    return OutputsLoss(criterion, SEGMENTATION_WEIGHTS if weights is None else weights, others)


WEIGHT_KWARGS = ("class_weights", "alpha")  # loss kwargs that may say "median_frequency"


def resolve_loss_kwargs(kwargs: dict, dataset, num_classes: int | None = None, ignore_index: int = 255,
                        progress: bool = True) -> dict:
    """Replace ``median_frequency`` in class_weights / alpha with weights counted from ``dataset``'s raw
    labels, and check every per-class list has num_classes values."""
    kwargs = dict(kwargs)
    num_classes = num_classes if num_classes is not None else getattr(dataset, "num_classes", None)
    for key in WEIGHT_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str):
            if value.lower().replace("-", "_") not in ("median_frequency", "median_freq"):
                raise ContextSegError(f"loss.kwargs.{key}={value!r} is not known; use median_frequency or a list of "
                                      f"one float per class")
            if dataset is None or num_classes is None:
                raise ContextSegError(f"loss.kwargs.{key}=median_frequency needs the training set to count classes")
            kwargs[key] = median_frequency_weights(dataset, num_classes, ignore_index, progress=progress)
        elif isinstance(value, (list, tuple)) and num_classes is not None and len(value) != num_classes:
            raise ContextSegError(f"loss.kwargs.{key} has {len(value)} values but the dataset has {num_classes} "
                                  f"classes; give one weight per class")
    return kwargs


def build_loss_for(cfg, dataset, progress: bool = True) -> OutputsLoss:
    """The loss of ``cfg.loss`` for training on ``dataset`` (its ignore_index and class count), with
    ``class_weights: median_frequency`` (or ``alpha: median_frequency`` for focal) counted from its labels."""
    ignore_index = getattr(dataset, "ignore_index", 255)
    kwargs = resolve_loss_kwargs(cfg.loss.kwargs, dataset, getattr(dataset, "num_classes", None), ignore_index, progress)
    return build_loss(cfg.loss.name, cfg.loss.weights, ignore_index=ignore_index, **kwargs)
