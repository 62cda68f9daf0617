"""Complexity of the context modules alone, beside the OCR paper's comparison table (Yuan, Chen & Wang 2020,
"Object-Contextual Representations for Semantic Segmentation", the complexity table: PPM, ASPP, DANet,
self-attention and OCR on one 2048 x 128 x 128 feature map, batch 1).

    .venv/bin/python benchmarks/context_modules.py                # full size, five modules: ~3-5 min on 2 idle cores
    .venv/bin/python benchmarks/context_modules.py --params-only  # parameters and GFLOPs: meta tensors, no compute, ~2 s
    .venv/bin/python benchmarks/context_modules.py --quick        # 512 x 64 x 64: the table in about a minute
    .venv/bin/python benchmarks/context_modules.py --modules ppm ocr danet_lite nl_head --repeats 3

On a machine with CUDA the GPU columns are filled too (``--devices cpu cuda``, the default there; ``--devices cuda``
skips the CPU runs). Results are printed beside the paper's figures and saved as JSON to
benchmarks/results/context_modules.json (other sizes: context_modules_<C>x<H>x<W>.json, so a trial run does not
overwrite the full-size result).

What each row is (``--channels`` C = 2048 by default; widths 512 and 256 fixed as in the paper):

  ppm             contextseg PSPHead without its dropout and classifier: 4 bins (1, 2, 3, 6) x [1x1 C -> C/4 + BN],
                  3x3 (C + 4 * C/4) -> 512 + BN.                                             23.07M at C = 2048
  aspp            contextseg ASPPHead (DeepLab v3, rates 12/24/36, width 256) without dropout and classifier:
                  1x1 + three 3x3 atrous C -> 256, image pooling C -> 256, 1x1 projection 1280 -> 256.   15.54M
  danet           Dual attention (Fu et al. 2019, "Dual Attention Network for Scene Segmentation", Sec. 3.2-3.4):
                  contextseg DANetHead (`create_model("danet")`) without its classifiers:
                  conv5a 3x3 C -> 512, position attention (PAM, Eqs. 1-2), conv51 3x3 512 -> 512; conv5c 3x3 C -> 512,
                  channel attention (CAM, Eqs. 3-4), conv52 3x3 512 -> 512; the two summed.         23.93M
  self_attention  The OCNet/OCR-paper layout from contextseg pieces: conv_bn_relu 3x3 C -> 512, NonLocal2d(512)
                  (key/value 256, 1/sqrt(256) scaling), 1x1 fusion of concat[context, input] 1024 -> 512.  10.49M
  ocr             contextseg OCRHead's conv3x3_ocr (3x3 C -> 512), SpatialGather and SpatialOCR (key 256), fed
                  random soft object regions (B, 19, H, W) as the official script does; the aux head that predicts
                  those regions and the classifier are not counted.                                  10.62M
  danet_lite      (extra) one 3x3 C -> 512 reduction, PAM + CAM on it, the same 1x1 fusion as self_attention. 10.29M
  nl_head         (extra) contextseg NonLocalHead (mmsegmentation NLHead layout, what `create_model("nonlocal")`
                  trains) without its classifier: reduce 3x3, NonLocal2d, 3x3 512 -> 512, 3x3 (C + 512) -> 512.

The paper's figures (PAPER below) are those read from the paper's complexity table; we could not find the paper's text
in the reference corpora, so the numbers, their units and the GPU model (V100 or P40; "GPU memory" in MB) are not
verified here. What we did verify is the official measuring code: openseg.pytorch, lib/models/modules/
{psp,aspp,base_oc,spatial_ocr}_block.py (``__main__`` blocks, run by infer_time.sh): eval mode, torch.no_grad, input
torch.randn(1, 2048, 128, 128) on CUDA, parameters = sum of numel (the 3x3 2048 -> 512 conv is counted for
self-attention and OCR), time = mean wall time of 100 forwards with synchronize and no warm-up, memory =
torch.cuda.max_memory_allocated() since process start minus the input's bytes, in MiB (2**20) -- except the PPM
script, which does not subtract the 128 MiB input. Self-attention there is BaseOC_Module(512, 512, key 256, value 256)
after the 3x3 conv; OCR is SpatialGather + SpatialOCR_Module(512, key 256, 512) after it, with random (1, 19, 128, 128)
region logits. There is no DANet in that repository.

Parameters. Ours match the paper for PPM (23.07 vs 23.1M) and ASPP (15.54 vs 15.5M). For self-attention and OCR the
official code itself gives 10.62M (its key/query transforms are two 1x1 conv-BN-ReLU layers each), the paper 10.5M:
exactly what remains without the second 256 -> 256 layer of the two transforms (2 x 66,304), so the table was most
likely computed with single-layer transforms. Our self-attention (NonLocal2d has single 1x1 theta/phi/g) is 10.49M;
our OCR keeps OCRHead's two-layer phi/psi (as the official HRNet-OCR code), 10.62M. DANet: the paper's 10.6M and
1110 GFLOPs do not fit one layout: the DANet head (two 3x3 2048 -> 512 reductions, PAM, CAM, two 3x3 512 -> 512)
gives 1110.2 GFLOPs -- the paper's 1110 to the digit, so that is the layout it timed -- but 23.9M parameters; one
shared reduction (danet_lite) gives 10.3M but 664 GFLOPs. We show the DANet head and flag its parameters.

FLOPs. torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-add, and only convolutions and
matrix products (BN, ReLU, softmax, pooling and resizing are free). The paper uses the same convention: PPM's
619 G is 2 x 309 G multiply-adds (its 3x3 4096 -> 512 bottleneck over 16,384 pixels is 309.2 G MACs alone); ASPP's
492 G = 2 x 246 G; self-attention's 619 G = 2 x (154.6 G conv + 137.4 G attention + 17.2 G 1x1) MACs; OCR's 340 G
against our 337.8 G; DANet's 1110 G against our 1110.2 G. Our GFLOPs are computed on meta tensors (shapes only),
identical to a real forward's count.

Memory. The figure printed is the peak of one forward beyond what was resident before it (weights and input),
plus the weights' bytes, in MiB -- the official protocol (peak minus the input), so it compares with the paper's
column (PPM's paper figure includes the input as well). CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs)
in a fresh subprocess per module whose glibc returns every buffer >= 64 KiB to the system on free
(MALLOC_MMAP_THRESHOLD_), so RSS follows the live tensors, after one warm-up forward of the same size; measured
under torch.no_grad (the paper's setting) and then with grad enabled (eval-mode BN, the autograd graph kept: what a
training step holds before backward). It includes what oneDNN allocates inside the call (reordered weight copies,
scratchpads: ~10-20 MiB, visible at tiny sizes). CUDA: torch.cuda.max_memory_allocated after a warm-up, both
modes. The CPU and GPU figures differ by allocator: the CUDA caching allocator rounds blocks and keeps cuDNN
workspaces; RSS counts pages touched. The attention modules' peak is their
(HW)^2 = 16,384^2 fp32 maps (1 GiB each); NonLocal2d scales the logits out of place, so two such maps are alive.

Time. Median of ``--repeats`` forwards after one warm-up, fp32, eval, no_grad; on CUDA with synchronize, TF32
off (``--tf32`` to allow it): the paper's GPUs had no TF32, and PyTorch enables it for cuDNN convolutions by default.
CPU times are not comparable with the paper's GPU times in absolute terms, and the ranking can differ: on a CPU the
(HW)^2 attention matmuls run near conv speed, so the cost follows FLOPs (self-attention ~ PPM, DANet slowest), while
on a GPU the fp32 16,384^2 softmax and its memory traffic weigh more; OCR's attention is over 19 regions only, so
OCR stays cheapest everywhere. Other expected differences: PyTorch/cuDNN versions and GPU model; the paper's PPM and
ASPP used InPlace-ABN (same parameters and FLOPs, less memory); and our 10.49M/10.62M self-attention and OCR
boundaries as explained above.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from contextseg.models.attention import ChannelAttention, NonLocal2d, PositionAttention  # noqa: E402
from contextseg.models.heads import ASPPHead, DANetHead, NonLocalHead, OCRHead, PSPHead  # noqa: E402
from contextseg.models.heads.common import conv_bn_relu  # noqa: E402

MID = 512  # width of the reduced representation (PPM bottleneck, DANet, self-attention, OCR)
ASPP_WIDTH = 256
NUM_REGIONS = 19  # soft object regions fed to OCR (Cityscapes classes, as the official complexity script)
MIB = 2**20

# The OCR paper's complexity table as read from the paper (2048 x 128 x 128 input, batch 1, GPU): parameters (M),
# GPU memory (MB), GFLOPs, GPU time (ms). Not verified against the paper's text; see the module docstring.
PAPER = {
    "ppm": {"params_m": 23.1, "mem_mb": 792, "gflops": 619, "gpu_ms": 99},
    "aspp": {"params_m": 15.5, "mem_mb": 284, "gflops": 492, "gpu_ms": 97},
    "danet": {"params_m": 10.6, "mem_mb": 2339, "gflops": 1110, "gpu_ms": 121},
    "self_attention": {"params_m": 10.5, "mem_mb": 2168, "gflops": 619, "gpu_ms": 96},
    "ocr": {"params_m": 10.5, "mem_mb": 202, "gflops": 340, "gpu_ms": 45},
}
DEFAULT_MODULES = list(PAPER)
EXTRA_MODULES = ["danet_lite", "nl_head"]
FULL = {"channels": 2048, "size": (128, 128)}
QUICK = {"channels": 512, "size": (64, 64)}


# ----------------------------------------------------------------------------------------------- the modules


class HeadBody(nn.Module):
    """A contextseg head with its dropout and classifier removed: (B, C, H, W) -> (B, M, H, W)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        head.dropout = nn.Identity()
        head.cls_head = nn.Identity()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head([x])["out"]


