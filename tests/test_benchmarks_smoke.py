"""benchmarks/context_modules.py: the modules' parameter counts at the paper's size (2048 channels) against counts
written from the layer shapes, GFLOPs against the OCR paper's table, and one tiny measurement of each module."""
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextseg.data import default_data_root

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str):
    """benchmarks/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cm = load_script("context_modules")

C, M, K = 2048, 512, 256  # input, reduced width, key width


def cbr(k, c_in, c_out, bias=False):  # conv + BN
    return k * k * c_in * c_out + (c_out if bias else 0) + 2 * c_out


NON_LOCAL = 3 * (M * K + K) + K * M + 2 * M
PAM = 2 * (M * (M // 8) + M // 8) + M * M + M + 1
OCR_BLOCK = 2 * (cbr(1, M, K) + cbr(1, K, K)) + cbr(1, M, K) + cbr(1, K, M) + cbr(1, 2 * M, M)
EXPECTED = {
    "ppm": 4 * cbr(1, C, C // 4) + cbr(3, C + C, M),
    "aspp": cbr(1, C, 256) + 3 * cbr(3, C, 256) + cbr(1, C, 256) + cbr(1, 5 * 256, 256),
    "danet": 2 * cbr(3, C, M) + PAM + 1 + 2 * cbr(3, M, M),
    "self_attention": cbr(3, C, M) + NON_LOCAL + cbr(1, 2 * M, M),
    "ocr": cbr(3, C, M, bias=True) + OCR_BLOCK,
    "danet_lite": cbr(3, C, M) + PAM + 1 + cbr(1, 2 * M, M),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_params_and_flops_at_paper_size(name):
    row = cm.static_row(name, C, (128, 128))
    assert row["params"] == EXPECTED[name]
    if name in cm.PAPER:  # the paper counts 2 FLOPs per multiply-add, as FlopCounterMode
        assert row["gflops"] == pytest.approx(cm.PAPER[name]["gflops"], rel=0.01)
    if name in ("ppm", "aspp"):
        assert row["params"] / 1e6 == pytest.approx(cm.PAPER[name]["params_m"], abs=0.05)


@pytest.mark.parametrize("name", cm.DEFAULT_MODULES + cm.EXTRA_MODULES)
def test_tiny_measurement(name):
    size = (8, 8)
    module = cm.build(name, 16)
    out = module(*cm.make_inputs(name, 16, size))
    assert out.shape == (1, cm.ASPP_WIDTH if name == "aspp" else cm.MID, *size)
    assert cm.count_flops(name, 16, size, device="meta") == cm.count_flops(name, 16, size, device="cpu")
    result = cm.measure(name, "time", 16, size, repeats=1)
    assert result["cpu_ms"] > 0 and len(result["cpu_ms_all"]) == 1


def test_memory_measurement_counts_the_live_tensors():
    """As the script measures (a child process whose freed buffers leave the RSS): one OCR forward at 64x64 holds at
    least its own output, (1, 512, 64, 64) float32 = 8 MiB, and a forward with grad at least as much as without."""
    args = argparse.Namespace(channels=16, size=[64, 64], batch=1, repeats=1, devices=["cpu"], tf32=False,
                              no_grad_memory=False, threads=1)
    result = cm.run_child(args, "ocr", "mem")
    if not result["rss_peak_reset"]:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    output_mb = cm.MID * 64 * 64 * 4 / cm.MIB
    assert output_mb <= result["cpu_act_mb"] <= 20 * output_mb
    assert result["cpu_act_mb_grad"] >= result["cpu_act_mb"]
    cm.measure("ocr", "mem", 16, (8, 8), grad_memory=True)
    assert torch.is_grad_enabled()  # the measurement restores grad mode


def test_camvid_examples_names_and_header():
    ex = load_script("camvid_examples")
    assert ex.named("OCR=runs/a/best.pt") == ("OCR", "runs/a/best.pt")
    assert ex.named("runs/compare/heads/psp/last.pt") == ("psp", "runs/compare/heads/psp/last.pt")
    strip = ex.header(["image", "ground truth", "psp"], width=100)
    assert strip.shape == (40, 300, 3) and (strip < 128).any()  # white, with dark text


@pytest.mark.skipif(not (default_data_root() / "ecssd").is_dir(), reason="no ECSSD folder")
def test_sod_examples_picture_of_the_zoo_model(tmp_path, monkeypatch):
    """benchmarks/sod_examples.py: image | mask | one saliency map per checkpoint, real ECSSD val images."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports camvid_examples beside it
    ex = load_script("sod_examples")
    out = tmp_path / "sod.png"
    monkeypatch.setattr("sys.argv", ["sod_examples.py", "--checkpoint", "PFA=zoo:ecssd-saliency", "--indices", "0",
                                     "1", "--size", "60", "80", "--out", str(out)])
    ex.main()
    picture = np.asarray(Image.open(out))
    assert picture.shape == (40 + 2 * 60, 3 * 80, 3)
    mask, saliency = picture[40:100, 80:160, 0], picture[40:100, 160:240, 0]
    assert np.isin(mask, (0, 255)).mean() > 0.8 and len(np.unique(saliency)) > 10  # a (resized) mask, a graded map
    assert np.corrcoef(mask.ravel(), saliency.ravel())[0, 1] > 0.2  # the zoo model sees image 0's object


@pytest.mark.skipif(not (default_data_root() / "cifar10" / "train").is_dir(), reason="no CIFAR-10 folder")
def test_bf16_gradients_reports_per_model_errors(tmp_path, monkeypatch):
    bench = load_script("bf16_gradients")
    out = tmp_path / "g.json"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["bf16_gradients.py", "--models", "cifar10-gap", "--batch", "16",
                                     "--out", str(out)])
    bench.main()
    row = json.loads(out.read_text())["models"]["cifar10-gap"]
    assert 0 < row["median"] < 1 and set(row["median_by_part"]) == {"backbone", "head"} and row["tensors"] > 50


def test_cpu_speed_times_the_official_model_at_the_checkpoints_input_scale():
    from types import SimpleNamespace

    cs = load_script("cpu_speed")
    ms = {"scales": [0.5], "flip": False, "window": None}
    assert cs.single_scale(SimpleNamespace(init_args={"multiscale": ms})) == 0.5
    assert cs.single_scale(SimpleNamespace(init_args={})) == 1.0 and cs.single_scale(torch.nn.Conv2d(1, 1, 1)) == 1.0
    for other in ({"scales": [0.5, 1.0]}, {**ms, "flip": True}):
        with pytest.raises(ValueError):
            cs.single_scale(SimpleNamespace(init_args={"multiscale": other}))
    seen = []
    net = torch.nn.Conv2d(3, 11, 1)
    net.register_forward_hook(lambda m, inputs, out: seen.append(tuple(inputs[0].shape[-2:])))
    row = cs.time_official(net, torch.randn(2, 3, 32, 48), repeats=1, warmup=0, train=True, scale=0.5)
    assert set(seen) == {(16, 24)} and row["infer_s_per_img"] > 0 and row["train_s_per_img"] > 0
