"""Palettes, colour label maps, overlays and training curves (matplotlib, Agg backend)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaving palette: distinct, stable colours for any number of classes."""
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k + 1 if num_classes > 1 else 1
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def colorize(label: np.ndarray, palette, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; ignore pixels get `ignore_color`."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = ignore_color
    return lut[label.astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, palette, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend a colour label map over an RGB uint8 image of the same size."""
    colors = colorize(label, palette, ignore_index).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colors * alpha
    keep = label == ignore_index
    out[keep] = image[keep]
    return out.clip(0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis") -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 colours of a matplotlib colormap, values clipped to [vmin, vmax].

    Used for per-scale attention weights (0 = the scale is ignored at that pixel, 1 = it alone decides).
    """
    import matplotlib

    values = np.asarray(values, dtype=np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    norm = np.clip((values - vmin) / span, 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](norm)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(jsonl_path: str | Path, png_path: str | Path) -> None:
    """Training loss and learning rate against step, and validation mIoU, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], lw=1)
        axes[0].set(title="training loss", xlabel="step", yscale="log")
        axes[1].plot(steps, [r["lr"] for r in train], lw=1)
        axes[1].set(title="learning rate", xlabel="step")
    if val:
        axes[2].plot([r["step"] for r in val], [100 * r["mIoU"] for r in val], marker="o")
        axes[2].set(title="validation mIoU (%)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
