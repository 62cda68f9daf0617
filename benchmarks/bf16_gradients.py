"""How far bf16 autocast moves a trained model's gradients from fp32, per parameter, on one real training batch.

Made to ask whether SAOL's bf16 cost on CIFAR-10 (docs/results.md) comes from noisier gradients than GAP-FC's:
for each zoo model, one batch of the training split (augmented as in training, no CutMix), CE on every
classification output ("out", and SAOL's "gap" branch), backward once in fp32 and once under bf16 autocast from
the same weights (train mode); relative error |g_bf16 - g_fp32| / |g_fp32| per parameter tensor.

    .venv/bin/python benchmarks/bf16_gradients.py                      # cifar10-saol and cifar10-gap
    .venv/bin/python benchmarks/bf16_gradients.py --models cifar10-saol --batch 256

Prints and saves benchmarks/results/bf16_gradients.json (median and the largest errors per model, with the CPU).
Parameters whose fp32 gradient is zero by construction (SAOL's attention bias: a softmax is shift-invariant) are
left out.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import contextseg
from contextseg.config import load_config
from contextseg.engine.hardware import cpu_label
from contextseg.tasks.classification import build_datasets

OUTPUTS = ("out", "gap")


def gradients(model, x, y, bf16: bool) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    sum(F.cross_entropy(v.float(), y) for k, v in out.items() if k in OUTPUTS).backward()
    return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def relative_errors(model, x, y) -> dict[str, float]:
    reference, mixed = gradients(model, x, y, False), gradients(model, x, y, True)
    errors = {}
    for name, g in reference.items():
        scale = g.norm().item()
        if scale > 1e-6:  # skip zero-by-construction gradients
            errors[name] = (mixed[name] - g).norm().item() / scale
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cifar10-saol", "cifar10-gap"])
    parser.add_argument("--config", default="configs/cifar10/saol_resnet20.yaml", help="data settings of the batch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/bf16_gradients.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train_set, _ = build_datasets(load_config(args.config))
    batch = [train_set[i] for i in torch.randperm(len(train_set))[: args.batch].tolist()]
    x = torch.stack([image for image, _ in batch])
    y = torch.tensor([int(label) for _, label in batch])
    rows = {}
    for name in args.models:
        errors = relative_errors(contextseg.load_model(f"zoo:{name}"), x, y)
        worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        parts = {part: statistics.median(e for n, e in errors.items() if n.split(".")[0] == part)
                 for part in sorted({n.split(".")[0] for n in errors})}
        rows[name] = {"median": statistics.median(errors.values()), "median_by_part": parts, "worst": worst,
                      "tensors": len(errors)}
        print(f"{name}: median relative error {rows[name]['median']:.3f} over {len(errors)} tensors ("
              + ", ".join(f"{p} {e:.3f}" for p, e in parts.items()) + "); largest: "
              + ", ".join(f"{n} {e:.3f}" for n, e in worst))
    result = {"cpu": cpu_label(), "torch": torch.__version__, "batch": args.batch, "seed": args.seed,
              "threads": torch.get_num_threads(), "models": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
