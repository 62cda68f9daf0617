"""Image classification data: folders of class subfolders ("cifar10", "image_folder"), the CIFAR augmentation,
CutMix for image labels, and a tiny synthetic image folder for tests.

A sample is (image (3, H, W) float32 normalised as the rest of the package, label int in 0..K-1); the datasets
declare ``task = "classification"``, which makes ``contextseg train`` / ``eval`` train and score a classifier
(tasks/classification.py). Layouts (classes are the sorted subfolder names unless ``classes`` is given):

    ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg   explicit splits (any split folder, e.g. test/)
    ROOT/train/<class>/*.jpg alone (CIFAR-10 here) or ROOT/<class>/*.jpg
        split "train" / "val": per class, in sorted file order, every ``val_every``-th image (the 10th, 20th, ...)
        is validation, the rest training (CIFAR-10 here: 900 / 100 per class); "all" (or None) takes every image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ContextSegError
from ..registry import DATASETS
from .datasets import IMAGE_EXTS, default_data_root, read_image, voc_palette
from .mix import CUTMIX_BOXES, _numpy_rng, cutmix_box
from .transforms import MEAN, STD, SegTransform, eval_transform

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _class_dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


class ImageFolderClassification(Dataset):
    """Class-subfolder images -> (image tensor, class index); see the module docstring for layouts and splits.

    ``size=[H, W]`` resizes every image (needed when the files differ in size); ``transform(image, None)`` gives
    the tensor (default: normalisation only). ``transform_seed`` (an int) draws a random transform of sample i with
    torch seeded by (transform_seed, i), the same at every call: a fixed distorted validation set
    (``distorted_eval_transform``).
    """

    task = "classification"
    ignore_index = 255  # no label is ignored; kept for the engine's common interface

    def __init__(self, root: str | os.PathLike, split: str | None = "train", transform: Callable | None = None,
                 classes: Sequence[str] | None = None, val_every: int = 10, size: Sequence[int] | None = None,
                 name: str = "image_folder", transform_seed: int | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ContextSegError(f"{name} folder not found: {root}. Expected {root}/<class>/*.jpg or "
                                  f"{root}/train/<class>/*.jpg; fix data.root")
        if not isinstance(val_every, int) or isinstance(val_every, bool) or val_every < 2:
            raise ContextSegError(f"val_every must be an integer >= 2, got {val_every!r}")
        derive = False
        if (root / "val").is_dir() and split not in (None, "all"):
            base = root / split
        elif split not in (None, "all", "train", "val"):
            base = root / split
        else:
            base, derive = (root / "train" if (root / "train").is_dir() else root), split in ("train", "val")
        if not base.is_dir():
            raise ContextSegError(f"{name} has no split {split!r}: {base} does not exist (splits: train, val, all, "
                                  f"or a folder of {root})")
        found = _class_dirs(base)
        classes = [str(c) for c in classes] if classes is not None else found
        missing = [c for c in classes if c not in found]
        if not classes or missing:
            raise ContextSegError(f"{name}: no class folder{'s ' + str(missing) if missing else 's'} in {base}; "
                                  f"expected {base}/<class>/*.jpg (one folder per class)")
        self.files: list[Path] = []
        self.targets: list[int] = []
        for k, c in enumerate(classes):
            files = _images(base / c)
            if not files:
                raise ContextSegError(f"{name}: class folder {base / c} holds no images ({', '.join(IMAGE_EXTS)})")
            if derive:
                files = [f for i, f in enumerate(files) if (i % val_every == val_every - 1) == (split == "val")]
            self.files += files
            self.targets += [k] * len(files)
        self.classes, self.num_classes = classes, len(classes)
        self.palette = voc_palette(self.num_classes)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.transform = transform if transform is not None else eval_transform()
        self.root, self.split, self.name = root, split, name
        self.transform_seed = transform_seed
        self._shape: tuple | None = None

    def __len__(self) -> int:
        return len(self.files)

    def raw(self, i: int) -> tuple[np.ndarray, int]:
        """The i-th image as uint8 (H, W, 3) RGB (resized to ``size`` if given) and its class index."""
        image = read_image(self.files[i])
        if self.size is not None and image.shape[:2] != self.size:
            shrink = image.shape[0] > self.size[0]
            image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        elif self.size is None:
            self._shape = self._shape or image.shape
            if image.shape != self._shape:
                raise ContextSegError(f"{self.name}: images differ in size ({self.files[i]} is {image.shape[1]}x"
                                      f"{image.shape[0]}, others {self._shape[1]}x{self._shape[0]}); resize them "
                                      f"all with data.kwargs={{size: [H, W]}}")
        return image, self.targets[i]

    def __getitem__(self, i: int):
        image, label = self.raw(i)
        if self.transform_seed is None:
            return self.transform(image, None)[0], label
        with torch.random.fork_rng(devices=[]):  # the same random transform of sample i at every call
            torch.manual_seed(int(self.transform_seed) * 1_000_003 + int(i))
            return self.transform(image, None)[0], label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}, split={self.split!r}, {len(self)} images, "
                f"{self.num_classes} classes)")


@DATASETS.register("image_folder")
def image_folder(split: str | None = "train", root=None, transform=None, **kwargs) -> ImageFolderClassification:
    """Any folder of class subfolders of images (classification)."""
    if root is None:
        raise ContextSegError("the 'image_folder' dataset needs a root: data.root=/path holding <class>/*.jpg")
    return ImageFolderClassification(root, split, transform, **kwargs)


@DATASETS.register("cifar10")
def cifar10(split: str | None = "train", root=None, transform=None, **kwargs) -> ImageFolderClassification:
    """CIFAR-10 as JPEG folders (here the first 1000 training images per class): default root
    ../shared/datasets/cifar10; every 10th image of a class is validation (900 / 100 per class)."""
    kwargs.setdefault("classes", CIFAR10_CLASSES)
    return ImageFolderClassification(root or default_data_root() / "cifar10", split, transform, name="cifar10",
                                     **kwargs)


image_folder.task = cifar10.task = "classification"


def classification_train_transform(crop_size: Sequence[int] = (32, 32), pad: int = 4, hflip: bool = True,
                                   mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                                   distort: dict | None = None) -> SegTransform:
    """The CIFAR augmentation (He et al. 2016, Sec. 4.2): ``pad`` zero pixels on each side, a random crop_size crop,
    horizontal flip with probability 0.5, then normalisation. (H, W, 3) uint8 -> (3, crop H, crop W) float32.
    ``distort`` (a dict, see ``random_distortion``) first applies a random affine distortion to the image."""
    h, w = int(crop_size[0]), int(crop_size[1])
    steps: list = [random_distortion(**distort)] if distort else []
    steps += [A.Pad(padding=int(pad), fill=0, border_mode=cv2.BORDER_CONSTANT)] if pad else []
    steps += [A.RandomCrop(h, w, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0)]
    steps += [A.HorizontalFlip(p=0.5)] if hflip else []
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)]
    return SegTransform(steps, random=True)


# --- random affine distortion (the task of the spatial transformer experiments) ---

DISTORT_OPTIONS = ("rotate", "scale", "translate")


def random_distortion(rotate: float = 0.0, scale: float | Sequence[float] = (1.0, 1.0),
                      translate: float = 0.0) -> A.Affine:
    """A random affine distortion of the whole image, as the distorted MNIST of the spatial transformer paper
    (Jaderberg et al. 2015, Sec. 4.1: rotated, scaled, translated digits): a rotation by an angle uniform in
    [-rotate, rotate] degrees, an isotropic scale uniform in [scale[0], scale[1]] (a number s: [s, s]), a translation
    uniform in [-translate, translate] of the width and (independently) of the height, all about the image centre;
    bilinear, the uncovered border black (0, as the CIFAR padding). ``data.kwargs.distort``, e.g.
    {rotate: 45, scale: [0.7, 1.2], translate: 0.15}."""
    lo, hi = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    if not 0 < float(lo) <= float(hi):
        raise ContextSegError(f"distort.scale must be a number > 0 or [min, max] with 0 < min <= max, got {scale!r}")
    if not 0 <= float(rotate) <= 180:
        raise ContextSegError(f"distort.rotate is the largest angle in degrees, 0..180, got {rotate!r}")
    if not 0 <= float(translate) < 1:
        raise ContextSegError(f"distort.translate is the largest shift as a fraction of the image, 0 <= t < 1, got "
                              f"{translate!r}")
    r, t = float(rotate), float(translate)
    return A.Affine(scale=(float(lo), float(hi)), keep_ratio=True, translate_percent=(-t, t), rotate=(-r, r),
                    interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)


def check_distort(distort) -> dict | None:
    """``data.kwargs.distort`` -> the options of ``random_distortion`` (None / empty: no distortion)."""
    if not distort:
        return None
    if not isinstance(distort, dict):
        raise ContextSegError(f"data.kwargs.distort must be a mapping, e.g. {{rotate: 45, scale: [0.7, 1.2], "
                              f"translate: 0.15}}, got {distort!r}")
    unknown = sorted(set(distort) - set(DISTORT_OPTIONS))
    if unknown:
        raise ContextSegError(f"unknown distort option(s) {unknown}; it takes: {', '.join(DISTORT_OPTIONS)}")
    random_distortion(**distort)  # checks the values
    return dict(distort)


def distorted_eval_transform(distort: dict, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> SegTransform:
    """The random distortion, then normalisation: the validation images of a distorted task (no crop, no flip).
    Random: give the dataset a ``transform_seed`` so that each image is distorted the same way at every pass."""
    return SegTransform([random_distortion(**distort), A.Normalize(mean=tuple(mean), std=tuple(std),
                                                                  max_pixel_value=255.0)], random=True)

# --- end random affine distortion ---


class LabelCutMix:
    """CutMix for image labels (Yun et al. 2019, Sec. 3.1; the CIFAR setting: probability p = 0.5 per batch, alpha 1).

    ``images, targets = LabelCutMix(p, alpha, box)(images (B, C, H, W), labels (B,))``: with probability p, one box
    (``data.mix.cutmix_box``, lam ~ Beta(alpha, alpha); box "reference" (default): centred uniformly and clipped at the
    border as the official code, clovaai/CutMix-PyTorch train.py ``rand_bbox``, mean area 0.30-0.32 at alpha 1;
    "inside": wholly inside the image, area ~ Beta(alpha, alpha)) is cut from each sample's partner perm[i] and
    pasted into it. lam is then recomputed from the pasted box, as train.py does. targets is always a dict:
        label (B,) int64 own class, label_b (B,) the partner's, lam (B,) float: share of the area kept from the own
        image (1 - box area, exact), box (B, 4) float: (y0, x0, y1, x1) of the pasted box as fractions of H, W,
        index_b (B,) int64 the partner's index in the batch (zeros, lam 1, label_b = label, index_b = 0..B-1 when
        the batch is not mixed).
    """

    def __init__(self, p: float = 0.5, alpha: float = 1.0, generator: torch.Generator | None = None,
                 box: str = "reference"):
        if not 0.0 <= p <= 1.0:
            raise ContextSegError(f"CutMix probability must be in [0, 1], got {p} (data.mix_prob)")
        if alpha <= 0:
            raise ContextSegError(f"cutmix alpha must be > 0, got {alpha} (data.mix_kwargs.alpha)")
        if box not in CUTMIX_BOXES:
            raise ContextSegError(f"cutmix box is 'reference' or 'inside', got {box!r} (data.mix_kwargs.box)")
        self.p, self.alpha, self.generator, self.box = float(p), float(alpha), generator, box

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if images.dim() != 4 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ContextSegError(f"label CutMix takes images (B, C, H, W) and labels (B,), got "
                                  f"{tuple(images.shape)} and {tuple(labels.shape)}")
        b, _, height, width = images.shape
        targets = {"label": labels, "label_b": labels, "lam": torch.ones(b, device=images.device),
                   "box": torch.zeros(b, 4, device=images.device), "index_b": torch.arange(b, device=images.device)}
        if self.p <= 0 or torch.rand((), generator=self.generator).item() >= self.p:
            return images, targets
        perm = torch.randperm(b, generator=self.generator).to(images.device)
        top, left, h, w = cutmix_box(height, width, self.alpha, _numpy_rng(self.generator), self.box)
        if h == 0 or w == 0:
            return images, targets
        images = images.clone()
        images[:, :, top:top + h, left:left + w] = images[perm, :, top:top + h, left:left + w]
        box = torch.tensor([top / height, left / width, (top + h) / height, (left + w) / width], device=images.device)
        targets.update(label_b=labels[perm], index_b=perm, lam=targets["lam"] * (1.0 - h * w / (height * width)),
                       box=box.expand(b, 4).clone())
        return images, targets


def build_label_mix(data_cfg, generator: torch.Generator | None = None) -> LabelCutMix | None:
    """The trainer's batch transform for classification: LabelCutMix for data.mix=cutmix, else None (labels pass
    through as a (B,) tensor)."""
    mix = getattr(data_cfg, "mix", "none")
    if mix in (None, "none") or data_cfg.mix_prob <= 0:
        return None
    if mix != "cutmix":
        raise ContextSegError(f"data.mix={mix!r} needs label maps; image classification takes data.mix=cutmix or none")
    kwargs = dict(data_cfg.mix_kwargs or {})
    unknown = sorted(set(kwargs) - {"alpha", "box"})
    if unknown:
        raise ContextSegError(f"cutmix for classification has no argument(s) {unknown} (data.mix_kwargs); it takes "
                              f"alpha, box")
    return LabelCutMix(data_cfg.mix_prob, kwargs.get("alpha", 1.0), generator, kwargs.get("box", "reference"))


def write_image_folder(root: str | os.PathLike, classes: Sequence[str] = ("disc", "square", "bar"), per_class: int = 10,
                       size: Sequence[int] = (16, 16), seed: int = 0) -> list[str]:
    """Write ``per_class`` JPEGs per class as root/<class>/00000.jpg: a bright shape (disc, square, horizontal bar,
    then further shapes cycling) at a random place on dark noise. Returns the class names."""
    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    yy, xx = np.mgrid[:h, :w]
    for k, name in enumerate(classes):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            cy, cx, r = rng.integers(h // 4, h - h // 4), rng.integers(w // 4, w - w // 4), max(2, min(h, w) // 5)
            shape = [np.hypot(yy - cy, xx - cx) <= r, (abs(yy - cy) <= r) & (abs(xx - cx) <= r),
                     (abs(yy - cy) <= 1) & (abs(xx - cx) <= 2 * r)][k % 3]
            image[shape] = (rng.integers(150, 256, 3) if k >= 3 else [220, 200, 60])
            Image.fromarray(image).save(Path(root) / name / f"{i:05d}.jpg", quality=95)
    return list(classes)
