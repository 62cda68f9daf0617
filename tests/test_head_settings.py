"""Head settings that the formula and parameter-count tests do not see: the papers' defaults (LargeFOV dilation 12
and dropout 0.5, OCR's dropout 0.05, PSP's C/4 pool channels), argument checks and their messages, the HRNetV2 head
by its formula, and the batch-of-one message of the global-pooling heads."""
import pytest
import torch
from torch import nn

from catalogue import error_message
from contextseg.models.heads import ASPPHead, ASPPLHead, LargeFOVHead, PSPHead
from contextseg.models.heads.fcn import HRNetV2Head
from contextseg.models.heads.ocr import OCRHead, SpatialOCR, bn_relu



def _random_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


def test_hrnetv2_head_is_conv_bn_relu_conv_on_the_concatenation():
    head = _random_bn(HRNetV2Head([2, 3], num_classes=4))
    assert head.num_classes == 4
    feats = [torch.randn(1, 2, 5, 6), torch.randn(1, 3, 5, 6)]  # same size: the concatenation needs no resize
    conv1, bn, _, conv2 = head.last_layer
    z = torch.cat(feats, dim=1)
    h = ((conv1(z) - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
         * bn.weight[:, None, None] + bn.bias[:, None, None]).clamp_min(0)
    with torch.no_grad():
        torch.testing.assert_close(head(feats)["out"], conv2(h))
    assert (h == 0).any()  # the ReLU acted


def test_bn_relu_clamps_at_zero():
    block = _random_bn(bn_relu(3))
    out = block(torch.randn(2, 3, 4, 4))
    assert (out >= 0).all() and (out == 0).any()


def test_ocr_dropout_and_oracle_defaults():
    assert SpatialOCR(4, 2, 4).conv_bn_dropout[-1].p == 0.05  # the official SpatialOCR_Module dropout
    head = OCRHead([4, 4], num_classes=3, mid_channels=8, key_channels=4, dropout=0.2)
    drop = head.ocr_distri_head.conv_bn_dropout[-1]
    assert isinstance(drop, nn.Dropout2d) and drop.p == 0.2
    assert head.oracle is None and head.oracle_mode == "regions"


def test_largefov_defaults_follow_deeplab_and_its_checks():
    head = LargeFOVHead([8], num_classes=5, channels=16)
    assert head.num_classes == 5 and head.dilation == 12
    fc6_conv, _, fc6_drop = head.fc6
    assert fc6_conv.dilation == (12, 12) and fc6_conv.padding == (12, 12)
    for drop in (fc6_drop, head.fc7[-1]):
        assert isinstance(drop, nn.Dropout) and drop.p == 0.5
    assert LargeFOVHead([8], 5, dilation=4, channels=16).fc6[0].dilation == (4, 4)
    for bad in (0, 1.5, True):
        assert error_message(lambda: LargeFOVHead([8], 5, dilation=bad)) == (
            f"LargeFOV dilation must be a positive integer, got {bad!r}; e.g. 12")


@pytest.mark.parametrize("cls,name,example", [(ASPPHead, "ASPP", "[6, 12, 18]"),
                                              (ASPPLHead, "ASPP-L", "[6, 12, 18, 24]")])
def test_aspp_rates_are_checked(cls, name, example):
    for bad in ([], [0], [6, 1.5], [True, 6]):
        assert error_message(lambda: cls([8], 3, rates=bad)) == (
            f"{name} rates must be positive integers, got {bad!r}; e.g. rates={example}")
    assert cls([8], 3, rates=[1, 2]).num_classes == 3


def test_global_pooling_heads_name_themselves_for_a_batch_of_one():
    x = [torch.randn(1, 8, 6, 6)]
    for head in (ASPPHead([8], 3, rates=[1, 2], channels=4), PSPHead([8], 3, bins=(1, 3, 6), channels=4)):
        assert error_message(lambda: head.train()(x)) == (
            f"{type(head).__name__} has a global-pooling branch with BatchNorm, which cannot train on a batch of 1; "
            f"use batch_size >= 2 for training, or call model.eval() for inference")
        assert head.eval()(x)["out"].shape == (1, 3, 6, 6)
    PSPHead([8], 3, bins=(2, 3), channels=4).train()(x)  # no 1x1 bin: a batch of one trains


def test_psp_pool_channels_are_a_quarter_at_least_one():
    assert PSPHead([4], 3, channels=4).psp_modules[0][1].out_channels == 1
    assert PSPHead([16], 3, channels=4).psp_modules[0][1].out_channels == 4
