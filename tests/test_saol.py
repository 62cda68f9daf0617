"""Classification with a Spatially Attentive Output Layer (Kim et al. CVPR 2020): the CIFAR ResNets, the SAOL and
GAP-FC heads, label CutMix, the SAOL losses, the image-folder datasets, and train / eval / predict from the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

from contextseg.cli import main
from contextseg.data import LabelCutMix, build_dataset, default_data_root, write_image_folder
from contextseg.errors import ContextSegError
from contextseg.models import create_model
from contextseg.models.heads.saol import SAOLHead
from contextseg.saol_loss import SAOLLoss, attention_split_loss, box_coverage, spatial_logit_loss


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
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(mixed[:, :, outside], images[:, :, outside])
    same, t0 = LabelCutMix(p=0.0)(images, labels)
    assert same is images and (t0["lam"] == 1).all() and (t0["box"] == 0).all()


def test_self_supervised_losses_vanish_for_the_box_layout():
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0]])  # cells 2..5 x 4..7 of an 8x8 grid, wholly
    cover = box_coverage(box, 8, 8)
    assert cover.sum() == 16 and set(cover.unique().tolist()) == {0.0, 1.0}
    assert box_coverage(torch.tensor([[0.0, 0.0, 0.3, 0.5]]), 4, 4)[0, 1, 0] == pytest.approx(0.2)  # part of a cell
    y_a, y_b = torch.tensor([0]), torch.tensor([2])
    layout = torch.where(cover.bool(), y_b.view(1, 1, 1), y_a.view(1, 1, 1))
    z = 30.0 * F.one_hot(layout, 3).permute(0, 3, 1, 2).float()  # each cell predicts its source's class
    assert spatial_logit_loss(z, cover, y_a, y_b).item() < 1e-9
    assert spatial_logit_loss(-z, cover, y_a, y_b).item() > 10
    r = torch.tensor([0.25])
    even = torch.full((1, 1, 8, 8), 1 / 64)  # mass inside the box = its area share
    assert attention_split_loss(even, cover, r).item() < 1e-6
    inside = cover.unsqueeze(1) / 16
    assert attention_split_loss(inside, cover, r).item() > 1.0
    soft = torch.tensor([[0.0, 0.0, 0.3, 0.5]])  # cells partly covered: soft targets, still zero at the optimum
    cover = box_coverage(soft, 4, 4)
    onehot = lambda y: F.one_hot(y, 3)[..., None, None]  # noqa: E731
    t = (1 - cover).unsqueeze(1) * onehot(y_a) + cover.unsqueeze(1) * onehot(y_b)
    assert spatial_logit_loss(t.clamp_min(1e-30).log(), cover, y_a, y_b).item() < 1e-6

    loss = SAOLLoss()  # all four terms; an unmixed batch has no self-supervision
    targets = {"label": y_a, "label_b": y_b, "lam": torch.tensor([0.75]), "box": box}
    perfect = {"out": torch.log(torch.tensor([[0.75, 0.0, 0.25]]).clamp_min(1e-12)), "gap": torch.zeros(1, 3),
               "spatial_logits": z, "attention": even}
    total, parts = loss(perfect, targets)
    assert set(parts) == {"ce", "spatial", "attention", "distill"}
    assert parts["spatial"] < 1e-6 and parts["attention"] < 1e-6
    _, unmixed = loss(perfect, y_a)
    assert unmixed["spatial"] == 0 and unmixed["attention"] == 0


def test_cutmix_ce_and_distillation():
    torch.manual_seed(0)
    out, gap = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    t = {"label": torch.tensor([0, 1, 2, 3]), "label_b": torch.tensor([4, 4, 0, 1]), "lam": torch.tensor([0.7] * 4),
         "box": torch.tensor([[0.0, 0.0, 0.5, 0.6]] * 4)}
    _, parts = SAOLLoss({"out": 1.0})({"out": out}, t)
    expected = 0.7 * F.cross_entropy(out, t["label"]) + 0.3 * F.cross_entropy(out, t["label_b"])
    torch.testing.assert_close(parts["ce"], expected)
    total, parts = SAOLLoss({"gap": 1.0}, temperature=2.0)({"out": out, "gap": gap}, t)
    total.backward()
    assert out.grad is None and gap.grad.abs().sum() > 0  # SAOL is the teacher: detached
    assert SAOLLoss({"gap": 1.0})({"out": out, "gap": out.detach()}, t)[0].abs() < 1e-6
    with pytest.raises(ContextSegError, match="does not know"):
        SAOLLoss({"out": 1.0, "aux": 0.4, "edges": 1.0})


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
    assert {"loss_ce", "loss_spatial", "loss_attention", "loss_distill"} <= set(logged)
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
