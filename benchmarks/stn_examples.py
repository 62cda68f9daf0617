"""A picture of what a spatial transformer does on the distorted CIFAR-10 validation set: per image, the distorted
input beside the STN's output (what the backbone saw), the true class and the prediction, one per class; and the
spread of its transformations over the whole set (rotation, scale, shift of theta: does it depend on the input?),
printed and saved beside the picture as JSON.

    .venv/bin/python benchmarks/stn_examples.py --checkpoint runs/claims/stn/stn/last.pt \
        --out benchmarks/results/cifar10_stn/stn_examples.png

The validation images are those of the run's config (data.kwargs.distort: a fixed draw per image, the same in every
run); ``predict`` writes the same pair per image for photos (STEM_stn.png).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from contextseg.config import config_from_dict
from contextseg.data.transforms import denormalize
from contextseg.engine.checkpoint import load_checkpoint
from contextseg.models import create_model
from contextseg.tasks.classification import build_datasets, stn_picture


def caption(picture: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    strip = Image.new("RGB", (picture.shape[1], height), "white")
    ImageDraw.Draw(strip).text((picture.shape[1] // 2, height // 2), text, fill="black", anchor="mm", font_size=14)
    return np.concatenate([np.asarray(strip), picture], axis=0)


@torch.no_grad()
def theta_spread(model, val, batch: int = 250) -> dict:
    """Mean and standard deviation over the set of theta's rotation (degrees), scale (sqrt |det A|) and shift."""
    thetas = torch.cat([model(torch.stack([val[i][0] for i in range(s, min(s + batch, len(val)))]))["stn_theta"]
                        for s in range(0, len(val), batch)])
    a, t = thetas[:, :, :2], thetas[:, :, 2]
    parts = {"rotation_deg": torch.atan2(a[:, 1, 0] - a[:, 0, 1], a[:, 0, 0] + a[:, 1, 1]) * 180 / math.pi,
             "scale": a.det().abs().sqrt(), "shift_x": t[:, 0], "shift_y": t[:, 1]}
    return {"images": len(thetas), **{k: {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)}
                                      for k, v in parts.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--columns", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/cifar10_stn/stn_examples.png")
    a = p.parse_args()
    ckpt = load_checkpoint(a.checkpoint)
    model = create_model(**ckpt["model_args"]).eval()
    model.load_state_dict(ckpt["model"])
    _, val = build_datasets(config_from_dict(ckpt["config"]), train=False)
    picks = [val.targets.index(k) for k in range(val.num_classes) if k in val.targets]
    cells = []
    with torch.no_grad():
        for i in picks:
            x, y = val[i]
            out = model(x[None])
            k = int(out["out"].argmax(1))
            pair = stn_picture(denormalize(x), denormalize(out["stn_input"][0]), min_side=96)
            cells.append(caption(pair, f"{val.classes[int(y)]} -> {val.classes[k]}"))
    stats = theta_spread(model, val)
    print(json.dumps(stats))
    rows = [np.concatenate(cells[r:r + a.columns], axis=1) for r in range(0, len(cells), a.columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(a.out)
    Path(a.out).with_suffix(".json").write_text(json.dumps({"checkpoint": a.checkpoint, **stats}, indent=1) + "\n")
    print(f"saved {a.out}: {len(cells)} validation images, input | STN output, true -> predicted class")


if __name__ == "__main__":
    main()
