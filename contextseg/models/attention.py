"""Attention blocks shared by heads and backbones: channel attention (squeeze-and-excitation) and self-attention
(non-local block). Each keeps the shape of its input: (B, C, H, W) -> (B, C, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError


def upcast(x: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32 (softmax and mixing of logits under autocast); float32 and float64 unchanged,
    so a float64 pass (``torch.autograd.gradcheck``, ``contextseg doctor``) keeps its precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SEBlock(nn.Module):
    """Squeeze-and-Excitation block (Hu, Shen & Sun 2018, "Squeeze-and-Excitation Networks", Sec. 3, Fig. 1;
    placement in a residual unit: Fig. 3, on the residual branch before the sum with the identity).

        z = GAP(x)                                   squeeze         (B, C, 1, 1)   (Eq. 2)
        s = sigmoid(W2 ReLU(W1 z + b1) + b2)         excitation      (B, C, 1, 1)   (Eq. 3), W1: C -> C/r, W2: C/r -> C
        y = s * x                                    channel scale   (B, C, H, W)   (Eq. 4)

    The two fully connected layers are 1x1 convs (same parameters as ``nn.Linear``, no reshapes, any memory
    format). Parameters: 2 * C * (C/r) + C/r + C, with C/r = max(1, C // r).

    Args:
        channels: C.
        reduction: r, the bottleneck ratio (16 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ContextSegError(f"SEBlock needs channels >= 1 and reduction >= 1, got {channels} and {reduction}")
        hidden = max(1, channels // reduction)
        self.channels, self.reduction, self.hidden = channels, reduction, hidden
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(self.relu(self.fc1(s))))
        return x * s


class NonLocal2d(nn.Module):
    """Non-local (self-attention) block, embedded Gaussian form (Wang, Girshick, Gupta & He 2018, "Non-local Neural
    Networks", Eqs. 1-3 and Fig. 2), laid out as mmcv's ``NonLocal2d`` with a BN after W_z (what mmsegmentation's
    ``NLHead`` builds):

        theta = W_theta x, phi = W_phi x, g = W_g x       1x1 convs with bias, C -> C' = C // reduction
        w     = softmax_j(theta_i^T phi_j / sqrt(C'))      (B, HW, HW), the pairwise weights (Eq. 3;
                                                           the 1/sqrt(C') scale only with use_scale)
        y_i   = sum_j w_ij g_j                             (B, C', H, W)   (Eq. 1)
        z     = x + BN(W_z y)                              (B, C, H, W)    (Eq. 6), W_z a 1x1 conv C' -> C, no bias

    The BN scale starts at zero, so the block starts as the identity (paper Sec. 4.1, as mmcv ``zeros_init``).
    Memory is O((HW)^2) per image: on a stride-4 map of a 1024x2048 image that is 131072^2 weights, so run it on
    a stride-8 (or coarser) map there.

    Parameters: 3 * (C * C' + C') + C' * C + 2 * C.
    """

    def __init__(self, in_channels: int, reduction: int = 2, use_scale: bool = True):
        super().__init__()
        inter = in_channels // reduction
        if inter < 1:
            raise ContextSegError(
                f"NonLocal2d: in_channels={in_channels} // reduction={reduction} leaves no channels; lower reduction"
            )
        self.in_channels, self.inter_channels, self.use_scale = in_channels, inter, use_scale
        self.g = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.theta = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.conv_out = nn.Sequential(nn.Conv2d(inter, in_channels, kernel_size=1, bias=False), nn.BatchNorm2d(in_channels))
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_out[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        sim = torch.matmul(theta, phi)  # (B, HW, HW)
        if self.use_scale:
            sim = sim * self.inter_channels**-0.5
        sim = F.softmax(upcast(sim), dim=-1).to(g.dtype)
        y = torch.matmul(sim, g).transpose(1, 2).reshape(b, self.inter_channels, h, w)  # (B, C', H, W)
        return x + self.conv_out(y)


class PositionAttention(nn.Module):
    """DANet position attention module (Fu et al. 2019, "Dual Attention Network for Scene Segmentation", Sec. 3.2,
    Eqs. 1-2; official ``PAM_Module``): (B, C, H, W) -> (B, C, H, W).

        q = W_q x, k = W_k x        1x1 convs with bias, C -> C/8           (B, N, C/8), (B, C/8, N), N = HW
        v = W_v x                   1x1 conv with bias, C -> C              (B, C, N)
        s = softmax_j(q_i . k_j)    no scaling                              (B, N, N)
        E = gamma * (v s^T) + x     gamma a learnable scalar, starting at 0 (the block starts as the identity)

    Memory is O(N^2) per image, as the non-local block. Parameters: 2 * (C * C/8 + C/8) + C * C + C + 1.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 8:
            raise ContextSegError(f"PositionAttention needs channels >= 8 (query/key width C/8), got {channels}")
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key_conv(x).flatten(2)  # (B, C/8, N)
        attn = F.softmax(upcast(torch.matmul(q, k)), dim=-1)  # (B, N, N)
        v = self.value_conv(x).flatten(2)  # (B, C, N)
        out = torch.matmul(v, attn.to(v.dtype).transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """DANet channel attention module (Fu et al. 2019, Sec. 3.3, Eqs. 3-4; official ``CAM_Module``):
    (B, C, H, W) -> (B, C, H, W), no parameters but gamma.

        a = x reshaped                          (B, C, N)
        e = a a^T                               (B, C, C)   channel affinities
        s = softmax_j(max_j(e_i) - e_ij)        (B, C, C)   the official code's form (= softmax_j(-e_ij): it favours
                                                            dissimilar channels; the paper's Eq. 3 writes exp(e_ij))
        E = gamma * (s a) + x                   gamma a learnable scalar, starting at 0
    """

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        a = x.flatten(2)  # (B, C, N)
        energy = upcast(torch.matmul(a, a.transpose(1, 2)))  # (B, C, C)
        attn = F.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1).to(a.dtype)
        return self.gamma * torch.matmul(attn, a).reshape(b, c, h, w) + x


class SpatialAttention(nn.Module):
    """PFA spatial attention (Zhao & Wu 2019, "Pyramid Feature Attention Network for Saliency Detection",
    Sec. 3.3, Eqs. 3-4; official Keras ``SpatialAttention``): a per-pixel weight from high-level features, used
    to re-weight low-level ones. (B, C, H, W) -> (B, 1, H, W) in (0, 1).

        C1 = g(conv_kx1(g(conv_1xk(f))))     conv_1xk: C -> C/2, conv_kx1: C/2 -> 1, g = ReLU(BN(.))
        C2 = g(conv_1xk(g(conv_kx1(f))))     the same with the two kernel shapes swapped
        SA = sigmoid(C1 + C2)

    k = 9; the separable 1 x k / k x 1 pairs give a k x k receptive field cheaply. Convs with bias (Keras default).
    Parameters: 2 * [(k*C*C/2 + C/2) + C + (k*C/2 + 1) + 2].
    """

    def __init__(self, channels: int, kernel_size: int = 9):
        super().__init__()
        if channels < 2 or kernel_size % 2 == 0:
            raise ContextSegError(f"SpatialAttention needs channels >= 2 and an odd kernel_size, got {channels} and "
                                  f"{kernel_size}")
        half, k, p = channels // 2, kernel_size, kernel_size // 2

        def conv_bn_relu(c_in: int, c_out: int, shape: tuple[int, int]) -> list[nn.Module]:
            pad = (p if shape[0] > 1 else 0, p if shape[1] > 1 else 0)
            return [nn.Conv2d(c_in, c_out, shape, padding=pad), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.branch1 = nn.Sequential(*conv_bn_relu(channels, half, (1, k)), *conv_bn_relu(half, 1, (k, 1)))
        self.branch2 = nn.Sequential(*conv_bn_relu(channels, half, (k, 1)), *conv_bn_relu(half, 1, (1, k)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.branch1(x) + self.branch2(x))
