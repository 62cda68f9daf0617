"""The VGG-16 backbone and the Pyramid Feature Attention saliency head (Zhao & Wu 2019): parameter counts against
torchvision's VGG-16 and formulas from the official Keras layer shapes, output sizes for odd inputs, the attention
blocks, loading a torchvision-style VGG-16 file."""
import pytest
import torch

from contextseg import ContextSegError, create_model, load_official
from contextseg.models.attention import SpatialAttention
from contextseg.models.heads import CPFE, PFAHead
from contextseg.registry import BACKBONES


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def conv(k, c_in, c_out, bias=True):
    return k * c_in * c_out + (c_out if bias else 0)  # k = number of kernel taps


def test_vgg16_matches_torchvision_features():
    body = BACKBONES.get("vgg16")()
    assert n_params(body) == 14_714_688  # torchvision vgg16().features (138,357,544 minus the classifier)
    keys = set(body.state_dict())
    assert {"features.0.weight", "features.28.bias"} <= keys and len(keys) == 26
    with torch.no_grad():
        taps = body(torch.randn(1, 3, 61, 83))
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 61, 83), (128, 31, 42), (256, 16, 21), (512, 8, 11), (512, 4, 6)]


def test_vgg16_bn_matches_torchvision_layout():
    body = BACKBONES.get("vgg16_bn")()
    assert n_params(body) == 14_714_688 + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # 14,723,136: + BN affine
    keys = set(body.state_dict())
    assert {"features.1.running_mean", "features.40.weight", "features.41.num_batches_tracked"} <= keys
    with torch.no_grad():
        taps = body.eval()(torch.randn(1, 3, 61, 83))
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 61, 83), (128, 31, 42), (256, 16, 21), (512, 8, 11), (512, 4, 6)]
    assert all((t >= 0).all() for t in taps)  # taps are after the ReLUs
    assert n_params(create_model("pfa", backbone="vgg16_bn", num_classes=1)) == 14_723_136 + 1_470_311


def test_pfa_head_count_from_the_official_layout():
    w, m = 32, 64
    cpfe = lambda c: 28 * c * w + 8 * w  # noqa: E731  1x1 + three 3x3 atrous, no bias; BN over 4w
    spatial = 2 * (conv(9, m, m // 2) + m + conv(9, m // 2, 1) + 2)
    expected = (conv(9, 64, m) + 2 * m + conv(9, 128, m) + 2 * m  # C1_conv, C2_conv (+ BN)
                + cpfe(256) + 2 * cpfe(512)
                + conv(1, 384, 96) + conv(1, 96, 384)  # channel attention: Dense(C/4) relu, Dense(C) sigmoid
                + conv(1, 384, m) + 2 * m  # C345_conv
                + spatial + conv(9, 2 * m, m) + 2 * m + conv(9, 2 * m, 1))  # SA, C12_conv, the final 3x3
    assert n_params(CPFE(512)) == cpfe(512)
    assert n_params(SpatialAttention(m)) == spatial
    assert n_params(PFAHead([64, 128, 256, 512, 512])) == expected == 1_470_311


@pytest.mark.parametrize("size", [(64, 64), (61, 83)])
def test_pfa_output_at_input_resolution(size):
    torch.manual_seed(0)
    model = create_model("pfa", backbone="vgg16", num_classes=1)
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 1, *size)
    out["out"].mean().backward()
    assert model.backbone.features[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        feat = model.eval()(x, return_feat=True)["feat"]
    assert feat.shape == (2, 128, *size)  # concat[low, high] before the final conv


def test_spatial_attention_is_a_map_in_0_1():
    torch.manual_seed(0)
    sa = SpatialAttention(8).eval()
    a = sa(torch.randn(2, 8, 13, 17))
    assert a.shape == (2, 1, 13, 17) and (a > 0).all() and (a < 1).all()
    with pytest.raises(ContextSegError, match="odd kernel_size"):
        SpatialAttention(8, kernel_size=4)
    with pytest.raises(ContextSegError, match="five VGG-16 taps"):
        create_model("pfa", backbone="resnet50", num_classes=1)


def test_torchvision_vgg16_file_loads(tmp_path):
    torch.manual_seed(0)
    src = BACKBONES.get("vgg16")()
    state = dict(src.state_dict())
    state.update({"classifier.0.weight": torch.zeros(4096, 25088), "classifier.6.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    model = load_official(tmp_path / "vgg16-397923af.pth", "pfa", "vgg16", num_classes=1)
    assert model.loaded_parts == "backbone"
    assert torch.equal(model.backbone.features[28].weight, src.features[28].weight)


def test_vgg_width_multiplier_keeps_the_taps_with_fewer_parameters():
    half = create_model("pfa", backbone="vgg16_bn", num_classes=1, width_mult=0.5)
    assert sum(p.numel() for p in half.backbone.parameters()) == 3_684_384
    assert half.backbone.out_channels == [32, 64, 128, 256, 256]
    assert half(torch.randn(1, 3, 40, 56))["out"].shape == (1, 1, 40, 56)
    assert create_model("pfa", backbone="vgg16_bn", num_classes=1).backbone.out_channels == [64, 128, 256, 512, 512]
    with pytest.raises(ContextSegError, match="width_mult"):
        create_model("pfa", backbone="vgg16_bn", num_classes=1, width_mult=0)


def test_pfa_attention_ablations_drop_exactly_their_module():
    full = create_model("pfa", backbone="vgg16_bn", num_classes=1)
    no_ca = create_model("pfa", backbone="vgg16_bn", num_classes=1, channel_attention=False)
    no_sa = create_model("pfa", backbone="vgg16_bn", num_classes=1, spatial_attention=False)
    count = lambda m: sum(p.numel() for p in m.head.parameters())  # noqa: E731
    ca = sum(p.numel() for p in full.head.channel_attention.parameters())
    sa = sum(p.numel() for p in full.head.spatial_attention.parameters())
    assert (count(full) - count(no_ca), count(full) - count(no_sa)) == (ca, sa)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 40, 40)
    no_sa.load_state_dict({k: v for k, v in full.state_dict().items() if "spatial_attention" not in k})
    full.eval(), no_sa.eval()
    head = full.head
    with torch.no_grad():  # without SA the low-level branch is not reweighted: the same as SA returning ones
        head.spatial_attention.forward = lambda h: torch.ones_like(h[:, :1])
        assert torch.allclose(full(x)["out"], no_sa(x)["out"], atol=1e-6)
