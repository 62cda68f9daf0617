"""Small pieces shared by heads: the ``DecodeHead`` base (widths, feature adapter, classifier, construction from a
backbone for the registries), conv-BN-ReLU, classifier init, atrous rates and input checks."""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ..resize import DEFAULT_ALIGN_CORNERS, resize


def resize_concat(feats: Sequence[Tensor], size: Sequence[int] | None = None,
                  align_corners: bool = DEFAULT_ALIGN_CORNERS) -> Tensor:
    """Bilinearly resize every map to ``size`` (default: the first map's size) and concatenate along channels.

    [(B, C_0, H_0, W_0), (B, C_1, H_1, W_1), ...] -> (B, sum C_i, H_0, W_0), as the HRNetV2
    representation head (Wang et al. 2019, Sec. 3, "HRNetV2": rescale low-resolution maps to the high resolution
    with bilinear upsampling and concatenate; the official code with align_corners=True).
    """
    if size is None:
        size = feats[0].shape[-2:]
    return torch.cat([resize(f, size, align_corners) for f in feats], dim=1)


def check_feats(feats: Sequence[Tensor], in_channels: Sequence[int], head: str) -> None:
    """Raise a clear error when a head gets feature maps that do not match the widths it was built for."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    got = [int(f.shape[1]) for f in feats]
    if got != list(in_channels):
        raise ContextSegError(
            f"{head} was built for backbone widths {list(in_channels)} but got feature maps with {got} channels; "
            f"build the head with in_channels={got} (create_model does this from backbone.out_channels)"
        )


def default_in_index(backbone: nn.Module) -> int | list[int]:
    """The maps a head uses when none are named: the backbone's ``default_in_index`` attribute.

    HRNet declares [0, 1, 2, 3] (all four branches, resized and concatenated: the HRNetV2 representation);
    ResNet declares -1 (the last, stride-8 or stride-16 map, as PSPNet and DeepLab use it). -1 if not declared.
    """
    index = getattr(backbone, "default_in_index", -1)
    return index if isinstance(index, int) else list(index)


class FeatureAdapter(nn.Module):
    """Picks the map(s) a head runs on, as mmsegmentation's ``in_index`` / ``resize_concat`` (no parameters).

    One explicit choice, ``in_index``:
        an int i             -> feats[i]                                             (B, C_i, H_i, W_i)
        a list [i, j, ...]   -> resize_concat([feats[i], feats[j], ...]) at the size of feats[i]
                                                                                      (B, C_i + C_j + ..., H_i, W_i)
    Negative indices count from the end. ``out_channels`` is the width of the result.

    Args:
        in_channels: the widths of all backbone outputs (``backbone.out_channels``), checked on every call.
        in_index: which output(s) to use.
        head: the owning head's name, for error messages.
    """

    def __init__(self, in_channels: Sequence[int], in_index: int | Sequence[int] = -1, head: str = "head"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.head = head
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's setting (models/resize.py)
        n = len(self.in_channels)
        self.concat = not isinstance(in_index, int)
        index = [in_index] if isinstance(in_index, int) else list(in_index)
        if not index or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in index):
            raise ContextSegError(
                f"{head}: in_index={in_index!r} does not pick backbone outputs; the backbone has {n} maps, give an "
                f"index in -{n}..{n - 1} (one map) or a non-empty list of them (resized to the first and concatenated)"
            )
        self.in_index = [i % n for i in index]
        self.out_channels = sum(self.in_channels[i] for i in self.in_index)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        check_feats(feats, self.in_channels, self.head)
        if not self.concat:
            return feats[self.in_index[0]]
        return resize_concat([feats[i] for i in self.in_index], align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"in_index={self.in_index}, concat={self.concat}, out_channels={self.out_channels}"


def stride_of(backbone: nn.Module, index: int | Sequence[int]) -> int | None:
    """Stride of the map a head runs on (the first listed one for a concatenation); None for a bad index (the head's
    adapter then reports it)."""
    first = index if isinstance(index, int) else (list(index) or [None])[0]
    n = len(backbone.strides)
    valid = isinstance(first, int) and not isinstance(first, bool) and -n <= first < n
    return backbone.strides[first] if valid else None


def scale_rates(rates: Sequence[int], stride: int, at_stride: int) -> tuple[int, ...]:
    """Atrous rates given for a map of stride ``at_stride``, rescaled to a map of stride ``stride`` so that they
    cover the same field of view in image pixels: round(r * at_stride / stride), at least 1. E.g. DeepLab v3's
    6/12/18 at stride 16 become 12/24/36 at stride 8 and 24/48/72 on HRNet's stride-4 concatenation."""
    return tuple(max(1, round(r * at_stride / stride)) for r in rates)


