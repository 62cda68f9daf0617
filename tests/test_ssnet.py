"""SSNet (Zeng et al. ICCV 2019; official code github.com/zengxianyu/jsws): the SAM formula and shapes, the stage-2
ASPP-L head and FC classifier, the loss terms (the official NLL on (P_0, S) and BCE on S) by hand, image-level labels
from label maps, both pseudo-label rules (official and restricted) on hand-made logits, a weak training that never
reads pixel labels, stage 1 through the CLI, pseudo-label writing and both stage-2 routes, on tiny generated data."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contextseg.cli import main
from contextseg.config import load_config
from contextseg.data import build_dataset, default_data_root, write_synthetic_weak
from contextseg.data.weak import (ClassLayout, WeakSpec, derive_image_labels, load_image_labels,
                                  save_image_labels, unpair)
from contextseg.engine.checkpoint import load_checkpoint
from contextseg.tasks.weak.pseudo_labels import channels_to_classes, pseudo_label, write_pseudo_labels
from contextseg.errors import ContextSegError
from contextseg.models import create_model
from contextseg.models.heads.aspp_l import ASPPLHead
from contextseg.models.heads.ssnet import aggregate_saliency
from contextseg.models.resize import align_corners_of
from contextseg.tasks.weak.task import ClassChannels, SaliencyMap
from contextseg.losses.ssnet import SSNetLoss, saliency_nll

CFG = "configs/weak/ssnet_synthetic.yaml"


def kwargs(roots, **extra):
    """The data.kwargs override for the generated folders."""
    items = [f"segmentation: {{dataset: folder, root: {roots['segmentation']}}}",
             f"saliency: {{dataset: saliency_folder, root: {roots['saliency']}, val_every: 4}}"]
    items += [f"{k}: {v}" for k, v in extra.items()]
    return "data.kwargs={" + ", ".join(items) + "}"


def small(out, *extra):
    return [f"output_dir={out}", "data.crop_size=[32,48]", "data.batch_size=2", "train.iters=2", "train.eval_interval=2",
            "deterministic=true", *extra]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Generated data and a 2-step stage-1 run through the CLI."""
    base = tmp_path_factory.mktemp("ssnet")
    roots = write_synthetic_weak(base / "data", n_train=4, n_val=2, n_saliency=4, size=(32, 48))
    out = base / "stage1"
    assert main(["train", CFG, kwargs(roots), *small(out), "--no-progress"]) == 0
    return base, roots, out


def test_shapes_and_the_sam_formula():
    torch.manual_seed(0)
    model = create_model("ssnet", backbone="hrnetv2_w18_small_v1", num_classes=5, sam_grid=3)
    assert model.num_classes == 6 and model.head.num_foreground == 5
    assert sum(p.numel() for p in model.head.sam.parameters()) == 3 * 3 * 128 * 5 + 5  # g^2 C_in C + C
    for mode in (model.train(), model.eval()):
        out = mode(torch.randn(2, 3, 33, 47))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "out": (2, 6, 9, 12), "saliency": (2, 1, 9, 12), "saliency_scores": (2, 5), "class_logits": (2, 5)}
        v, p = out["saliency_scores"], out["out"].softmax(1)
        assert ((v > 0) & (v < 1)).all()
        torch.testing.assert_close(out["saliency"], (v[:, :, None, None] * p[:, 1:]).sum(1, keepdim=True))
        torch.testing.assert_close(out["class_logits"], out["out"][:, 1:].mean(dim=(2, 3)))
        assert (out["saliency"] >= 0).all() and (out["saliency"] <= 1).all()
    probs = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1)
    assert aggregate_saliency(probs, torch.tensor([[1.0, 0.5]])).item() == pytest.approx(0.3 + 0.1)
    assert aggregate_saliency(probs, torch.ones(1, 2)).item() == pytest.approx(1 - 0.5)  # all salient: 1 - P_bg
    with pytest.raises(ContextSegError, match="C \\+ 1"):
        aggregate_saliency(probs, torch.ones(1, 3))


