"""``contextseg bench``: inference latency of one model in the execution modes this machine offers.

Modes (each on the same random batch, after warm-up; median of ``repeats`` timed forward passes):
    fp32       eager float32
    bf16       bfloat16 autocast + channels_last (CPUs with AVX-512 BF16 / AMX, or CUDA)
    fp16       float16 autocast + channels_last (CUDA only)
    fused      float32 with BatchNorm folded into the convolutions (``fuse_conv_bn``)
    onnx       onnxruntime on an ONNX export of the model (CPU; needs the export extra)
Every mode ends with the logits upsampled to the input size (as prediction needs them). Reported per mode:
seconds per batch and per image, images per second, speed-up over fp32, and the largest difference of the logits
from fp32 (what the mode costs in accuracy).
"""
from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import ContextSegError
from ..models.fuse import fuse_conv_bn
from .runtime import select_device

MODES = ("fp32", "bf16", "fp16", "fused", "onnx")


def default_modes(device: torch.device) -> list[str]:
    modes = ["fp32", "bf16", "fused"]
    if device.type == "cuda":
        modes.insert(2, "fp16")
    if device.type == "cpu" and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        modes.append("onnx")
    return modes


def _timed(fn, repeats: int, warmup: int, device: torch.device) -> tuple[list[float], torch.Tensor]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, out


def benchmark(model: nn.Module, size=(512, 512), batch: int = 1, repeats: int = 10, warmup: int = 2,
              modes=None, device: str = "auto", progress=print) -> list[dict]:
    """Time ``model`` (eval mode) on a (batch, C, H, W) random input in each mode; returns one dict per mode."""
    dev = select_device(device)
    modes = list(modes or default_modes(dev))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ContextSegError(f"unknown bench mode(s) {unknown}; choose from {', '.join(MODES)}")
    if "fp16" in modes and dev.type != "cuda":
        raise ContextSegError("mode fp16 needs CUDA; on the CPU use bf16")
    if "onnx" in modes and dev.type != "cpu":
        raise ContextSegError("mode onnx runs on onnxruntime's CPU provider; bench it with --device cpu")
    model = model.float().eval().to(dev)
    x = torch.randn(batch, getattr(model, "in_channels", 3), *size, device=dev)
    rows, reference = [], None
    for mode in ["fp32"] + [m for m in modes if m != "fp32"]:
        fn = _at_input_size(_runner(model, x, mode, size), size)
        with torch.no_grad():
            times, out = _timed(fn, repeats, warmup, dev)
        out = out.float().cpu()
        if reference is None:
            reference = out
        median = statistics.median(times)
        row = {"mode": mode, "batch": batch, "size": list(size), "s_per_batch": median, "s_per_img": median / batch,
               "img_per_s": batch / median, "max_abs_diff": float((out - reference).abs().max()),
               "device": str(dev), "threads": torch.get_num_threads()}
        rows.append(row)
    base = rows[0]["s_per_batch"]
    for row in rows:
        row["speedup"] = base / row["s_per_batch"]
    rows = [r for r in rows if r["mode"] in modes]
    if progress:
        progress(format_rows(rows))
    return rows


def _runner(model: nn.Module, x: torch.Tensor, mode: str, size):
    dev = x.device
    if mode == "fp32":
        return lambda: model(x)["out"]
    if mode in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        fast = model.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.autocast(dev.type, dtype=dtype):
                return fast(xc)["out"]
        return run
    if mode == "fused":
        fused = fuse_conv_bn(model.to(memory_format=torch.contiguous_format))
        return lambda: fused(x)["out"]
    from ..export import OnnxModel, export_onnx  # mode == "onnx"

    path = Path(tempfile.mkdtemp(prefix="contextseg-bench-")) / "model.onnx"
    export_onnx(model.to(memory_format=torch.contiguous_format), path, size=size, check_sizes=[size])
    ort_model = OnnxModel(path)
    return lambda: ort_model(x)["out"]  # already at the input size


def _at_input_size(fn, size):
    """Logits upsampled to the input size (bilinear, as prediction does), so every mode is timed and compared on
    the same output; the ONNX graph already ends with this resize."""
    def run():
        out = fn().float()
        if tuple(out.shape[-2:]) == tuple(size):
            return out
        return torch.nn.functional.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return run


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'mode':<7} {'s/batch':>9} {'s/img':>9} {'img/s':>8} {'speed-up':>9} {'max|diff|':>10}"]
    for r in rows:
        lines.append(f"{r['mode']:<7} {r['s_per_batch']:>9.4f} {r['s_per_img']:>9.4f} {r['img_per_s']:>8.2f} "
                     f"{r['speedup']:>8.2f}x {r['max_abs_diff']:>10.2e}")
    return "\n".join(lines)
