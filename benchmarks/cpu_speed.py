"""contextseg beside the official HRNet-OCR code on this CPU, in one process: inference per backend and training
steps per precision, seconds per image and GFLOP/s against the measured 3x3-convolution limit.

    .venv/bin/python benchmarks/cpu_speed.py                                   # OCR + W18-Small-v2, 360x480, batch 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/cpu_speed.py   # as an AVX2-only CPU

The official model is built from a local checkout (``--official``, default ../shared/reference/...; needs yacs) and
timed in fp32 eager, as its code runs: inference = forward + bilinear resize of the logits to the input size
(align_corners=True, as the official test code), training = one SGD step with CE on the OCR and auxiliary outputs.
Ours: ``contextseg.engine.bench.benchmark`` (the ``contextseg bench`` rows) on the same input size and batch, the
random model's BatchNorm statistics settled on the input first (``settle_batchnorm``: speed is unchanged, and the
logit differences between backends read as for a trained model).
int8 is calibrated on ``--calibration`` images (default: 16 CamVid training images when ../shared is there).
Saves benchmarks/results/cpu_speed_<cpu class>.json and .md; prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_hrnet import DEFAULT_CHECKOUT, build_official  # noqa: E402

from contextseg import create_model, load_model  # noqa: E402
from contextseg.engine.backends import timed_calls  # noqa: E402
from contextseg.engine.bench import benchmark, gflops_per_image, settle_batchnorm  # noqa: E402
from contextseg.engine.env_report import environment  # noqa: E402
from contextseg.engine.outputs import image_batches  # noqa: E402
from contextseg.engine.hardware import conv_gflops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CAMVID_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid" / "train"


def cpu_class(info: dict) -> str:
    """avx2 | avx512 | bf16 (AVX-512-BF16 or AMX): the class the figures belong to, after any ISA ceiling."""
    if info["native_bf16"]:
        return "bf16"
    return "avx512" if info["torch_cpu_capability"].upper().startswith("AVX512") else "avx2"


def time_official(model, x: torch.Tensor, repeats: int, warmup: int, train: bool, scale: float = 1.0) -> dict:
    """Seconds per image of the official model on x resized by ``scale`` (what a checkpoint trained at that scale,
    e.g. the zoo's half-size CamVid model, computes on x), its logits resized back to x's size."""
    size = x.shape[-2:]
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)
    model.eval()

    def infer():
        with torch.no_grad():
            out = model(x)
            out = out[-1] if isinstance(out, (list, tuple)) else out
            return F.interpolate(out, size=size, mode="bilinear", align_corners=True)

    row = {"infer_s_per_img": timed_calls(infer, repeats, warmup)[0] / x.shape[0]}
    if train:
        model.train()
        labels = torch.randint(0, 11, (x.shape[0], *size), generator=torch.Generator().manual_seed(1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            outs = model(x)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            loss = sum(w * F.cross_entropy(F.interpolate(o, size=size, mode="bilinear", align_corners=True), labels)
                       for w, o in zip([0.4, 1.0][-len(outs):], outs))
            loss.backward()
            opt.step()

        row["train_s_per_img"] = timed_calls(step, max(2, repeats // 2), 1)[0] / x.shape[0]
    return row


def single_scale(model) -> float:
    """The one input scale a checkpoint's multiscale wrapper runs (1.0 without one); ValueError for several scales,
    flip or sliding windows, which the official code's single forward pass does not match."""
    ms = getattr(model, "init_args", {}).get("multiscale")
    if not ms:
        return 1.0
    if len(ms.get("scales") or [1.0]) != 1 or ms.get("flip") or ms.get("window"):
        raise ValueError(f"the checkpoint runs {ms}; the official code times one scale without flip")
    return float(ms["scales"][0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ocr:hrnetv2_w18_small_v2", help="ocr|fcn : hrnetv2_w18_small_v1|v2|w48")
    p.add_argument("--size", nargs=2, type=int, default=[360, 480])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["eager", "eager_cl", "torch", "onnxruntime", "openvino", "auto",
                                                  "bf16", "int8"])
    p.add_argument("--train-modes", nargs="*", default=["fp32", "fp32_cl", "bf16_cl"])
    p.add_argument("--official", default=str(DEFAULT_CHECKOUT), help="official HRNet-Semantic-Segmentation checkout")
    p.add_argument("--calibration", default=str(CAMVID_TRAIN), help="images for int8 calibration")
    p.add_argument("--checkpoint", help="time a trained checkpoint on real images (--images) instead of a random "
                                        "model on noise; rel diff and label agreement then read as in use")
    p.add_argument("--images", default=str(CAMVID_TRAIN.parent / "val"), help="input images for --checkpoint")
    p.add_argument("--out", help="JSON path (default benchmarks/results/cpu_speed_<class>[_trained].json)")
    a = p.parse_args()

    info = environment(measure=False)
    roof = {"fp32": conv_gflops("fp32", True), "fp32_nchw": conv_gflops("fp32", False)}
    roof["bf16"] = conv_gflops("bf16", True) if info["native_bf16"] else None
    info["conv_gflops"] = roof
    cls = cpu_class(info)
    arch, backbone = a.model.split(":")
    width = backbone.replace("hrnetv2_w18_", "").replace("hrnetv2_", "")
    torch.manual_seed(0)
    if a.checkpoint:  # trained weights and real images: the agreement columns then mean what they say
        ours = load_model(a.checkpoint).eval()
        arch, backbone = ours.init_args["arch"], ours.init_args["backbone"]
        width = backbone.replace("hrnetv2_w18_", "").replace("hrnetv2_", "")
        a.model = f"{arch}:{backbone} from {a.checkpoint}"
        x = torch.cat(image_batches([a.images], a.size, a.batch))
    else:
        ours = create_model(arch, backbone=backbone, num_classes=19)
        x = torch.randn(a.batch, 3, *a.size, generator=torch.Generator().manual_seed(0))
        settle_batchnorm(ours, x)  # normalised activations, as a trained model has
    gflops = gflops_per_image(ours, a.size)
    print(f"{info['cpu']} ({cls}; {info['isa_ceiling'] or 'no ISA ceiling'}), {info['threads']} threads, torch "
          f"{info['torch']}; 3x3 conv limit: fp32 {roof['fp32']:.0f} GFLOP/s (NCHW {roof['fp32_nchw']:.0f})"
          + (f", bf16 {roof['bf16']:.0f}" if roof["bf16"] else ""))
    print(f"{a.model} at {a.size[0]}x{a.size[1]}, batch {a.batch}: {gflops:.1f} GFLOPs/img (forward)")

    official = None
    try:
        scale = single_scale(ours)
        ref_model = build_official(a.official, arch, width, ours.num_classes)
        official = time_official(ref_model, x, a.repeats, a.warmup, bool(a.train_modes), scale)
        official["input_scale"] = scale
        if scale != 1.0:
            print(f"the checkpoint resizes its input by {scale} (its multiscale setting): so does the official model")
        print(f"official fp32 eager: infer {official['infer_s_per_img']:.3f} s/img"
              + (f", train {official['train_s_per_img']:.3f} s/img" if "train_s_per_img" in official else ""))
        del ref_model
    except Exception as exc:  # no checkout, no yacs: ours alone
        print(f"official model skipped: {exc.__class__.__name__}: {exc}")

    calibration = None
    if "int8" in a.modes and Path(a.calibration).is_dir():
        calibration = image_batches([a.calibration], a.size)
    rows = benchmark(ours, size=a.size, batch=a.batch, repeats=a.repeats, warmup=a.warmup, modes=a.modes,
                     device="cpu", train_modes=a.train_modes, calibration=calibration)
    for row in rows:
        if "skipped" in row:
            continue
        ref = (official or {}).get("infer_s_per_img" if row["kind"] == "infer" else "train_s_per_img")
        row["vs_official"] = ref / row["s_per_img"] if ref else None
        limit = roof["bf16"] if row["mode"].startswith("bf16") and roof["bf16"] else roof["fp32"]
        row["share_of_conv_limit"] = row.get("gflop_per_s", 0) / limit if limit else None

    table = format_table(rows, official, gflops, roof, a.batch)
    print(table)
    out = Path(a.out) if a.out else RESULTS / f"cpu_speed_{cls}{'_trained' if a.checkpoint else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "cpu_class": cls, "model": a.model, "size": a.size, "batch": a.batch,
                               "gflops_per_img": gflops, "official": official, "rows": rows,
                               "command": " ".join(sys.argv)}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"saved {out} and {out.with_suffix('.md')}")


def format_table(rows, official, gflops, roof, batch) -> str:
    lines = ["| what | s/img | GFLOP/s | share of conv limit | vs official | rel diff | labels agree |",
             "|---|---|---|---|---|---|---|"]
    if official:
        for kind, key, mult in (("infer", "infer_s_per_img", 1), ("train", "train_s_per_img", 3)):
            if key in official:
                gf = mult * gflops / official[key]
                lines.append(f"| official {kind} fp32 eager | {official[key]:.3f} | {gf:.0f} | "
                             f"{gf / roof['fp32']:.0%} | 1.00x | - | - |")
    for r in rows:
        name = f"{r['kind']} {r['mode']}" + (f" ({r['backend']})" if r.get("backend") else "")
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        vs = f"{r['vs_official']:.2f}x" if r.get("vs_official") else "-"
        share = f"{r['share_of_conv_limit']:.0%}" if r.get("share_of_conv_limit") else "-"
        diff = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-"
        agree = f"{100 * r['label_agreement']:.2f}%" if "label_agreement" in r else "-"
        lines.append(f"| {name} | {r['s_per_img']:.3f} | {r.get('gflop_per_s', 0):.0f} | {share} | {vs} | {diff} | "
                     f"{agree} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
