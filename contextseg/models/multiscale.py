"""Multi-scale inference and training: one wrapper, ``MultiScale``, that runs a segmentation model on an image pyramid
and merges the score maps by average, by max, or by learned attention over scales, with optional horizontal flip and
sliding windows; plus the plain function ``sliding_window_inference``.

Merges (S scales s_1 < ... < s_S, score maps p_s resized to one reference size, all per pixel and per class):

    "avg"           p = (1/S) sum_s p_s
    "max"           p = max_s p_s                                          (elementwise over scales, per class)
    "attention"     p = sum_s w_s p_s,  w = softmax_s(h),  h = f_att([feat_1, ..., feat_S])
                    Attention to Scale (Chen, Yang, Wang, Xu & Yuille 2016, "Attention to Scale: Scale-aware Semantic
                    Image Segmentation", Sec. 3.2 "Attention model for scales"; f_att as its attention model:
                    3x3 conv 512, ReLU, dropout, 1x1 conv to S channels; per-scale supervision: Sec. 3.3)
    "hierarchical"  p = a_1 p_1 + (1 - a_1) (a_2 p_2 + (1 - a_2) (... a_{S-1} p_{S-1} + (1 - a_{S-1}) p_S))
                    a_s = g_att(feat_s) in (0, 1); Tao, Sapra & Catanzaro 2020, "Hierarchical Multi-Scale Attention
                    for Semantic Segmentation", Sec. 3, as NVIDIA's ``nscale_forward`` (see ``MultiScale``)

All merges act on logits (the score maps before softmax), as both papers do (Attention to Scale merges, and
max-pools for its baseline, DeepLab's fc8 score maps; NVIDIA's recurrence mixes logits): the merged map is again a
logit map, so one loss, one metric and one prediction path serve every merge, and a merge of probabilities would
not even be a distribution for "max". Flip averaging is of logits too.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError
from .attention import upcast
from .resize import DEFAULT_ALIGN_CORNERS, align_corners_of, resize

MERGES = ("avg", "max", "attention", "hierarchical")
LEARNED_MERGES = ("attention", "hierarchical")


def scale_key(scale: float) -> str:
    """Name of one scale's logits in the training outputs: 0.5 -> "out_s0.5", 1 -> "out_s1.0"."""
    return f"out_s{float(scale)!r}"


