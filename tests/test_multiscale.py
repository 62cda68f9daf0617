"""Multi-scale inference and training (contextseg.MultiScale), sliding windows, flip, FCN-8s, and the CLI options."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from contextseg import ContextSegError, MultiScale, create_model
from contextseg.cli import main
from contextseg.data.synthetic import write_synthetic_folder
from contextseg.engine.checkpoint import atomic_save
from contextseg.models.heads.fcn8s import bilinear_kernel, bilinear_upsample_2x, pick_strides
from contextseg.models.multiscale import (
    HierarchicalAttention, ScaleAttention, configure_inference, hierarchical_weights, resize_image, scale_key,
    sliding_window_inference,
)
from contextseg.registry import HEADS

K = 3


class Toy(nn.Module):
    """Conv-ReLU-classifier; ``stride`` 2 gives half-resolution logits; ``symmetric`` makes it flip-equivariant
    (kernels mirror-symmetric, odd size, symmetric padding); kernel 1 makes it pointwise."""

    def __init__(self, stride: int = 1, kernel: int = 3, symmetric: bool = False, c: int = 4):
        super().__init__()
        self.body = nn.Conv2d(3, c, kernel, stride=stride, padding=kernel // 2)
        self.cls = nn.Conv2d(c, K, 1)
        if symmetric:
            with torch.no_grad():
                self.body.weight.copy_((self.body.weight + self.body.weight.flip(-1)) / 2)
        self.num_classes, self.in_channels, self.feat_channels = K, 3, c

    def forward(self, x, return_feat=False):
        f = torch.relu(self.body(x))
        out = {"out": self.cls(f)}
        if return_feat:
            out["feat"] = f
        return out


def toy(**kw):
    torch.manual_seed(0)
    return Toy(**kw).eval()


# -- merges ----------------------------------------------------------------------------------

@pytest.mark.parametrize("merge", ["avg", "max", "attention", "hierarchical"])
def test_output_shapes_eval_and_train(merge):
    model = MultiScale(toy(stride=2), scales=(1.0, 0.5, 1.5), merge=merge).eval()
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        out = model(x)
    learned = merge in ("attention", "hierarchical")
    assert set(out) == ({"out", "scale_weights"} if learned else {"out"})
    assert out["out"].shape == (2, K, 17, 21)  # the scale-1.0 output size
    if learned:
        assert out["scale_weights"].shape == (2, 3, 17, 21)
    model.train()
    out = model(x)
    expected = {"out", "out_s0.5", "out_s1.0", "out_s1.5"} | ({"scale_weights"} if learned else set())
    assert set(out) == expected
    assert all(out[k].shape == (2, K, 17, 21) for k in ("out", "out_s0.5", "out_s1.5"))
    out["out"].sum().backward()  # the attention net gets gradients through the merged map
    if learned:
        assert all(p.grad is not None for p in model.attention.parameters() if p.requires_grad)


def test_avg_and_max_are_over_logits():
    model = toy(stride=2)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        per = [F.interpolate(model(resize_image(x, s))["out"], size=(16, 20), mode="bilinear", align_corners=True)
               for s in (0.5, 1.0, 2.0)]
        avg = MultiScale(model, (0.5, 1.0, 2.0), "avg")(x)["out"]
        mx = MultiScale(model, (0.5, 1.0, 2.0), "max")(x)["out"]
    torch.testing.assert_close(avg, sum(per) / 3)
    torch.testing.assert_close(mx, torch.maximum(torch.maximum(per[0], per[1]), per[2]))


def test_reference_size_without_scale_one_is_input_size():
    with torch.no_grad():
        out = MultiScale(toy(stride=2), (0.5, 1.5))(torch.randn(1, 3, 20, 24))
    assert out["out"].shape == (1, K, 20, 24)


def test_attention_weights_sum_to_one_at_every_pixel():
    model = MultiScale(toy(stride=2), scales=(0.5, 1.0, 2.0), merge="attention").eval()
    with torch.no_grad():
        w = model(torch.randn(2, 3, 30, 26))["scale_weights"]
    assert w.shape == (2, 3, 15, 13) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 15, 13))


def test_attention_with_equal_weights_equals_average():
    base = toy(stride=2)
    att = MultiScale(base, scales=(0.5, 1.0, 1.5), merge="attention").eval()
    with torch.no_grad():
        att.attention.score.weight.zero_()
        att.attention.score.bias.zero_()  # equal scores -> softmax 1/S everywhere
        x = torch.randn(2, 3, 28, 36)
        out = att(x)
        avg = MultiScale(base, scales=(0.5, 1.0, 1.5), merge="avg")(x)["out"]
    torch.testing.assert_close(out["scale_weights"], torch.full_like(out["scale_weights"], 1 / 3))
    torch.testing.assert_close(out["out"], avg)


def test_hierarchical_weights_unroll_by_hand():
    a1, a2 = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 0.5)
    w = hierarchical_weights([a1, a2])  # scales s1 < s2 < s3
    torch.testing.assert_close(w[0, :, 0, 0], torch.tensor([0.2, 0.8 * 0.5, 0.8 * 0.5]))


def test_hierarchical_three_scales_weights_sum_to_one_and_give_the_merge():
    torch.manual_seed(1)
    model = MultiScale(toy(stride=2), scales=(0.5, 1.0, 2.0), merge="hierarchical").train()
    x = torch.randn(2, 3, 32, 36)
    out = model(x)
    w = out["scale_weights"]
    assert w.shape == (2, 3, 16, 18) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 16, 18))
    per = [out[scale_key(s)] for s in (0.5, 1.0, 2.0)]
    torch.testing.assert_close(out["out"], sum(w[:, i:i + 1] * p for i, p in enumerate(per)))


def test_hierarchical_trained_on_two_scales_runs_on_more():
    model = MultiScale(toy(stride=2), scales=(0.5, 1.0), merge="hierarchical").eval()
    model = configure_inference(model, scales=[0.5, 1.0, 1.5, 2.0])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 24, 24))
    assert out["scale_weights"].shape == (1, 4, 12, 12)
    assert model.init_args == {}  # a toy model has no create_model arguments


def test_attention_scales_are_fixed_by_training():
    model = MultiScale(toy(), scales=(0.5, 1.0), merge="attention")
    with pytest.raises(ContextSegError, match="trained for scales"):
        configure_inference(model, scales=[0.5, 1.0, 2.0])
    with pytest.raises(ContextSegError, match="not available"):
        configure_inference(model, window=(16, 16))


def test_scale_attention_head_is_attention_to_scales():
    # Attention to Scale's attention model (its Caffe net): 3x3 conv 512 (bias), ReLU, dropout 0.5, 1x1 conv S (bias)
    head = ScaleAttention(in_channels=6, num_scales=3)
    assert [type(m) for m in head.children()] == [nn.Conv2d, nn.ReLU, nn.Dropout, nn.Conv2d]
    assert head.conv.in_channels == 3 * 6 and head.conv.out_channels == 512 and head.conv.kernel_size == (3, 3)
    assert head.conv.padding == (1, 1) and head.conv.bias is not None
    assert head.dropout.p == 0.5
    assert head.score.out_channels == 3 and head.score.kernel_size == (1, 1) and head.score.bias is not None
    assert sum(p.numel() for p in head.parameters()) == 9 * 3 * 6 * 512 + 512 + 512 * 3 + 3
    model = MultiScale(toy(), scales=(0.5, 1.0), merge="attention")
    assert isinstance(model.attention, ScaleAttention)
    assert model.attention.conv.out_channels == 512 and model.attention.dropout.p == 0.5
    assert model.spec()["attention_dropout"] == 0.5
    assert MultiScale(toy(), (0.5, 1.0), "attention", attention_dropout=0.0).attention.dropout.p == 0.0


def test_hierarchical_head_is_nvidia_make_attn_head():
    # make_attn_head with NVIDIA's defaults: 3x3-BN-ReLU, inner 3x3-BN-ReLU, no dropout, 1x1 to 1, sigmoid, no biases
    head = HierarchicalAttention(in_channels=6)
    layers = list(head.head)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                                         nn.Conv2d, nn.Sigmoid]
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(6, 256, (3, 3)), (256, 256, (3, 3)),
                                                                                (256, 1, (1, 1))]
    assert all(c.bias is None for c in convs)
    assert sum(p.numel() for p in head.parameters()) == 9 * 6 * 256 + 9 * 256 * 256 + 256 + 4 * 256
    model = MultiScale(toy(), scales=(0.5, 1.0), merge="hierarchical")
    assert isinstance(model.attention, HierarchicalAttention) and model.attention.head[0].out_channels == 256


# -- flip ------------------------------------------------------------------------------------

def test_flip_averaging_of_flip_equivariant_model_is_exact():
    model = toy(symmetric=True)
    x = torch.randn(2, 3, 17, 23)
    with torch.no_grad():
        assert torch.allclose(model(x.flip(-1))["out"].flip(-1), model(x)["out"], atol=1e-6)  # equivariant
        single = model(x)["out"]
        flipped = MultiScale(model, scales=(1.0,), flip=True).eval()(x)["out"]
        torch.testing.assert_close(flipped, single, rtol=0, atol=1e-6)
        pyramid = MultiScale(model, scales=(0.5, 1.0, 2.0)).eval()(x)["out"]
        pyramid_flip = MultiScale(model, scales=(0.5, 1.0, 2.0), flip=True).eval()(x)["out"]
        torch.testing.assert_close(pyramid_flip, pyramid, rtol=0, atol=1e-6)


def test_flip_averages_logits_of_image_and_mirror():
    model = toy(stride=2)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        expected = (model(x)["out"] + model(x.flip(-1))["out"].flip(-1)) / 2
        out = MultiScale(model, scales=(1.0,), flip=True).eval()(x)["out"]
    torch.testing.assert_close(out, expected)


# -- sliding window --------------------------------------------------------------------------

def test_sliding_window_equal_to_image_is_single_pass():
    model = toy(stride=2)
    x = torch.randn(2, 3, 24, 30)
    with torch.no_grad():
        single = F.interpolate(model(x)["out"], size=(24, 30), mode="bilinear", align_corners=True)
        windowed = sliding_window_inference(model, x, K, window=(24, 30), stride=(8, 10))
    torch.testing.assert_close(windowed, single)


def test_sliding_window_overlap_and_padding_of_a_pointwise_model():
    model = toy(kernel=1)  # pointwise: every window sees the same per-pixel logits
    x = torch.randn(1, 3, 23, 37)
    with torch.no_grad():
        single = model(x)["out"]
        overlapping = sliding_window_inference(model, x, K, window=(10, 16), stride=(7, 5))
        padded = sliding_window_inference(model, x, K, window=(32, 40))  # larger than the image
    torch.testing.assert_close(overlapping, single)
    torch.testing.assert_close(padded, single)
    with pytest.raises(ContextSegError, match="stride"):
        sliding_window_inference(model, x, K, window=(8, 8), stride=(9, 8))


def test_window_combined_with_pyramid_and_flip():
    model = toy(kernel=1)
    x = torch.randn(1, 3, 20, 28)
    with torch.no_grad():
        plain = MultiScale(model, scales=(0.5, 1.0), flip=True).eval()(x)["out"]
        windowed = MultiScale(model, scales=(0.5, 1.0), flip=True, window=(8, 8), stride=(6, 6)).eval()(x)["out"]
        hier = MultiScale(model, scales=(0.5, 1.0), merge="hierarchical", window=(8, 8), stride=(6, 6)).eval()(x)
    assert windowed.shape == (1, K, 20, 28) and hier["scale_weights"].shape == (1, 2, 20, 28)
    torch.testing.assert_close(windowed, plain)  # pointwise model: per scale, windows == one pass


# -- with contextseg models ------------------------------------------------------------------

def test_ocr_model_training_outputs_and_rebuild():
    torch.manual_seed(0)
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=K, mid_channels=32, key_channels=16,
                         multiscale={"scales": [0.5, 1.0], "merge": "attention", "attention_channels": 16})
    assert isinstance(model, MultiScale) and model.num_classes == K
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert set(out) == {"out", "aux", "out_s0.5", "out_s1.0", "scale_weights"}
    assert all(v.shape[-2:] == (8, 8) for v in out.values())
    rebuilt = create_model(**model.init_args)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ContextSegError, match="unknown multiscale option"):
        create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=K, multiscale={"scale": [1.0]})


def test_every_training_output_of_the_model_is_merged():
    torch.manual_seed(0)
    model = create_model("danet", backbone="hrnetv2_w18_small_v1", num_classes=K, channels=16,
                         multiscale={"scales": [0.5, 1.0], "merge": "hierarchical", "attention_channels": 8})
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert set(out) == {"out", "pam", "cam", "out_s0.5", "out_s1.0", "scale_weights"}
    assert all(v.shape[-2:] == (8, 8) for v in out.values())


def test_segmentor_feat_is_the_classifier_input():
    torch.manual_seed(0)
    model = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=K).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), return_feat=True)
        assert set(out) == {"out", "feat"} and out["feat"].shape == (1, model.feat_channels, 8, 8)
        torch.testing.assert_close(model.head.last_layer[3](out["feat"]), out["out"])


@pytest.mark.parametrize("arch", HEADS.names())
def test_every_head_exposes_feat_for_attention_over_scales(arch):
    torch.manual_seed(0)
    backbone = "vgg16" if arch == "pfa" else "hrnetv2_w18_small_v1"  # PFA reads the five VGG-16 taps
    model = create_model(arch, backbone=backbone, num_classes=K).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), return_feat=True)
    assert out["feat"].shape[:2] == (1, model.feat_channels) and out["feat"].shape[-2:] == out["out"].shape[-2:]


def test_learned_merge_needs_a_trained_wrapper():
    with pytest.raises(ContextSegError, match="trained with the MultiScale wrapper"):
        configure_inference(toy(), merge="hierarchical")
    assert configure_inference(toy()).__class__ is Toy  # no option: unchanged
    hier = MultiScale(toy(), (0.5, 1.0), "hierarchical")
    avg = configure_inference(hier, merge="avg", scales=[0.75, 1.0])
    assert isinstance(avg, MultiScale) and avg.merge == "avg" and avg.model is hier.model
    with pytest.raises(ContextSegError, match="attention net cannot"):
        configure_inference(hier, merge="attention")


# -- FCN-8s ----------------------------------------------------------------------------------

def test_bilinear_kernel_values():
    # the classic get_upsampling_weight: factor = ceil(k/2), center = factor - 1 (odd) or factor - 0.5 (even)
    p4 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
    torch.testing.assert_close(bilinear_kernel(4), torch.outer(p4, p4))
    p3 = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(bilinear_kernel(3), torch.outer(p3, p3))
    p16 = torch.tensor([(2 * i + 1) / 16 for i in range(8)], dtype=torch.float64)
    p16 = torch.cat([p16, p16.flip(0)])
    torch.testing.assert_close(bilinear_kernel(16), torch.outer(p16, p16))


def test_bilinear_transposed_conv_equals_interpolate_inside():
    up = bilinear_upsample_2x(2)
    assert up.weight[0, 1].abs().sum() == 0  # channels upsampled independently
    x = torch.randn(1, 2, 5, 7)
    with torch.no_grad():
        y = up(x)
        ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        assert y.shape == ref.shape == (1, 2, 10, 14)
        torch.testing.assert_close(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
        c = up(torch.full((1, 2, 4, 4), 2.0))[0, 0]  # border: zero padding instead of edge clamping
    assert c[3, 3] == 2.0 and c[0, 3] == 1.5 and c[3, 0] == 1.5 and c[0, 0] == 2.0 * 0.75 * 0.75


def test_fcn8s_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = create_model("fcn8s", backbone="hrnetv2_w18_small_v1", num_classes=5)
    c8, c16, c32 = 32, 64, 128  # HRNetV2-W18-Small-v1 widths at strides 8, 16, 32
    assert model.head.in_index == [1, 2, 3]
    assert sum(p.numel() for p in model.head.parameters()) == 5 * (c8 + c16 + c32 + 3) + 2 * 16 * 5 * 5
    with torch.no_grad():
        for h, w in [(64, 64), (65, 50), (33, 47)]:
            out = model.eval()(torch.randn(1, 3, h, w))["out"]
            assert out.shape == (1, 5, -(-h // 8), -(-w // 8))
            assert out.abs().max() == 0  # zero-initialised score layers
    assert "fcn8s" in HEADS
    assert pick_strides([4, 8, 16, 32]) == [1, 2, 3]
    with pytest.raises(ContextSegError, match="output_stride=32"):
        pick_strides([4, 8, 8, 8])


def test_fcn8s_skip_fusion():
    torch.manual_seed(0)
    head = HEADS.get("fcn8s")(create_model("fcn", backbone="hrnetv2_w18_small_v1").backbone, 2)
    feats = [torch.randn(1, c, 16 // s, 16 // s) for c, s in zip([16, 32, 64, 128], [1, 2, 4, 8])]  # a 64 x 64 image
    with torch.no_grad():
        for conv in (head.score_fr, head.score_pool4, head.score_pool3):
            conv.bias.fill_(1.0)  # constant scores 1 at every stride
        out = head(feats)["out"][0, 0]
    # away from the border: 1 + up(1 + up(1)) = 3; the transposed convs' zero padding lowers the frame
    assert out.shape == (8, 8) and out[3:5, 3:5].eq(3).all() and out[0, 0] < 3


# -- CLI -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_synthetic_folder(root, n=4, size=(40, 48), split="train")
    write_synthetic_folder(root, n=2, size=(40, 48), seed=1, split="val")
    return root


def common(data_root, out):
    return [f"output_dir={out}", "model.arch=fcn", "model.backbone=hrnetv2_w18_small_v1", "data.dataset=folder",
            f"data.root={data_root}", "data.crop_size=[40,48]", "data.batch_size=2", "data.num_workers=0",
            "train.iters=2", "train.eval_interval=2", "train.amp=none", "train.channels_last=false"]


def test_cli_train_hierarchical_then_eval_and_predict(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*common(data_root, out), "model.kwargs={multiscale: {scales: [0.5, 1.0], merge: hierarchical}}",
            "loss.weights={out: 1.0, out_s0.5: 0.4, out_s1.0: 0.4}"]
    assert main(["train", "configs/synthetic_ocr.yaml", *args, "--no-progress"]) == 0
    ckpt = str(out / "last.pt")
    assert main(["eval", "configs/synthetic_ocr.yaml", *args, "--checkpoint", ckpt, "--out", str(out / "e.json"),
                 "--scales", "0.5", "1.0", "1.5", "--flip", "--no-progress"]) == 0
    report = json.loads((out / "e.json").read_text())
    assert report["inference"] == {"scales": [0.5, 1.0, 1.5], "merge": "hierarchical", "flip": True,
                                   "window": None, "stride": None}
    pred = tmp_path / "pred"
    assert main(["predict", str(data_root / "val" / "images"), "--checkpoint", ckpt, "--out", str(pred),
                 "--scales", "0.5", "1.0", "2.0", "--save-attention", "--no-progress"]) == 0
    assert np.array(Image.open(pred / "00000.png")).shape == (40, 48)
    for s in ("0.5", "1.0", "2.0"):
        heat = np.array(Image.open(pred / f"00000_attn_s{s}.png"))
        assert heat.shape == (40, 48, 3) and heat.dtype == np.uint8
    assert main(["eval", "configs/synthetic_ocr.yaml", *args, "--checkpoint", ckpt, "--merge", "avg",
                 "--window", "32", "32", "--stride", "16", "16", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "configs/synthetic_ocr.yaml", *args, "--checkpoint", ckpt, "--merge", "attention",
                 "--no-progress"]) == 2
    assert "trained with merge='hierarchical'" in capsys.readouterr().err


def test_cli_plain_checkpoint_with_scales_and_flip(data_root, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=6)
    ckpt = tmp_path / "plain.pt"
    atomic_save({"model": model.state_dict(), "model_args": model.init_args}, ckpt)
    args = [*common(data_root, tmp_path / "o"), "--checkpoint", str(ckpt), "--no-progress"]
    assert main(["eval", "configs/synthetic_ocr.yaml", *args, "--scales", "0.5", "1.0", "--flip",
                 "--merge", "max"]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", str(data_root / "val" / "images"), "--checkpoint", str(ckpt), "--out", str(pred),
                 "--flip", "--window", "32", "32", "--stride", "24", "24", "--no-progress"]) == 0
    assert np.array(Image.open(pred / "00001.png")).shape == (40, 48)
    capsys.readouterr()
    assert main(["eval", "configs/synthetic_ocr.yaml", *args, "--merge", "attention"]) == 2
    assert "trained with the MultiScale wrapper" in capsys.readouterr().err
    assert main(["predict", str(data_root / "val" / "images"), "--checkpoint", str(ckpt), "--out", str(pred),
                 "--save-attention", "--no-progress"]) == 2
    assert "--save-attention needs" in capsys.readouterr().err
