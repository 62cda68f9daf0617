"""`contextseg doctor`: each babysitting check on a tiny model / tiny data, and the CLI end to end."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contextseg.cli import main
from contextseg.data.synthetic import SyntheticScenes, write_synthetic_folder
from contextseg.engine import diagnostics as dg
from contextseg.losses import build_loss
from contextseg.models import create_model

K = 6


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=K, mid_channels=32, key_channels=16)


@pytest.fixture(scope="module")
def batches():
    ds = SyntheticScenes(num_samples=4, size=(48, 64))
    images, labels = zip(*(ds[i] for i in range(4)))
    images, labels = torch.stack(images), torch.stack(labels)
    return [(images[:2], labels[:2]), (images[2:], labels[2:])]


# ----------------------------------------------------------------------------- init loss


class ConstantLogits(nn.Module):
    """Predicts the same logits b at every pixel: {"out": (B, K, H/4, W/4)}."""

    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x):
        b, _, h, w = x.shape
        return {"out": self.bias.view(1, -1, 1, 1).expand(b, -1, h // 4, w // 4)}


def test_init_loss_is_over_labelled_pixels_only():
    bias = torch.tensor([2.0, 0.0, -1.0])
    labels = torch.full((1, 8, 8), 255)
    labels[0, :2] = 0  # 16 pixels of class 0, 8 of class 2, the other 40 ignored
    labels[0, 2, :] = 2
    images = torch.zeros(1, 3, 8, 8)
    r = dg.check_init_loss(ConstantLogits(bias), [(images, labels)], 3, tol=0.1)
    logp = torch.log_softmax(bias, 0)
    expected = float(-(16 * logp[0] + 8 * logp[2]) / 24)
    assert r["loss"] == pytest.approx(expected, rel=1e-5)
    assert r["pixels"] == 24 and r["expected"] == pytest.approx(math.log(3))
    assert r["best_constant_loss"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)), rel=1e-5)
    uniform = dg.check_init_loss(ConstantLogits(torch.zeros(3)), [(images, labels)], 3)
    assert uniform["loss"] == pytest.approx(math.log(3), rel=1e-6) and uniform["verdict"] == "PASS"
    only_ignore = dg.check_init_loss(ConstantLogits(bias), [(images, torch.full((1, 8, 8), 255))], 3)
    assert only_ignore["verdict"] == "WARN" and only_ignore["pixels"] == 0


def test_init_loss_fresh_model_passes_and_broken_bias_fails(batches):
    model = tiny_model(seed=1)  # fresh models land within 0-12% of ln K; seed 0 sits at the 10% border (+10.1%)
    r = dg.check_init_loss(model, batches, K, tol=0.1)
    assert r["verdict"] == "PASS", r["summary"]
    assert abs(r["loss"] - math.log(K)) < 0.1 * math.log(K)
    assert set(r["losses"]) == {"out", "aux"} and set(r["mean_probability"]) == {str(k) for k in range(K)}
    with torch.no_grad():
        model.head.cls_head.bias[3] = 12.0  # every pixel predicts class 3 with certainty
    bad = dg.check_init_loss(model, batches, K, tol=0.1, classes=["a", "b", "c", "d", "e", "f"])
    assert bad["verdict"] == "FAIL" and bad["loss"] > 2 * math.log(K)
    assert "classifier" in bad["cause"] and "'d'" in bad["cause"]
    assert bad["mean_probability"]["d"] > 0.99


# ----------------------------------------------------------------------------- overfit, lr range test, ratios


def test_overfit_one_batch_reaches_low_loss(batches, tmp_path):
    images, labels = batches[0]
    r = dg.check_overfit(tiny_model(), build_loss("ce"), images, labels, steps=80, lr=1e-2, threshold=0.1,
                         out_dir=tmp_path)
    assert r["verdict"] == "PASS", r["summary"]
    assert r["steps_to_threshold"] <= 80 and r["final_loss"] < 0.1 < r["initial_loss"]
    assert r["pixel_accuracy"] > 0.9
    assert (tmp_path / "overfit_loss.png").stat().st_size > 0
    no_steps = dg.check_overfit(tiny_model(), build_loss("ce"), images, labels, steps=1, threshold=0.1)
    assert no_steps["verdict"] == "FAIL" and no_steps["steps_to_threshold"] is None


def test_fixed_batch_pads_and_crops_without_augmentation():
    ds = SyntheticScenes(num_samples=3, size=(40, 50))
    images, labels = dg.fixed_batch(ds, 2, (48, 32))
    assert images.shape == (2, 3, 48, 32) and labels.shape == (2, 48, 32)
    assert (labels[:, :4] == 255).all()  # 8 rows of padding split top / bottom, labelled ignore
    again, _ = dg.fixed_batch(ds, 2, (48, 32))
    assert torch.equal(images, again)


def test_lr_range_test_suggests_an_lr_in_the_sweep_and_restores_weights(batches, tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    r = dg.lr_range_test(model, build_loss("ce"), iter(batches * 8), opt, lr_min=1e-5, lr_max=10.0, steps=16,
                         configured_lr=0.01, out_dir=tmp_path)
    # the configured 0.01 lies between a tenth of the suggestion and the lr of the loss minimum: PASS, no advice
    assert r["verdict"] == "PASS" and r.get("advice") is None, r["summary"]
    assert 1e-6 <= r["suggested_lr"] <= 1.0 and r["lr_at_min"] == pytest.approx(10 * r["suggested_lr"])
    assert r["suggested_lr"] / 10 <= 0.01 <= r["lr_at_min"]
    lrs = r["lrs"]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert len(r["smoothed"]) == len(lrs) == r["steps_run"] <= 16
    if r["steps_run"] < 16:  # stopped early: diverged (lr 10 is far too high for SGD here)
        assert r["stopped"]
    assert (tmp_path / "lr_range_test.png").stat().st_size > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("configured, advice", [(1.0, "above the lr of the loss minimum"), (1e-5, "far below")])
def test_lr_range_test_warns_about_a_configured_lr_out_of_range(batches, configured, advice):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=configured, momentum=0.9)
    r = dg.lr_range_test(model, build_loss("ce"), iter(batches * 8), opt, lr_min=1e-5, lr_max=10.0, steps=16,
                         configured_lr=configured)
    assert r["verdict"] == "WARN" and advice in r["advice"] and f"train.lr={r['suggested_lr']:.1e}" in r["advice"]


def test_update_stats_by_hand():
    layer = nn.Linear(3, 2)
    layer.weight.grad = torch.ones(2, 3)
    layer.bias.grad = torch.zeros(2)
    old = dg.snapshot_params(layer)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    s = dg.update_stats(layer, old)
    w = torch.cat([old["weight"].flatten(), old["bias"]]).norm()
    assert s["update_ratio"] == pytest.approx(0.1 * math.sqrt(6) / float(w), rel=1e-5)
    assert s["grad_norm"] == pytest.approx(math.sqrt(6), rel=1e-6)
    assert s["grad_norm/weight"] == pytest.approx(math.sqrt(6)) and s["update_ratio/bias"] == pytest.approx(0.0)


def test_group_names():
    assert dg.group_name("backbone.stage2.0.branches.0.0.conv1.weight") == "backbone.stage2"
    assert dg.group_name("module.backbone.bn1.weight") == "backbone.stem"
    assert dg.group_name("model.head.cls_head.bias") == "head.cls_head"


def test_update_ratios_and_activation_stats(batches, tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    r = dg.check_update_ratios(model, build_loss("ce"), iter(batches), opt, steps=2, out_dir=tmp_path)
    groups = r["groups"]
    # WARN exactly for the groups whose median ratio leaves the band (the freshly initialised classifier among them)
    too_large = [g for g, v in groups.items() if v["update_ratio"] > r["high"]]
    assert r["verdict"] == "WARN" and "head.cls_head" in too_large and len(too_large) < len(groups)
    assert r["advice"] == [f"too large in {', '.join(too_large)}: the updates swamp the weights; lower the lr, or "
                           "keep a warm-up (train.warmup_iters) so the first steps are smaller"]
    for g in ("backbone.stem", "backbone.layer1", "backbone.stage4", "head.cls_head", "head.aux_head"):
        assert 1e-6 < groups[g]["update_ratio"] < 1 and groups[g]["grad_norm"] > 0
        assert len(groups[g]["update_ratio_per_step"]) == 2
    acts = r["activations"]
    assert 0 <= acts["backbone.stage2"]["dead_relu_fraction"] <= 1
    assert 0.1 < acts["backbone.stem"]["relu_zero_fraction"] < 0.9  # BN-ReLU at init: about half zero
    assert acts["backbone.stage4"]["out_std"] > 0
    assert (tmp_path / "update_ratios.png").stat().st_size > 0
    # with a 100x larger lr the ratios leave the healthy band
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    big = dg.check_update_ratios(model, build_loss("ce"), iter(batches), opt, steps=2)
    assert big["verdict"] == "WARN" and len(big["advice"]) == 1
    assert big["advice"][0].startswith(f"too large in {', '.join(big['groups'])}:")  # every group


# ----------------------------------------------------------------------------- gradcheck


class _WrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g  # should be 2 x g


def test_gradchecks_pass_and_a_wrong_backward_fails():
    r = dg.check_gradients()
    assert r["verdict"] == "PASS", r["summary"]
    assert {"ocr.SpatialGather", "ocr.SpatialOCR", "attention.SEBlock", "attention.NonLocal2d",
            "multiscale.MultiScale[attention]", "multiscale.MultiScale[hierarchical]"} <= set(r["cases"])

    def wrong():
        torch.autograd.gradcheck(_WrongGrad.apply, (torch.rand(3, dtype=torch.float64, requires_grad=True),))

    bad = dg.check_gradients({"wrong": wrong})
    assert bad["verdict"] == "FAIL" and "wrong" in bad["summary"] and not bad["cases"]["wrong"]["passed"]


# ----------------------------------------------------------------------------- data


def broken_folder(root, split=None):
    """4 pairs; mask 00001 has the value 9 (6 classes), mask 00002 is all ignore. Returns the pairs' folder."""
    write_synthetic_folder(root, n=4, size=(48, 64), split=split)
    root = root / split if split else root
    masks = root / "masks"
    bad = np.array(Image.open(masks / "00001.png"))
    bad[:5, :5] = 9  # 6 classes: 9 is outside 0..5 and not ignore
    Image.fromarray(bad).save(masks / "00001.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(masks / "00002.png")
    return root


class InMemory:
    """A dataset without its own label checks."""

    num_classes, ignore_index, classes = 3, 255, ["a", "b", "c"]

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def raw(self, i):
        return np.zeros((*self.labels[i].shape, 3), np.uint8), self.labels[i]


def test_data_check_flags_bad_labels_and_all_ignore_images(tmp_path):
    from contextseg.data import build_dataset

    ds = build_dataset("folder", split=None, root=broken_folder(tmp_path / "pairs"))
    r = dg.check_data({"train": ds}, out_dir=tmp_path)
    assert r["verdict"] == "FAIL"
    s = r["splits"]["train"]
    assert [e["file"].endswith("00001.png") for e in s["errors"]] == [True] and "[9]" in s["errors"][0]["error"]
    assert len(s["all_ignore"]) == 1 and s["all_ignore"][0].endswith("00002.png")
    assert s["samples"] == 4 and sum(s["shares"]) == pytest.approx(1.0)
    assert any("00001.png" in p for p in r["problems"]) and any("only ignore" in w for w in r["warnings"])
    assert (tmp_path / "class_frequencies.png").stat().st_size > 0

    labels = [np.array([[0, 0], [1, 7]], np.uint8), np.array([[0, 255], [255, 255]], np.uint8)]
    m = dg.check_data({"train": InMemory(labels)})
    s = m["splits"]["train"]
    assert s["counts"] == [3, 1, 0] and s["out_of_range"][0] == {"file": "#0", "values": [7], "pixels": 1}
    assert s["ignore_share"] == pytest.approx(3 / 8) and m["verdict"] == "FAIL"
    assert any("never present" in w and "c" in w for w in m["warnings"])


# ----------------------------------------------------------------------------- config and CLI


def test_parse_checks_and_steps():
    assert dg.parse_checks("lr,init") == ("init", "lr") and dg.parse_checks("all") == dg.CHECKS
    assert dg.parse_steps(["5"]) == {"overfit": 5, "lr": 5, "ratios": 5}
    assert dg.parse_steps(["overfit=7", "init=1,lr=3"]) == {"overfit": 7, "init": 1, "lr": 3}
    with pytest.raises(dg.ContextSegError):
        dg.parse_checks("init,speed")
    with pytest.raises(dg.ContextSegError):
        dg.parse_steps(["overfit=0"])


def cli_args(root, out):
    return ["doctor", "configs/synthetic_ocr.yaml", f"output_dir={out}", "model.backbone=hrnetv2_w18_small_v1",
            "model.kwargs={mid_channels: 32, key_channels: 16}", "data.dataset=folder", f"data.root={root}",
            "data.crop_size=[48,64]", "data.batch_size=2", "data.num_workers=0", "--steps", "init=1", "lr=6",
            "ratios=2", "overfit=3", "--no-progress"]


def test_cli_doctor_end_to_end(tmp_path, capsys):
    root = tmp_path / "pairs"
    write_synthetic_folder(root, n=4, size=(48, 64), split="train")
    write_synthetic_folder(root, n=2, size=(48, 64), seed=1, split="val")
    out = tmp_path / "run"
    assert main([*cli_args(root, out), "--checks", "init,lr,ratios,data"]) == 0
    printed = capsys.readouterr().out
    for name in ("init", "lr", "ratios", "data"):
        assert f"] {name}" in printed
    assert "ln(6)" in printed and "suggested lr" in printed
    report = json.loads((out / "doctor" / "doctor.json").read_text())
    assert list(report["checks"]) == ["init", "lr", "ratios", "data"]
    assert report["overall"] in ("PASS", "WARN")
    assert report["precision"]["amp"] == "none"  # tests/conftest.py: fp32 on every CPU; the checks run in fp32
    for png in ("lr_range_test.png", "update_ratios.png", "class_frequencies.png"):
        assert (out / "doctor" / png).exists()
    assert report["checks"]["data"]["splits"]["val"]["samples"] == 2

    # a broken label file fails the data check: exit status 1, and --out is honoured
    bad = broken_folder(tmp_path / "bad", split="train")
    (tmp_path / "bad" / "val").symlink_to(bad, target_is_directory=True)
    assert main([*cli_args(tmp_path / "bad", out), "--checks", "data", "--out", str(tmp_path / "d")]) == 1
    printed = capsys.readouterr().out
    assert "[FAIL] data" in printed and "00001.png" in printed
    assert json.loads((tmp_path / "d" / "doctor.json").read_text())["checks"]["data"]["verdict"] == "FAIL"


def test_cli_doctor_unknown_check(tmp_path, capsys):
    assert main(["doctor", "configs/synthetic_ocr.yaml", f"output_dir={tmp_path / 'run'}", "--checks", "init,speed"]) == 2
    assert "speed" in capsys.readouterr().err and not (tmp_path / "run").exists()  # refused before any folder
