"""Multi-scale inference table for one checkpoint: val mIoU and inference seconds per image of single scale, average
and max over an image pyramid, and (for a checkpoint trained with a learned merge) attention / hierarchical, each
with and without horizontal flip.

    .venv/bin/python benchmarks/multiscale_eval.py configs/camvid/ocr_hrnetv2_w18s_v2.yaml \
        --checkpoint runs/compare/heads/ocr/last.pt --tag single --scales 0.75 1.0 1.25 1.5 --pictures docs/multiscale
    .venv/bin/python benchmarks/multiscale_eval.py configs/camvid/ocr_hrnetv2_w18s_v2.yaml \
        --checkpoint runs/compare/merges/attention/last.pt --pictures docs/multiscale

Methods (rows; each also "+ flip" unless --no-flip):
    single         scale 1.0
    avg, max       the --scales pyramid (default 0.75 1.0 1.25 1.5), logits averaged / max-pooled
    learned merge  checkpoints trained with model.kwargs.multiscale.merge=attention|hierarchical: avg and max at the
                   training scales too (the fair baselines), the learned merge at the training scales, and
                   hierarchical also over the --scales pyramid (it applies to any number of scales; Attention to
                   Scale predicts one weight map per training scale, so only those)

The evaluation is contextseg's (whole val images at their own size, the config's amp and channels_last, the
checkpoint's model); key=value overrides right after the config change it (e.g. device=cuda, data.root=...). Inference
seconds per image time the model's forward only (no data loading, no metric), after one untimed warm-up image.
Results: RESULTS_DIR/multiscale_TAG.{json,md} (TAG default: the checkpoint's run folder name).
--pictures DIR writes, per method, DIR/TAG_METHOD.png: image | ground truth | prediction overlay, and for a learned
merge the weight map of each scale (viridis, 0..1), for val image --picture-index. `contextseg predict IMAGES
--checkpoint CKPT --scales ... --merge ... --save-attention --out DIR` writes the same maps for any image.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contextseg.config import load_config
from contextseg.engine.checkpoint import load_model
from contextseg.engine.builders import build_datasets, eval_loader
from contextseg.engine.evaluator import EvalRuntime, evaluate
from contextseg.engine.runtime import autocast, select_device
from contextseg.models.multiscale import LEARNED_MERGES, MultiScale, configure_inference, inference_spec


class Timed(nn.Module):
    """Wraps a model; sums the wall seconds and images of its forward calls (CUDA synchronised). The wrapped
    model is ``.model``, where ``align_corners_of`` finds its setting for the evaluator's final resize."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.seconds, self.images, self.enabled = 0.0, 0, True

    def forward(self, x):
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        out = self.model(x)
        sync()
        if self.enabled:
            self.seconds += time.perf_counter() - t0
            self.images += x.shape[0]
        return out


def plan_methods(trained: dict, scales: list[float], flip: bool) -> list[dict]:
    """Rows to evaluate: dicts of method, scales (None: as loaded, single scale), merge, flip."""
    scales = sorted(float(s) for s in scales)
    rows = [dict(method="single", scales=[1.0], merge="avg"),
            dict(method="avg", scales=scales, merge="avg"),
            dict(method="max", scales=scales, merge="max")]
    learned = trained.get("merge") if trained.get("merge") in LEARNED_MERGES else None
    if learned:
        train_scales = sorted(float(s) for s in trained["scales"])
        if train_scales != scales:
            rows += [dict(method="avg", scales=train_scales, merge="avg"),
                     dict(method="max", scales=train_scales, merge="max")]
        rows.append(dict(method=learned, scales=train_scales, merge=learned))
        if learned == "hierarchical" and train_scales != scales:
            rows.append(dict(method=learned, scales=scales, merge=learned))
    out = []
    for r in rows:
        for f in ([False, True] if flip else [False]):
            out.append({**r, "flip": f})
    return out


def row_key(r: dict) -> str:
    sc = "/".join(f"{s:g}" for s in r["scales"])
    return f"{r['method']} [{sc}]" + (" + flip" if r["flip"] else "")


def configured(base: nn.Module, r: dict) -> nn.Module:
    """A fresh copy of the loaded model with the row's test-time options."""
    model = copy.deepcopy(base)
    if not isinstance(model, MultiScale) and r["scales"] == [1.0] and not r["flip"]:
        return model  # the plain model itself
    return configure_inference(model, scales=r["scales"], merge=r["merge"], flip=r["flip"])


def picture(model: nn.Module, image: np.ndarray, label: np.ndarray, palette, classes, device, amp: str,
            title: str, path: Path) -> None:
    from PIL import Image, ImageDraw

    from contextseg.engine.predictor import Predictor
    from contextseg.visualize import colorize, heatmap, overlay

    pred = Predictor(model, device=str(device), amp=amp, classes=classes, palette=palette)
    outputs = pred.predict_outputs(image)
    guess = outputs["probs"].argmax(0).numpy()
    panels = [(image, "image"), (colorize(label, palette), "ground truth"), (overlay(image, guess, palette, 0.6), title)]
    if "scale_weights" in outputs:
        for s, w in zip(pred.scales, outputs["scale_weights"].numpy()):
            panels.append((heatmap(w), f"weight, scale {s:g}"))
    row = np.concatenate([p for p, _ in panels], axis=1)
    strip = Image.new("RGB", (row.shape[1], row.shape[0] + 16), (255, 255, 255))
    strip.paste(Image.fromarray(row), (0, 0))
    draw = ImageDraw.Draw(strip)
    w = image.shape[1]
    for i, (_, text) in enumerate(panels):
        draw.rectangle([i * w, 0, min(i * w + 6 * len(text) + 6, (i + 1) * w - 1), 13], fill=(0, 0, 0))
        draw.text((i * w + 3, 1), text, fill=(255, 255, 255))
    x = 3  # legend: class colours
    for name, colour in zip(classes, palette):
        if x + 12 + 6 * len(name) > strip.width:
            break
        draw.rectangle([x, row.shape[0] + 3, x + 9, row.shape[0] + 12], fill=tuple(int(c) for c in colour))
        draw.text((x + 12, row.shape[0] + 2), name, fill=(0, 0, 0))
        x += 12 + 6 * len(name) + 10
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)


