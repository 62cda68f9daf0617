"""Training objective of the Spatially Attentive Output Layer (Kim, Baek & Kim, CVPR 2020, arXiv 2004.07570, Sec. 3.2
self-supervised losses, Sec. 3.3 self-distillation) on a classifier's outputs {"out", ["gap", "spatial_logits",
"attention"]} (models/heads/saol.py) and CutMix targets (data/classification.py ``LabelCutMix``) or plain labels (B,).

    L = w_out  [lam CE(out, y_a) + (1 - lam) CE(out, y_b)]    CutMix CE (Yun et al. 2019) on SAOL's log y^ (Eq. 2)
      + w_att  L_ss1(attention, M)                           Sec. 3.2, CutMixed images only
      + w_sl   L_ss2(spatial_logits, source spatial logits)   Sec. 3.2, CutMixed images only
      + w_gap  L_SD(gap, out)                                Sec. 3.3, beta = 0.5

Shapes: B images, K classes, h x w the output grid (the last feature map, 8 x 8 on a CIFAR ResNet); A the attention
(B, 1, h, w), softmax over the h*w cells; Z the spatial logits (B, K, h, w), Y = softmax_k(Z).

M is the binary CutMix mask (1 on the pasted box, 0 elsewhere), brought to the output grid as each cell's share
inside the box, m_ij in [0, 1] (``box_coverage``: the box's exact overlap with the cell, = average pooling of the
pixel mask; 0/1 for cells wholly outside/inside).

    L_ss1 = -1/(hw) sum_ij [ m_ij log A_ij + (1 - m_ij) log(1 - A_ij) ]
            binary cross-entropy between the predicted CutMix region (the attention map) and M. With A summing to 1
            its minimum is attention spread evenly over the pasted box and none outside: attention that finds the box
            scores lower than uniform attention.
    L_ss2 = sum_ij m_ij KL( Y^src_ij || Y_ij ) / sum_ij m_ij
            KL divergence, inside the pasted box, from the spatial logits of the image the patch was cut from (its
            own, unmixed forward pass, over the same cells: CutMix pastes the box at the same place) to the mixed
            image's. Y^src are targets (no gradient): ``targets["source_logits"]`` (B, K, h, w), partner's logits
            per sample, filled in by ``WithSourceLogits`` (the engine wraps the CutMix with it).
    L_SD  = (1 - beta) [lam CE(gap, y_a) + (1 - lam) CE(gap, y_b)] + beta T^2 KL( softmax(out/T) || softmax(gap/T) )
            the two output layers' logits for the same input: SAOL (teacher, detached) distilled into GAP-FC, mixed
            with GAP-FC's own CutMix CE; beta = 0.5 (paper), T = 1.

Followed from the paper (as far as its text could be read here, see below): L_ss1 is a BCE between the actual and
the predicted CutMix region with M 1 on the CutMix region and 0 elsewhere; L_ss2 a KL divergence between the spatial
logits of the CutMix region and those of the original image over the cropped region; L_SD from the two output
layers' logits, beta = 0.5; the self-supervised losses act on the attention map and the spatial logits. Our
choices where the text at hand did not say: the attention map itself is the predicted region (per cell, no
rescaling), M on the grid by area share, cells averaged (L_ss1) or weighted by m_ij (L_ss2), KL(source || mixed)
with the source logits detached and computed in eval mode (``WithSourceLogits``), beta mixing GAP-FC's CE with the
distillation term (Hinton et al.'s form), the SAOL side of L_SD detached, and all term weights 1. The equations
themselves could not be read (the paper's Sec. 3.2-3.3 text was not available; the official code,
github.com/ildoonet/spatially-attentive-output-layer, was removed).

Weights ``loss.weights`` by output name: out, attention (L_ss1), spatial_logits (L_ss2), gap (L_SD); None (the
config default) means all four at 1.0. Terms whose output the model lacks are 0 (a plain "gap" model
trains with the CutMix CE alone). ``loss.name=ce`` is {out: 1.0}. ``loss.kwargs``: beta (0.5), temperature (1).
Parts (logged as loss_<part>): ce, ss1, ss2, sd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError

SAOL_WEIGHTS = {"out": 1.0, "attention": 1.0, "spatial_logits": 1.0, "gap": 1.0}
TERMS = ("out", "attention", "spatial_logits", "gap")
EPS = 1e-12


def box_coverage(box: Tensor, h: int, w: int) -> Tensor:
    """(B, 4) boxes (y0, x0, y1, x1) as fractions of the image -> (B, h, w) share of each grid cell inside the box
    (M on the output grid)."""
    edges_y = torch.arange(h + 1, device=box.device, dtype=torch.float32) / h
    edges_x = torch.arange(w + 1, device=box.device, dtype=torch.float32) / w
    b = box.float()
    oy = (torch.minimum(edges_y[1:], b[:, 2:3]) - torch.maximum(edges_y[:-1], b[:, 0:1])).clamp_min(0) * h
    ox = (torch.minimum(edges_x[1:], b[:, 3:4]) - torch.maximum(edges_x[:-1], b[:, 1:2])).clamp_min(0) * w
    return oy[:, :, None] * ox[:, None, :]


def ss1_loss(attention: Tensor, mask: Tensor) -> Tensor:
    """L_ss1: (B, 1, h, w) attention, (B, h, w) mask m in [0, 1] -> (B,) mean over cells of BCE(A_ij, m_ij)."""
    a = attention.float()[:, 0].clamp(EPS, 1 - 1e-7)
    return -(mask * a.log() + (1 - mask) * torch.log1p(-a)).mean(dim=(1, 2))


def ss2_loss(z: Tensor, z_source: Tensor, mask: Tensor) -> Tensor:
    """L_ss2: (B, K, h, w) spatial logits of the mixed images, (B, K, h, w) of the pasted patches' source images
    (targets, detached here), (B, h, w) mask -> (B,) mask-weighted mean over cells of
    KL(softmax(Z_src) || softmax(Z))."""
    log_p = z_source.detach().float().log_softmax(1)
    kl = (log_p.exp() * (log_p - z.float().log_softmax(1))).sum(1)
    return (kl * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(EPS)


def _mixed_ce(logits: Tensor, t: dict) -> Tensor:
    """(B, K) logits -> (B,) lam CE(y_a) + (1 - lam) CE(y_b)."""
    return (t["lam"] * F.cross_entropy(logits.float(), t["label"], reduction="none")
            + (1 - t["lam"]) * F.cross_entropy(logits.float(), t["label_b"], reduction="none"))


def sd_loss(gap: Tensor, out: Tensor, t: dict, beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """L_SD: (B, K) GAP-FC logits, (B, K) SAOL logits (teacher, detached), CutMix targets -> (B,)
    (1 - beta) CutMix CE(gap) + beta T^2 KL(softmax(out / T) || softmax(gap / T))."""
    log_p = (out.detach().float() / temperature).log_softmax(1)
    kl = (log_p.exp() * (log_p - (gap.float() / temperature).log_softmax(1))).sum(1)
    return (1 - beta) * _mixed_ce(gap, t) + beta * temperature ** 2 * kl


class SAOLLoss(nn.Module):
    """(outputs dict, targets dict | (B,) labels) -> (total, {"ce", "ss1", "ss2", "sd"} for the terms with a
    weight); see the module docstring."""

    PART = {"out": "ce", "attention": "ss1", "spatial_logits": "ss2", "gap": "sd"}

    def __init__(self, weights: dict | None = None, temperature: float = 1.0, beta: float = 0.5):
        super().__init__()
        weights = dict(SAOL_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            hint = " (GAP-FC's CE is part of L_SD: its share is 1 - loss.kwargs.beta)" if "gap_ce" in unknown else ""
            raise ContextSegError(f"loss.weights has {unknown}, which the SAOL loss does not know{hint}; its terms: "
                                  f"{', '.join(TERMS)} (e.g. {{out: 1, attention: 1, spatial_logits: 1, gap: 1}})")
        if any(not isinstance(v, (int, float)) or v < 0 for v in weights.values()):
            raise ContextSegError(f"loss.weights must be numbers >= 0, got {weights}")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ContextSegError(f"loss.kwargs.temperature must be > 0, got {temperature!r}")
        if not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise ContextSegError(f"loss.kwargs.beta must be in [0, 1], got {beta!r}")
        self.weights = {k: float(v) for k, v in weights.items() if v}
        self.temperature, self.beta = float(temperature), float(beta)

    @property
    def needs_source_logits(self) -> bool:
        """True when L_ss2 has a weight: training must fill targets["source_logits"] (``WithSourceLogits``)."""
        return "spatial_logits" in self.weights

    @staticmethod
    def targets(targets, batch: int, device) -> dict:
        """A (B,) label tensor as unmixed CutMix targets; a targets dict unchanged (checked)."""
        if isinstance(targets, dict):
            return targets
        if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != batch:
            raise ContextSegError(f"a classification loss takes (B,) class labels, got "
                                  f"{getattr(targets, 'shape', type(targets))} for a batch of {batch}")
        return {"label": targets, "label_b": targets, "lam": torch.ones(batch, device=device),
                "box": torch.zeros(batch, 4, device=device), "index_b": torch.arange(batch, device=device)}

    def forward(self, outputs: dict, targets) -> tuple[Tensor, dict]:
        out = outputs["out"]
        if out.dim() != 2:
            raise ContextSegError(f"a classifier's 'out' is (B, K) logits, got {tuple(out.shape)}; use a "
                                  f"classification model (model.arch saol or gap)")
        t = self.targets(targets, out.shape[0], out.device)
        if int(t["label"].max()) >= out.shape[1] or int(t["label"].min()) < 0:
            raise ContextSegError(f"class labels must be in 0..{out.shape[1] - 1}, got {t['label'].tolist()}")
        zero = out.new_zeros((), dtype=torch.float32)
        mixed = (t["lam"] < 1).float()
        n_mixed = mixed.sum().clamp_min(1.0)
        parts: dict[str, Tensor] = {}
        for name in self.weights:
            value = zero
            if name == "out":
                value = _mixed_ce(out, t).mean()
            elif name == "gap" and "gap" in outputs:
                value = sd_loss(outputs["gap"], out, t, self.beta, self.temperature).mean()
            elif name in ("attention", "spatial_logits") and name in outputs and mixed.any():
                mask = box_coverage(t["box"], *outputs[name].shape[-2:])
                if name == "attention":
                    per = ss1_loss(outputs[name], mask)
                else:
                    if "source_logits" not in t:
                        raise ContextSegError(
                            "L_ss2 needs targets['source_logits'], the spatial logits of each CutMixed image's "
                            "source (unmixed partner) image: wrap the CutMix in losses.saol.WithSourceLogits(mix, "
                            "model), or set loss.weights.spatial_logits=0")
                    per = ss2_loss(outputs[name], t["source_logits"], mask)
                value = (per * mixed).sum() / n_mixed
            parts[self.PART[name]] = value
        total = sum(self.weights[n] * parts[self.PART[n]] for n in self.weights) if parts else zero
        return total, parts


class WithSourceLogits:
    """The training batch transform for L_ss2: ``mix`` (LabelCutMix), then, when the batch was mixed, the model's
    spatial logits of the unmixed images, taken to each sample's partner (the image its pasted box was cut from):
    ``targets["source_logits"]`` (B, K, h, w) = model(images)["spatial_logits"][index_b].

    One extra forward pass per mixed batch, without gradient, in eval mode (the mode is restored): BatchNorm uses
    its running statistics, so the pass neither updates them a second time nor, in a distributed run, waits on
    ranks whose batch was not mixed. A model without "spatial_logits" gets nothing (and no further passes)."""

    def __init__(self, mix, model: nn.Module):
        self.mix, self.model, self.active = mix, model, True

    @torch.no_grad()
    def source_logits(self, images: Tensor) -> Tensor | None:
        was_training = self.model.training
        self.model.eval()
        try:
            z = self.model(images).get("spatial_logits")
        finally:
            self.model.train(was_training)
        return None if z is None else z.float()

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        mixed, t = self.mix(images, labels)
        if self.active and (t["lam"] < 1).any():
            z = self.source_logits(images)
            if z is None:
                self.active = False
            else:
                t["source_logits"] = z[t["index_b"]]
        return mixed, t


CLASSIFICATION_LOSSES = ("saol", "ce")


def build_classification_loss(name: str = "saol", weights: dict | None = None, **kwargs) -> SAOLLoss:
    """loss.name "saol" (the weighted objective above) or "ce" (CutMix CE on "out" alone)."""
    if name not in CLASSIFICATION_LOSSES:
        raise ContextSegError(f"loss.name={name!r} is not a classification loss; use saol or ce")
    unknown = sorted(set(kwargs) - {"temperature", "beta"})
    if unknown:
        raise ContextSegError(f"loss.kwargs {unknown} are not options of the classification loss; it takes "
                              f"temperature, beta")
    return SAOLLoss({"out": 1.0} if name == "ce" else weights, **kwargs)
