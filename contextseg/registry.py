"""Small name -> constructor tables, one per kind (models, backbones, datasets, losses)."""
from __future__ import annotations

import difflib
from typing import Callable

from .errors import ContextSegError


class Registry:
    """Maps config names to plain constructors; unknown names raise a message listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Callable] = {}

    def register(self, name: str | None = None):
        """Decorator for a constructor, or a class with a ``builder()`` classmethod (the heads: the table then holds
        ``cls.builder()``, e.g. ``(backbone, num_classes, **options) -> head``); returns it unchanged."""
        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._table:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._table[key] = fn.builder() if isinstance(fn, type) and hasattr(fn, "builder") else fn
            return fn

        return deco

    def get(self, name: str) -> Callable:
        if name not in self._table:
            close = difflib.get_close_matches(str(name), self._table, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ContextSegError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(sorted(self._table))}"
            )
        return self._table[name]

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table


BACKBONES = Registry("backbone")
HEADS = Registry("model")  # segmentation architectures: "fcn", "ocr", ... (backbone is a keyword)
CLASSIFIERS = Registry("model")  # image classification output layers: "saol", "gap" (create_model takes both)
DATASETS = Registry("dataset")
LOSSES = Registry("loss")


def is_classifier(model) -> bool:
    """True for an image classifier built by ``create_model`` (its "out" is (B, K) class logits, not a map)."""
    return (getattr(model, "init_args", None) or {}).get("arch") in CLASSIFIERS or \
        getattr(model, "task", None) == "classification"  # an exported classifier behind OnnxModel