class DANetContext(nn.Module):
    """contextseg DANetHead (Fu et al. 2019, Fig. 2; official DANetHead) without its three classifiers:
    (B, C, H, W) -> (B, 512, H, W) = conv51(PAM(conv5a(x))) + conv52(CAM(conv5c(x))), the convs 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: int = MID):
        super().__init__()
        self.head = DANetHead([in_channels], 1, in_index=0, channels=channels)
        self.head.conv6 = self.head.conv7 = None
        self.head.conv8 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.head([x])["out"]


class DANetLiteContext(nn.Module):
    """Dual attention at the self-attention row's size: r = 3x3 C -> 512; fuse(concat[PAM(r) + CAM(r), r]),
    fuse a 1x1 1024 -> 512 conv-BN-ReLU. (B, C, H, W) -> (B, 512, H, W)."""

    def __init__(self, in_channels: int, channels: int = MID):
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, channels, kernel_size=3)
        self.pam = PositionAttention(channels)
        self.cam = ChannelAttention()
        self.fuse = conv_bn_relu(2 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        r = self.reduce(x)
        return self.fuse(torch.cat([self.pam(r) + self.cam(r), r], dim=1))


class SelfAttentionContext(nn.Module):
    """Self-attention context module as the OCNet base-OC block the OCR paper compares with, from contextseg pieces:
    r = ReLU(BN(conv3x3(x))) C -> 512; z = fuse(concat[NonLocal2d(r), r]), fuse 1x1 1024 -> 512 conv-BN-ReLU.
    (B, C, H, W) -> (B, 512, H, W). NonLocal2d adds its input back (r + BN(W y)); the official block returns W y
    alone and lets the concatenation carry r: same parameters and FLOPs but one add."""

    def __init__(self, in_channels: int, channels: int = MID):
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, channels, kernel_size=3)
        self.nl_block = NonLocal2d(channels, reduction=2, use_scale=True)
        self.fuse = conv_bn_relu(2 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        r = self.reduce(x)
        return self.fuse(torch.cat([self.nl_block(r), r], dim=1))


class OCRContext(nn.Module):
    """OCRHead's context path without the aux head (soft object regions) and the classifier:
    (x (B, C, H, W), region logits (B, K, H, W)) -> (B, 512, H, W). Its submodules are OCRHead's own."""

    def __init__(self, in_channels: int, channels: int = MID):
        super().__init__()
        head = OCRHead([in_channels], NUM_REGIONS, mid_channels=channels, key_channels=channels // 2)
        self.conv3x3_ocr = head.conv3x3_ocr
        self.ocr_gather_head = head.ocr_gather_head
        self.ocr_distri_head = head.ocr_distri_head

    def forward(self, x: Tensor, regions: Tensor) -> Tensor:
        x = self.conv3x3_ocr(x)
        return self.ocr_distri_head(x, self.ocr_gather_head(x, regions))


BUILDERS = {
    "ppm": lambda c: HeadBody(PSPHead([c], 1, in_index=0, bins=(1, 2, 3, 6), channels=MID)),
    "aspp": lambda c: HeadBody(ASPPHead([c], 1, in_index=0, rates=(12, 24, 36), channels=ASPP_WIDTH)),
    "danet": DANetContext,
    "self_attention": SelfAttentionContext,
    "ocr": OCRContext,
    "danet_lite": DANetLiteContext,
    "nl_head": lambda c: HeadBody(NonLocalHead([c], 1, in_index=0, channels=MID)),
}


def build(name: str, channels: int, device: str | torch.device = "cpu") -> nn.Module:
    """The module ``name`` for a C = ``channels`` input, in eval mode, on ``device`` ("meta": shapes only)."""
    torch.manual_seed(0)
    with torch.device(device):
        module = BUILDERS[name](channels)
    return module.eval()


def make_inputs(name: str, channels: int, size, batch: int = 1, device: str | torch.device = "cpu") -> tuple:
    """The feature map (B, C, H, W), plus random soft object region logits (B, 19, H, W) for OCR."""
    g = None if str(device) == "meta" else torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, channels, *size, device=device, generator=g)
    if name == "ocr":
        return x, torch.randn(batch, NUM_REGIONS, *size, device=device, generator=g)
    return (x,)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(name: str, channels: int, size, batch: int = 1, device: str = "meta") -> dict:
    """FLOPs of one forward (2 per multiply-add; convolutions and matrix products only), by aten op."""
    module = build(name, channels, device)
    inputs = make_inputs(name, channels, size, batch, device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    by_op = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"gflops": counter.get_total_flops() / 1e9, "gflops_by_op": {k: v / 1e9 for k, v in by_op.items()}}


