"""Inference-time folding of BatchNorm into the preceding convolution.

For an eval-mode BN after a conv, y = gamma * (W * x + b - mean) / sqrt(var + eps) + beta, which is the conv
W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps) per output channel. Folding removes one
full pass over every activation map; outputs are unchanged up to float rounding.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ContextSegError


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ContextSegError("fuse_conv_bn needs BatchNorm running statistics (track_running_stats=True)")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    w = conv.weight
    conv.weight.copy_((w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(w.dtype))
    else:
        conv.bias.copy_(bias.to(w.dtype))


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into that conv, in place; returns ``model``.

    Finds the pairs as (a) consecutive children of an ``nn.Sequential`` (also a conv followed by a
    ``Sequential(BN, ReLU)``), and (b) the ``fuse_pairs`` attribute pairs that residual blocks declare
    (``(("conv1", "bn1"), ...)``). Folded BNs become ``nn.Identity``.

    Inference only: the model must be in eval mode, and the fused model's state_dict no longer matches checkpoints
    (BN entries are gone, convs gained biases), so fuse a copy after loading weights, never before saving.
    """
    if model.training:
        raise ContextSegError("fuse_conv_bn is for inference only: call model.eval() before fusing")
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(type(module), "fuse_pairs", ()):
            conv, norm = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and _is_bn(norm):
                _fold(conv, norm)
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, nxt = module._modules[a], module._modules[b]
                if not isinstance(conv, nn.Conv2d):
                    continue
                if _is_bn(nxt):
                    _fold(conv, nxt)
                    module._modules[b] = nn.Identity()
                elif isinstance(nxt, nn.Sequential) and len(nxt) and _is_bn(nxt[0]):
                    _fold(conv, nxt[0])
                    first = next(iter(nxt._modules))
                    nxt._modules[first] = nn.Identity()
    return model
