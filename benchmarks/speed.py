"""Inference and training-step speed, peak memory and GFLOPs of contextseg models on this machine.

    .venv/bin/python benchmarks/speed.py                       # OCR/FCN + w18_small_v2, OCR + w48
    .venv/bin/python benchmarks/speed.py --models ocr:hrnetv2_w18_small_v2 --size 360 480 --batch 4

Each (model, mode) runs in a fresh subprocess so that peak RSS is its own. Modes:
  fp32       eager float32 (the official implementation's setting)
  bf16_cl    bfloat16 autocast + channels_last (oneDNN/AMX on CPUs that have it)
  fused_fp32 inference only: BatchNorm folded into the convolutions, float32 (outputs checked equal)
Results are printed beside the official implementation's figures on the same 2-core CPU and saved
to benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Official HRNet-Semantic-Segmentation (HRNet-OCR branch), measured on this 2-core CPU, batch 4, fp32, eager.
OFFICIAL = {
    "ocr:hrnetv2_w18_small_v2": {"infer": 0.72, "train": 2.28},
    "fcn:hrnetv2_w18_small_v2": {"infer": 0.15, "train": 0.68},
    "ocr:hrnetv2_w48": {"infer": 1.46, "train": None},
}


def measure(spec: str, mode: str, size, batch: int, repeats: int, train: bool) -> dict:
    import torch

    from contextseg import create_model
    from contextseg.models.fuse import fuse_conv_bn

    arch, backbone = spec.split(":")
    torch.manual_seed(0)
    model = create_model(arch, backbone=backbone, num_classes=19)
    x = torch.randn(batch, 3, *size)
    result = {"model": spec, "mode": mode, "batch": batch, "size": list(size), "threads": torch.get_num_threads()}
    cl = mode == "bf16_cl"
    dtype = torch.bfloat16 if mode == "bf16_cl" else None

    def run_infer(m, inp):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            return m(inp)["out"]

    model.eval()
    if mode == "fp32":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            run_infer(model, x[:1])
        result["gflops_per_img"] = fc.get_total_flops() / 1e9
    infer_model = model
    if mode == "fused_fp32":
        reference = run_infer(model, x)
        infer_model = fuse_conv_bn(model)
        out = run_infer(infer_model, x)
        # relative to the logits' range: an untrained network in eval mode has logits in the hundreds
        result["max_rel_diff_vs_eager"] = ((out - reference).abs().max() / reference.abs().max()).item()
    if cl:
        infer_model = infer_model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run_infer(infer_model, x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_infer(infer_model, x)
        times.append(time.perf_counter() - t0)
    result["infer_s_per_img"] = statistics.median(times) / batch
    if train and mode != "fused_fp32":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        labels = torch.randint(0, 19, (batch, *size))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                out = model(x)
            loss = sum(torch.nn.functional.cross_entropy(
                torch.nn.functional.interpolate(v.float(), size=size, mode="bilinear"), labels) * w
                for v, w in ((out["out"], 1.0), (out.get("aux", out["out"]), 0.4 if "aux" in out else 0.0)))
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        times = []
        for _ in range(max(2, repeats // 2)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        result["train_s_per_img"] = statistics.median(times) / batch
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(OFFICIAL))
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16_cl", "fused_fp32"])
    p.add_argument("--size", nargs=2, type=int, default=[360, 480])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.json"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.child[0], a.child[1], a.size, a.batch, a.repeats, not a.no_train)))
        return
    rows = []
    for spec in a.models:
        for mode in a.modes:
            cmd = [sys.executable, __file__, "--child", spec, mode, "--size", *map(str, a.size),
                   "--batch", str(a.batch), "--repeats", str(a.repeats)] + (["--no-train"] if a.no_train else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = OFFICIAL.get(spec, {})
            row["official_infer_s_per_img"], row["official_train_s_per_img"] = ref.get("infer"), ref.get("train")
            rows.append(row)
            f = lambda v: "    -" if v is None else f"{v:5.3f}"
            sp = lambda ours, off: "" if not (ours and off) else f" ({off / ours:.2f}x)"
            print(f"{spec:28s} {mode:10s} infer {f(row['infer_s_per_img'])} s/img{sp(row['infer_s_per_img'], ref.get('infer'))}"
                  f"  train {f(row.get('train_s_per_img'))} s/img{sp(row.get('train_s_per_img'), ref.get('train'))}"
                  f"  peak {row['peak_rss_mb']:.0f} MB"
                  + (f"  {row['gflops_per_img']:.1f} GFLOPs/img" if "gflops_per_img" in row else "")
                  + (f"  max|diff|/max|out| {row['max_rel_diff_vs_eager']:.1e}" if "max_rel_diff_vs_eager" in row else ""),
                  flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()}
    with open(a.out, "w") as fh:
        json.dump({"machine": machine, "rows": rows}, fh, indent=2)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
