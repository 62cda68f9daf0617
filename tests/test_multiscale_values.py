"""Exact values of contextseg.models.multiscale: window starts, scaled sizes, merges, resizes, messages, options."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catalogue import error_message
from contextseg import ContextSegError, MultiScale
from contextseg.models.multiscale import (
    HierarchicalAttention, ScaleAttention, _starts, configure_inference, hierarchical_weights, inference_spec,
    resize_image, sliding_window_inference,
)
from contextseg.models.resize import set_align_corners

K = 2


def up(t, size, ac):
    return F.interpolate(t, size=size, mode="bilinear", align_corners=ac)


class Pool(nn.Module):
    """Parameter-free model: "out" = first K channels average-pooled by ``stride``, "feat" = the input pooled by
    ``feat_stride``, "aux" = 10 - out; records (input size, return_feat) of every call."""

    def __init__(self, stride=1, feat_stride=None, aux=False, **attrs):
        super().__init__()
        self.stride, self.feat_stride, self.aux = stride, feat_stride or stride, aux
        self.num_classes, self.in_channels, self.feat_channels = K, 3, 3
        self.calls = []
        for name, value in attrs.items():
            setattr(self, name, value)

    def forward(self, x, return_feat=False):
        self.calls.append((tuple(x.shape[-2:]), return_feat))
        out = {"out": F.avg_pool2d(x[:, :K], self.stride)}
        if self.aux:
            out["aux"] = 10 - out["out"]
        if return_feat:
            out["feat"] = F.avg_pool2d(x, self.feat_stride)
        return out


class Bare(nn.Module):
    """No num_classes / in_channels / feat_channels, and no return_feat argument."""

    def forward(self, x):
        return {"out": x[:, :K] * 2}


def coords(h, w):
    """(1, 3, h, w): channel 0 = row index, channel 1 = column index, channel 2 = 0."""
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    return torch.stack([rows, cols, torch.zeros(h, w)])[None]



# -- sliding windows -------------------------------------------------------------------------

def test_window_starts_and_overlap_average_by_hand():
    assert _starts(10, 6, 4) == [0, 4] and _starts(16, 8, 5) == [0, 5, 8] and _starts(17, 8, 4) == [0, 4, 8, 9]
    assert _starts(8, 8, 3) == [0] and _starts(5, 8, 3) == [0]
    seen = []

    def code(crop):  # the window's offset, read from the coordinate image, as a constant map 100 y + x
        y, x = int(crop[0, 0, 0, 0]), int(crop[0, 1, 0, 0])
        seen.append((y, x, *crop.shape[-2:]))
        return torch.full((1, 1, 6, 8), 100.0 * y + x)

    out = sliding_window_inference(code, coords(10, 16), 1, window=(6, 8), stride=(4, 5))
    starts = [(y, x) for y in (0, 4) for x in (0, 5, 8)]
    assert seen == [(y, x, 6, 8) for y, x in starts]
    expected = torch.zeros(1, 1, 10, 16)
    for r in range(10):
        for c in range(16):
            codes = [100 * y + x for y, x in starts if y <= r < y + 6 and x <= c < x + 8]
            expected[0, 0, r, c] = sum(codes) / len(codes)
    assert torch.equal(out, expected)


def test_window_of_ints_stride_one_and_padding_of_one_side():
    x = torch.arange(36, dtype=torch.float32).view(1, 3, 3, 4)
    seen = []

    def double(crop):
        seen.append(tuple(crop.shape[-2:]))
        return crop[:, :K] * 2

    assert torch.equal(sliding_window_inference(double, x, K, window=2, stride=1), x[:, :K] * 2)
    assert seen == [(2, 2)] * 6  # rows 0, 1 x columns 0, 1, 2
    seen.clear()
    assert torch.equal(sliding_window_inference(double, x, K, window=(5, 2)), x[:, :K] * 2)  # only the height padded
    assert seen == [(5, 2)] * 2


def test_sliding_window_messages():
    x = torch.zeros(1, 3, 4, 5)
    f = Bare()
    msg = "{} must be two positive integers (height, width), got {}"
    assert error_message(sliding_window_inference, f, x, K, (0, 4)) == msg.format("window", "(0, 4)")
    assert error_message(sliding_window_inference, f, x, K, (1, 2, 3)) == msg.format("window", "(1, 2, 3)")
    assert error_message(sliding_window_inference, f, x, K, (4, 4), (2, 2.0)) == msg.format(
        "stride", "(2, 2.0)")
    assert error_message(sliding_window_inference, lambda c: torch.zeros(1, 2, 4, 5), x, 3, (4, 5)) == \
        "sliding window: the model returned 2 channels, expected num_classes=3"


def test_sliding_window_resize_uses_the_models_align_corners():
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    half = Pool(stride=2, align_corners=False)  # 2x2 logits for a 4x4 window
    out = sliding_window_inference(lambda c: half(c)["out"], x, 1, (4, 4))  # a plain function: True
    torch.testing.assert_close(out, up(F.avg_pool2d(x, 2), (4, 4), True))
    out = sliding_window_inference(half, x, 1, (4, 4))
    torch.testing.assert_close(out, up(F.avg_pool2d(x, 2), (4, 4), False))
    assert not torch.allclose(out, up(F.avg_pool2d(x, 2), (4, 4), True))


def test_sliding_window_logits_are_float32_whatever_the_default_dtype():
    x = coords(5, 6)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = sliding_window_inference(lambda c: c[:, :K], x, K, (4, 4), (2, 2))
    finally:
        torch.set_default_dtype(old)
    assert out.dtype == torch.float32 and torch.equal(out, x[:, :K])


# -- image resize, weights, spec -------------------------------------------------------------

def test_resize_image_sizes_and_half_pixel_values():
    row = torch.arange(4.0).view(1, 1, 1, 4)
    assert torch.equal(resize_image(row, 0.5), torch.tensor([[[[0.5, 2.5]]]]))  # 1 row stays 1 (round(0.5) = 1)
    assert torch.equal(resize_image(row.view(1, 1, 4, 1), 0.5), torch.tensor([[[[0.5], [2.5]]]]))
    assert torch.equal(resize_image(torch.tensor([[[[0.0, 1.0]]]]), 2.0), torch.tensor([[[[0, 0.25, 0.75, 1]] * 2]]))
    assert resize_image(row, 1.0) is row


def test_hierarchical_weights_needs_an_alpha():
    assert error_message(hierarchical_weights, [], exc=ValueError) == \
        "hierarchical_weights needs at least one alpha map"


def test_scale_attention_keeps_num_scales():
    assert ScaleAttention(4, 3, channels=8).num_scales == 3


def test_hierarchical_head_by_formula():
    torch.manual_seed(0)
    head = HierarchicalAttention(2, channels=3).eval()
    feat = torch.randn(1, 2, 5, 6)
    c1, b1, _, c2, b2, _, c3, _ = head.head

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.relu(bn(F.conv2d(feat, c1.weight, padding=1), b1))
    h = F.relu(bn(F.conv2d(h, c2.weight, padding=1), b2))
    with torch.no_grad():
        torch.testing.assert_close(head(feat), torch.sigmoid(F.conv2d(h, c3.weight)))


def test_inference_spec_of_a_plain_model():
    assert inference_spec(Bare()) == {"scales": [1.0], "merge": None, "flip": False, "window": None, "stride": None}


# -- MultiScale construction -----------------------------------------------------------------

def test_multiscale_constructor_messages():
    assert error_message(MultiScale, Pool(), merge="median") == \
        "unknown multi-scale merge 'median'; use one of avg, max, attention, hierarchical"
    assert error_message(MultiScale, MultiScale(Pool())) == \
        "the model is already a MultiScale wrapper; wrap its .model instead"
    assert error_message(MultiScale, Bare(), merge="hierarchical") == (
        "merge='hierarchical' needs the model's features: the model must accept return_feat=True and have a "
        "feat_channels attribute (contextseg models do), or pass feat_channels=...")
    for bad, shown in ((5, "5"), ((True, 0.5), "(True, 0.5)")):  # a bool is not the scale 1.0
        assert error_message(MultiScale, Pool(), bad) == \
            f"scales must be a list of positive numbers, e.g. [0.5, 1.0, 1.5], got {shown}"
    for bad in ([], (0, 1.0), (-1.0, 1.0), (1.0, 1.0), (0.5, math.inf)):
        assert error_message(MultiScale, Pool(), bad) == \
            f"scales must be distinct positive numbers, e.g. [0.5, 1.0, 1.5], got {bad!r}"


def test_set_window_messages():
    msg = "{} must be two positive integers (height, width), got {}"
    assert error_message(MultiScale, Pool(), stride=(4, 4)) == \
        "a sliding-window stride was given without a window; give the window too"
    assert error_message(MultiScale, Pool(), (1.0,), "attention", window=(8, 8)) == (
        "sliding windows are not available with merge='attention' (its attention net needs every scale's features "
        "of the whole image); use no window, or merge 'hierarchical', 'avg' or 'max'")
    assert error_message(MultiScale, Pool(), window=(0, 8)) == msg.format("window", "(0, 8)")
    assert error_message(MultiScale, Pool(), window=(8, 8), stride=(0, 4)) == msg.format("stride", "(0, 4)")
    assert error_message(MultiScale, Pool(), window=(8, 8), stride=(9, 4)) == \
        "stride (9, 4) is larger than window (8, 8) and would skip pixels; use a stride <= the window"
    assert error_message(MultiScale, Pool(), window=(8, 16), stride=(12, 4)).startswith("stride (12, 4)")


def test_window_stride_spec_repr_and_attributes():
    ms = MultiScale(Pool(), window=(8, 8))
    assert ms.window == ms.stride == (8, 8) and ms.attention is None
    ms = MultiScale(Pool(init_args={"arch": "pool"}), (1.0, 0.5), "hierarchical", flip=True, window=(8, 8),
                    stride=(4, 6), attention_channels=4)
    spec = {"scales": [0.5, 1.0], "merge": "hierarchical", "flip": True, "window": [8, 8], "stride": [4, 6],
            "attention_channels": 4, "attention_dropout": 0.5}
    assert ms.spec() == spec and ms.init_args == {"arch": "pool", "multiscale": spec}
    assert ms.extra_repr() == "scales=[0.5, 1.0], merge='hierarchical', flip=True, window=(8, 8), stride=(4, 6)"
    assert ms.attention.head[0].out_channels == 4 and ms.num_classes == K and ms.in_channels == 3
    ms.set_scales([2.0, 0.5, 1.0])
    assert ms.init_args == {"arch": "pool", "multiscale": {**spec, "scales": [0.5, 1.0, 2.0]}}
    bare = MultiScale(Bare())
    assert bare.num_classes is None and bare.in_channels == 3 and bare.align_corners is True
    assert MultiScale(Pool(in_channels=1)).in_channels == 1
    assert MultiScale(Pool(align_corners=False)).align_corners is False


# -- MultiScale forward ----------------------------------------------------------------------

def test_windows_only_in_eval_with_the_given_stride():
    x = coords(16, 16)
    model = Pool()
    ms = MultiScale(model, (1.0,), window=(8, 8), stride=(4, 4)).eval()
    assert torch.equal(ms(x)["out"], x[:, :K])
    assert model.calls == [((8, 8), False)] * 9  # starts 0, 4, 8 in both directions
    model.calls.clear()
    assert torch.equal(ms.train()(x)["out"], x[:, :K])
    assert model.calls == [((16, 16), False)]
    bare = MultiScale(Bare(), (1.0,), window=(8, 8)).eval()
    assert error_message(bare, x) == \
        "sliding windows need the model's num_classes attribute (contextseg models have it)"


def test_features_only_where_a_merge_needs_them():
    x = coords(8, 8)
    model = Pool()
    MultiScale(model, (0.5, 1.0), "hierarchical", attention_channels=4).eval()(x)
    assert model.calls == [((4, 4), True), ((8, 8), False)]  # the highest scale's alpha is never used
    model.calls.clear()
    MultiScale(model, (0.5, 1.0, 2.0), "hierarchical", attention_channels=4, window=(4, 4), stride=(2, 2)).eval()(x)
    assert model.calls == [((4, 4), True)] * 10 + [((4, 4), False)] * 49  # 1, 3 x 3 and 7 x 7 windows
    assert torch.equal(MultiScale(Bare(), (1.0,), "max").eval()(x)["out"], x[:, :K] * 2)  # no return_feat


def test_single_scale_hierarchical_weight_is_one():
    x = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    out = MultiScale(Pool(), (1.0,), "hierarchical", attention_channels=4).eval()(x)
    assert torch.equal(out["scale_weights"], torch.ones(3, 1, 5, 7)) and torch.equal(out["out"], x[:, :K])


def test_training_extra_outputs_single_scale_and_resized_with_align_corners():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = MultiScale(Pool(aux=True), (1.0,)).train()(x)
    assert set(out) == {"out", "aux", "out_s1.0"} and torch.equal(out["aux"], 10 - x[:, :K])
    out = MultiScale(Pool(stride=2, aux=True), (0.5, 1.0)).train()(x)
    aux05 = 10 - F.avg_pool2d(resize_image(x, 0.5)[:, :K], 2)
    torch.testing.assert_close(out["aux"], (up(aux05, (4, 4), True) + 10 - F.avg_pool2d(x[:, :K], 2)) / 2)


def test_avg_resizes_with_the_models_align_corners():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = MultiScale(Pool(stride=2, align_corners=False), (0.5, 1.0)).eval()(x)["out"]
    p05 = up(F.avg_pool2d(resize_image(x, 0.5)[:, :K], 2), (4, 4), False)
    torch.testing.assert_close(out, (p05 + F.avg_pool2d(x[:, :K], 2)) / 2)


@pytest.mark.parametrize("merge", ["attention", "hierarchical"])
def test_features_and_alphas_resized_with_align_corners(merge):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    ms = MultiScale(Pool(stride=2), (0.5, 1.0), merge, attention_channels=4).eval()
    img05 = resize_image(x, 0.5)
    p05, p1 = up(F.avg_pool2d(img05[:, :K], 2), (4, 4), True), F.avg_pool2d(x[:, :K], 2)
    with torch.no_grad():
        out = ms(x)
        if merge == "attention":
            w = torch.softmax(ms.attention([up(F.avg_pool2d(img05, 2), (4, 4), True), F.avg_pool2d(x, 2)]), 1)
        else:
            a = up(ms.attention(F.avg_pool2d(img05, 2)), (4, 4), True)
            w = torch.cat([a, 1 - a], 1)
    torch.testing.assert_close(out["scale_weights"], w)
    torch.testing.assert_close(out["out"], w[:, :1] * p05 + w[:, 1:] * p1)


@pytest.mark.parametrize("ac", [True, False])
def test_windowed_hierarchical_by_hand(ac):
    """Every resize (alpha to the logits, window output to the window, scale to the image) uses the wrapper's
    align_corners, also when only the wrapper has the setting (set_align_corners on a foreign model)."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    ms = MultiScale(Pool(stride=2, feat_stride=4), (0.5, 1.0), "hierarchical", attention_channels=4,
                    window=(8, 8)).eval()
    set_align_corners(ms, ac)
    img05 = resize_image(x, 0.5)
    p05 = up(up(F.avg_pool2d(img05[:, :K], 2), (8, 8), ac), (16, 16), ac)
    p1 = torch.zeros(1, K, 16, 16)
    for y in (0, 8):
        for x0 in (0, 8):
            p1[..., y:y + 8, x0:x0 + 8] = up(F.avg_pool2d(x[:, :K, y:y + 8, x0:x0 + 8], 2), (8, 8), ac)
    with torch.no_grad():
        out = ms(x)
        a = up(up(up(ms.attention(F.avg_pool2d(img05, 4)), (4, 4), ac), (8, 8), ac), (16, 16), ac)
    torch.testing.assert_close(out["scale_weights"], torch.cat([a, 1 - a], 1))
    torch.testing.assert_close(out["out"], a * p05 + (1 - a) * p1)