def markdown(report: dict) -> str:
    rows = report["rows"]
    classes = list(rows[0]["per_class_iou"]) if rows and rows[0].get("per_class_iou") else []
    head = ["method", "scales", "flip", "**mIoU**", "pixel acc", *classes, "s/img", "x single"]
    lines = [f"`{report['checkpoint']}` on {report['split']} ({report['images']} images, {report['config']}"
             f"{', ' + ' '.join(report['overrides']) if report['overrides'] else ''}); trained as "
             f"{json.dumps(report['trained'])}; device {report['device']}, amp {report['amp']}; IoU %, inference "
             f"seconds per image (forward only).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per = r.get("per_class_iou") or {}
        cells = [r["method"], "/".join(f"{s:g}" for s in r["scales"]), "yes" if r["flip"] else "no",
                 f"**{100 * r['mIoU']:.1f}**", f"{100 * r['pixel_acc']:.1f}",
                 *(f"{100 * per[c]:.1f}" if per.get(c) is not None else "-" for c in classes),
                 f"{r['s_per_img']:.3f}", f"{r['relative_cost']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (device=cuda, data.root=...)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.0, 1.25, 1.5])
    p.add_argument("--no-flip", action="store_true", help="only the rows without flip")
    p.add_argument("--only", help="comma-separated methods to run (single,avg,max,attention,hierarchical)")
    p.add_argument("--limit", type=int, help="evaluate the first N val images only (quick looks)")
    p.add_argument("--tag", help="name in the result files (default: the checkpoint's folder name)")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--pictures", help="folder for one picture per method (e.g. docs/multiscale)")
    p.add_argument("--picture-index", type=int, default=0, help="val image shown in the pictures")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_intermixed_args(argv)

    cfg = load_config(a.config, a.overrides)
    device = select_device(cfg.device)
    _, val_set = build_datasets(cfg, train=False)
    if val_set is None:
        p.error("the config has no data.val_split")
    dataset = val_set if a.limit is None else torch.utils.data.Subset(val_set, range(min(a.limit, len(val_set))))
    loader = eval_loader(dataset, cfg)
    base = load_model(a.checkpoint, device="cpu")
    if base.num_classes != val_set.num_classes:
        p.error(f"the checkpoint predicts {base.num_classes} classes, the dataset has {val_set.num_classes}")
    trained = inference_spec(base)
    methods = plan_methods(trained, a.scales, flip=not a.no_flip)
    if a.only:
        keep = {m.strip() for m in a.only.split(",")}
        methods = [m for m in methods if m["method"] in keep]
    tag = a.tag or Path(a.checkpoint).resolve().parent.name
    amp, cl = cfg.train.amp, cfg.train.channels_last
    warm_x = dataset[0][0].unsqueeze(0).to(device)
    if cl:
        warm_x = warm_x.contiguous(memory_format=torch.channels_last)

    rows = []
    for r in methods:
        model = configured(base, r).to(device).eval()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        timed = Timed(model, device)
        timed.enabled = False
        with torch.no_grad(), autocast(device, amp):
            timed(warm_x)  # warm-up: one-time kernel selection and allocations, not timed
        timed.enabled = True
        result = evaluate(timed, loader, val_set.num_classes, val_set.classes, val_set.ignore_index,
                          EvalRuntime(device, amp, cl, not a.no_progress), desc=row_key(r))
        row = {**r, "key": row_key(r), "inference": inference_spec(model), "mIoU": result["mIoU"],
               "pixel_acc": result["pixel_acc"], "mean_acc": result["mean_acc"],
               "per_class_iou": result["per_class_iou"], "s_per_img": timed.seconds / max(timed.images, 1),
               "images": timed.images}
        rows.append(row)
        print(f"{row['key']:40s} mIoU {100 * row['mIoU']:5.1f}   {row['s_per_img']:.3f} s/img", flush=True)
        if a.pictures and not r["flip"]:
            image, label = val_set.raw(a.picture_index)
            sc = "-".join(f"{s:g}" for s in r["scales"])
            path = Path(a.pictures) / f"{tag}_{r['method']}_{sc}.png"
            picture(model, image, label, val_set.palette, val_set.classes, device, amp,
                    f"{r['method']} [{sc.replace('-', '/')}]", path)
            row["picture"] = str(path)
        del model, timed
    single = next((x["s_per_img"] for x in rows if x["method"] == "single" and not x["flip"]), None)
    for row in rows:
        row["relative_cost"] = row["s_per_img"] / single if single else float("nan")

    report = {"checkpoint": a.checkpoint, "config": a.config, "overrides": a.overrides, "split": cfg.data.val_split,
              "images": len(dataset), "trained": trained, "device": str(device), "amp": amp,
              "threads": torch.get_num_threads(), "rows": rows}
    out_dir = Path(a.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"multiscale_{tag}.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out_dir / f"multiscale_{tag}.md").write_text(md)
    print()
    print(md)
    print(f"saved {out_dir / f'multiscale_{tag}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
