"""Classification with a Spatially Attentive Output Layer (Kim et al. CVPR 2020): the CIFAR ResNets, the SAOL and
GAP-FC heads, label CutMix, the SAOL losses, the image-folder datasets, and train / eval / predict from the CLI."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from catalogue import error_message
from contextseg.cli import main
from contextseg.data import LabelCutMix, build_dataset, default_data_root, write_image_folder
from contextseg.errors import ContextSegError
from contextseg.models import create_model
from contextseg.models.heads.saol import GAPFCHead, SAOLHead
from contextseg.losses.saol import SAOLLoss, WithSourceLogits, box_coverage, sd_loss, ss1_loss, ss2_loss


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def cifar_resnet_params(depth, k=10):
    """He et al. 2016, Sec. 4.2: 3x3 convs without bias, BN (2 per channel), option-A shortcuts, GAP + FC."""
    n = (depth - 2) // 6
    conv = lambda cin, cout: 9 * cin * cout + 2 * cout  # noqa: E731
    stages = 2 * n * conv(16, 16) + conv(16, 32) + (2 * n - 1) * conv(32, 32)
    stages += conv(32, 64) + (2 * n - 1) * conv(64, 64)
    return conv(3, 16) + stages + 64 * k + k


@pytest.mark.parametrize("depth,published", [(20, 0.27), (56, 0.85)])
def test_cifar_resnet_matches_the_paper(depth, published):
    model = create_model("gap", backbone=f"cifar_resnet{depth}", num_classes=10)
    assert n_params(model) == cifar_resnet_params(depth) and round(n_params(model) / 1e6, 2) == published
    feats = model.backbone(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.backbone.out_channels == [16, 32, 64] and model.backbone.strides == [1, 2, 4]
    assert model.eval()(torch.randn(2, 3, 32, 32))["out"].shape == (2, 10)


def test_saol_outputs_follow_eq2():
    torch.manual_seed(0)
    model = create_model("saol", backbone="cifar_resnet20", num_classes=5)
    torch.nn.init.normal_(model.head.attention[1].weight)  # non-uniform attention
    for mode in (model.train(), model.eval()):
        out = mode(torch.randn(2, 3, 32, 32))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "out": (2, 5), "gap": (2, 5), "spatial_logits": (2, 5, 8, 8), "attention": (2, 1, 8, 8)}
        a = out["attention"]
        assert (a >= 0).all() and torch.allclose(a.sum(dim=(1, 2, 3)), torch.ones(2)) and a.std() > 0
        y_hat = (a * out["spatial_logits"].softmax(1)).sum(dim=(2, 3))  # Eq. 2: sum_ij A_ij Y_ij
        torch.testing.assert_close(out["out"].softmax(1), y_hat)
        torch.testing.assert_close(out["out"].exp().sum(1), torch.ones(2))  # out = log y^


def test_uniform_attention_and_1x1_convs_average_the_cells():
    torch.manual_seed(0)
    head = SAOLHead([4, 6], num_classes=3, fuse_kernel=1).eval()  # attention starts uniform (zero last conv)
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    out = head(feats)
    assert torch.allclose(out["attention"], torch.full((1, 1, 4, 4), 1 / 16))
    torch.testing.assert_close(out["out"].softmax(1), out["spatial_logits"].softmax(1).mean(dim=(2, 3)))
    moved = [feats[0], feats[1].clone()]
    moved[1][..., 2, 3] += 5.0  # with 1x1 convs a cell's spatial logits see only that cell
    changed = (head(moved)["spatial_logits"] - out["spatial_logits"]).abs().sum(1)[0] > 1e-6
    assert changed[2, 3] and changed.sum() == 1


def test_float32_head_computes_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    head = SAOLHead([4, 6], num_classes=3, float32=True).eval()
    torch.nn.init.normal_(head.attention[1].weight)
    feats = [torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 6, 4, 4).bfloat16()]  # a bf16 backbone's maps
    reference = head([f.float() for f in feats])  # no autocast: all float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(feats)
        head.float32 = False
        plain = head(feats)
    for name, value in mixed.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)
    assert plain["gap"].dtype == torch.bfloat16  # the default keeps autocast's precision


def test_gap_fc_float32_option_computes_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    head = GAPFCHead([4, 6], num_classes=3, float32=True)
    feats = [torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 6, 4, 4).bfloat16()]
    reference = head([f.float() for f in feats])["out"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(feats)["out"]
        head.float32 = False
        plain = head(feats)["out"]
    assert mixed.dtype == torch.float32 and plain.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, reference, rtol=0, atol=0)


def test_head_parameter_counts_from_layer_shapes():
    k, m, a = 10, 32, 32
    model = create_model("saol", backbone="cifar_resnet20", num_classes=k)
    widths = [16, 32, 64]
    attention = 9 * 64 * a + 2 * a + a + 1
    laterals = sum(c * m + 2 * m for c in widths)
    assert n_params(model.head) == attention + laterals + (9 * 3 * m * m + 2 * m) + (m * k + k) + (64 * k + k) == 50997
    wide = create_model("saol", backbone="cifar_resnet20", num_classes=k, mid_channels=64, fuse_kernel=1, gap=False)
    assert n_params(wide.head) == attention + sum(c * 64 + 128 for c in widths) + (3 * 64 * 64 + 128) + (64 * k + k)
    assert n_params(create_model("gap", backbone="cifar_resnet20", num_classes=k).head) == 64 * k + k


def test_label_cutmix_pastes_the_partner_and_its_label():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 8, 8).contiguous()  # image i is filled with i
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, t = LabelCutMix(p=1.0, alpha=1.0, generator=torch.Generator().manual_seed(3))(images, labels)
    y0, x0, y1, x1 = (t["box"][0] * 8).round().long().tolist()
    assert (y1 - y0) * (x1 - x0) > 0 and torch.allclose(t["lam"], torch.full((6,), 1 - (y1 - y0) * (x1 - x0) / 64))
    partner = mixed[:, 0, y0, x0].long()
    assert torch.equal(t["label_b"], labels[partner]) and torch.equal(t["label"], labels)
    assert torch.equal(t["index_b"], partner)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(mixed[:, :, outside], images[:, :, outside])
    same, t0 = LabelCutMix(p=0.0)(images, labels)
    assert same is images and (t0["lam"] == 1).all() and (t0["box"] == 0).all()
    assert torch.equal(t0["index_b"], torch.arange(6))


def test_box_on_the_grid_is_the_area_share():
    cover = box_coverage(torch.tensor([[0.25, 0.5, 0.75, 1.0]]), 8, 8)  # cells 2..5 x 4..7 of an 8x8 grid, wholly
    assert cover.sum() == 16 and set(cover.unique().tolist()) == {0.0, 1.0} and cover[0, 2:6, 4:].all()
    assert box_coverage(torch.tensor([[0.0, 0.0, 0.3, 0.5]]), 4, 4)[0, 1, 0] == pytest.approx(0.2)  # part of a cell
    pixels = torch.zeros(1, 1, 32, 32)
    pixels[..., 5:19, 9:30] = 1  # M at full resolution -> average pooling to the grid
    box = torch.tensor([[5 / 32, 9 / 32, 19 / 32, 30 / 32]])
    torch.testing.assert_close(box_coverage(box, 8, 8), F.adaptive_avg_pool2d(pixels, 8)[:, 0])


# a 2x2 grid; box rows [0, 0.5), columns [0, 0.75): cell (0, 0) wholly inside, (0, 1) half, the bottom row outside
BOX = torch.tensor([[0.0, 0.0, 0.5, 0.75]])
M = [[1.0, 0.5], [0.0, 0.0]]


def test_ss1_is_the_bce_between_attention_and_the_mask():
    a = [[0.4, 0.3], [0.2, 0.1]]
    cells = [(i, j) for i in range(2) for j in range(2)]
    by_hand = -sum(M[i][j] * math.log(a[i][j]) + (1 - M[i][j]) * math.log(1 - a[i][j]) for i, j in cells) / 4
    mask = box_coverage(BOX, 2, 2)
    assert mask[0].tolist() == M
    assert ss1_loss(torch.tensor(a).view(1, 1, 2, 2), mask).item() == pytest.approx(by_hand, rel=1e-6)
    # the reviewer's case: attention on the pasted box scores lower than uniform attention (8x8 grid, 16 box cells)
    mask = box_coverage(torch.tensor([[0.25, 0.5, 0.75, 1.0]]), 8, 8)
    uniform, on_box = torch.full((1, 1, 8, 8), 1 / 64), mask.unsqueeze(1) / 16
    by_hand = (16 * math.log(64) - 48 * math.log(63 / 64)) / 64
    assert ss1_loss(uniform, mask).item() == pytest.approx(by_hand, rel=1e-6)
    assert ss1_loss(on_box, mask).item() == pytest.approx(16 * math.log(16) / 64, rel=1e-5)
    assert ss1_loss(on_box, mask) < ss1_loss(uniform, mask)
    off_box = (1 - mask).unsqueeze(1) / 48
    assert ss1_loss(off_box, mask) > ss1_loss(uniform, mask)


def test_ss2_is_the_kl_from_the_source_logits_inside_the_box():
    z_mix = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[1.0, 0.0], [0.5, 0.5]]]).unsqueeze(0)  # (1, K=2, 2, 2)
    z_src = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [1.0, 0.0]]]).unsqueeze(0)

    def probs(z, i, j):
        e = [math.exp(z[0, k, i, j].item()) for k in range(2)]
        return [v / sum(e) for v in e]

    def kl(i, j):
        p, q = probs(z_src, i, j), probs(z_mix, i, j)
        return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))

    by_hand = (1.0 * kl(0, 0) + 0.5 * kl(0, 1)) / 1.5  # cells weighted by their share in the box; outside: none
    z = z_mix.clone().requires_grad_()
    source = z_src.clone().requires_grad_()
    value = ss2_loss(z, source, box_coverage(BOX, 2, 2))
    assert value.item() == pytest.approx(by_hand, rel=1e-6)
    value.sum().backward()
    assert source.grad is None and z.grad[..., 1, :].abs().sum() == 0 and z.grad[..., 0, :].abs().sum() > 0
    assert ss2_loss(z_src, z_src, box_coverage(BOX, 2, 2)).item() == pytest.approx(0.0, abs=1e-7)


def test_sd_mixes_gap_ce_and_distillation_with_beta():
    gap, out = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.2, 1.5, -0.3]])
    t = {"label": torch.tensor([0]), "label_b": torch.tensor([1]), "lam": torch.tensor([0.7])}
    log_softmax = lambda v: [x - math.log(sum(math.exp(y) for y in v)) for x in v]  # noqa: E731
    lq, lp = log_softmax(gap[0].tolist()), log_softmax(out[0].tolist())
    ce = -(0.7 * lq[0] + 0.3 * lq[1])
    kl = sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
    assert sd_loss(gap, out, t, beta=0.5).item() == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-6)
    lq2, lp2 = log_softmax((gap[0] / 2).tolist()), log_softmax((out[0] / 2).tolist())
    kl2 = sum(math.exp(a) * (a - b) for a, b in zip(lp2, lq2))
    assert sd_loss(gap, out, t, beta=0.25, temperature=2.0).item() == pytest.approx(0.75 * ce + 0.25 * 4 * kl2,
                                                                                   rel=1e-6)
    g, o = gap.clone().requires_grad_(), out.clone().requires_grad_()
    sd_loss(g, o, t).sum().backward()
    assert o.grad is None and g.grad.abs().sum() > 0  # SAOL is the teacher: detached


def test_saol_loss_sums_the_terms():
    torch.manual_seed(0)
    b, k = 3, 4
    outputs = {"out": torch.randn(b, k), "gap": torch.randn(b, k), "spatial_logits": torch.randn(b, k, 2, 2),
               "attention": torch.randn(b, 4).softmax(1).view(b, 1, 2, 2)}
    t = {"label": torch.tensor([0, 1, 2]), "label_b": torch.tensor([3, 0, 1]), "lam": torch.tensor([0.625] * b),
         "box": BOX.expand(b, 4), "index_b": torch.tensor([2, 0, 1]), "source_logits": torch.randn(b, k, 2, 2)}
    total, parts = SAOLLoss()(outputs, t)
    assert set(parts) == {"ce", "ss1", "ss2", "sd"}
    mask = box_coverage(t["box"], 2, 2)
    ce = (0.625 * F.cross_entropy(outputs["out"], t["label"]) + 0.375 * F.cross_entropy(outputs["out"], t["label_b"]))
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["ss1"], ss1_loss(outputs["attention"], mask).mean())
    torch.testing.assert_close(parts["ss2"], ss2_loss(outputs["spatial_logits"], t["source_logits"], mask).mean())
    torch.testing.assert_close(parts["sd"], sd_loss(outputs["gap"], outputs["out"], t, beta=0.5).mean())
    torch.testing.assert_close(total, sum(parts.values()))
    weighted, _ = SAOLLoss({"out": 1.0, "attention": 2.0, "spatial_logits": 0.5, "gap": 1.0}, beta=1.0)(outputs, t)
    torch.testing.assert_close(weighted, parts["ce"] + 2 * parts["ss1"] + 0.5 * parts["ss2"]
                               + sd_loss(outputs["gap"], outputs["out"], t, beta=1.0).mean())
    _, unmixed = SAOLLoss()(outputs, t["label"])  # no CutMix, no self-supervision
    assert unmixed["ss1"] == 0 and unmixed["ss2"] == 0
    with pytest.raises(ContextSegError, match="source_logits"):
        SAOLLoss()(outputs, {key: v for key, v in t.items() if key != "source_logits"})
    with pytest.raises(ContextSegError, match="beta"):
        SAOLLoss({"out": 1.0, "gap_ce": 1.0})
    with pytest.raises(ContextSegError, match="does not know"):
        SAOLLoss({"out": 1.0, "aux": 0.4, "edges": 1.0})
    assert not SAOLLoss({"out": 1.0}).needs_source_logits and SAOLLoss().needs_source_logits


def test_source_logits_come_from_the_unmixed_partner():
    torch.manual_seed(0)
    model = create_model("saol", backbone="cifar_resnet20", num_classes=3).train()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    mix = WithSourceLogits(LabelCutMix(p=1.0, generator=torch.Generator().manual_seed(1)), model)
    mixed, t = mix(images, labels)
    assert model.training and (t["lam"] < 1).all() and not torch.equal(mixed, images)
    with torch.no_grad():
        expected = model.eval()(images)["spatial_logits"][t["index_b"]]
    torch.testing.assert_close(t["source_logits"], expected)
    assert not t["source_logits"].requires_grad
    _, plain = WithSourceLogits(LabelCutMix(p=0.0), model)(images, labels)
    assert "source_logits" not in plain


def test_image_folder_split_and_errors(tmp_path):
    write_image_folder(tmp_path / "data", per_class=10, size=(12, 12))
    train = build_dataset("image_folder", "train", root=tmp_path / "data", val_every=5)
    val = build_dataset("image_folder", "val", root=tmp_path / "data", val_every=5)
    assert (len(train), len(val)) == (24, 6) and train.task == "classification"
    assert not set(train.files) & set(val.files)
    assert [f.name for f in val.files[:2]] == ["00004.jpg", "00009.jpg"] and val.classes == ["bar", "disc", "square"]
    x, y = val[0]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y == 0
    with pytest.raises(ContextSegError, match="not found"):
        build_dataset("image_folder", "train", root=tmp_path / "nope")
    with pytest.raises(ContextSegError, match="no split"):
        build_dataset("image_folder", "test", root=tmp_path / "data")


@pytest.mark.skipif(not (default_data_root() / "cifar10" / "train").is_dir(), reason="no CIFAR-10 folder")
def test_cifar10_split():
    val = build_dataset("cifar10", "val")
    assert len(val) == 1000 and val.classes[0] == "airplane" and val.files[0].name.endswith("0009.jpg")


def test_train_eval_predict_cli(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folder(root, per_class=6, size=(16, 16))
    out = tmp_path / "run"
    common = [f"output_dir={out}", "data.dataset=image_folder", f"data.root={root}", "data.kwargs={val_every: 3}",
              "data.crop_size=[16,16]", "data.batch_size=4", "data.num_workers=0", "data.mix_prob=1.0",
              "train.iters=2", "train.eval_interval=2", "train.warmup_iters=0", "train.log_interval=1"]
    cfg = "configs/cifar10/saol_resnet20.yaml"
    assert main(["train", cfg, *common, "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"top1", "top1_gap", "per_class_acc"} <= set(summary["final"]) and summary["final"]["images"] == 6
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_ce", "loss_ss1", "loss_ss2", "loss_sd"} <= set(logged) and logged["loss_ss2"] > 0
    assert "GAP-FC top-1" in capsys.readouterr().out
    assert main(["eval", cfg, *common, "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "e.json"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(summary["final"]["top1"])
    assert main(["predict", str(root / "disc" / "00000.jpg"), "--checkpoint", str(out / "best.pt"),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert rows[0]["class"] in ("bar", "disc", "square") and (tmp_path / "pred" / "00000_attention.png").exists()
    assert main(["train", "configs/cifar10/gap_resnet20.yaml", *common, f"output_dir={tmp_path / 'gap'}",
                 "--no-progress"]) == 0
    assert main(["train", cfg, *common, "model.arch=fcn", "--no-progress"]) == 2
    assert "is for image classification" in capsys.readouterr().err



def test_saol_loss_settings_are_checked_with_messages_that_name_the_fix():
    from contextseg.losses.saol import build_classification_loss
    assert error_message(lambda: SAOLLoss({"out": 1.0, "gap_ce": 1.0})) == (
        "loss.weights has ['gap_ce'], which the SAOL loss does not know (GAP-FC's CE is part of L_SD: its share is "
        "1 - loss.kwargs.beta); its terms: out, attention, spatial_logits, gap (e.g. {out: 1, attention: 1, "
        "spatial_logits: 1, gap: 1})")
    assert error_message(lambda: SAOLLoss({"aux": 1.0})) == (
        "loss.weights has ['aux'], which the SAOL loss does not know; its terms: out, attention, spatial_logits, gap "
        "(e.g. {out: 1, attention: 1, spatial_logits: 1, gap: 1})")
    for weights in ({"out": -1.0}, {"out": "1"}):
        assert error_message(lambda: SAOLLoss(weights)) == f"loss.weights must be numbers >= 0, got {weights}"
    assert SAOLLoss({"out": 1.0, "gap": 0}).weights == {"out": 1.0}  # a zero weight drops the term
    for temperature in (0, -1.0, "2"):
        assert error_message(lambda: SAOLLoss(temperature=temperature)) == (
            f"loss.kwargs.temperature must be > 0, got {temperature!r}")
    for beta in (-0.1, 1.5, "0.5"):
        assert error_message(lambda: SAOLLoss(beta=beta)) == f"loss.kwargs.beta must be in [0, 1], got {beta!r}"
    assert SAOLLoss(beta=0).beta == 0.0 and SAOLLoss(beta=1).beta == 1.0 and SAOLLoss(temperature=0.5)
    # the builder: "saol" by default with all four terms, "ce" = the CutMix CE alone, kwargs passed through
    assert build_classification_loss().weights == {"out": 1.0, "attention": 1.0, "spatial_logits": 1.0, "gap": 1.0}
    assert build_classification_loss("ce").weights == {"out": 1.0}
    assert build_classification_loss("saol", {"out": 2.0, "gap": 1.0}).weights == {"out": 2.0, "gap": 1.0}
    built = build_classification_loss("saol", beta=0.25, temperature=3.0)
    assert (built.beta, built.temperature) == (0.25, 3.0)
    assert error_message(lambda: build_classification_loss("focal")) == (
        "loss.name='focal' is not a classification loss; use saol or ce")
    assert error_message(lambda: build_classification_loss("saol", gamma=2)) == (
        "loss.kwargs ['gamma'] are not options of the classification loss; it takes temperature, beta")


def test_saol_loss_inputs_are_checked_with_messages():
    out = torch.zeros(3, 4)
    assert error_message(lambda: SAOLLoss()({"out": torch.zeros(3, 4, 2)}, torch.tensor([0, 1, 2]))) == (
        "a classifier's 'out' is (B, K) logits, got (3, 4, 2); use a classification model (model.arch saol or gap)")
    for labels in (torch.tensor([0, 4, 1]), torch.tensor([-1, 0, 1])):
        assert error_message(lambda: SAOLLoss({"out": 1.0})({"out": out}, labels)) == (
            f"class labels must be in 0..3, got {labels.tolist()}")
    SAOLLoss({"out": 1.0})({"out": out}, torch.tensor([3, 0, 1]))  # K - 1 is a class
    for labels, got in ((torch.zeros(3, 1, dtype=torch.long), "torch.Size([3, 1])"),
                        (torch.zeros(2, dtype=torch.long), "torch.Size([2])"), ([0, 1, 2], "<class 'list'>")):
        assert error_message(lambda: SAOLLoss.targets(labels, 3, "cpu")) == (
            f"a classification loss takes (B,) class labels, got {got} for a batch of 3")
    t = SAOLLoss.targets(torch.tensor([2, 0, 1]), 3, "cpu")  # plain labels: unmixed CutMix targets
    assert sorted(t) == ["box", "index_b", "label", "label_b", "lam"]
    assert t["lam"].tolist() == [1.0] * 3 and t["box"].shape == (3, 4) and not t["box"].any()
    assert t["index_b"].tolist() == [0, 1, 2] and t["label_b"].tolist() == [2, 0, 1]
    outputs = {"out": torch.zeros(2, 3), "spatial_logits": torch.zeros(2, 3, 2, 2),
               "attention": torch.zeros(2, 1, 2, 2)}
    mixed = {**SAOLLoss.targets(torch.tensor([0, 1]), 2, "cpu"), "lam": torch.tensor([0.5, 1.0]),
             "box": BOX.repeat(2, 1)}
    assert error_message(lambda: SAOLLoss()(outputs, mixed)) == (
        "L_ss2 needs targets['source_logits'], the spatial logits of each CutMixed image's source (unmixed partner) "
        "image: wrap the CutMix in losses.saol.WithSourceLogits(mix, model), or set loss.weights.spatial_logits=0")


def test_saol_terms_per_sample_and_over_the_mixed_samples_only():
    # _mixed_ce and L_SD per sample, each with its own lam
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]])
    t = {"label": torch.tensor([0, 1]), "label_b": torch.tensor([2, 0]), "lam": torch.tensor([0.75, 0.25])}
    ce = lambda i, y: -logits[i].log_softmax(0)[y].item()  # noqa: E731
    expected = [0.75 * ce(0, 0) + 0.25 * ce(0, 2), 0.25 * ce(1, 1) + 0.75 * ce(1, 0)]
    from contextseg.losses.saol import _mixed_ce
    assert _mixed_ce(logits, t).tolist() == pytest.approx(expected, rel=1e-6)
    assert sd_loss(logits, logits, t).tolist() == pytest.approx([0.5 * v for v in expected], rel=1e-6)  # beta 0.5
    # L_ss1, L_ss2 per sample (B,): two samples, different values
    mask = box_coverage(BOX.repeat(2, 1), 2, 2)
    att = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]).view(2, 1, 2, 2)
    per = ss1_loss(att, mask)
    assert per.shape == (2,) and per[0] == pytest.approx(ss1_loss(att[:1], mask[:1]).item())
    assert per[1] == pytest.approx(ss1_loss(att[1:], mask[1:]).item()) and per[0] != per[1]
    # attention saturated on one cell (softmax gives exactly 1.0): still finite, log(1 - a) clamped at 1 - 1e-7
    peaked = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    corner = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])  # the box is elsewhere
    a_max = torch.tensor(1 - 1e-7, dtype=torch.float32).item()
    by_hand = -(math.log1p(-a_max) + 2 * math.log1p(-1e-12) + math.log(1e-12)) / 4
    assert ss1_loss(peaked, corner).item() == pytest.approx(by_hand, rel=1e-5)
    z = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    z_src = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    mask2 = torch.stack([mask[0], torch.tensor([[0.0, 0.0], [0.0, 0.25]])])
    per = ss2_loss(z, z_src, mask2)
    assert per.shape == (2,)
    assert per[0] == pytest.approx(ss2_loss(z[:1], z_src[:1], mask2[:1]).item(), rel=1e-6)
    assert per[1] == pytest.approx(ss2_loss(z[1:], z_src[1:], mask2[1:]).item(), rel=1e-6)
    # the module: the self-supervised terms average over the mixed samples only (one of three here)
    torch.manual_seed(0)
    b, k = 3, 4
    outputs = {"out": torch.randn(b, k), "spatial_logits": torch.randn(b, k, 2, 2),
               "attention": torch.randn(b, 4).softmax(1).view(b, 1, 2, 2)}
    t = {"label": torch.tensor([0, 1, 2]), "label_b": torch.tensor([3, 0, 1]), "lam": torch.tensor([1.0, 0.5, 1.0]),
         "box": BOX.repeat(b, 1), "index_b": torch.tensor([0, 2, 1]), "source_logits": torch.randn(b, k, 2, 2)}
    _, parts = SAOLLoss()(outputs, t)
    m = box_coverage(t["box"], 2, 2)
    torch.testing.assert_close(parts["ss1"], ss1_loss(outputs["attention"], m)[1])
    torch.testing.assert_close(parts["ss2"], ss2_loss(outputs["spatial_logits"], t["source_logits"], m)[1])
    # no weighted term: a zero tensor, float32 (also for bf16 outputs)
    total, parts = SAOLLoss({"out": 0})({"out": torch.zeros(2, 3)}, torch.tensor([0, 1]))
    assert torch.is_tensor(total) and total.item() == 0 and parts == {}
    _, parts = SAOLLoss()({k: v.bfloat16() for k, v in outputs.items()}, t["label"])
    assert parts["ss1"].dtype == torch.float32 and parts["ss2"].dtype == torch.float32


def test_source_logits_pass_stops_for_a_model_without_spatial_logits():
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return {"out": x.mean(dim=(2, 3))}

    model = Counting().train()
    mix = WithSourceLogits(LabelCutMix(p=1.0, generator=torch.Generator().manual_seed(0)), model)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        _, t = mix(images, labels)
        assert "source_logits" not in t and model.training
    assert model.calls == 1 and mix.active is False