class Levels(nn.Module):
    """4x4 constant logits 1, 1e8, -1e8 for inputs of height 4, 8, 16; zero features (so alpha = sigmoid(0))."""

    num_classes, in_channels, feat_channels = 1, 3, 1

    def forward(self, x, return_feat=False):
        value = {4: 1.0, 8: 1e8, 16: -1e8}[x.shape[-2]]
        out = {"out": torch.full((1, 1, 4, 4), value)}
        if return_feat:
            out["feat"] = torch.zeros(1, 1, 4, 4)
        return out


def test_hierarchical_merge_is_the_nested_recurrence():
    """p = a p_0.5 + (1 - a) (a p_1 + (1 - a) p_2) = 0.5 * 1 + 0.5 * 0 exactly with a = 0.5; the unrolled sum
    0.5 * 1 + 0.25e8 - 0.25e8 would lose the 0.5 in float32."""
    ms = MultiScale(Levels(), (0.5, 1.0, 2.0), "hierarchical", attention_channels=2).eval()
    with torch.no_grad():
        out = ms(torch.zeros(1, 3, 8, 8))
    assert torch.equal(out["out"], torch.full((1, 1, 4, 4), 0.5))
    assert torch.equal(out["scale_weights"][0, :, 0, 0], torch.tensor([0.5, 0.25, 0.25]))


