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


def plot_curves(jsonl_path: str | Path, png_path: str | Path, key_metric: str = "mIoU") -> None:
    """Training loss and learning rate against step, and the validation ``key_metric``, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]  # None where a step's loss was not finite
        axes[0].plot(steps, [float("nan") if v is None else v for v in losses], lw=1)
        logged = [v for v in losses if v is not None]  # log scale unless a loss is <= 0 (SSNet's NLL is in [-1, 0])
        axes[0].set(title="training loss", xlabel="step", yscale="log" if logged and min(logged) > 0 else "linear")
        axes[1].plot(steps, [r["lr"] for r in train], lw=1)
        axes[1].set(title="learning rate", xlabel="step")
    if val:
        axes[2].plot([r["step"] for r in val], [100 * r.get(key_metric, float("nan")) for r in val], marker="o")
        axes[2].set(title=f"validation {key_metric} (%)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- `contextseg doctor` plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(losses, png_path: str | Path, threshold: float | None = None, title: str = "loss") -> None:
    """Loss against step (log y), with an optional horizontal threshold line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(range(1, len(losses) + 1), losses, lw=1.2)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend()
    ax.set(title=title, xlabel="step", ylabel="loss", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_lr_finder(lrs, losses, smoothed, png_path: str | Path, suggested: float | None = None,
                   steepest: float | None = None, configured: float | None = None) -> None:
    """LR range test: raw and smoothed loss against learning rate (log x), with the suggested lr marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(lrs, losses, lw=0.8, alpha=0.4, label="loss")
    ax.plot(lrs, smoothed, lw=1.6, label="smoothed")
    for value, colour, name in ((suggested, "tab:green", "suggested"), (steepest, "tab:orange", "steepest"),
                                (configured, "tab:red", "configured")):
        if value:
            ax.axvline(value, color=colour, ls="--", lw=1, label=f"{name} {value:.2g}")
    ax.set(title="learning-rate range test", xlabel="learning rate", ylabel="loss", xscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_update_ratios(groups, ratios, png_path: str | Path, low: float = 1e-4, high: float = 1e-2) -> None:
    """Horizontal bars of update-to-weight ratio per parameter group (log x), healthy band shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(groups) + 1.2))
    values = [r if r and r > 0 else float("nan") for r in ratios]
    colours = ["tab:blue" if low <= v <= high else "tab:red" for v in values]
    ax.barh(range(len(groups)), values, color=colours)
    ax.axvspan(low, high, color="tab:green", alpha=0.1)
    ax.axvline(1e-3, color="tab:green", ls="--", lw=1)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.invert_yaxis()
    ax.set(title="update / weight ratio per group", xscale="log")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_class_frequencies(classes, shares: dict, png_path: str | Path, palette=None) -> None:
    """Pixel share per class (log y), one bar group per split: shares = {split: [share per class]}."""
    plt = _pyplot()
    n, k = len(shares), len(classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * k * max(n, 1) + 1.5), 3.8))
    width = 0.8 / max(n, 1)
    for j, (split, values) in enumerate(shares.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(k)]
        colour = ([tuple(c / 255 for c in palette[i]) for i in range(k)] if palette is not None else None) if j == 0 else "0.6"
        ax.bar(xs, [max(v, 1e-7) for v in values], width, label=split, color=colour, edgecolor="black", lw=0.5,
               alpha=1.0 if j == 0 else 0.5)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set(title="pixel share per class", ylabel="share of labelled pixels", yscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
