"""Models: parameter counts against the official code, output sizes, in_channels, rebuild, backward, BN folding."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from contextseg.errors import ContextSegError
from contextseg.models import create_model, fuse_conv_bn, list_backbones, list_models
from contextseg.models.backbones.hrnet import HighResolutionModule
from contextseg.models.heads.ocr import ObjectAttentionBlock, SpatialGather

SMALL = ["hrnetv2_w18_small_v1", "hrnetv2_w18_small_v2"]

# Counted from the official HRNet-Semantic-Segmentation code (seg_hrnet.py / seg_hrnet_ocr.py), 19 classes.
PARAMS = {
    ("fcn", "hrnetv2_w18_small_v1"): 1_540_819,
    ("fcn", "hrnetv2_w18_small_v2"): 3_939_579,
    ("fcn", "hrnetv2_w18"): 9_641_119,
    ("fcn", "hrnetv2_w32"): 29_546_515,
    ("fcn", "hrnetv2_w48"): 65_859_379,
    ("ocr", "hrnetv2_w18_small_v1"): 3_842_278,
    ("ocr", "hrnetv2_w18_small_v2"): 6_379_278,
    ("ocr", "hrnetv2_w18"): 12_080_818,
    ("ocr", "hrnetv2_w32"): 32_953_894,
    ("ocr", "hrnetv2_w48"): 70_372_678,
}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch,backbone", list(PARAMS))
def test_param_count_matches_official(arch, backbone):
    assert n_params(create_model(arch, backbone=backbone, num_classes=19)) == PARAMS[(arch, backbone)]


def test_ocr_w48_part_counts():
    head = create_model("ocr", backbone="hrnetv2_w48").head
    assert n_params(head.conv3x3_ocr) == 3_319_296
    assert n_params(head.ocr_distri_head) == 1_184_256
    assert n_params(head.cls_head) == 9_747
    assert n_params(head.aux_head) == 534_259


def test_official_state_dict_names():
    keys = set(create_model("ocr", backbone="hrnetv2_w18_small_v2").state_dict())
    for k in [
        "backbone.conv1.weight",
        "backbone.layer1.0.downsample.1.running_var",
        "backbone.transition1.1.0.0.weight",
        "backbone.stage2.0.branches.1.1.conv2.weight",
        "backbone.stage4.1.fuse_layers.3.0.2.0.weight",
        "backbone.stage4.1.fuse_layers.0.3.1.weight",
        "head.conv3x3_ocr.0.bias",
        "head.ocr_distri_head.object_context_block.f_pixel.1.0.weight",
        "head.ocr_distri_head.conv_bn_dropout.1.0.running_mean",
        "head.cls_head.weight",
        "head.aux_head.3.bias",
    ]:
        assert k in keys, k


def test_registries_list_names():
    assert {"fcn", "ocr"} <= set(list_models())
    assert set(list_backbones()) >= {
        "hrnetv2_w18_small_v1", "hrnetv2_w18_small_v2", "hrnetv2_w18", "hrnetv2_w32", "hrnetv2_w48"
    }


@pytest.mark.parametrize("backbone", SMALL)
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (120, 160)])
def test_backbone_outputs(backbone, size):
    model = create_model("fcn", backbone=backbone)
    body = model.backbone
    assert body.strides == [4, 8, 16, 32]
    feats = body(torch.randn(1, 3, *size))
    assert [f.shape[1] for f in feats] == body.out_channels
    for f, s in zip(feats, body.strides):
        assert tuple(f.shape[-2:]) == (math.ceil(size[0] / s), math.ceil(size[1] / s))


@pytest.mark.parametrize("arch", ["fcn", "ocr"])
@pytest.mark.parametrize("backbone", SMALL)
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (120, 160)])
def test_output_shapes_train_and_eval(arch, backbone, size):
    torch.manual_seed(0)
    model = create_model(arch, backbone=backbone, num_classes=5)
    x = torch.randn(2, 3, *size)
    expected = (2, 5, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    out = model.train()(x)
    assert set(out) == ({"out", "aux"} if arch == "ocr" else {"out"})
    assert all(tuple(v.shape) == expected for v in out.values())
    with torch.no_grad():
        out = model.eval()(x)
    assert set(out) == {"out"} and tuple(out["out"].shape) == expected
    assert torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(in_channels):
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=3, in_channels=in_channels).eval()
    assert model.in_channels == in_channels and model.backbone.conv1.in_channels == in_channels
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 40, 56))["out"].shape == (1, 3, 10, 14)
    with pytest.raises(ContextSegError, match=f"in_channels={in_channels + 1}"):
        model(torch.randn(1, in_channels + 1, 40, 56))


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ContextSegError, match="fcn.*ocr"):
        create_model("unet")
    with pytest.raises(ContextSegError, match="hrnetv2_w18_small_v2.*hrnetv2_w48"):
        create_model("ocr", backbone="hrnet_w99")
    with pytest.raises(ContextSegError, match="num_classes"):
        create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=0)
    with pytest.raises(ContextSegError, match="in_channels"):
        create_model("fcn", backbone="hrnetv2_w18_small_v1", in_channels=0)
    with pytest.raises(ContextSegError, match="mid_channels"):
        create_model("ocr", backbone="hrnetv2_w18_small_v1", mid_chanels=128)
    model = create_model("fcn", backbone="hrnetv2_w18_small_v1")
    with pytest.raises(ContextSegError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_rebuild_from_init_args():
    model = create_model(
        "ocr", backbone="hrnetv2_w18_small_v1", num_classes=7, in_channels=4, mid_channels=128, key_channels=64
    )
    assert model.init_args == dict(
        arch="ocr", backbone="hrnetv2_w18_small_v1", num_classes=7, in_channels=4, align_corners=True,
        mid_channels=128, key_channels=64
    )
    assert model.num_classes == 7
    again = create_model(**model.init_args)
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 4, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)["out"], model.eval()(x)["out"])


@pytest.mark.parametrize("arch", ["fcn", "ocr"])
def test_backward_reaches_stem(arch):
    torch.manual_seed(0)
    model = create_model(arch, backbone="hrnetv2_w18_small_v1", num_classes=4).train()
    x = torch.randn(2, 3, 48, 64)
    y = torch.randint(0, 4, (2, 48, 64))
    out = model(x)
    loss = sum(F.cross_entropy(F.interpolate(v, size=y.shape[-2:], mode="bilinear"), y) for v in out.values())
    loss.backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ["fcn", "ocr"])
def test_fuse_conv_bn_keeps_outputs(arch):
    torch.manual_seed(0)
    model = create_model(arch, backbone="hrnetv2_w18_small_v2", num_classes=6)
    with pytest.raises(ContextSegError, match="eval"):
        fuse_conv_bn(copy.deepcopy(model))
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 61, 83)
    with torch.no_grad():
        ref = model(x)["out"]
        fused = fuse_conv_bn(copy.deepcopy(model))
        got = fused(x)["out"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_bf16_channels_last_matches_fp32():
    torch.manual_seed(0)
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=5).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)["out"]
        fast = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x.contiguous(memory_format=torch.channels_last))["out"].float()
    assert got.shape == ref.shape
    cos = F.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def test_spatial_gather_reference():
    torch.manual_seed(0)
    feats, probs = torch.randn(2, 6, 5, 7), torch.randn(2, 3, 5, 7)
    got = SpatialGather()(feats, probs)
    w = torch.softmax(probs.flatten(2), dim=2)  # (B, K, HW): softmax over pixels
    ref = torch.einsum("bki,bci->bck", w, feats.flatten(2)).unsqueeze(3)
    torch.testing.assert_close(got, ref)
    got_cl = SpatialGather()(feats.contiguous(memory_format=torch.channels_last), probs)
    torch.testing.assert_close(got_cl, ref)


def test_object_attention_reference():
    torch.manual_seed(0)
    block = ObjectAttentionBlock(in_channels=8, key_channels=4).eval()
    x, proxy = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 3, 1)
    with torch.no_grad():
        got = block(x, proxy)
        q = block.f_pixel(x).flatten(2)  # (B, Ck, HW)
        k = block.f_object(proxy).flatten(2)  # (B, Ck, K)
        v = block.f_down(proxy).flatten(2)  # (B, Ck, K)
        w = torch.softmax(torch.einsum("bci,bck->bik", q, k) / 2.0, dim=2)  # sqrt(4) = 2
        ctx = torch.einsum("bik,bck->bci", w, v).reshape(2, 4, 5, 6)
        ref = block.f_up(ctx)
    torch.testing.assert_close(got, ref)


def test_fusion_formula_two_branches():
    torch.manual_seed(0)
    mod = HighResolutionModule([4, 8], [1, 1]).eval()
    _randomize_bn(mod)
    x0, x1 = torch.randn(1, 4, 9, 11), torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        y0, y1 = mod([x0, x1])
        b0, b1 = mod.branches[0](x0), mod.branches[1](x1)
        up = F.interpolate(mod.fuse_layers[0][1](b1), size=(9, 11), mode="bilinear", align_corners=True)
        torch.testing.assert_close(y0, F.relu(b0 + up))
        torch.testing.assert_close(y1, F.relu(mod.fuse_layers[1][0](b0) + b1))