# -- configure_inference ---------------------------------------------------------------------

def test_configure_inference_wraps_a_plain_model():
    model = Pool(classes=["a", "b"], palette=[[0, 0, 0], [9, 9, 9]])
    assert configure_inference(model) is model
    assert error_message(configure_inference, model, merge="median") == \
        "unknown multi-scale merge 'median'; use one of avg, max, attention, hierarchical"
    cases = [(dict(scales=[1.0, 0.5]), ((0.5, 1.0), "avg", False, None, None)),
             (dict(flip=True), ((1.0,), "avg", True, None, None)),
             (dict(merge="max"), ((1.0,), "max", False, None, None)),
             (dict(window=(8, 8), stride=(4, 2)), ((1.0,), "avg", False, (8, 8), (4, 2)))]
    for kwargs, expected in cases:
        ms = configure_inference(model, **kwargs)
        assert isinstance(ms, MultiScale) and ms.model is model
        assert (ms.scales, ms.merge, ms.flip, ms.window, ms.stride) == expected
        assert ms.classes == ["a", "b"] and ms.palette == [[0, 0, 0], [9, 9, 9]]


def test_configure_inference_of_a_wrapper():
    ms = MultiScale(Pool(), (0.5, 1.0), "hierarchical", window=(8, 8), stride=(4, 4), attention_channels=4)
    assert configure_inference(ms, scales=[0.5, 1.0, 2.0]) is ms
    assert (ms.scales, ms.window, ms.stride) == ((0.5, 1.0, 2.0), (8, 8), (4, 4))
    configure_inference(ms, window=(6, 6), stride=(2, 3))
    assert (ms.window, ms.stride) == ((6, 6), (2, 3))
    hier = MultiScale(Pool(), (0.5, 1.0), "hierarchical", attention_channels=4)
    new = configure_inference(hier, scales=[0.75, 1.0], merge="max", flip=True, window=(8, 8), stride=(4, 4))
    assert new.model is hier.model
    assert inference_spec(new) == {"scales": [0.75, 1.0], "merge": "max", "flip": True, "window": [8, 8],
                                   "stride": [4, 4]}
    flipped = MultiScale(Pool(), (0.5, 1.0), "hierarchical", flip=True, attention_channels=4)
    assert configure_inference(flipped, merge="avg").flip is True
    # the wrapper's window and stride stay when the merge changes; a stride alone applies to its window
    windowed = MultiScale(Pool(), (0.5, 1.0), "hierarchical", window=(8, 8), stride=(4, 4), attention_channels=4)
    assert (configure_inference(windowed, stride=(2, 2)).window, windowed.stride) == ((8, 8), (2, 2))
    avg = configure_inference(windowed, merge="avg")
    assert (avg.merge, avg.window, avg.stride) == ("avg", (8, 8), (2, 2))
    assert configure_inference(windowed, merge="max", window=(6, 6)).stride == (6, 6)
    with pytest.raises(ContextSegError, match="stride was given without a window"):
        configure_inference(MultiScale(Pool(), (1.0,), "avg"), stride=(2, 2))
