"""Segmentation Transformer head ("segtr"): the OCR-equivalent setting computes OCR exactly with mapped weights,
parameter counts against the documented formulas, outputs on HRNet and a dilated ResNet, gradients, options, errors."""
import pytest
import torch

from contextseg.errors import ContextSegError
from contextseg.models import create_model
from contextseg.models.heads import OCRHead, SegTransformerHead, segtr_from_ocr
from contextseg.models.heads.segtr import OCR_SETTING
from contextseg.registry import BACKBONES

HR_SMALL = "hrnetv2_w18_small_v1"  # widths 16, 32, 64, 128 -> 240 concatenated
WIDTHS = [16, 32, 64, 128]
SIZE = 65  # HRNet maps 17, 9, 5, 3
K = 5


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def randomize(module):
    """Random BatchNorm affine parameters and running statistics (the rest is already random)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module


def ocr_count(c, m, ck, k):
    """OCRHead: conv3x3_ocr, aux head, phi, psi, delta, rho, g, classifier."""
    return (9 * c * m + 3 * m + (c * c + 3 * c) + (c * k + k) + 2 * (m * ck + ck * ck + 4 * ck) + (m * ck + 2 * ck)
            + (ck * m + 2 * m) + (2 * m * m + 2 * m) + (m * k + k))


def segtr_count(c, m, ck, k, dk, query_tokens=True, value_proj=True, dec_sa=True, enc_sa=False, f=None, norm=True):
    """The formula of SegTransformerHead's docstring (f: FFN width or None; norm: 2M per norm or none)."""
    n = 2 * m if norm else 0
    dq = m if query_tokens else dk
    ffn = (2 * m * f + f + m + n) if f else 0
    sa = 4 * m * m + 4 * m + n
    decoder = (k * dq + k + c * dk + 3 * dk + (m * dk + dk if query_tokens else 0)
               + (2 * (m * m + m) if value_proj else 0) + (sa if dec_sa else 0) + n + ffn)
    encoder = 2 * (m * ck + ck * ck + 4 * ck) + m * ck + 2 * ck + ck * m + 2 * m + (sa if enc_sa else 0) + n + ffn
    return 9 * c * m + 3 * m + decoder + encoder + 2 * m * m + 2 * m + m * k + k


@pytest.fixture(scope="module")
def hr_feats():
    torch.manual_seed(0)
    body = BACKBONES.get(HR_SMALL)().eval()
    with torch.no_grad():
        return body(torch.randn(2, 3, SIZE, SIZE))


@pytest.mark.parametrize("in_index", [None, 0])
def test_mapped_head_computes_ocr(hr_feats, in_index):
    torch.manual_seed(1)
    ocr = randomize(OCRHead(WIDTHS, K, mid_channels=64, key_channels=32, in_index=in_index)).eval()
    head = segtr_from_ocr(ocr)
    assert isinstance(head, SegTransformerHead) and not head.training
    with torch.no_grad():
        ref, got = ocr(hr_feats), head(hr_feats)
    assert got["out"].shape == got["aux"].shape == (2, K, 17, 17)
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5 * ref[key].abs().max().item())
    # the default widths too (512 / 256)
    ocr = randomize(OCRHead(WIDTHS, K)).eval()
    with torch.no_grad():
        ref, got = ocr(hr_feats), segtr_from_ocr(ocr)(hr_feats)
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5 * ref[key].abs().max().item())


def test_mapped_head_computes_ocr_in_training_mode(hr_feats):
    # batch statistics in every BatchNorm (also over the K region vectors) and no dropout
    torch.manual_seed(2)
    ocr = randomize(OCRHead(WIDTHS, K, mid_channels=64, key_channels=32, dropout=0.0)).train()
    head = segtr_from_ocr(ocr)
    assert head.training
    ref, got = ocr(hr_feats), head(hr_feats)
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5 * ref[key].abs().max().item())