def test_stage2_aspp_l_head_and_fc_classifier():
    """Official jls_deeplab.py: seg = sum of four 3x3 convs (dilations 6/12/18/24, padding = dilation) on one map;
    cls_fc = Linear(global average of the deepest map). Here on HRNet's stride-4 concat, rates rescaled x2."""
    torch.manual_seed(0)
    model = create_model("ssnet", backbone="hrnetv2_w18_small_v1", num_classes=5, seg_head="aspp_l", cls_head="fc")
    head = model.head
    assert isinstance(head.seg, ASPPLHead) and head.seg.rates == (12, 24, 36, 48)
    c = sum(model.backbone.out_channels)  # 240: the four maps concatenated
    for conv, r in zip(head.seg.branches, (12, 24, 36, 48)):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.dilation, conv.padding) == (
            c, 6, (3, 3), (r, r), (r, r))
    assert sum(p.numel() for p in head.seg.parameters()) == 4 * (9 * c * 6 + 6)
    assert (head.cls_fc.in_features, head.cls_fc.out_features) == (128, 5)
    assert model.feat_channels == c  # "feat" = the map the four classifiers share
    feats = [torch.randn(2, w, 8 // 2 ** i + 1, 12 // 2 ** i + 1) for i, w in enumerate(model.backbone.out_channels)]
    out = head(feats)
    x = head.seg.inputs(feats)
    torch.testing.assert_close(out["out"], sum(conv(x) for conv in head.seg.branches))
    torch.testing.assert_close(out["class_logits"], head.cls_fc(feats[-1].mean(dim=(2, 3))))
    torch.testing.assert_close(out["saliency"], aggregate_saliency(out["out"].softmax(1), out["saliency_scores"]))
    # the official dilations literally, and the errors
    exact = create_model("ssnet", backbone="hrnetv2_w18_small_v1", num_classes=5, seg_head="aspp_l",
                         rates=[6, 12, 18, 24])
    assert [b.dilation[0] for b in exact.head.seg.branches] == [6, 12, 18, 24]
    with pytest.raises(ContextSegError, match="seg_head"):
        create_model("ssnet", backbone="hrnetv2_w18_small_v1", num_classes=5, seg_head="deeplab")
    with pytest.raises(ContextSegError, match="rates"):
        create_model("ssnet", backbone="hrnetv2_w18_small_v1", num_classes=5, rates=[6, 12])
    # the stage-2 config builds that head and keeps the classification BCE (official weight 1)
    cfg = load_config("configs/weak/ssnet_stage2_camvid_ecssd.yaml")
    assert cfg.model.kwargs["seg_head"] == "aspp_l" and cfg.model.kwargs["cls_head"] == "fc"
    assert cfg.loss.weights == {"seg": 1.0, "saliency": 1.0, "cls": 1.0} and cfg.loss.kwargs == {"saliency": "nll"}


def test_loss_terms_by_hand():
    torch.manual_seed(0)
    out = {"out": torch.randn(4, 3, 4, 4), "class_logits": torch.randn(4, 2), "saliency": torch.rand(4, 1, 4, 4)}
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.randint(0, 2, (2, 8, 8))
    mask[:, :, 6:] = 255
    pseudo = torch.randint(0, 3, (2, 4, 4))
    pseudo[0, 0] = 255
    targets = {"labels": labels, "mask": mask, "pseudo": pseudo}
    cls = F.binary_cross_entropy_with_logits(out["class_logits"][:2], labels)
    up = lambda t: F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=True)  # noqa: E731
    s, p0 = up(out["saliency"][2:])[:, 0], up(out["out"][2:].softmax(1)[:, :1])[:, 0]
    keep = mask != 255
    bce = F.binary_cross_entropy(s[keep], mask[keep].float())
    nll = -torch.where(mask == 1, s, p0)[keep].mean()  # official: nll_loss on (P_0, S), no log
    seg = F.cross_entropy(out["out"][:2], pseudo, ignore_index=255)
    for kind, sal in (("bce", bce), ("nll", nll)):
        total, parts = SSNetLoss({"cls": 1.0, "saliency": 2.0, "seg": 0.5}, saliency=kind)(out, targets)
        torch.testing.assert_close(parts["cls"], cls)
        torch.testing.assert_close(parts["saliency"], sal)
        torch.testing.assert_close(parts["seg"], seg)
        torch.testing.assert_close(total, cls + 2 * sal + 0.5 * seg)
    assert SSNetLoss().saliency == "nll"  # the official loss is the default
    assert set(SSNetLoss(None).weights.values()) == {1.0}  # loss.weights None: the SSNet default
    with pytest.raises(ContextSegError, match="not SSNet terms"):
        SSNetLoss({"out": 1.0})
    with pytest.raises(ContextSegError, match="nll"):
        SSNetLoss(saliency="l1")


def test_official_saliency_nll_on_numbers():
    # one image, three pixels: P_0 = 0.7 / 0.6 / 0.5, S = 0.2 / 0.3 / 0.4; masks salient, not salient, ignored
    p0 = torch.tensor([0.7, 0.6, 0.5]).view(1, 1, 1, 3)
    s = torch.tensor([0.2, 0.3, 0.4]).view(1, 1, 1, 3)
    mask = torch.tensor([[[1, 0, 255]]])
    loss = saliency_nll(p0, s, mask)
    assert loss.item() == pytest.approx(-(0.2 + 0.6) / 2)  # -mean(S where salient, P_0 where not)
    official = F.nll_loss(torch.cat([p0, s], 1)[..., :2], mask[..., :2].long())  # the official call, no ignored pixel
    assert loss.item() == pytest.approx(official.item())
    # through SSNetLoss: P_0 from the logits of the saliency rows (log-probabilities as logits give P back)
    logits = torch.log(torch.tensor([[0.7, 0.6, 0.5], [0.3, 0.4, 0.5]])).view(1, 2, 1, 3)
    out = {"out": torch.cat([torch.zeros_like(logits), logits]), "saliency": torch.cat([s, s]),
           "class_logits": torch.zeros(2, 1)}
    total, parts = SSNetLoss({"saliency": 1.0})(out, {"labels": torch.ones(1, 1), "mask": mask})
    assert parts["saliency"].item() == pytest.approx(-0.4) and total.item() == pytest.approx(-0.4)


class Maps:
    """A stand-in segmentation set: label maps only."""
    classes = ["road", "car", "sign", "tree"]
    num_classes = 4

    def __init__(self, maps):
        self.maps = maps

    def __len__(self):
        return len(self.maps)

    def load_label(self, i):
        return self.maps[i]

    def image_path(self, i):
        return Path(f"img{i}.png")


def test_image_labels_from_label_maps(tmp_path):
    a = np.zeros((100, 100), dtype=np.uint8)  # 10000 pixels: 0.5% = 50
    a.flat[:50] = 1  # exactly 0.5%: present
    a.flat[50:99] = 2  # 49 pixels: absent
    a[50:] = 255  # ignored pixels count in the total, never as a class
    b = np.full((10, 10), 3, dtype=np.uint8)
    ds = Maps([a, b])
    labels = derive_image_labels(ds, 0.005, progress=False)
    assert labels.tolist() == [[1, 1, 0, 0], [0, 0, 0, 1]]
    assert derive_image_labels(ds, 0.0051, progress=False).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    save_image_labels(tmp_path / "labels.json", ds, labels, 0.005)
    assert (load_image_labels(tmp_path / "labels.json", ds) == labels).all()
    other = Maps([a, b])
    other.classes = ["w", "x", "y", "z"]
    with pytest.raises(ContextSegError, match="are for classes"):
        load_image_labels(tmp_path / "labels.json", other)


def test_official_pseudo_label_rule_can_pick_an_absent_class():
    # syn_stage1.py: logits of absent classes zeroed, then softmax / arg max. channels: background, c1, c2, c3;
    # labels {c1, c3} (c2 absent)
    logits = torch.tensor([
        [-1.0, -0.5, 3.0, -2.0],  # official [-1, -.5, 0, -2]: all kept logits negative -> c2 (absent!); ours c1
        [0.5, 2.0, 5.0, -1.0],  # official [.5, 2, 0, -1] -> c1; ours c1
        [1.0, -3.0, 4.0, -3.0],  # official [1, -3, 0, -3] -> background; ours background
    ]).T.reshape(4, 1, 3)
    labels = torch.tensor([1.0, 0.0, 1.0])
    assert pseudo_label(logits, labels)[0].tolist() == [2, 1, 0]  # default: the official rule, no threshold
    assert pseudo_label(logits, labels, rule="restrict")[0].tolist() == [1, 1, 0]
    # the official P~ of pixel 0: softmax([-1, -.5, 0, -2]) = [.174, .287, .474, .064]
    p = 1 / (np.exp(-1) + np.exp(-0.5) + 1 + np.exp(-2))
    assert pseudo_label(logits, labels, min_prob=p - 1e-4)[0, 0].item() == 2
    assert pseudo_label(logits, labels, min_prob=p + 1e-4)[0, 0].item() == 255
    with pytest.raises(ContextSegError, match="official"):
        pseudo_label(logits, labels, rule="crf")


def test_restricted_pseudo_label_rule_on_hand_made_maps():
    # channels: background, c1, c2, c3; the image is labelled {c1, c3} (c2 absent). Log-probabilities as logits:
    # the restricted softmax is then P over the kept classes, renormalised
    probs = torch.tensor([
        [0.10, 0.60, 0.20, 0.10],  # restricted [.125, .75, -, .125]        -> c1
        [0.10, 0.12, 0.70, 0.08],  # restricted [.33, .40, -, .27]: unsure  -> 255 (c1 with min_prob 0)
        [0.70, 0.10, 0.10, 0.10],  # restricted [.78, .11, -, .11]          -> background
        [0.20, 0.20, 0.10, 0.50],  # restricted [.22, .22, -, .56]          -> c3
        [0.05, 0.50, 0.05, 0.40],  # restricted [.05, .53, -, .42]          -> c1
        [0.48, 0.37, 0.10, 0.05],  # restricted [.53, .41, -, .06]          -> background
    ]).T.reshape(4, 1, 6)
    logits = probs.log()
    labels = torch.tensor([1.0, 0.0, 1.0])
    assert pseudo_label(logits, labels, min_prob=0.5, rule="restrict")[0].tolist() == [1, 255, 0, 3, 1, 0]
    assert pseudo_label(logits, labels, min_prob=0.0, rule="restrict")[0].tolist() == [1, 1, 0, 3, 1, 0]
    # saliency for background: S~ = 0.9 P~_1 + 0.1 P~_3 = [.69, .39, .11, .26, .52, .38]; t = 0.3
    scores = torch.tensor([0.9, 0.5, 0.1])
    assert pseudo_label(logits, labels, scores, 0.5, bg_threshold=0.3, rule="restrict")[0].tolist() == [
        1, 255, 0, 0, 1, 255]
    # channels -> classes: CamVid-like (no background class) drops background to 255; VOC-like keeps it
    ch = np.array([[0, 1, 3, 255]])
    assert channels_to_classes(ch, ClassLayout(["a", "b", "c"]).channel_to_class).tolist() == [[255, 0, 2, 255]]
    voc = ClassLayout(["bg", "a", "b", "c"], background_class=0)
    assert voc.names == ["bg", "a", "b", "c"] and channels_to_classes(ch, voc.channel_to_class).tolist() == [[0, 1, 3, 255]]
    with pytest.raises(ContextSegError, match="C \\+ 1"):
        pseudo_label(logits, torch.ones(2))


def test_weak_training_never_reads_pixel_labels(tmp_path):
    """Same image-level labels file, true label maps vs all-255 ones: identical weights after training."""
    roots = write_synthetic_weak(tmp_path / "data", n_train=4, n_val=1, n_saliency=4, size=(32, 48))
    blank = tmp_path / "blank"
    shutil.copytree(roots["segmentation"], blank)
    for m in (blank / "train" / "masks").glob("*.png"):
        Image.fromarray(np.full_like(np.asarray(Image.open(m)), 255)).save(m)
    seg = build_dataset("folder", "train", root=roots["segmentation"])
    labels_file = tmp_path / "image_labels.json"
    save_image_labels(labels_file, seg, derive_image_labels(seg, progress=False), 0.005)
    assert derive_image_labels(build_dataset("folder", "train", root=blank), progress=False).sum() == 0
    states = []
    for name, root in (("true", roots["segmentation"]), ("blank", blank)):
        r = {**roots, "segmentation": root}
        k = kwargs(r, image_labels=labels_file).replace("val_every: 4}", "val_every: 4, val_split: null}")
        assert main(["train", CFG, k, *small(tmp_path / name, "data.val_split=", "train.checkpoint_interval=2"),
                     "--no-progress"]) == 0
        states.append(load_checkpoint(tmp_path / name / "last.pt")["model"])
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_stage1_cli_trains_and_evaluates(stage1, tmp_path, capsys):
    base, roots, out = stage1
    summary = json.loads((out / "summary.json").read_text())
    assert {"mIoU", "per_class_iou", "sal_max_f", "sal_mae", "sal_s_measure"} <= set(summary["final"])
    assert summary["final"]["sal_images"] == 1
    train_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert {"loss_cls", "loss_saliency"} <= set(train_log) and "loss_seg" not in train_log
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["classes"] == ["background", "sky", "ground", "disc", "box", "triangle", "stripes"]
    assert (out / "image_labels.json").exists()
    assert main(["eval", CFG, kwargs(roots), f"output_dir={out}", "--checkpoint", str(out / "best.pt"),
                 "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["mIoU"] == pytest.approx(summary["final"]["mIoU"])
    assert report["sal_max_f"] == pytest.approx(summary["final"]["sal_max_f"])
    capsys.readouterr()
    assert main(["train", CFG, kwargs(roots), *small(tmp_path / "x"), "model.arch=fcn", "--no-progress"]) == 2
    assert "model.arch=ssnet" in capsys.readouterr().err
    assert main(["train", "configs/synthetic_fcn.yaml", "model.arch=ssnet", *small(tmp_path / "y"), "--no-progress"]) == 2
    assert "weak_saliency" in capsys.readouterr().err
    assert main(["train", CFG, kwargs(roots), *small(tmp_path / "z"), "loss.kwargs={gamma: 2}", "--no-progress"]) == 2
    assert "saliency: nll | bce" in capsys.readouterr().err


def test_stage1_without_saliency_trains_on_image_labels_alone(tmp_path, capsys):
    """data.kwargs.saliency: null (the claim's ablation): no saliency images in the batch (B rows, not 2B), no saliency
    term or metrics; a saliency weight left on is refused with the fix."""
    roots = write_synthetic_weak(tmp_path / "data", n_train=4, n_val=1, n_saliency=4, size=(32, 48))
    seg_only = f"data.kwargs={{segmentation: {{dataset: folder, root: {roots['segmentation']}}}, saliency: null}}"
    out = tmp_path / "seg_only"
    assert unpair(torch.zeros(2, 1, 3, 8, 8), {})[0].shape == (2, 3, 8, 8)
    assert main(["train", CFG, seg_only, *small(out), "loss.weights={cls: 1.0, saliency: 0.0}", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "mIoU" in summary["final"] and not any(k.startswith("sal_") for k in summary["final"])
    train_log = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss_cls" in train_log and "loss_saliency" not in train_log
    capsys.readouterr()
    assert main(["train", CFG, seg_only, *small(tmp_path / "refused"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss.weights={cls: 1.0, saliency: 0.0}" in err[0]
    assert not (tmp_path / "refused" / "last.pt").exists()


def test_pseudo_labels_and_both_stage2_routes(stage1, tmp_path):
    base, roots, out = stage1
    plabels = tmp_path / "pseudo"
    assert main(["pseudo-labels", CFG, kwargs(roots), "--checkpoint", str(out / "best.pt"), "--out", str(plabels),
                 "--min-prob", "0", "--no-progress"]) == 0
    report = json.loads((plabels / "pseudo_labels.json").read_text())
    assert report["images"] == 4 and 0 <= report["coverage"] <= 1 and report["mIoU"] <= report["mIoU_labelled"] + 1e-9
    assert report["rule"] == "official"
    k = len(report["classes"])
    for png in sorted(plabels.glob("*.png")):  # the official rule may pick any class
        assert set(np.unique(np.asarray(Image.open(png))).tolist()) - {255} <= set(range(k))
    # our restricted rule: only the image's labelled classes
    restricted = tmp_path / "restricted"
    cfg = load_config(CFG, [kwargs(roots)])
    assert write_pseudo_labels(cfg, out / "best.pt", restricted, rule="restrict", progress=False,
                               report=False)["rule"] == "restrict"
    image_labels = json.loads((out / "image_labels.json").read_text())["images"]
    for png in sorted(restricted.glob("*.png")):
        values = set(np.unique(np.asarray(Image.open(png))).tolist()) - {255}
        assert values <= set(image_labels[png.stem])
    # stage 2, ordinary route: the pseudo_labels dataset serves the pseudo masks for train, true labels for val
    train = build_dataset("pseudo_labels", "train", root=roots["segmentation"], labels=str(plabels), source="folder")
    val = build_dataset("pseudo_labels", "val", root=roots["segmentation"], labels=str(plabels), source="folder")
    assert np.array_equal(train.raw(0)[1], np.asarray(Image.open(plabels / "00000.png")))
    assert val.masks[0].parent.name == "masks" and len(val) == 2
    with pytest.raises(ContextSegError, match="contextseg pseudo-labels"):
        build_dataset("pseudo_labels", "train", root=roots["segmentation"], labels=str(tmp_path / "none"),
                      source="folder")
    # stage 2 as the paper: SSNet with the ASPP-L head and FC classifier on pseudo labels + saliency + class BCE
    s2 = tmp_path / "stage2"
    assert main(["train", CFG, kwargs(roots, pseudo_labels=plabels), *small(s2),
                 "model.kwargs={sam_grid: 2, seg_head: aspp_l, cls_head: fc}",
                 "loss.weights={seg: 1.0, saliency: 1.0, cls: 1.0}", "loss.kwargs={saliency: nll}",
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in (s2 / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_seg", "loss_saliency", "loss_cls"} <= set(records[0])
    assert -1.0 <= records[0]["loss_saliency"] <= 0.0  # the official NLL on probabilities
    assert records[0]["step"] == 2 and records[-1]["kind"] == "val"  # two training steps, then the evaluation
    ckpt = load_checkpoint(s2 / "best.pt")
    assert ckpt["model_args"]["seg_head"] == "aspp_l" and ckpt["model_args"]["cls_head"] == "fc"


@pytest.mark.parametrize("value", [True, False])
def test_class_channels_keeps_the_models_align_corners(value):
    # the segmentation and saliency metrics resize SSNet's outputs through these wrappers with the model's own
    # setting, also when the model itself is wrapped again (DDP's .module, torch.compile's ._orig_mod)
    model = torch.nn.Conv2d(3, 3, 1)
    model.align_corners = value
    assert align_corners_of(ClassChannels(model, ClassLayout(["a", "b"]))) is value
    assert align_corners_of(SaliencyMap(model)) is value
    ddp_like = torch.nn.Module()
    ddp_like.module = model
    assert align_corners_of(ClassChannels(ddp_like, ClassLayout(["a", "b"]))) is value


@pytest.mark.real_data
def test_objects_on_background_config_on_real_camvid():
    """configs/weak/ssnet_stage1_camvid_objects_half.yaml: CamVid as the paper's setting (objects on background)."""
    if not (default_data_root() / "camvid" / "train").is_dir():
        pytest.skip(f"CamVid not found in {default_data_root()}")
    spec = WeakSpec.parse(load_config("configs/weak/ssnet_stage1_camvid_objects_half.yaml").data.kwargs)
    val = spec.segmentation_set("val")
    assert val.classes == ["background", "pole", "sign", "car", "pedestrian", "bicyclist"]
    assert spec.layout(val).channel_to_class.tolist() == [0, 1, 2, 3, 4, 5]  # channel 0 is the background class
    label = val[0][1]
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255} and (label == 0).float().mean() > 0.5
