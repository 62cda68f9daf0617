"""Context heads (PSP, ASPP, ASPP-L, LargeFOV, non-local), the dilated ResNet, SE and the feature adapter:
parameter counts against formulas written from the layer shapes, output sizes on ResNet-50 (OS 8 / 16) and HRNet,
routing of backbone options in create_model, rebuild from init_args, loading ResNet weights from a local file."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contextseg.errors import ContextSegError
from contextseg.models import create_model, fuse_conv_bn, list_backbones, list_models
from contextseg.models.attention import NonLocal2d, SEBlock
from contextseg.models.backbones.resnet import ResNet
from contextseg.models.heads import ASPPHead, ASPPLHead, FeatureAdapter, LargeFOVHead, NonLocalHead, PSPHead
from contextseg.registry import BACKBONES, HEADS

ARCHS = ["psp", "aspp", "aspp_l", "largefov", "nonlocal"]
RESNET_WIDTHS = [256, 512, 1024, 2048]
HR_SMALL = "hrnetv2_w18_small_v1"  # widths 16, 32, 64, 128 -> 240 concatenated
SIZE = 65  # odd on purpose: ResNet maps 33 -> 17 -> 9 -> 5, HRNet 17, 9, 5, 3


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv(k, c_in, c_out, bias=False):
    return k * k * c_in * c_out + (c_out if bias else 0)


def cbr(k, c_in, c_out):  # conv (no bias) + BN
    return conv(k, c_in, c_out) + 2 * c_out


# ---------------------------------------------------------------- names and the ResNet backbone


def test_names_registered():
    assert set(ARCHS) <= set(list_models())
    assert {"resnet50", "resnet101"} <= set(list_backbones())


def test_resnet_param_counts():
    # torchvision resnet50 / resnet101 (25,557,032 / 44,549,160) minus the fc layer 2048 * 1000 + 1000
    assert n_params(BACKBONES.get("resnet50")()) == 25_557_032 - 2_049_000 == 23_508_032
    assert n_params(BACKBONES.get("resnet101")()) == 44_549_160 - 2_049_000 == 42_500_160


def test_resnet_deep_stem_and_layout():
    body = ResNet((3, 4, 6, 3), deep_stem=True)
    stem_7x7 = conv(7, 3, 64) + 2 * 64
    stem_deep = cbr(3, 3, 32) + cbr(3, 32, 32) + cbr(3, 32, 64)
    assert n_params(body) == 23_508_032 - stem_7x7 + stem_deep
    keys = set(body.state_dict())
    assert {"stem.0.weight", "stem.4.running_var", "stem.6.weight", "layer1.0.downsample.0.weight"} <= keys
    assert "conv1.weight" not in keys
    plain = set(BACKBONES.get("resnet50")().state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer3.5.conv2.weight", "layer4.2.bn3.bias"} <= plain


@pytest.mark.parametrize(
    "os_,strides,dilations",
    [(8, [4, 8, 8, 8], [1, 1, 2, 4]), (16, [4, 8, 16, 16], [1, 1, 1, 2]), (32, [4, 8, 16, 32], [1, 1, 1, 1])],
)
def test_resnet_strides_and_dilations(os_, strides, dilations):
    body = ResNet((1, 1, 2, 2), output_stride=os_)
    assert body.strides == strides and body.dilations == dilations and body.out_channels == RESNET_WIDTHS
    # the first block of a dilated layer keeps the previous dilation (torchvision replace_stride_with_dilation)
    first4 = body.layer4[0].conv2
    assert first4.dilation[0] == max(1, dilations[3] // 2) and first4.stride[0] == (2 if os_ == 32 else 1)


def test_resnet_bad_options():
    with pytest.raises(ContextSegError, match="output_stride must be 8, 16 or 32"):
        create_model("psp", backbone="resnet50", output_stride=4)
    with pytest.raises(ContextSegError, match="in_channels=4"):
        ResNet((1, 1, 1, 1), in_channels=3)(torch.zeros(1, 4, 16, 16))


def test_resnet_load_pretrained(tmp_path):
    torch.manual_seed(0)
    src = ResNet((1, 1, 1, 1))
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    # an mmcv-style file: {"state_dict": ...}, "backbone." prefixes, a classifier, no num_batches_tracked
    state = {f"backbone.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["backbone.fc.weight"], state["backbone.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "r.pth"
    torch.save({"state_dict": state}, path)
    dst = ResNet((1, 1, 1, 1))
    dst.load_pretrained(path)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(dst.state_dict()[k], v)
    with pytest.raises(ContextSegError, match="deep_stem=False"):
        ResNet((1, 1, 1, 1), deep_stem=True).load_pretrained(path)
    with pytest.raises(ContextSegError, match="no weights file"):
        dst.load_pretrained(tmp_path / "missing.pth")


@pytest.mark.parametrize("deep_stem", [False, True])
def test_resnet_fuse_conv_bn(deep_stem):
    torch.manual_seed(0)
    body = ResNet((1, 1, 1, 1), output_stride=16, deep_stem=deep_stem)
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    body.eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        ref = body(x)[-1]
        fused = fuse_conv_bn(copy.deepcopy(body))
        got = fused(x)[-1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


# ---------------------------------------------------------------- parameter counts from the layer shapes


def test_psp_count():
    c, k, p, m = 2048, 11, 512, 512
    expected = 4 * cbr(1, c, p) + cbr(3, c + 4 * p, m) + conv(1, m, k, bias=True)
    assert n_params(PSPHead(RESNET_WIDTHS, k)) == expected == 23_079_435  # ~ OCR paper's PPM 23.1M
    c, p = 240, 60  # HRNet-W18-Small-v1 concat, in/4 channels per bin; set widths
    assert n_params(PSPHead([16, 32, 64, 128], k, in_index=[0, 1, 2, 3])) == (
        4 * cbr(1, c, p) + cbr(3, c + 4 * p, m) + conv(1, m, k, bias=True)
    )
    assert n_params(PSPHead(RESNET_WIDTHS, k, pool_channels=64, channels=128, bins=(1, 2))) == (
        2 * cbr(1, 2048, 64) + cbr(3, 2048 + 2 * 64, 128) + conv(1, 128, k, bias=True)
    )


def test_aspp_count():
    c, k, a = 2048, 11, 256
    expected = cbr(1, c, a) + 3 * cbr(3, c, a) + cbr(1, c, a) + cbr(1, 5 * a, a) + conv(1, a, k, bias=True)
    assert n_params(ASPPHead(RESNET_WIDTHS, k)) == expected == 15_537_931  # ~ OCR paper's ASPP 15.5M


def test_aspp_l_count():
    c, k = 2048, 11
    assert n_params(ASPPLHead(RESNET_WIDTHS, k)) == 4 * conv(3, c, k, bias=True)


def test_largefov_count():
    c, k, f = 2048, 11, 1024
    expected = conv(3, c, f, bias=True) + conv(1, f, f, bias=True) + conv(1, f, k, bias=True)
    assert n_params(LargeFOVHead(RESNET_WIDTHS, k)) == expected


@pytest.mark.parametrize("concat_input", [True, False])
def test_nonlocal_count(concat_input):
    c, k, m, i = 2048, 11, 512, 256
    block = 3 * conv(1, m, i, bias=True) + conv(1, i, m) + 2 * m
    expected = cbr(3, c, m) + block + cbr(3, m, m) + conv(1, m, k, bias=True)
    if concat_input:
        expected += cbr(3, c + m, m)
    head = NonLocalHead(RESNET_WIDTHS, k, concat_input=concat_input)
    assert n_params(head.nl_block) == block
    assert n_params(head) == expected


# ---------------------------------------------------------------- shapes on ResNet-50 OS 8 / 16 and HRNet


@pytest.fixture(scope="module")
def features():
    """One forward per backbone (no grad), shared by the head tests: name -> (backbone, feats)."""
    torch.manual_seed(0)
    out = {}
    for key, name, kw in [("r50_os8", "resnet50", {"output_stride": 8}), ("r50_os16", "resnet50", {"output_stride": 16}),
                          ("hrnet", HR_SMALL, {})]:
        body = BACKBONES.get(name)(**kw).eval()
        with torch.no_grad():
            out[key] = (body, body(torch.randn(2, 3, SIZE, SIZE)))
    return out


def test_backbone_feature_sizes(features):
    for key, os_ in [("r50_os8", 8), ("r50_os16", 16)]:
        body, feats = features[key]
        assert [f.shape[1] for f in feats] == RESNET_WIDTHS
        assert [tuple(f.shape[-2:]) for f in feats] == [(math.ceil(SIZE / s),) * 2 for s in body.strides]
        assert feats[-1].shape[-1] == math.ceil(SIZE / os_)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key,stride", [("r50_os8", 8), ("r50_os16", 16), ("hrnet", 4)])
def test_head_output_shapes(features, arch, key, stride):
    torch.manual_seed(0)
    body, feats = features[key]
    head = HEADS.get(arch)(body, 5)
    expected = (2, 5, math.ceil(SIZE / stride), math.ceil(SIZE / stride))
    out = head.train()(feats)
    assert set(out) == {"out"} and tuple(out["out"].shape) == expected
    with torch.no_grad():
        out = head.eval()(feats)["out"]
    assert tuple(out.shape) == expected and torch.isfinite(out).all()


def test_atrous_rates_follow_the_stride(features):
    os8, os16, hr = (features[k][0] for k in ("r50_os8", "r50_os16", "hrnet"))
    assert HEADS.get("aspp")(os16, 3).rates == (6, 12, 18)
    assert HEADS.get("aspp")(os8, 3).rates == (12, 24, 36)
    assert HEADS.get("aspp")(hr, 3).rates == (24, 48, 72)
    assert HEADS.get("aspp")(os8, 3, rates=[6, 12, 18]).rates == (6, 12, 18)
    assert HEADS.get("aspp_l")(os8, 3).rates == (6, 12, 18, 24)
    assert HEADS.get("aspp_l")(os16, 3).rates == (3, 6, 9, 12)
    assert [b.dilation[0] for b in HEADS.get("aspp_l")(os8, 3).branches] == [6, 12, 18, 24]
    assert HEADS.get("largefov")(os8, 3).fc6[0].dilation == (12, 12)
    assert HEADS.get("largefov")(os16, 3, dilation=12).fc6[0].dilation == (12, 12)


def test_feature_adapter(features):
    body, feats = features["hrnet"]
    assert PSPHead(body.out_channels, 3, in_index=1)(feats)["out"].shape == (2, 3, 9, 9)
    adapter = FeatureAdapter(body.out_channels, [1, -1])
    assert adapter.in_index == [1, 3] and adapter.out_channels == 32 + 128
    assert adapter(feats).shape == (2, 160, 9, 9)
    r50, rfeats = features["r50_os8"]
    assert FeatureAdapter(r50.out_channels, -1)(rfeats) is rfeats[-1]
    with pytest.raises(ContextSegError, match="in_index=4"):
        HEADS.get("psp")(body, 3, in_index=4)
    with pytest.raises(ContextSegError, match="in_index=4"):
        HEADS.get("aspp")(body, 3, in_index=4)
    with pytest.raises(ContextSegError, match=r"in_channels=\[256, 512, 1024, 2048\]"):
        HEADS.get("aspp_l")(body, 3)(rfeats)


def test_pooling_heads_refuse_training_batch_of_one(features):
    body, feats = features["hrnet"]
    for arch in ("psp", "aspp"):
        head = HEADS.get(arch)(body, 3).train()
        with pytest.raises(ContextSegError, match="batch_size >= 2"):
            head([f[:1] for f in feats])
        with torch.no_grad():
            assert head.eval()([f[:1] for f in feats])["out"].shape == (1, 3, 17, 17)


# ---------------------------------------------------------------- blocks


def test_se_block_count_and_rescale():
    c, r = 64, 16
    se = SEBlock(c, r)
    assert n_params(se) == 2 * c * c // r + c + c // r == 580
    torch.manual_seed(0)
    x = torch.randn(2, c, 5, 7)
    y = se(x)
    s = torch.sigmoid(se.fc2(F.relu(se.fc1(x.mean(dim=(2, 3), keepdim=True)))))
    torch.testing.assert_close(y, x * s)
    ratio = y / x  # one factor in (0, 1) per (image, channel), the same at every pixel
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))


def test_hrnet_se_option():
    f = lambda c: 2 * c * max(1, c // 16) + max(1, c // 16) + c  # noqa: E731  SE params for width c
    # w18-small-v1: 1 Bottleneck (128 out); stages 2-4 have one module of 2 BasicBlocks per branch
    extra = f(128) + 2 * (f(16) + f(32)) + 2 * (f(16) + f(32) + f(64)) + 2 * (f(16) + f(32) + f(64) + f(128))
    plain = create_model("fcn", backbone=HR_SMALL, num_classes=19)
    with_se = create_model("fcn", backbone=HR_SMALL, num_classes=19, se=True)
    assert n_params(plain) == 1_540_819 and n_params(with_se) == 1_540_819 + extra
    assert set(plain.state_dict()) < set(with_se.state_dict())
    with torch.no_grad():
        assert with_se.eval()(torch.randn(1, 3, 33, 33))["out"].shape == (1, 19, 9, 9)


def test_nonlocal_block_reference():
    torch.manual_seed(0)
    block = NonLocal2d(8, reduction=2).eval()
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # BN scale starts at 0: identity at init
        block.conv_out[1].weight.fill_(1.0)
        got = block(x)
        t, p, g = block.theta(x).flatten(2), block.phi(x).flatten(2), block.g(x).flatten(2)  # (B, 4, HW)
        w = torch.softmax(torch.einsum("bci,bcj->bij", t, p) / 2.0, dim=-1)  # sqrt(4) = 2
        y = torch.einsum("bij,bcj->bci", w, g).reshape(2, 4, 3, 5)
        torch.testing.assert_close(got, x + block.conv_out(y))


# ---------------------------------------------------------------- create_model routing and rebuild


def test_backbone_options_are_routed():
    with pytest.raises(ContextSegError, match="accepts: in_index.*backbone 'resnet50' accepts: output_stride, deep_stem"):
        create_model("psp", backbone="resnet50", output_strid=16)
    with pytest.raises(ContextSegError, match="backbone 'hrnetv2_w18_small_v1' accepts: se"):
        create_model("aspp", backbone=HR_SMALL, output_stride=16)


@pytest.mark.parametrize(
    "arch,kw",
    [("psp", {"channels": 64}), ("aspp", {"channels": 32, "rates": [2, 4, 6]}), ("aspp_l", {"in_index": 1}),
     ("largefov", {"channels": 64}), ("nonlocal", {"channels": 32, "concat_input": False})],
)
def test_rebuild_from_init_args_hrnet(arch, kw):
    torch.manual_seed(0)
    model = create_model(arch, backbone=HR_SMALL, num_classes=4, **kw)
    assert model.init_args == dict(arch=arch, backbone=HR_SMALL, num_classes=4, in_channels=3, align_corners=True,
                                   **kw)
    again = create_model(**model.init_args)
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)["out"], model.eval()(x)["out"])


def test_rebuild_from_init_args_resnet():
    torch.manual_seed(0)
    model = create_model("aspp", backbone="resnet50", num_classes=3, in_channels=1, output_stride=16, deep_stem=True)
    assert model.init_args == dict(
        arch="aspp", backbone="resnet50", num_classes=3, in_channels=1, align_corners=True, output_stride=16,
        deep_stem=True
    )
    assert model.backbone.strides == [4, 8, 16, 16] and model.head.rates == (6, 12, 18)
    again = create_model(**model.init_args)
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 1, 33, 33)
    with torch.no_grad():
        ref = model.eval()(x)["out"]
        torch.testing.assert_close(again.eval()(x)["out"], ref)
    assert ref.shape == (1, 3, 3, 3)


# ---------------------------------------------------------------- auxiliary head, HRNetV1 heads


def test_aux_head_count_and_psp_default():
    from contextseg.models.heads.aux import AuxFCNHead
    k = 11
    assert n_params(AuxFCNHead(RESNET_WIDTHS, k)) == cbr(3, 1024, 256) + conv(1, 256, k, bias=True)
    psp = create_model("psp", backbone="resnet50", num_classes=k)  # PSPNet Sec. 3.4: deep supervision on c4
    assert psp.aux_head is not None and psp.aux_head.inputs.in_index == [2]
    assert create_model("psp", backbone="resnet50", num_classes=k, aux=False).aux_head is None
    assert create_model("aspp", backbone="resnet50", num_classes=k).aux_head is None  # DeepLab v3 had none
    assert create_model("psp", backbone=HR_SMALL, num_classes=k).aux_head is None  # no c4 on HRNet


@pytest.mark.parametrize("os_", [8, 16])
def test_aux_output_train_only(os_):
    torch.manual_seed(0)
    model = create_model("aspp", backbone="resnet50", num_classes=4, output_stride=os_, aux=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model.train()(x)
    side = math.ceil(SIZE / os_)
    assert set(out) == {"out", "aux"}
    assert tuple(out["aux"].shape) == tuple(out["out"].shape) == (2, 4, side, side)
    out["aux"].sum().backward()  # the aux loss reaches the backbone's c4 but not the main head
    assert model.backbone.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.head.parameters())
    with torch.no_grad():
        assert set(model.eval()(x)) == {"out"}
    rebuilt = create_model(**model.init_args)
    assert rebuilt.init_args["aux"] is True and rebuilt.state_dict().keys() == model.state_dict().keys()


def test_aux_options_and_errors():
    model = create_model("fcn", backbone=HR_SMALL, num_classes=3, aux={"in_index": [0, 1, 2, 3], "channels": 64})
    out = model.train()(torch.randn(2, 3, SIZE, SIZE))
    assert out["aux"].shape == out["out"].shape == (2, 3, 17, 17)
    with pytest.raises(ContextSegError, match="no default map for an auxiliary head.*aux=\\{in_index: 2\\}"):
        create_model("fcn", backbone=HR_SMALL, num_classes=3, aux=True)
    with pytest.raises(ContextSegError, match="'ocr' already has an auxiliary output"):
        create_model("ocr", backbone="resnet50", num_classes=3, aux=True)
    with pytest.raises(ContextSegError, match="unknown aux option\\(s\\) \\['width'\\]"):
        create_model("psp", backbone="resnet50", num_classes=3, aux={"width": 3})
    with pytest.raises(ContextSegError, match="aux must be true, false or a mapping"):
        create_model("psp", backbone="resnet50", num_classes=3, aux="yes")


@pytest.mark.parametrize("arch", ["fcn", "ocr"])
def test_hrnet_v1_heads_use_the_top_branch(arch):
    # HRNetV1 (Wang et al. 2019, Fig. 4(a)): the head sees only the highest-resolution branch (16 ch on W18-Small-v1)
    k, c = 5, 16
    v1 = create_model(arch, backbone=HR_SMALL, num_classes=k, in_index=0)
    v2 = create_model(arch, backbone=HR_SMALL, num_classes=k)
    if arch == "fcn":
        assert n_params(v1.head) == conv(1, c, c, bias=True) + 2 * c + conv(1, c, k, bias=True)
    else:  # only the layers fed by u change width: conv3x3_ocr (c -> 512) and the aux head (c -> c -> K)
        diff = lambda w: conv(3, w, 512, bias=True) + conv(1, w, w, bias=True) + 2 * w + conv(1, w, k, bias=True)  # noqa
        assert n_params(v2.head) - n_params(v1.head) == diff(240) - diff(c)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert v1.eval()(x)["out"].shape == v2.eval()(x)["out"].shape == (2, k, 17, 17)


# ---------------------------------------------------------------- DANet


def test_danet_count_and_outputs(features):
    from contextseg.models.heads import DANetHead
    c, k, m = 2048, 11, 512
    pam = 2 * conv(1, m, m // 8, bias=True) + conv(1, m, m, bias=True) + 1
    expected = 2 * cbr(3, c, m) + pam + 1 + 2 * cbr(3, m, m) + 3 * conv(1, m, k, bias=True)
    assert n_params(DANetHead(RESNET_WIDTHS, k)) == expected  # 23.93M without classifiers: the OCR paper's 1110 GFLOPs
    body, feats = features["r50_os8"]
    head = HEADS.get("danet")(body, 5)
    out = head.train()(feats)
    assert set(out) == {"out", "pam", "cam"} and all(v.shape == (2, 5, 9, 9) for v in out.values())
    with torch.no_grad():
        assert set(head.eval()(feats)) == {"out"}
    model = create_model("danet", backbone=HR_SMALL, num_classes=3)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, SIZE, SIZE))["out"].shape == (1, 3, 17, 17)
        assert model.eval()(torch.randn(1, 3, SIZE, SIZE), return_feat=True)["feat"].shape == (1, 512, 17, 17)


def test_dual_attention_blocks():
    from contextseg.models.attention import ChannelAttention, PositionAttention
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 6)
    pam, cam = PositionAttention(16), ChannelAttention()
    assert torch.equal(pam(x), x) and torch.equal(cam(x), x)  # gamma starts at 0: the identity
    with torch.no_grad():
        pam.gamma.fill_(0.5)
        cam.gamma.fill_(0.5)
    q = pam.query_conv(x).flatten(2).transpose(1, 2)
    s = torch.softmax(q @ pam.key_conv(x).flatten(2), dim=-1)  # (B, N, N), rows sum to one
    v = pam.value_conv(x).flatten(2)
    torch.testing.assert_close(pam(x), 0.5 * (v @ s.transpose(1, 2)).view_as(x) + x)
    a = x.flatten(2)
    e = a @ a.transpose(1, 2)
    torch.testing.assert_close(cam(x), 0.5 * (torch.softmax(-e, dim=-1) @ a).view_as(x) + x)  # max(e) - e == -e + c
    with pytest.raises(ContextSegError, match="channels >= 8"):
        PositionAttention(4)


def test_atrous_conv_weight_gradient_is_right_under_bf16_channels_last():
    """torch 2.13's AVX-512 CPU kernels give NaN / garbage weight gradients for dilated convolutions under bf16
    autocast with channels_last and in_channels % 16 != 0 (benchmarks/atrous_bf16_bug.py); AtrousConv2d (every
    dilated conv of the heads) must give the fp32 gradient up to bf16 rounding, with nn.Conv2d's state dict."""
    from contextseg.models.heads.common import AtrousConv2d

    torch.manual_seed(0)
    conv = AtrousConv2d(270, 12, 3, padding=6, dilation=6).to(memory_format=torch.channels_last)
    ref = nn.Conv2d(270, 12, 3, padding=6, dilation=6)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(4, 270, 32, 40).contiguous(memory_format=torch.channels_last)
    ref(x.contiguous()).square().mean().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().mean().backward()
    err = (conv.weight.grad.float() - ref.weight.grad).abs().max() / ref.weight.grad.abs().max()
    assert torch.isfinite(conv.weight.grad).all() and err < 0.05
    head = create_model("aspp", backbone="hrnetv2_w18_small_v2", num_classes=11).head
    assert any(isinstance(m, AtrousConv2d) and m.dilation != (1, 1) for m in head.modules())