def test_query_bias_only_shifts_aux(hr_feats):
    torch.manual_seed(3)
    head = segtr_from_ocr(randomize(OCRHead(WIDTHS, K, mid_channels=64, key_channels=32)).eval())
    with torch.no_grad():
        before = head(hr_feats)
        head.decoder.query_bias.add_(torch.arange(K, dtype=torch.float32))
        after = head(hr_feats)
    torch.testing.assert_close(after["out"], before["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after["aux"] - before["aux"], torch.arange(K, dtype=torch.float32)[None, :, None, None]
                               .expand_as(after["aux"]), rtol=1e-5, atol=1e-5)


def test_ocr_setting_parameter_count():
    c, m, ck = 240, 512, 256
    ocr = create_model("ocr", backbone=HR_SMALL, num_classes=K).head
    assert n_params(ocr) == ocr_count(c, m, ck, K)
    mapped = segtr_from_ocr(ocr)
    formula = segtr_count(c, m, ck, K, dk=c, query_tokens=False, value_proj=False, dec_sa=False, norm=False)
    assert n_params(mapped) == n_params(ocr) == formula  # the documented difference is 0
    built = create_model("segtr", backbone=HR_SMALL, num_classes=K, decoder_key_channels=c, **OCR_SETTING).head
    assert n_params(built) == formula
    assert set(built.state_dict()) == set(mapped.state_dict())


@pytest.mark.parametrize("options,expected", [
    ({}, dict(f=512)),
    ({"norm": "batch", "decoder_self_attention": "after", "encoder_self_attention": True, "ffn_channels": 128},
     dict(f=128, enc_sa=True)),
    ({"ffn": False, "norm": None, "value_proj": False, "decoder_self_attention": False},
     dict(value_proj=False, dec_sa=False, norm=False)),
    ({"residual": False, "decoder_self_attention": "after", "decoder_key_channels": 64},
     dict(query_tokens=False, f=512, dk=64)),
])
def test_parameter_formula(options, expected):
    head = SegTransformerHead(WIDTHS, K, **options)
    kw = dict(dk=256, query_tokens=True, value_proj=True, dec_sa=True, enc_sa=False, f=None, norm=True)
    kw.update(expected)
    assert n_params(head) == segtr_count(240, 512, 256, K, **kw)


def test_create_model_default_on_hrnet():
    torch.manual_seed(0)
    model = create_model("segtr", backbone=HR_SMALL, num_classes=K)
    head = model.head
    assert head.settings["num_heads"] == 8 and head.settings["decoder_self_attention"] == "after"
    assert n_params(head) == segtr_count(240, 512, 256, K, dk=256, f=512) == 5_122_058
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and out["out"].shape == out["aux"].shape == (2, K, 17, 17)  # stride 4
    with torch.no_grad():
        model.eval()
        assert set(model(x)) == {"out"} and model(x)["out"].shape == (2, K, 17, 17)
        assert model(x, return_aux=True)["aux"].shape == (2, K, 17, 17)
        feat = model(x, return_feat=True)["feat"]
    assert feat.shape == (2, 512, 17, 17)
    rebuilt = create_model(**model.init_args)
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_create_model_on_dilated_resnet():
    torch.manual_seed(0)
    model = create_model("segtr", backbone="resnet50", num_classes=K, mid_channels=64, key_channels=32)
    assert model.head.inputs.in_index == [3] and not model.head.inputs.concat  # c5, in_index -1
    out = model.train()(torch.randn(2, 3, SIZE, SIZE))
    assert out["out"].shape == out["aux"].shape == (2, K, 9, 9)  # output stride 8


def test_gradients_flow(hr_feats):
    torch.manual_seed(0)
    head = SegTransformerHead(WIDTHS, K, mid_channels=64, key_channels=32, decoder_self_attention="after",
                              encoder_self_attention=True).train()
    out = head([f.clone() for f in hr_feats])
    labels = torch.randint(0, K, (2, 17, 17))
    loss = torch.nn.functional.cross_entropy(out["out"], labels) + 0.4 * torch.nn.functional.cross_entropy(
        out["aux"], labels)
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in head.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_multi_head_shapes(hr_feats):
    torch.manual_seed(0)
    for heads in (1, 2, 8):
        head = SegTransformerHead(WIDTHS, K, mid_channels=64, key_channels=32, num_heads=heads).eval()
        with torch.no_grad():
            out = head(hr_feats)
        assert out["out"].shape == out["aux"].shape == (2, K, 17, 17)
        assert head.decoder.key_proj[0].out_channels == 32 and head.decoder.queries.shape == (K, 64)


def test_errors():
    with pytest.raises(ContextSegError, match="mid_channels=100 is not divisible by num_heads=8"):
        SegTransformerHead(WIDTHS, K, mid_channels=100)
    with pytest.raises(ContextSegError, match="decoder_key_channels=30 is not divisible by num_heads=8"):
        create_model("segtr", backbone=HR_SMALL, num_classes=K, decoder_key_channels=30)
    with pytest.raises(ContextSegError, match="num_heads must be an integer >= 1"):
        SegTransformerHead(WIDTHS, K, num_heads=0)
    with pytest.raises(ContextSegError, match="norm must be 'layer', 'batch' or None"):
        SegTransformerHead(WIDTHS, K, norm="group")
    with pytest.raises(ContextSegError, match="decoder_self_attention must be"):
        SegTransformerHead(WIDTHS, K, decoder_self_attention="middle")
    with pytest.raises(ContextSegError, match="needs an OCRHead"):
        segtr_from_ocr(SegTransformerHead(WIDTHS, K))


def test_flops_count_and_leaves_parameters_trainable():
    from contextseg.engine.bench import gflops_per_image

    model = create_model("segtr", backbone="hrnetv2_w18_small_v1", num_classes=3, mid_channels=32, key_channels=16,
                         num_heads=2).eval()
    assert gflops_per_image(model, (32, 48)) > 0
    assert all(p.requires_grad for p in model.parameters())
