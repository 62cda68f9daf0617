"""A picture of predictions on CamVid val: image | ground truth | prediction overlay, a few rows.

    .venv/bin/python benchmarks/camvid_examples.py --checkpoint runs/camvid_ocr_w18s_v2/best.pt \
        --out docs/camvid_val_examples.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from contextseg import Predictor
from contextseg.data import build_dataset
from contextseg.visualize import colorize, overlay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", default=None, help="CamVid folder (default ../shared/datasets/camvid)")
    p.add_argument("--indices", type=int, nargs="+", default=[0, 40, 80])
    p.add_argument("--out", default="docs/camvid_val_examples.png")
    a = p.parse_args()
    ds = build_dataset("camvid", "val", root=a.root)
    pred = Predictor(a.checkpoint, amp="bf16")
    rows = []
    for i in a.indices:
        image, label = ds.raw(i)
        guess = pred.predict(image)
        rows.append(np.concatenate([image, colorize(label, ds.palette), overlay(image, guess, ds.palette, 0.6)], 1))
    grid = np.concatenate(rows, 0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] // 2, grid.shape[0] // 2), Image.BILINEAR).save(a.out)
    print(f"saved {a.out} (columns: image, ground truth, prediction overlay)")


if __name__ == "__main__":
    main()