def resize_image(x: Tensor, scale: float) -> Tensor:
    """(B, C, H, W) -> (B, C, round(H * s), round(W * s)), bilinear, align_corners=False (identity at s = 1).

    The image is resampled with half-pixel centres whatever the model's setting, as the official HRNet-OCR test
    (``cv2.resize`` of the image; its logits are then resized with ``MODEL.ALIGN_CORNERS``)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = value
    except (TypeError, ValueError):
        raise ContextSegError(f"{name} must be two positive integers (height, width), got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (h, w)):
        raise ContextSegError(f"{name} must be two positive integers (height, width), got {value!r}")
    return h, w


def _starts(n: int, window: int, step: int) -> list[int]:
    """Window offsets covering [0, n): 0, step, 2 step, ..., the last one moved back to end at n."""
    if n <= window:
        return [0]
    count = math.ceil((n - window) / step) + 1
    return [min(i * step, n - window) for i in range(count)]


def sliding_window_inference(
    model_fn: Callable[[Tensor], Tensor | dict],
    image: Tensor,
    num_classes: int,
    window: Sequence[int],
    stride: Sequence[int] | None = None,
    align_corners: bool | None = None,
) -> Tensor:
    """Logits of an image larger than the model's training crop, from overlapping windows.

    image (B, C, H, W) -> (B, num_classes, H, W) float32 logits at the input resolution.

    Windows of size ``window`` = (h, w) start every ``stride`` = (sh, sw) pixels (default: the window, no overlap),
    the last row and column moved back to end at the image border, so every pixel is covered. Each window's output
    (a tensor, or a dict's "out") is resized to the window (bilinear) and added into a sum map; every pixel's sum is
    divided by the number of windows that covered it (overlap averaging). An image smaller than the window is padded
    at the bottom and right with zeros (the mean colour once normalised) and the padding is cropped off the result.
    ``num_classes`` is the channel count of ``model_fn``'s output. The resize uses ``align_corners`` (default: the
    model's setting when ``model_fn`` is a contextseg model, else True).
    """
    if align_corners is None:
        align_corners = align_corners_of(model_fn, DEFAULT_ALIGN_CORNERS)
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride if stride is not None else (wh, ww), "stride")
    if sh > wh or sw > ww:
        raise ContextSegError(f"stride {(sh, sw)} is larger than window {(wh, ww)} and would skip pixels; "
                              f"use a stride <= the window (e.g. 2/3 of it)")
    b, _, h, w = image.shape
    pad_h, pad_w = max(wh - h, 0), max(ww - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hp, wp = image.shape[-2:]
    total = torch.zeros(b, num_classes, hp, wp, device=image.device, dtype=torch.float32)
    count = torch.zeros(1, 1, hp, wp, device=image.device, dtype=torch.float32)
    for y in _starts(hp, wh, sh):
        for x in _starts(wp, ww, sw):
            out = model_fn(image[..., y:y + wh, x:x + ww])
            out = out["out"] if isinstance(out, dict) else out
            if out.shape[1] != num_classes:
                raise ContextSegError(f"sliding window: the model returned {out.shape[1]} channels, expected "
                                      f"num_classes={num_classes}")
            total[..., y:y + wh, x:x + ww] += resize(out.float(), (wh, ww), align_corners)
            count[..., y:y + wh, x:x + ww] += 1
    return (total / count)[..., :h, :w]


class ScaleAttention(nn.Module):
    """Attention to Scale's attention model: S feature maps (B, C, h, w) -> scores (B, S, h, w) (softmax outside).

        h = conv1x1(dropout(ReLU(conv3x3([feat_1, ..., feat_S]))))     conv3x3: S*C -> channels, conv1x1: -> S

    The paper's attention model (Sec. 3.2) is two layers, 3x3 with 512 filters and 1x1 with S filters, on
    DeepLab's fc7 features. It sees the features of all scales at once (concatenated after resizing to one size),
    so the weight of one scale can depend on what the others see. Parameters: 9*S*C*ch + ch + ch*S + S.

    ``dropout`` 0.5 (after the ReLU, before the 1x1) is what the Caffe definition of this attention model has, as
    published with LIP's "Attention" baseline (Engineering-Course/LIP_SSL human/config/no-ssl/train.prototxt):
    att_conv1 (3x3, 512, bias) -> ReLU -> Dropout 0.5 -> att_fc (1x1, S, bias) -> Softmax over scales, on the
    concatenated fc7 of scales 1, 0.75, 0.5 (DeepLab's fc6/fc7 dropout is 0.5 too). Both convs have biases, no
    normalisation. NVIDIA's re-implementation of this head (network/attnscale.py, ASDV3P) has no dropout and
    bias-free convs; dropout=0 gives the former.
    """

    def __init__(self, in_channels: int, num_scales: int, channels: int = 512, dropout: float = 0.5):
        super().__init__()
        self.num_scales = num_scales
        self.conv = nn.Conv2d(num_scales * in_channels, channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Conv2d(channels, num_scales, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.score(self.dropout(self.relu(self.conv(torch.cat(list(feats), dim=1)))))


class HierarchicalAttention(nn.Module):
    """Hierarchical multi-scale attention head: one scale's features (B, C, h, w) -> alpha (B, 1, h, w) in (0, 1).

        alpha = sigmoid(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv3x3(feat))))))))      C -> ch -> ch -> 1, convs bias-free

    The layout of NVIDIA's ``make_attn_head`` (network/utils.py) with its defaults (config.py): SEGATTN_BOT_CH 256
    channels, MSCALE_INNER_3x3 True (the second 3x3), MSCALE_DROPOUT False (no dropout; 0.5 before the 1x1 when
    switched on), MSCALE_OLDARCH False; PyTorch's default initialisation (``init_attn``, bias 0.5, is commented
    out). On MscaleOCR it reads OCR's ``ocr_mid_feats``, the input of the classifier, as ``feat`` here; BN becomes
    SyncBatchNorm under DDP, as NVIDIA's syncbn. Parameters: 9*C*ch + 9*ch*ch + ch + 4*ch.
    """

    def __init__(self, in_channels: int, channels: int = 256):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, 1, bias=False), nn.Sigmoid(),
        )

    def forward(self, feat: Tensor) -> Tensor:
        return self.head(feat)


def hierarchical_weights(alphas: Sequence[Tensor]) -> Tensor:
    """Unroll the hierarchical recurrence into one weight map per scale.

    alphas: S - 1 maps (B, 1, h, w) for the scales s_1 < ... < s_{S-1} (the highest scale needs none) ->
    (B, S, h, w) with w_k = a_k prod_{j<k} (1 - a_j) for k < S and w_S = prod_{j<S} (1 - a_j); they sum to 1.
    """
    remaining = torch.ones_like(alphas[0]) if alphas else None
    weights = []
    for a in alphas:
        weights.append(a * remaining)
        remaining = remaining * (1 - a)
    if remaining is None:
        raise ValueError("hierarchical_weights needs at least one alpha map")
    weights.append(remaining)
    return torch.cat(weights, dim=1)


class MultiScale(nn.Module):
    """Run a segmentation model on an image pyramid and merge its score maps.

    (B, C_in, H, W) -> {"out": (B, K, h, w)} and, for merge "attention" / "hierarchical", "scale_weights"
    (B, S, h, w): per pixel, the weight of each scale in "out" (non-negative, summing to 1 over the S scales; channel
    i belongs to ``self.scales[i]``, which are sorted ascending).

    Reference size (h, w): the size of the model's own output at scale 1.0 (stride 4 on HRNet, 8 on a dilated
    ResNet), so the wrapper is a drop-in for the model; the input size (H, W) instead when 1.0 is not among the
    scales or when sliding windows are used (windows return input-resolution logits). Each scale's input is the image
    resized by bilinear interpolation (align_corners=False, as the official HRNet-OCR test's cv2.resize) to
    round(s * H) x round(s * W); its logits (and features or attention maps) are resized bilinearly to the reference
    size before merging, with the model's align_corners (``models/resize.py``).

    In training mode the output holds what a loss needs for the extra supervision both papers use:

        "out"            merged logits                                    (B, K, h, w)
        "aux", ...       the model's other training logits ("aux" of OCR or an aux head, DANet's "pam" and "cam"),
                         each merged with the same rule/weights
        "out_s0.5", ...  each scale's own logits, resized to (h, w)       (names from ``scale_key``)
        "scale_weights"  (attention merges)                               (B, S, h, w)

    Merges (see the module docstring): "avg", "max" (elementwise max of logits over scales), "attention" (Attention
    to Scale) and "hierarchical" (Tao et al. 2020). The two attention merges need the model's features:
    ``model(x, return_feat=True)["feat"]`` (``Segmentor`` gives its head's penultimate representation; other models
    must accept ``return_feat`` and pass ``feat_channels``).

    "attention": one attention net on the features of all S scales (resized to (h, w), concatenated) gives S score
    maps; w = softmax over scales; out = sum_s w_s * p_s. S is fixed when the net is built: a trained model must be
    evaluated with the scales it was trained with.

    "hierarchical": an attention head on each scale's features predicts alpha_s (sigmoid) at that scale's own
    resolution. With scales sorted from high to low, the recurrence (NVIDIA ``nscale_forward``; e.g. {0.5, 1, 1.5, 2}):

        p = p_2.0
        p = a_1.5 * p_1.5 + (1 - a_1.5) * p            every term resized to (h, w) first
        p = a_1.0 * p_1.0 + (1 - a_1.0) * p
        p = a_0.5 * p_0.5 + (1 - a_0.5) * p

    i.e. the lower scale's attention decides, per pixel, how much of its own prediction to keep and how much to take
    from everything above it (the highest scale's alpha is never used). Trained with two scales, (0.5, 1.0), where it
    is p = a_0.5 p_0.5 + (1 - a_0.5) p_1.0 (``two_scale_forward``); applied to any number at inference, since the
    head is shared by all scales. "scale_weights" holds the unrolled weights ``hierarchical_weights``. One deliberate
    difference from NVIDIA: we resize logits and alphas to (h, w) before mixing, where NVIDIA upsamples the product
    a_s * p_s (and mixes above-1.0 scales at their own resolution); so the merge here is exactly sum_s w_s p_s with
    weights that sum to 1, at the cost of a difference at the level of interpolation error.

    flip=True (inference only): the merged logits (and scale weights) of the image and of its mirror image, flipped
    back, are averaged: out = (M(x) + flip(M(flip(x)))) / 2. window=(h, w) (inference only): every scale's pass is a
    ``sliding_window_inference`` with that window and ``stride`` (default: the window); not available for
    "attention", whose net needs every scale's features of the whole image at once.

    Args:
        model: a module mapping (B, C_in, H, W) to a dict with "out" (e.g. ``create_model(...)``).
        scales: input scales, e.g. (0.5, 1.0, 1.5, 2.0); distinct positive numbers, sorted here.
        merge: "avg", "max", "attention" or "hierarchical".
        flip, window, stride: test-time options, used only in eval mode.
        attention_channels: width of the attention net (default 512 for "attention", as the paper; 256 for
            "hierarchical", as NVIDIA).
        attention_dropout: dropout in the Attention-to-Scale net (0.5).
        feat_channels: width of ``model``'s "feat" (default ``model.feat_channels``).

    Attributes: num_classes, in_channels (from the model), init_args (the model's create_model arguments plus
    ``multiscale=dict(...)``, so ``create_model(**init_args)`` rebuilds the wrapper).
    """

    def __init__(
        self,
        model: nn.Module,
        scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
        merge: str = "avg",
        flip: bool = False,
        window: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        attention_channels: int | None = None,
        attention_dropout: float = 0.5,
        feat_channels: int | None = None,
    ):
        super().__init__()
        if merge not in MERGES:
            raise ContextSegError(f"unknown multi-scale merge {merge!r}; use one of {', '.join(MERGES)}")
        if isinstance(model, MultiScale):
            raise ContextSegError("the model is already a MultiScale wrapper; wrap its .model instead")
        self.model = model
        self.align_corners = align_corners_of(model, DEFAULT_ALIGN_CORNERS)  # resizes of logits, features, alphas
        self.merge = merge
        self.scales = self._check_scales(scales)
        self.num_classes = getattr(model, "num_classes", None)
        self.in_channels = getattr(model, "in_channels", 3)
        self.attention_channels = attention_channels
        self.attention_dropout = attention_dropout
        self.attention: nn.Module | None = None
        if merge in LEARNED_MERGES:
            if feat_channels is None:
                try:
                    feat_channels = model.feat_channels
                except AttributeError:
                    raise ContextSegError(
                        f"merge={merge!r} needs the model's features: the model must accept return_feat=True and "
                        f"have a feat_channels attribute (contextseg models do), or pass feat_channels=...") from None
            if merge == "attention":
                self.attention = ScaleAttention(feat_channels, len(self.scales), attention_channels or 512,
                                                attention_dropout)
            else:
                self.attention = HierarchicalAttention(feat_channels, attention_channels or 256)
        self.flip = bool(flip)
        self.window = self.stride = None
        self.set_window(window, stride)
        base_args = getattr(model, "init_args", None)
        self.init_args: dict = {**base_args, "multiscale": self.spec()} if base_args else {}

    # -- configuration -----------------------------------------------------------------------
    def _check_scales(self, scales) -> tuple[float, ...]:
        try:
            if any(isinstance(s, bool) for s in scales):  # True is not the scale 1.0 (a YAML slip)
                raise TypeError
            values = [float(s) for s in scales]
        except (TypeError, ValueError):
            raise ContextSegError(f"scales must be a list of positive numbers, e.g. [0.5, 1.0, 1.5], got {scales!r}") \
                from None
        if not values or any(not math.isfinite(s) or s <= 0 for s in values) or len(set(values)) != len(values):
            raise ContextSegError(f"scales must be distinct positive numbers, e.g. [0.5, 1.0, 1.5], got {scales!r}")
        values = tuple(sorted(values))
        trained = getattr(self, "scales", None)
        if self.merge == "attention" and trained is not None and values != trained:
            raise ContextSegError(
                f"this Attention-to-Scale model was trained for scales {list(trained)} and predicts one weight map per "
                f"scale; use those scales, or merge 'hierarchical', 'avg' or 'max' for other scales")
        return values

    def set_scales(self, scales: Sequence[float]) -> None:
        """Change the pyramid (e.g. a hierarchical model trained on (0.5, 1.0) applied to (0.5, 1.0, 2.0))."""
        self.scales = self._check_scales(scales)
        if self.init_args:
            self.init_args["multiscale"] = self.spec()

    def set_window(self, window: Sequence[int] | None, stride: Sequence[int] | None = None) -> None:
        """Use sliding windows of ``window`` (h, w) every ``stride`` (default: window) at inference; None: whole."""
        if window is None:
            if stride is not None:
                raise ContextSegError("a sliding-window stride was given without a window; give the window too")
            self.window = self.stride = None
            return
        if self.merge == "attention":
            raise ContextSegError("sliding windows are not available with merge='attention' (its attention net needs "
                                  "every scale's features of the whole image); use no window, or merge "
                                  "'hierarchical', 'avg' or 'max'")
        self.window = _pair(window, "window")
        self.stride = _pair(stride, "stride") if stride is not None else self.window
        if self.stride[0] > self.window[0] or self.stride[1] > self.window[1]:
            raise ContextSegError(f"stride {self.stride} is larger than window {self.window} and would skip pixels; "
                                  f"use a stride <= the window")

    def spec(self) -> dict:
        """The wrapper's own constructor arguments (JSON-able), as stored under init_args["multiscale"]."""
        return {
            "scales": list(self.scales), "merge": self.merge, "flip": self.flip,
            "window": list(self.window) if self.window else None,
            "stride": list(self.stride) if self.window else None,
            "attention_channels": self.attention_channels, "attention_dropout": self.attention_dropout,
        }

    def extra_repr(self) -> str:
        return f"scales={list(self.scales)}, merge={self.merge!r}, flip={self.flip}, window={self.window}, " \
               f"stride={self.stride}"

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.training or not self.flip:
            return self._pyramid(x)
        a = self._pyramid(x)
        b = self._pyramid(x.flip(-1))
        return {k: (a[k] + b[k].flip(-1)) / 2 for k in a}

    def _run_scale(self, x: Tensor, highest: bool) -> dict[str, Tensor]:
        """One pyramid level: {"out"[, "aux"][, "feat"][, "alpha"]} at this scale's own resolution."""
        need_feat = self.merge == "attention" or (self.merge == "hierarchical" and not highest)
        if self.window is not None and not self.training:
            k = self.num_classes
            if k is None:
                raise ContextSegError("sliding windows need the model's num_classes attribute "
                                      "(contextseg models have it)")
            if not need_feat:
                return {"out": sliding_window_inference(self.model, x, k, self.window, self.stride, self.align_corners)}

            def out_and_alpha(crop: Tensor) -> Tensor:  # hierarchical: logits and alpha, windowed together
                o = self.model(crop, return_feat=True)
                alpha = resize(self.attention(o["feat"]).float(), o["out"].shape[-2:], self.align_corners)
                return torch.cat([o["out"].float(), alpha], 1)

            both = sliding_window_inference(out_and_alpha, x, k + 1, self.window, self.stride, self.align_corners)
            return {"out": both[:, :k], "alpha": both[:, k:]}
        out = dict(self.model(x, return_feat=True) if need_feat else self.model(x))
        if self.merge == "hierarchical" and need_feat:
            out["alpha"] = self.attention(out.pop("feat"))
        return out

    def _pyramid(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        levels = [self._run_scale(resize_image(x, s), highest=i == len(self.scales) - 1)
                  for i, s in enumerate(self.scales)]
        if self.window is None or self.training:
            size = tuple(levels[self.scales.index(1.0)]["out"].shape[-2:]) if 1.0 in self.scales else (h, w)
        else:
            size = (h, w)
        ac = self.align_corners
        logits = [resize(upcast(level["out"]), size, ac) for level in levels]
        weights = alphas = None
        if self.merge == "attention":
            scores = self.attention([resize(level["feat"], size, ac) for level in levels])
            weights = torch.softmax(upcast(scores), dim=1)
        elif self.merge == "hierarchical":
            alphas = [resize(upcast(level["alpha"]), size, ac) for level in levels[:-1]]
            weights = hierarchical_weights(alphas) if alphas else logits[0].new_ones(logits[0].shape[0], 1, *size)
        result = {"out": self._merge(logits, weights, alphas)}
        if weights is not None:
            result["scale_weights"] = weights
        if self.training:
            extra = [k for k in levels[0] if k not in ("out", "feat", "alpha") and all(k in lv for lv in levels)]
            for key in extra:  # the model's other logits: OCR's "aux", DANet's "pam" and "cam", an aux head's "aux"
                result[key] = self._merge([resize(upcast(lv[key]), size, ac) for lv in levels], weights, alphas)
            for s, p in zip(self.scales, logits):
                result[scale_key(s)] = p
        return result

    def _merge(self, maps: list[Tensor], weights: Tensor | None, alphas: list[Tensor] | None) -> Tensor:
        if self.merge == "avg":
            return torch.stack(maps).mean(0)
        if self.merge == "max":
            return torch.stack(maps).amax(0)
        if self.merge == "hierarchical":  # the recurrence itself, highest scale first
            p = maps[-1]
            for a, p_s in zip(reversed(alphas), reversed(maps[:-1])):
                p = a * p_s + (1 - a) * p
            return p
        return sum(weights[:, i:i + 1] * p for i, p in enumerate(maps))


def configure_inference(
    model: nn.Module,
    scales: Sequence[float] | None = None,
    merge: str | None = None,
    flip: bool = False,
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> nn.Module:
    """Apply test-time options (the CLI's --scales/--merge/--flip/--window/--stride) to a loaded model.

    - No option given: the model unchanged (a plain model stays single-scale; a model trained with ``MultiScale``
      keeps its trained pyramid and merge).
    - A plain model: wrapped in ``MultiScale`` (scales default (1.0,), merge default "avg"); merge "attention" or
      "hierarchical" is an error, since their attention nets are learned with the wrapper.
    - A ``MultiScale`` model: its learned merge with new scales/flip/window, or, for merge "avg"/"max", its inner
      model re-wrapped (the attention net is then unused). Its flip, window and stride stay unless new ones are
      given (a stride alone applies to its window).
    """
    if merge is not None and merge not in MERGES:
        raise ContextSegError(f"unknown multi-scale merge {merge!r}; use one of {', '.join(MERGES)}")
    if isinstance(model, MultiScale):
        if window is None:  # the wrapper's own window (and stride, unless a new one is given), as its flip
            window, stride = model.window, model.stride if stride is None else stride
        if merge is None or merge == model.merge:
            if scales is not None:
                model.set_scales(scales)
            model.flip = model.flip or bool(flip)
            model.set_window(window, stride)
            return model
        if merge in LEARNED_MERGES:
            raise ContextSegError(
                f"this checkpoint was trained with merge={model.merge!r}; its attention net cannot do merge={merge!r}. "
                f"Use --merge {model.merge} (or avg / max), or train with model.kwargs.multiscale.merge={merge}")
        wrapped = MultiScale(model.model, scales if scales is not None else model.scales, merge,
                             flip=flip or model.flip, window=window, stride=stride)
    else:
        if merge in LEARNED_MERGES:
            raise ContextSegError(
                f"merge={merge!r} needs a checkpoint trained with the MultiScale wrapper (its attention net is "
                f"learned); train with model.kwargs='{{multiscale: {{scales: [0.5, 1.0], merge: {merge}}}}}', or "
                f"use --merge avg or --merge max with this checkpoint")
        if scales is None and merge is None and not flip and window is None and stride is None:
            return model
        wrapped = MultiScale(model, scales if scales is not None else (1.0,), merge or "avg", flip=flip,
                             window=window, stride=stride)
    for name in ("classes", "palette"):
        if hasattr(model, name):
            setattr(wrapped, name, getattr(model, name))
    return wrapped.train(model.training)


def inference_spec(model: nn.Module) -> dict:
    """The test-time options a model runs with, for reports: scales, merge, flip, window, stride."""
    if isinstance(model, MultiScale):
        spec = model.spec()
        return {k: spec[k] for k in ("scales", "merge", "flip", "window", "stride")}
    return {"scales": [1.0], "merge": None, "flip": False, "window": None, "stride": None}
