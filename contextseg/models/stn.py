"""Spatial transformers (Jaderberg, Simonyan, Zisserman & Kavukcuoglu, NeurIPS 2015, "Spatial Transformer Networks").

A spatial transformer warps its input by a transformation regressed from that input (Sec. 3):

    localisation net  f_loc: x (B, C, H, W) -> theta (B, 2, 3)           Sec. 3.1
    grid generator    (x_s, y_s)^T = theta (x_t, y_t, 1)^T  for every     Sec. 3.2, Eq. 1; coordinates normalised
                      cell of the output grid (B, H_o, W_o, 2)            to [-1, 1] (``F.affine_grid``)
    sampler           V = bilinear sample of x at (x_s, y_s), zeros       Sec. 3.3, Eq. 5 (``F.grid_sample``)
                      outside                                             (B, C, H_o, W_o)

Everything is differentiable in x and theta, so the localisation net learns from the task's loss alone.

Choices here: the localisation net of the PyTorch STN tutorial (conv 7x7 8 ch - max pool 2 - ReLU, conv 5x5 10 ch -
max pool 2 - ReLU, FC 32 - ReLU - FC), made size-agnostic by an adaptive average pooling to ``pool_size`` x
``pool_size`` (4: a no-op at 32 x 32; 8,544 parameters for 3 input channels in "affine" mode); the paper's identity
initialisation (last FC: zero weights, bias = the identity transformation); ``align_corners=False`` (pixel centres at
(2i + 1) / n - 1: the identity reproduces the input exactly, a translation by t moves it by t * n / 2 pixels). The
grid and the sampling run in float32 (float64 stays float64) even under autocast.

Modes (Sec. 3.1, "attention"):
    "affine"  theta = the 6 regressed numbers                                        bias [1, 0, 0, 0, 1, 0]
    "crop"    hard attention: theta = [[s, 0, tx], [0, s, ty]], 3 regressed numbers  bias [0, 0, 0] (s = 1, t = 0)
              (r, tx, ty), s = min(1, 2 sigmoid(r)) in (0, 1]: a square window of side s (a fraction of the
              image) centred at (tx, ty), enlarged to the output size. s = 1 at the start; the clamp keeps the
              window no larger than the image.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError
from .segmentor import Segmentor

STN_MODES = ("affine", "crop")


def _size_pair(size, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ContextSegError(f"{what} must be an integer >= 1 or [H, W], got {size!r}")
    return int(pair[0]), int(pair[1])


class SpatialTransformer(nn.Module):
    """(B, C, H, W) -> (transformed (B, C, H_o, W_o), theta (B, 2, 3)); Jaderberg et al. 2015 (module docstring).

    Args:
        in_channels: C.
        mode: "affine" (6 parameters) or "crop" (scale + translation, s in (0, 1]: hard attention).
        channels, kernel_sizes: the localisation net's conv blocks (conv k x k, max pool 2, ReLU), (8, 10) and
            (7, 5) as the PyTorch tutorial; the input must survive them (>= 18 px for the defaults).
        hidden: width of the hidden FC layer (32).
        pool_size: the conv features are average-pooled to pool_size x pool_size before the FC layers (4).
        output_size: (H_o, W_o) of the sampled output, e.g. a fixed glimpse for "crop"; None: the input's size.
        lr_mult: the localisation net's learning rate as a multiple of the run's (0.1). Measured: at the run's full
            rate (CIFAR-10, SGD 0.1) its ReLUs all died by step 500 and the model collapsed by step 1500 (top-1
            10%); a tenth of the rate is the usual remedy (theta moves the whole image).
    """

    def __init__(self, in_channels: int = 3, mode: str = "affine", channels: Sequence[int] = (8, 10),
                 kernel_sizes: Sequence[int] = (7, 5), hidden: int = 32, pool_size: int = 4,
                 output_size: int | Sequence[int] | None = None, lr_mult: float = 0.1):
        super().__init__()
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)) or not 0 < lr_mult <= 10:
            raise ContextSegError(f"spatial transformer lr_mult must be a number in (0, 10], got {lr_mult!r}")
        self.lr_mult = float(lr_mult)  # the optimizer trains these parameters at lr_mult x train.lr
        if mode not in STN_MODES:
            raise ContextSegError(f"spatial transformer mode is 'affine' or 'crop', got {mode!r}")
        channels, kernel_sizes = [int(c) for c in channels], [int(k) for k in kernel_sizes]
        if not channels or len(channels) != len(kernel_sizes) or min(channels + kernel_sizes) < 1:
            raise ContextSegError(f"channels and kernel_sizes list one positive width and kernel per conv block, got "
                                  f"{channels} and {kernel_sizes}")
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("pool_size", pool_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ContextSegError(f"spatial transformer {name} must be an integer >= 1, got {value!r}")
        self.in_channels, self.mode, self.output_size = in_channels, mode, _size_pair(output_size, "output_size")
        self.kernel_sizes = kernel_sizes
        blocks, c = [], in_channels
        for width, k in zip(channels, kernel_sizes):
            blocks += [nn.Conv2d(c, width, k), nn.MaxPool2d(2, stride=2), nn.ReLU(inplace=True)]
            c = width
        self.localization = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        n = 6 if mode == "affine" else 3
        self.fc_loc = nn.Sequential(nn.Linear(c * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, n))
        self.reset_identity()

    def reset_identity(self) -> None:
        """The paper's initialisation: last FC weights 0, bias = the identity transformation."""
        last = self.fc_loc[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0] if self.mode == "affine" else [0.0, 0, 0]))

    @property
    def min_input_size(self) -> int:
        """The smallest input side the localisation net takes (each block: n -> floor((n - k + 1) / 2) >= 1)."""
        n = 1
        for k in reversed(self.kernel_sizes):
            n = 2 * n + k - 1
        return n

    def to_theta(self, params: Tensor) -> Tensor:
        """The localisation net's raw output (B, 6) or (B, 3) -> theta (B, 2, 3) (see the module docstring)."""
        if self.mode == "affine":
            return params.view(-1, 2, 3)
        s = (2 * torch.sigmoid(params[:, 0])).clamp(max=1.0)
        zero = torch.zeros_like(s)
        return torch.stack([s, zero, params[:, 1], zero, s, params[:, 2]], dim=1).view(-1, 2, 3)

    def theta(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> theta (B, 2, 3): the localisation net (its FC layers outside autocast)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < self.min_input_size:
            raise ContextSegError(f"the spatial transformer takes a (B, {self.in_channels}, H, W) batch with H, W >= "
                                  f"{self.min_input_size}, got {tuple(x.shape)}; use smaller kernel_sizes for "
                                  f"smaller images")
        h = self.pool(self.localization(x)).flatten(1)
        last = self.fc_loc[-1].weight
        with torch.autocast(x.device.type, enabled=False):
            return self.to_theta(self.fc_loc(h.to(last.dtype)))

    def sample(self, x: Tensor, theta: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Grid generator + bilinear sampler: (B, C, H, W), theta (B, 2, 3) -> (B, C, H_o, W_o), zeros outside;
        output pixel (i, j) reads x at theta (x_t, y_t, 1)^T, x_t = (2 j + 1) / W_o - 1 (align_corners=False)."""
        h, w = _size_pair(output_size, "output_size") or self.output_size or tuple(x.shape[-2:])
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            grid = F.affine_grid(theta.to(dtype), [x.shape[0], x.shape[1], h, w], align_corners=False)
            out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        theta = self.theta(x)
        return self.sample(x, theta), theta

    def extra_repr(self) -> str:
        size = f", output_size={self.output_size}" if self.output_size else ""
        return f"mode={self.mode!r}{size}"


class STNClassifier(Segmentor):
    """A SpatialTransformer in front of a Segmentor's backbone (``create_model(..., stn=...)``, classifiers only):
    x (B, C, H, W) -> stn -> backbone -> head. The output dict adds "stn_theta" (B, 2, 3) (train and eval) and, in
    eval mode, "stn_input" (B, C, H_o, W_o): the transformed (normalised) input the backbone saw. Parameter names:
    the Segmentor's ("backbone.*", "head.*") plus "stn.*"."""

    def __init__(self, stn: SpatialTransformer, backbone: nn.Module, head: nn.Module,
                 aux_head: nn.Module | None = None):
        super().__init__(backbone, head, aux_head)
        if stn.in_channels != self.in_channels:
            raise ContextSegError(f"the spatial transformer takes {stn.in_channels} channels, the backbone "
                                  f"{self.in_channels}")
        self.stn = stn

    def forward(self, x: Tensor, return_feat: bool = False, return_aux: bool = False) -> dict[str, Tensor]:
        if not x.is_floating_point():
            raise ContextSegError(f"the model takes a float image batch, got dtype {x.dtype}; convert with "
                                  f"x.float() / 255 (and normalize) before calling it")
        moved, theta = self.stn(x)
        out = super().forward(moved, return_feat=return_feat, return_aux=return_aux)
        out["stn_theta"] = theta
        if not self.training:
            out["stn_input"] = moved
        return out


def build_stn(stn, in_channels: int) -> SpatialTransformer | None:
    """``create_model``'s ``stn`` argument -> a SpatialTransformer (None for None / False): True takes the
    defaults, a mapping gives SpatialTransformer options (mode, channels, kernel_sizes, hidden, pool_size,
    output_size, lr_mult)."""
    if stn is None or stn is False:
        return None
    if stn is not True and not isinstance(stn, dict):
        raise ContextSegError(f"stn must be true, false or a mapping of SpatialTransformer options, e.g. "
                              f"{{mode: crop, output_size: [32, 32]}}, got {stn!r}")
    options = {} if stn is True else dict(stn)
    known = ("mode", "channels", "kernel_sizes", "hidden", "pool_size", "output_size", "lr_mult")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ContextSegError(f"unknown stn option(s) {unknown}; the spatial transformer accepts: {', '.join(known)}")
    return SpatialTransformer(in_channels, **options)
