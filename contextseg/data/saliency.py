"""Salient object detection data: image / binary mask pairs (ECSSD, DUTS, any folder of them).

A sample is (image (3, H, W) float normalised, label (H, W) int64): 1 salient (mask > 128, as the SOD metrics
binarise ground truth), 0 background, 255 only where training crops pad the image. ``task = "saliency"`` tells the
engine to train a one-logit model with the saliency loss and to evaluate with the SOD metrics.

Splits: with ``split`` "train" / "val" and no split folders, the sorted pairs are divided deterministically: every
``val_every``-th pair (the 6th, 12th, ...) is validation, the rest training (ECSSD's 600 here: 500 / 100).
``split=None`` or "all" takes every pair.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ContextSegError
from ..registry import DATASETS
from .datasets import PairedSegmentation, default_data_root, pair_files, read_mask


class SaliencyFolder(PairedSegmentation):
    """root/{images}/x.jpg + root/{masks}/x.png (or root/{split}/{images}, root/{split}/{masks}), binary masks;
    ``image_scale`` as PairedSegmentation's (e.g. 0.5: every pair read at half size)."""

    task = "saliency"

    def __init__(self, root: str | os.PathLike | None = None, split: str | None = None, images: str = "images",
                 masks: str = "masks", val_every: int = 6, transform: Callable | None = None, name: str = "saliency",
                 image_scale: float = 1.0):
        if root is None:
            raise ContextSegError(f"the {name!r} dataset needs a root: data.root=/path holding {images}/ and {masks}/")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ContextSegError(f"{name} folder not found: {root}. Expected {root}/{images}/*.jpg and "
                                  f"{root}/{masks}/*.png (binary masks, 255 = salient); fix data.root")
        if split not in (None, "all") and (root / split / images).is_dir():
            files, masks_ = pair_files(root / split / images, root / split / masks)
        else:
            files, masks_ = pair_files(root / images, root / masks)
            if split not in (None, "all"):
                if split not in ("train", "val"):
                    raise ContextSegError(f"{name} has no split {split!r}: use train, val (every {val_every}th pair) "
                                          f"or all, or give {root}/{split}/{images}")
                if not isinstance(val_every, int) or val_every < 2:
                    raise ContextSegError(f"val_every must be an integer >= 2, got {val_every!r}")
                keep = [(i % val_every == val_every - 1) == (split == "val") for i in range(len(files))]
                files = [f for f, k in zip(files, keep) if k]
                masks_ = [m for m, k in zip(masks_, keep) if k]
        super().__init__(files, masks_, ["background", "salient"], [(0, 0, 0), (255, 255, 255)], transform,
                         image_scale=image_scale)
        self.root, self.split = root, split

    def load_label(self, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The i-th mask binarised at 128 (uint8 0 / 1), checked against the image size."""
        raw = read_mask(self.masks[i])
        if raw.ndim != 2:
            raise ContextSegError(f"saliency mask {self.masks[i]} is not single-channel; save it as grayscale")
        if shape is not None and raw.shape != shape:
            raise ContextSegError(f"image {self.files[i]} is {shape[1]}x{shape[0]} but its mask {self.masks[i]} is "
                                  f"{raw.shape[1]}x{raw.shape[0]}; re-export the mask at the image's size")
        return (raw > 128).astype(np.uint8)


@DATASETS.register("saliency_folder")
def saliency_folder(split: str | None = None, root=None, transform=None, **kwargs) -> SaliencyFolder:
    """Any folder of image / binary-mask pairs (images/, masks/)."""
    return SaliencyFolder(root, split, transform=transform, **kwargs)


@DATASETS.register("ecssd")
def ecssd(split: str | None = None, root=None, transform=None, **kwargs) -> SaliencyFolder:
    """ECSSD (Yan et al. 2013; here 600 of its 1000 images): default root ../shared/datasets/ecssd."""
    return SaliencyFolder(root or default_data_root() / "ecssd", split, transform=transform, name="ecssd", **kwargs)


saliency_folder.task = ecssd.task = "saliency"  # what contextseg.tasks reads to pick the task
