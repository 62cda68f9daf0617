"""Float64 gradchecks of our own modules (OCR gather/distribution, attention blocks, multi-scale merges)."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .common import FAIL, PASS, _result


# ----------------------------------------------------------------------------- gradcheck


class _ToySegmentor(nn.Module):
    """A 2-layer stand-in for a Segmentor: (B, 3, H, W) -> {"out": (B, K, H/2, W/2)} [+ "feat" (B, C, H/2, W/2)]."""

    def __init__(self, num_classes: int = 2, channels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels, self.feat_channels = num_classes, 3, channels
        self.body = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor, return_feat: bool = False) -> dict[str, Tensor]:
        feat = torch.tanh(self.body(x))
        out = {"out": self.cls(feat)}
        if return_feat:
            out["feat"] = feat
        return out


def _gradcheck_module(module: nn.Module, inputs: Sequence[Tensor], output: Callable | None = None) -> None:
    """gradcheck of module(*inputs) with respect to the inputs and every parameter, in float64."""
    from torch.func import functional_call

    module = module.double().eval()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    inputs = [x.double().requires_grad_(True) for x in inputs]
    n = len(inputs)

    def fn(*args):
        out = functional_call(module, dict(zip(names, args[n:])), tuple(args[:n]))
        return output(out) if output is not None else out

    torch.autograd.gradcheck(fn, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-3)


def gradcheck_cases() -> dict[str, Callable[[], None]]:
    """Name -> a function that runs one gradcheck (raises on a mismatch). Tiny sizes: all run in about a second."""
    from ...models.attention import ChannelAttention, NonLocal2d, PositionAttention, SEBlock, SpatialAttention
    from ...models.heads.ocr import ObjectAttentionBlock, SpatialGather, SpatialOCR
    from ...models.multiscale import MultiScale, hierarchical_weights

    def randomise_bn(m: nn.Module) -> nn.Module:  # non-trivial affine BN (NonLocal2d's starts at zero scale)
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.data.uniform_(0.5, 1.5)
                bn.bias.data.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        return m

    def with_gamma(m: nn.Module) -> nn.Module:  # DANet's blocks start as the identity (gamma 0): open the path
        m.gamma.data.fill_(0.7)
        return m

    def ms_case(merge: str):
        def run():
            torch.manual_seed(0)
            model = MultiScale(_ToySegmentor(), scales=(0.5, 1.0), merge=merge, attention_channels=3)
            randomise_bn(model)
            _gradcheck_module(model, [torch.randn(1, 3, 8, 8)],
                              lambda o: tuple(o[k] for k in ("out", "scale_weights") if k in o))
        return run

    def case(build, *shapes):
        def run():
            torch.manual_seed(0)
            _gradcheck_module(randomise_bn(build()), [torch.randn(*s) for s in shapes])
        return run

    def hier():
        a = [torch.rand(1, 1, 3, 3, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True) for _ in range(2)]
        torch.autograd.gradcheck(lambda *x: hierarchical_weights(list(x)), tuple(a))

    return {
        "ocr.SpatialGather": case(SpatialGather, (1, 3, 3, 4), (1, 2, 3, 4)),
        "ocr.ObjectAttentionBlock": case(lambda: ObjectAttentionBlock(4, 3), (1, 4, 3, 3), (1, 4, 2, 1)),
        "ocr.SpatialOCR": case(lambda: SpatialOCR(4, 3, 4), (1, 4, 3, 3), (1, 4, 2, 1)),
        "attention.SEBlock": case(lambda: SEBlock(4, reduction=2), (2, 4, 3, 3)),
        "attention.NonLocal2d": case(lambda: NonLocal2d(4, reduction=2), (1, 4, 3, 3)),
        "attention.PositionAttention": case(lambda: with_gamma(PositionAttention(8)), (1, 8, 3, 3)),
        "attention.ChannelAttention": case(lambda: with_gamma(ChannelAttention()), (1, 4, 3, 3)),
        "attention.SpatialAttention": case(lambda: SpatialAttention(4, kernel_size=3), (1, 4, 3, 3)),
        "multiscale.hierarchical_weights": hier,
        "multiscale.MultiScale[avg]": ms_case("avg"),
        "multiscale.MultiScale[max]": ms_case("max"),
        "multiscale.MultiScale[attention]": ms_case("attention"),
        "multiscale.MultiScale[hierarchical]": ms_case("hierarchical"),
    }


def check_gradients(cases: dict[str, Callable[[], None]] | None = None) -> dict:
    """Run the gradchecks; FAIL lists the modules whose analytic and numerical gradients differ."""
    cases = cases if cases is not None else gradcheck_cases()
    rows = {}
    for name, run in cases.items():
        t0 = time.time()
        try:
            run()
            rows[name] = {"passed": True, "seconds": time.time() - t0}
        except Exception as exc:  # GradcheckError, or the module failing on float64
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            rows[name] = {"passed": False, "seconds": time.time() - t0, "error": f"{type(exc).__name__}: {first}"}
    failed = [n for n, r in rows.items() if not r["passed"]]
    if failed:
        return _result("gradcheck", FAIL, f"{len(failed)} of {len(rows)} gradchecks failed: {', '.join(failed)}",
                       cases=rows)
    return _result("gradcheck", PASS, f"{len(rows)} modules: analytic gradients match finite differences (float64)",
                   cases=rows)
