"""``contextseg env``: the machine as the speed figures need it described (CPU, instruction sets, threads, torch
and oneDNN, the precision ``amp=auto`` picks and why, the inference backends, the measured 3x3 convolution
GFLOP/s per precision: the roofline a model's throughput is read against)."""
from __future__ import annotations

import os

import torch

from .hardware import backends_available, conv_gflops, cpu_name, instruction_sets, isa_ceiling, named, native_bf16
from .runtime import precision_choice


def environment(measure: bool = True) -> dict:
    """Everything ``contextseg env`` prints, as a dict (``measure``: also the convolution GFLOP/s probes)."""
    cpu = torch.device("cpu")
    amp, reason = precision_choice("auto", cpu)
    info = {
        "cpu": cpu_name(),
        "instruction_sets": instruction_sets(),
        "isa_ceiling": isa_ceiling(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "onednn": _onednn_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "native_bf16": native_bf16(cpu)[0],
        "auto_precision": {"amp": amp, "reason": reason},
        "backends": backends_available(),
    }
    if measure:
        info["conv_gflops"] = {
            "fp32_nchw": round(conv_gflops("fp32", channels_last=False), 1),
            "fp32_channels_last": round(conv_gflops("fp32", channels_last=True), 1),
            "bf16_channels_last": round(conv_gflops("bf16", channels_last=True), 1),
        }
    return info


def _onednn_version() -> str | None:
    try:
        v = torch.backends.mkldnn.version() if hasattr(torch.backends.mkldnn, "version") else None
    except RuntimeError:
        v = None
    if v:
        return str(v)
    for line in torch.__config__.show().splitlines():
        if "Intel(R) MKL-DNN" in line or "oneDNN" in line:
            return line.strip().lstrip("- ")
    return None


def format_environment(info: dict) -> str:
    has = named(info["instruction_sets"], "none reported")
    lines = [
        f"cpu:            {info['cpu']} ({info['cores']} logical cores, torch uses {info['threads']} threads)",
        f"instruction sets: {has}" + (f"  [limited by {info['isa_ceiling']}]" if info["isa_ceiling"] else ""),
        f"torch:          {info['torch']} (kernels: {info['torch_cpu_capability']}); oneDNN {info['onednn']}",
        f"cuda:           {info['cuda'] or 'not available'}",
        f"precision auto: {info['auto_precision']['amp']} ({info['auto_precision']['reason']})",
        "backends:       " + ", ".join(k if why is None else f"{k} (no: {why})" for k, why in info["backends"].items()),
    ]
    g = info.get("conv_gflops")
    if g:
        lines.append(f"3x3 conv GFLOP/s: fp32 NCHW {g['fp32_nchw']}, fp32 channels_last {g['fp32_channels_last']}, "
                     f"bf16 channels_last {g['bf16_channels_last']} (the limit model throughput is read against)")
    return "\n".join(lines)