def atrous_rates(backbone: nn.Module, index: int | Sequence[int], rates: int | Sequence[int],
                 at_stride: int) -> int | tuple[int, ...]:
    """``rates`` (one int, or several) given at stride ``at_stride``, rescaled to the stride of the map ``index``
    picks (``scale_rates``); unchanged for a bad index (the head's adapter then reports it)."""
    stride = stride_of(backbone, index)
    if stride is None:
        return rates
    scaled = scale_rates([rates] if isinstance(rates, int) else rates, stride, at_stride)
    return scaled[0] if isinstance(rates, int) else scaled


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` that works around a PyTorch CPU bug (seen in torch 2.13, oneDNN AVX-512 kernels, native bf16
    or not): a DILATED convolution under bf16 autocast with channels_last tensors and input channels not a multiple
    of 16 (HRNet-W18's 270-channel concatenation) returns a weight gradient of NaN / garbage values and can
    segfault; the forward and input gradient are right. In exactly that case (CPU, bf16, gradients, dilation > 1,
    in_channels % 16 != 0) it convolves NCHW-contiguous copies of the input and weight, which computes the right
    gradient (benchmarks/atrous_bf16_bug.py reproduces it). Same parameters and state dict as ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and self.dilation != (1, 1) and self.in_channels % 16 and torch.is_grad_enabled()
                and (x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                                   and torch.get_autocast_dtype("cpu") == torch.bfloat16))):
            return self._conv_forward(x.contiguous(), self.weight.contiguous(), self.bias)
        return super().forward(x)


def conv_bn_relu(in_c: int, out_c: int, kernel_size: int = 1, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv + BN + ReLU, padding keeping the size: (B, in_c, H, W) -> (B, out_c, H, W). The conv has no bias unless
    ``bias`` (the official OCR code and the Keras PFA code keep one).

    Parameters: k*k*in_c*out_c (+ out_c with bias) + 2*out_c.
    """
    return nn.Sequential(
        AtrousConv2d(in_c, out_c, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=bias),
        nn.BatchNorm2d(out_c),
        nn.ReLU(inplace=True),
    )


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """Classifier init N(0, std), bias 0 (DeepLab's fc8 / mmsegmentation's conv_seg)."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout2d + 1x1 conv classifier (N(0, 0.01) init) as one child: (B, channels, H, W) -> (B, K, H, W).
    Parameters: channels * K + K."""
    return nn.Sequential(nn.Dropout2d(dropout), init_classifier(nn.Conv2d(channels, num_classes, kernel_size=1)))


def _none_default(p: inspect.Parameter) -> inspect.Parameter:
    """``p`` with default None (and "| None" in its annotation)."""
    note = p.annotation
    if isinstance(note, str) and "None" not in note:
        note = f"{note} | None"
    return p.replace(default=None, annotation=note)


class DecodeHead(nn.Module):
    """Base of the heads: ``head(list of backbone maps) -> {"out": (B, K, H, W), ...}``.

    Holds ``in_channels`` (the backbone widths), ``num_classes`` (K) and, with ``adapter`` (off for heads that pick
    their maps themselves: FCN-8s, PFA, SAOL), the ``FeatureAdapter`` ``inputs`` on ``in_index`` (None: all maps,
    the HRNetV2 representation), whose ``out_channels`` C is the width the head runs on. ``add_classifier`` /
    ``classify``: Dropout2d then the 1x1 classifier ``cls_head``.

    Registered as a class (``@HEADS.register("psp")``): the registry holds ``builder()``, i.e.
    ``(backbone, num_classes, **options) -> from_backbone(...)``, whose signature is the constructor's with the
    arguments before ``num_classes`` read from the backbone, and ``backbone_options`` defaulting to None: left None,
    ``in_index`` becomes the backbone's ``default_in_index`` and the ``atrous`` option (name, rates, stride they are
    given at) is rescaled to the chosen map's stride (``atrous_rates``).
    """

    backbone_options: tuple[str, ...] = ("in_index",)
    atrous: tuple[str, int | tuple[int, ...], int] | None = None

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] | None = -1,
                 adapter: bool = True):
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        if adapter:
            index = list(range(len(self.in_channels))) if in_index is None else in_index
            self.inputs = FeatureAdapter(self.in_channels, index, head=type(self).__name__)

    def add_classifier(self, channels: int, dropout: float) -> None:
        """``dropout`` (Dropout2d) and ``cls_head`` (1x1 conv, channels -> K, N(0, 0.01) init, bias)."""
        self.dropout = nn.Dropout2d(dropout)
        self.cls_head = init_classifier(nn.Conv2d(channels, self.num_classes, kernel_size=1))

    def classify(self, h: Tensor) -> Tensor:
        """(B, channels, H, W) -> (B, K, H, W): ``cls_head(dropout(h))``."""
        return self.cls_head(self.dropout(h))

    @classmethod
    def atrous_option(cls, options: dict) -> tuple | None:
        """The atrous option to rescale for these options (``atrous``; SSNet: only with seg_head="aspp_l")."""
        return cls.atrous

    @classmethod
    def from_backbone(cls, backbone: nn.Module, num_classes: int, **options) -> DecodeHead:
        """The head on ``backbone`` (its ``out_channels``), the ``backbone_options`` left None filled from it."""
        if "in_index" in cls.backbone_options and options.get("in_index") is None:
            options["in_index"] = default_in_index(backbone)
        atrous = cls.atrous_option(options)
        if atrous is not None and options.get(atrous[0]) is None:
            name, rates, at_stride = atrous
            options[name] = atrous_rates(backbone, options["in_index"], rates, at_stride)
        return cls(backbone.out_channels, num_classes, **options)

    @classmethod
    def builder(cls) -> Callable[..., DecodeHead]:
        """The registry entry ``(backbone, num_classes, **options) -> head``; ``create_model`` routes and checks
        keywords by its signature."""
        params = list(inspect.signature(cls).parameters.values())
        k = [p.name for p in params].index("num_classes")
        none = set(cls.backbone_options) | ({cls.atrous[0]} if cls.atrous else set())
        signature = inspect.Signature(
            [inspect.Parameter("backbone", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="nn.Module"),
             params[k].replace(default=inspect.Parameter.empty)]
            + [_none_default(p) if p.name in none else p for p in params[k + 1:]],
            return_annotation=cls.__name__,
        )

        def build(backbone: nn.Module, num_classes: int, *args, **options) -> DecodeHead:
            return cls.from_backbone(**signature.bind(backbone, num_classes, *args, **options).arguments)

        build.__signature__ = signature
        build.__name__ = build.__qualname__ = f"{cls.__name__}.builder"
        build.__doc__ = cls.from_backbone.__doc__
        return build


def check_pooled_batch(x: Tensor, head: str) -> None:
    """BatchNorm after a global (1x1) pooling sees one value per channel when the batch is 1 in training mode,
    which torch rejects deep inside ``batch_norm``; say so plainly instead."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    if x.shape[0] == 1:
        raise ContextSegError(
            f"{head} has a global-pooling branch with BatchNorm, which cannot train on a batch of 1; "
            f"use batch_size >= 2 for training, or call model.eval() for inference"
        )
