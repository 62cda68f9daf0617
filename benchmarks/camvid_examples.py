"""A picture of predictions on CamVid val: image | ground truth | one prediction overlay per checkpoint, a few rows.

    .venv/bin/python benchmarks/camvid_examples.py --checkpoint runs/camvid_ocr_w18s_v2/best.pt \
        --out docs/camvid_val_examples.png
    .venv/bin/python benchmarks/camvid_examples.py --out docs/camvid_heads.png \
        --checkpoint FCN=runs/compare/heads/fcn/last.pt OCR=runs/compare/heads/ocr/last.pt     # side by side

A checkpoint may be given as NAME=PATH; NAME labels its column (default: the run folder's name).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from contextseg import Predictor
from contextseg.data import build_dataset
from contextseg.visualize import colorize, overlay


def named(spec: str) -> tuple[str, str]:
    """"NAME=PATH" -> (NAME, PATH); "PATH" -> (the checkpoint's folder name, PATH)."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (Path(spec).parent.name, spec)


def header(titles: list[str], width: int, height: int = 40) -> np.ndarray:
    """A white strip with one title centred over each of the len(titles) columns of ``width`` pixels."""
    strip = Image.new("RGB", (width * len(titles), height), "white")
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        draw.text((i * width + width // 2, height // 2), title, fill="black", anchor="mm", font_size=24)
    return np.asarray(strip)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", help="one or more PATH or NAME=PATH")
    p.add_argument("--root", default=None, help="CamVid folder (default ../shared/datasets/camvid)")
    p.add_argument("--indices", type=int, nargs="+", default=[0, 40, 80])
    p.add_argument("--out", default="docs/camvid_val_examples.png")
    a = p.parse_args()
    ds = build_dataset("camvid", "val", root=a.root)
    models = [(name, Predictor(path, amp="bf16")) for name, path in map(named, a.checkpoint)]
    rows = []
    for i in a.indices:
        image, label = ds.raw(i)
        cells = [image, colorize(label, ds.palette)]
        cells += [overlay(image, pred.predict(image), ds.palette, 0.6) for _, pred in models]
        rows.append(np.concatenate(cells, 1))
    titles = ["image", "ground truth"] + [name for name, _ in models]
    grid = np.concatenate([header(titles, rows[0].shape[1] // len(titles))] + rows, 0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] // 2, grid.shape[0] // 2), Image.BILINEAR).save(a.out)
    print(f"saved {a.out} (columns: {', '.join(titles)})")


if __name__ == "__main__":
    main()
