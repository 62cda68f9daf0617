"""Paired image/mask transforms built on albumentations (2.x API: ``fill`` / ``fill_mask``).

Every transform here is a callable object

    transform(image, mask)   image: uint8 (H, W, 3) RGB, mask: integer (H, W)
        -> (image_tensor float32 (3, h, w) normalised, label_tensor int64 (h, w))
    transform(image) / transform(image, None)      prediction: no mask
        -> (image_tensor float32 (3, h, w), None)  (always a pair, so `x, _ = tf(img, None)`)
    transform.image_only(image)
        -> image_tensor float32 (3, h, w)          (the tensor alone)

Geometric operations move image and mask together (image bilinear, mask nearest-exact); padding
fills the image with the mean colour (0 after normalisation) and the mask with
``ignore_index``, so padded pixels never count in the loss or the metrics.

Randomness: albumentations keeps its own generator, untouched by ``torch.manual_seed``. A
``SegTransform`` with random steps reseeds it on every call from ``torch``'s generator, so a
fixed ``torch.manual_seed`` reproduces the augmentations, and each DataLoader worker (which
torch seeds differently) draws different ones.
"""
from __future__ import annotations

import random
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, RGB, on a 0..1 scale
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """float (H, W, C) numpy -> float32 (C, H, W) tensor (our own ToTensor; no torchvision)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """integer (H, W) numpy -> int64 (H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


class SegTransform:
    """An albumentations pipeline (ending in Normalize) plus conversion to tensors.

    ``random=True`` reseeds the pipeline from torch's generator on every call (see module doc).
    """

    def __init__(self, pipeline: Sequence[A.BasicTransform], random: bool = False):
        self.pipeline = A.Compose(list(pipeline))
        self.random = random

    def _reseed(self) -> None:
        seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
        # One shared generator for all steps (set_random_seed would give every step an
        # identical stream, correlating e.g. the flip with the scale draw).
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None):
        if self.random:
            self._reseed()
        if mask is None:
            return to_tensor(self.pipeline(image=image)["image"]), None
        if mask.dtype not in (np.uint8, np.int32, np.float32):
            # OpenCV warps cannot take int64 masks; dataset labels are 0..K-1 or 255.
            mask = mask.astype(np.uint8 if mask.max(initial=0) <= 255 else np.int32)
        out = self.pipeline(image=image, mask=mask)
        return to_tensor(out["image"]), mask_to_tensor(out["mask"])

    def image_only(self, image: np.ndarray) -> torch.Tensor:
        """Transform an image without a mask (prediction); returns the image tensor alone."""
        return self(image, None)[0]

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.pipeline.transforms)
        return f"{type(self).__name__}([{names}])"


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{what} must be an int or (H, W) of positive ints, got {size!r}")
    return size  # type: ignore[return-value]


def train_transform(
    crop_size: int | Sequence[int] = (512, 512),
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    jitter: bool = True,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    ignore_index: int = 255,
) -> SegTransform:
    """Random scale -> pad to crop size -> random crop -> flip -> colour jitter -> normalise.

    crop_size: (H, W) of every output. scale_range: (min, max) factor, drawn uniformly;
    (1, 1) turns scaling off. Outputs: image (3, H, W) float32, label (H, W) int64.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
    steps: list[A.BasicTransform] = []
    if (lo, hi) != (1.0, 1.0):
        # RandomScale draws the factor as 1 + uniform(scale_limit).
        # INTER_NEAREST_EXACT samples pixel centres as INTER_LINEAR does; plain INTER_NEAREST
        # shifts the mask by up to half a source pixel against the image (2-6% of pixels off).
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0))
    steps += [
        A.PadIfNeeded(min_height=crop_h, min_width=crop_w, position="center", border_mode=cv2.BORDER_CONSTANT,
                      fill=tuple(float(m) * 255.0 for m in mean), fill_mask=ignore_index),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if jitter:
        steps.append(A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=0.8))
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return SegTransform(steps, random=True)


def eval_transform(mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> SegTransform:
    """Normalise only; the whole image at its own size. (H, W, 3) uint8 -> (3, H, W) float32."""
    return SegTransform([A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)], random=False)


def denormalize(image: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """Inverse of the normalisation: (3, H, W) tensor -> uint8 (H, W, 3) RGB, for overlays."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    rgb = ((image * s + m) * 255.0).clamp(0, 255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).cpu().numpy()