def static_row(name: str, channels: int, size, batch: int = 1) -> dict:
    """Parameters and GFLOPs without computing anything (meta tensors)."""
    module = build(name, channels, "meta")
    params = count_params(module)
    return {"module": name, "channels": channels, "size": list(size), "batch": batch, "params": params,
            "weights_mb": params * 4 / MIB, **count_flops(name, channels, size, batch)}


# ----------------------------------------------------------------------------------------------- measuring


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, task: str, channels: int, size, batch: int = 1, repeats: int = 5,
            devices=("cpu",), tf32: bool = False, grad_memory: bool = True) -> dict:
    """One measurement of module ``name`` in this process (the script runs each in a fresh subprocess).

    task "mem": CPU peak RSS of one forward over the resident baseline (weights + input), MiB, after a warm-up
    forward: under no_grad, then (``grad_memory``) with grad. Run it in a process started with
    MALLOC_MMAP_THRESHOLD_=65536 (the script does) so that freed buffers leave the RSS.
    task "time": per device in ``devices``, the median forward time (ms) after a warm-up; on CUDA also the peak
    allocated memory of one forward under no_grad and with grad (MiB over the baseline).
    """
    result: dict = {"threads": torch.get_num_threads()}
    if task == "mem":
        module = build(name, channels)
        inputs = make_inputs(name, channels, size, batch)
        with torch.no_grad():
            module(*inputs)  # warm-up at the same size: code loaded, oneDNN kernels generated, thread pool created
        for grad, key in ((False, "cpu_act_mb"), (True, "cpu_act_mb_grad"))[: 2 if grad_memory else 1]:
            gc.collect()
            base = _status_kb("VmRSS") or _peak_rss_kb()
            clean = _reset_peak_rss()
            if not clean:
                base = _peak_rss_kb()  # ru_maxrss cannot be reset: count from the high-water mark so far
            with torch.set_grad_enabled(grad):
                out = module(*inputs)
            result[key] = max(0, _peak_rss_kb() - base) / 1024
            result["rss_peak_reset"] = clean
            del out
        return result
    for device in devices:
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        module = build(name, channels).to(device)
        inputs = make_inputs(name, channels, size, batch, device)
        with torch.no_grad():
            module(*inputs)  # warm-up: kernels chosen, workspaces and thread pools created
            _sync(device)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = module(*inputs)
                _sync(device)
                times.append(time.perf_counter() - t0)
                del out
        result[f"{device}_ms"] = statistics.median(times) * 1e3
        result[f"{device}_ms_all"] = [t * 1e3 for t in times]
        if device == "cuda":
            result["gpu_name"] = torch.cuda.get_device_name()
            result["tf32"] = tf32
            for grad, key in ((False, "cuda_act_mb"), (True, "cuda_act_mb_grad")):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                with torch.set_grad_enabled(grad):
                    out = module(*inputs)
                torch.cuda.synchronize()
                result[key] = (torch.cuda.max_memory_allocated() - before) / MIB
                del out
        del module, inputs
    return result


