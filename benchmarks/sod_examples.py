"""A picture of saliency maps on ECSSD val: image | mask | one saliency map (grey, 0..1) per checkpoint, a few rows.

    .venv/bin/python benchmarks/sod_examples.py --out docs/sod/pfa_attention_ablation.png \
        --checkpoint full=runs/pfa_1600/pfa/full/last.pt "no attention=runs/pfa_1600/pfa/no_attention/last.pt"

A checkpoint may be given as NAME=PATH; NAME labels its column (default: the run folder's name).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from camvid_examples import header, named
from PIL import Image

from contextseg import Predictor
from contextseg.data import build_dataset
from contextseg.visualize import heatmap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", help="one or more PATH or NAME=PATH")
    p.add_argument("--root", default=None, help="ECSSD folder (default ../shared/datasets/ecssd)")
    p.add_argument("--indices", type=int, nargs="+", default=[0, 30, 60, 90])
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), help="each cell's (H, W)")
    p.add_argument("--out", default="docs/sod/pfa_examples.png")
    a = p.parse_args()
    ds = build_dataset("ecssd", "val", root=a.root)
    models = [(name, Predictor(path, amp="auto")) for name, path in map(named, a.checkpoint)]
    h, w = a.size
    rows = []
    for i in a.indices:
        image, mask = ds.raw(i)
        maps = [mask == 1] + [pred.predict_proba(image)[1].numpy() for _, pred in models]  # white = salient
        cells = [image] + [heatmap(m, cmap="gray") for m in maps]
        rows.append(np.concatenate([np.asarray(Image.fromarray(c).resize((w, h), Image.BILINEAR)) for c in cells], 1))
    titles = ["image", "mask"] + [name for name, _ in models]
    grid = np.concatenate([header(titles, w)] + rows, 0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(a.out)
    print(f"saved {a.out} (columns: {', '.join(titles)})")


if __name__ == "__main__":
    main()
