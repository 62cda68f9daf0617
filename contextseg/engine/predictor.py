"""Prediction on image files: label maps (class indices), colour maps and overlays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import eval_transform, read_image
from ..errors import ContextSegError
from ..visualize import colorize, default_palette, overlay
from .checkpoint import load_model
from .runtime import autocast, select_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted list of image paths."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ContextSegError(f"folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise ContextSegError(f"input {str(p)!r} does not exist; give image files or folders of images")
    return paths


class Predictor:
    """Loads a model (a checkpoint path or an nn.Module) and predicts per-pixel classes.

        pred = Predictor("runs/camvid/best.pt")
        label = pred.predict(image)            # (H, W) int64 from an (H, W, 3) uint8 RGB array
        probs = pred.predict_proba(image)      # (K, H, W) float32 softmax
    """

    def __init__(self, model, device: str = "auto", amp: str = "none", classes=None, palette=None):
        self.device = select_device(device)
        if isinstance(model, (str, Path)):
            model = load_model(model, device=self.device)
        self.model = model.to(self.device).eval()
        self.amp = amp
        self.num_classes = model.num_classes
        self.classes = classes or getattr(model, "classes", None) or [str(k) for k in range(self.num_classes)]
        self.palette = [tuple(c) for c in (palette or getattr(model, "palette", None) or default_palette(self.num_classes))]
        self.transform = eval_transform()

    @torch.no_grad()
    def predict_proba(self, image: np.ndarray) -> torch.Tensor:
        expected = getattr(self.model, "in_channels", 3)
        if image.ndim != 3 or image.shape[2] != expected:
            raise ContextSegError(f"image of shape {image.shape} given; this model takes (H, W, {expected}) arrays")
        x, _ = self.transform(image, None)
        x = x.unsqueeze(0).to(self.device)
        with autocast(self.device, self.amp):
            logits = self.model(x)["out"]
        logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        return logits.softmax(1)[0].cpu()

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_proba(image).argmax(0).numpy()

    def predict_files(self, inputs, out_dir: str | Path, alpha: float = 0.5, progress: bool = True) -> list[Path]:
        """For each image write STEM.png (class indices), STEM_color.png and STEM_overlay.jpg into out_dir."""
        from tqdm import tqdm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in tqdm(collect_images(inputs), desc="predict", disable=not progress, dynamic_ncols=True):
            image = read_image(path)
            label = self.predict(image).astype(np.uint8)
            Image.fromarray(label).save(out_dir / f"{path.stem}.png")
            Image.fromarray(colorize(label, self.palette)).save(out_dir / f"{path.stem}_color.png")
            Image.fromarray(overlay(image, label, self.palette, alpha)).save(out_dir / f"{path.stem}_overlay.jpg", quality=92)
            written.append(out_dir / f"{path.stem}.png")
        return written