def run_child(args, name: str, task: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, task, "--channels", str(args.channels),
           "--size", *map(str, args.size), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--devices", *args.devices] + (["--tf32"] if args.tf32 else []) + \
        (["--no-grad-memory"] if args.no_grad_memory else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if task == "mem":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # every buffer >= 64 KiB mmapped, returned on free: RSS = live data
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        print(f"  {name} {task} failed: {tail[0]}", file=sys.stderr)
        return {f"error_{task}": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- printing


def _f(v, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"


def print_table(rows: list[dict], title: str, static_only: bool = False) -> None:
    print(f"\n{title}")
    if static_only:
        print(f"{'module':15s} {'params (M)':>17s}   {'GFLOPs':>17s}   {'conv':>7s} {'matmul':>7s}")
        print(f"{'':15s} {'ours':>8s} {'paper':>8s}   {'ours':>8s} {'paper':>8s}")
    else:
        print(f"{'module':15s} {'params (M)':>13s}  {'GFLOPs':>13s}  {'memory MiB (fwd, excl. input)':>36s}  "
              f"{'time ms':>22s}")
        print(f"{'':15s} {'ours':>6s} {'paper':>6s}  {'ours':>6s} {'paper':>6s}  {'cpu':>8s} {'cpu+grad':>8s} "
              f"{'gpu':>8s} {'paper':>8s}  {'cpu':>8s} {'gpu':>6s} {'paper':>6s}")
    for r in rows:
        p = PAPER.get(r["module"], {}) if r["channels"] == FULL["channels"] and tuple(r["size"]) == FULL["size"] \
            and r["batch"] == 1 else {}
        params = r["params"] / 1e6
        if static_only:
            ops = r["gflops_by_op"]
            conv = ops.get("convolution", 0.0)
            print(f"{r['module']:15s} {params:8.2f} {_f(p.get('params_m'), '.1f', 8)}   {r['gflops']:8.1f} "
                  f"{_f(p.get('gflops'), '.0f', 8)}   {conv:7.1f} {r['gflops'] - conv:7.1f}")
            continue
        w = r["weights_mb"]
        mem = lambda key: None if r.get(key) is None else r[key] + w  # noqa: E731  (paper protocol: + weights)
        print(f"{r['module']:15s} {params:6.2f} {_f(p.get('params_m'), '.1f', 6)}  {r['gflops']:6.1f} "
              f"{_f(p.get('gflops'), '.0f', 6)}  {_f(mem('cpu_act_mb'), '.0f', 8)} "
              f"{_f(mem('cpu_act_mb_grad'), '.0f', 8)} "
              f"{_f(mem('cuda_act_mb'), '.0f', 8)} {_f(p.get('mem_mb'), '.0f', 8)}  {_f(r.get('cpu_ms'), '.1f', 8)} "
              f"{_f(r.get('cuda_ms'), '.1f', 6)} {_f(p.get('gpu_ms'), '.0f', 6)}")


def flop_convention(rows: list[dict]) -> str | None:
    ratios = [r["gflops"] / PAPER[r["module"]]["gflops"] for r in rows
              if r["module"] in PAPER and r["channels"] == FULL["channels"] and tuple(r["size"]) == FULL["size"]
              and r["batch"] == 1]
    if not ratios:
        return None
    return (f"ours / paper GFLOPs: {', '.join(f'{x:.3f}' for x in ratios)} -- ours count 2 FLOPs per multiply-add "
            f"(torch.utils.flop_counter), so the paper counts the same way (with MACs the ratios would be ~2).")


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", nargs="+", default=DEFAULT_MODULES, choices=DEFAULT_MODULES + EXTRA_MODULES)
    p.add_argument("--channels", type=int, default=None, help="input channels C (2048; 512 with --quick)")
    p.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"), help="128 128 (64 64 with --quick)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards after one warm-up (median reported)")
    p.add_argument("--quick", action="store_true", help="512 x 64 x 64 input unless --channels/--size are given")
    p.add_argument("--params-only", action="store_true", help="parameters and GFLOPs only (meta tensors, no compute)")
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                   help="where to time (default: cpu, plus cuda when available)")
    p.add_argument("--no-grad-memory", action="store_true", help="skip the with-grad CPU memory run")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off by default: strict fp32 as the paper)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/context_modules[_CxHxW].json)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    preset = QUICK if a.quick else FULL
    a.channels = a.channels or preset["channels"]
    a.size = list(a.size or preset["size"])
    if a.devices is None:
        a.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in a.devices and not torch.cuda.is_available():
        p.error("--devices cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        print(json.dumps(measure(a.child[0], a.child[1], a.channels, a.size, a.batch, a.repeats, a.devices, a.tf32,
                                 grad_memory=not a.no_grad_memory)))
        return

    shape = f"{a.batch} x {a.channels} x {a.size[0]} x {a.size[1]}"
    rows = [static_row(name, a.channels, a.size, a.batch) for name in a.modules]
    if a.params_only:
        print_table(rows, f"Context modules, parameters and GFLOPs on a {shape} input (no compute)", static_only=True)
        note = flop_convention(rows)
        if note:
            print(note)
        return

    tasks = (["mem"] if "cpu" in a.devices else []) + ["time"]
    print(f"Measuring {', '.join(a.modules)} on a {shape} input; tasks {tasks}; devices {a.devices}", flush=True)
    for row in rows:
        t0 = time.perf_counter()
        for task in tasks:
            row.update(run_child(a, row["module"], task))
        print(f"  {row['module']:15s} done in {time.perf_counter() - t0:6.1f} s: "
              + ", ".join(f"{k} {row[k]:.1f}" for k in ("cpu_act_mb", "cpu_act_mb_grad", "cpu_ms", "cuda_ms",
                                                          "cuda_act_mb") if isinstance(row.get(k), float)),
              flush=True)
    print_table(rows, f"Context modules on a {shape} input, fp32, eval mode: ours beside the paper's (GPU) figures")
    note = flop_convention(rows)
    if note:
        print(note)
    print("memory = peak of one forward beyond weights + input, plus the weights (the official protocol: peak - input);"
          " cpu: RSS, no_grad / with grad; gpu: max_memory_allocated, no_grad. time: median of "
          f"{a.repeats} after a warm-up.")

    default_name = "context_modules.json" if (a.channels, tuple(a.size), a.batch) == (
        FULL["channels"], FULL["size"], 1) else f"context_modules_{a.channels}x{a.size[0]}x{a.size[1]}.json"
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
               "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    config = {"channels": a.channels, "size": a.size, "batch": a.batch, "repeats": a.repeats, "devices": a.devices,
              "tf32": a.tf32, "threads": a.threads}
    with open(out, "w") as fh:
        json.dump({"machine": machine, "config": config, "paper": PAPER, "rows": rows}, fh, indent=2)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
