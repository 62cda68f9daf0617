"""Does this PyTorch + CPU compute a wrong weight gradient for dilated convolutions under bf16 autocast with
channels_last tensors? (torch 2.13 on AVX-512 CPUs does: NaN or garbage, sometimes a segfault, when the input
channels are not a multiple of 16, e.g. HRNet-W18's 270-channel concatenation.) contextseg's heads use
``models.heads.common.AtrousConv2d``, which avoids that case; this script shows the bug and the workaround.

    .venv/bin/python benchmarks/atrous_bf16_bug.py            # each case in a child process (a segfault is reported)
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/atrous_bf16_bug.py   # the AVX2 kernels

Prints, per case, the largest relative error of the weight gradient against an fp32 NCHW reference (bf16 rounding
gives about 1e-2) and saves benchmarks/results/atrous_bf16_bug.json.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

CASES = [  # (in_channels, dilation, batch, conv): 270 = HRNet-W18 concat; 256 a multiple of 16; dilation 1 control
    (270, 6, 16, "nn.Conv2d"), (270, 12, 16, "nn.Conv2d"), (270, 6, 4, "nn.Conv2d"), (270, 1, 16, "nn.Conv2d"),
    (256, 6, 16, "nn.Conv2d"), (270, 6, 16, "AtrousConv2d"), (270, 12, 16, "AtrousConv2d"), (270, 6, 4, "AtrousConv2d"),
]


def child(cin: int, dilation: int, batch: int, conv: str) -> dict:
    import torch

    from contextseg.models.heads.common import AtrousConv2d

    torch.manual_seed(0)
    cls = AtrousConv2d if conv == "AtrousConv2d" else torch.nn.Conv2d
    layer = cls(cin, 12, 3, padding=dilation, dilation=dilation).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, 64, 80).contiguous(memory_format=torch.channels_last)
    ref = torch.nn.Conv2d(cin, 12, 3, padding=dilation, dilation=dilation)
    ref.load_state_dict(layer.state_dict())
    ref(x.contiguous()).square().mean().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().mean().backward()
    g, r = layer.weight.grad.float(), ref.weight.grad
    err = float((g - r).abs().max() / r.abs().max())
    return {"finite": bool(torch.isfinite(g).all()), "rel_error": err if err == err else None}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
        return
    import torch

    rows = []
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for cin, dilation, batch, conv in CASES:
        proc = subprocess.run([sys.executable, __file__, "--child", str(cin), str(dilation), str(batch), conv],
                              capture_output=True, text=True)
        row = {"in_channels": cin, "dilation": dilation, "batch": batch, "conv": conv}
        if proc.returncode:
            row.update(finite=False, rel_error=None, crashed=f"exit status {proc.returncode}")
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        ok = row["finite"] and row["rel_error"] is not None and row["rel_error"] < 0.05
        row["right"] = ok
        err = "crashed" if row.get("crashed") else f"{row['rel_error']:.1e}" if row["rel_error"] is not None else "nan"
        print(f"{conv:13s} in {cin:3d} dilation {dilation:2d} batch {batch:2d}: weight grad "
              f"{'right' if ok else 'WRONG'} (rel. error {err})")
        rows.append(row)
    out = Path(__file__).resolve().parent / "results" / "atrous_bf16_bug.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
