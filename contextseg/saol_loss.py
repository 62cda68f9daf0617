"""Training objective of the Spatially Attentive Output Layer (Kim, Baek & Kim, CVPR 2020, Sec. 3) on a
classifier's outputs {"out", ["gap", "spatial_logits", "attention"]} (models/heads/saol.py) and CutMix targets
(data/classification.py ``LabelCutMix``: label y_a, label_b y_b, lam, box) or plain labels (B,).

    L = w_out   [lam CE(out, y_a) + (1 - lam) CE(out, y_b)]        CutMix CE (Yun et al. 2019) on SAOL's log y^
      + w_sl    L_spatial(spatial_logits)                          self-supervision, CutMixed images only
      + w_att   L_attention(attention)                             self-supervision, CutMixed images only
      + w_gap   T^2 KL(softmax(out / T) || softmax(gap / T))       self-distillation into GAP-FC (SAOL side detached)
      + w_gapce [lam CE(gap, y_a) + (1 - lam) CE(gap, y_b)]         optional, 0 by default

Self-supervision from the box layout of a CutMixed image (the paper's "cut-and-paste of self-annotated spatial
labels according to the mixed input"). The output grid (h x w cells tiling the image) gets per cell the share
c_ij in [0, 1] of the cell inside the pasted box (exact geometry), and with it
    L_spatial   = mean_ij KL(t_ij || softmax_k(Z_ij)),  t_ij = (1 - c_ij) onehot(y_a) + c_ij onehot(y_b)
                  (cells wholly inside predict the pasted image's class, cells outside the own class; CE for them)
    L_attention = KL(Bern(r) || Bern(a)),  a = sum_ij A_ij c_ij the attention mass inside the box, r = 1 - lam the
                  box's share of the image (= mean_ij c_ij)
Both are 0 exactly when the spatial logits / attention follow the layout. Departure to note: the exact form of the
paper's two losses could not be checked against its text here; this is our reading of it. Another reading (targets
cut and pasted from the model's own, detached spatial logits and attention on the two unmixed images, which needs a
second forward pass) is not implemented.

Weights ``loss.weights`` by output name: out, spatial_logits, attention, gap, gap_ce (left at the package default
{out: 1.0, aux: 0.4}: out, spatial_logits, attention and gap at 1.0). Terms whose output the model lacks are 0 (a
plain "gap" model trains with the CutMix CE alone). ``loss.name=ce`` is {out: 1.0}. T = ``loss.kwargs.temperature``
(default 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ContextSegError

SAOL_WEIGHTS = {"out": 1.0, "spatial_logits": 1.0, "attention": 1.0, "gap": 1.0}
TERMS = ("out", "spatial_logits", "attention", "gap", "gap_ce")
PACKAGE_DEFAULT_WEIGHTS = {"out": 1.0, "aux": 0.4}


def box_coverage(box: Tensor, h: int, w: int) -> Tensor:
    """(B, 4) boxes (y0, x0, y1, x1) as fractions of the image -> (B, h, w) share of each grid cell inside the box."""
    edges_y = torch.arange(h + 1, device=box.device, dtype=torch.float32) / h
    edges_x = torch.arange(w + 1, device=box.device, dtype=torch.float32) / w
    b = box.float()
    oy = (torch.minimum(edges_y[1:], b[:, 2:3]) - torch.maximum(edges_y[:-1], b[:, 0:1])).clamp_min(0) * h
    ox = (torch.minimum(edges_x[1:], b[:, 3:4]) - torch.maximum(edges_x[:-1], b[:, 1:2])).clamp_min(0) * w
    return oy[:, :, None] * ox[:, None, :]


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    return torch.xlogy(x, y.clamp_min(1e-12))


def spatial_logit_loss(z: Tensor, cover: Tensor, y_a: Tensor, y_b: Tensor) -> Tensor:
    """(B, K, h, w) spatial logits, (B, h, w) coverage, labels (B,) -> (B,) mean over cells of KL(t || softmax(Z))."""
    log_p = z.float().log_softmax(1)
    k = z.shape[1]
    t = (1 - cover).unsqueeze(1) * F.one_hot(y_a, k).float()[:, :, None, None] \
        + cover.unsqueeze(1) * F.one_hot(y_b, k).float()[:, :, None, None]
    return (_xlogy(t, t) - t * log_p).sum(1).mean(dim=(1, 2))


def attention_split_loss(attention: Tensor, cover: Tensor, r: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, 1, h, w) attention (sums to 1), (B, h, w) coverage, (B,) box share r -> (B,) KL(Bern(r) || Bern(a))."""
    a = (attention.float()[:, 0] * cover).sum(dim=(1, 2)).clamp(eps, 1 - eps)
    return (_xlogy(r, r) + _xlogy(1 - r, 1 - r) - r * a.log() - (1 - r) * (1 - a).log()).clamp_min(0)


def _mixed_ce(logits: Tensor, t: dict) -> Tensor:
    return (t["lam"] * F.cross_entropy(logits.float(), t["label"], reduction="none")
            + (1 - t["lam"]) * F.cross_entropy(logits.float(), t["label_b"], reduction="none")).mean()


class SAOLLoss(nn.Module):
    """(outputs dict, targets dict | (B,) labels) -> (total, {"ce", "spatial", "attention", "distill", "gap_ce"} for
    the terms with a weight); see the module docstring."""

    PART = {"out": "ce", "spatial_logits": "spatial", "attention": "attention", "gap": "distill", "gap_ce": "gap_ce"}

    def __init__(self, weights: dict | None = None, temperature: float = 1.0):
        super().__init__()
        weights = dict(SAOL_WEIGHTS if weights is None or weights == PACKAGE_DEFAULT_WEIGHTS else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ContextSegError(f"loss.weights has {unknown}, which the SAOL loss does not know; its terms: "
                                  f"{', '.join(TERMS)} (e.g. {{out: 1, spatial_logits: 1, attention: 1, gap: 1}})")
        if any(not isinstance(v, (int, float)) or v < 0 for v in weights.values()):
            raise ContextSegError(f"loss.weights must be numbers >= 0, got {weights}")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ContextSegError(f"loss.kwargs.temperature must be > 0, got {temperature!r}")
        self.weights = {k: float(v) for k, v in weights.items() if v}
        self.temperature = float(temperature)

    @staticmethod
    def targets(targets, batch: int, device) -> dict:
        """A (B,) label tensor as unmixed CutMix targets; a targets dict unchanged (checked)."""
        if isinstance(targets, dict):
            return targets
        if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != batch:
            raise ContextSegError(f"a classification loss takes (B,) class labels, got "
                                  f"{getattr(targets, 'shape', type(targets))} for a batch of {batch}")
        return {"label": targets, "label_b": targets, "lam": torch.ones(batch, device=device),
                "box": torch.zeros(batch, 4, device=device)}

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
        for name, weight in self.weights.items():
            value = zero
            if name == "out":
                value = _mixed_ce(out, t)
            elif name == "gap_ce" and "gap" in outputs:
                value = _mixed_ce(outputs["gap"], t)
            elif name == "gap" and "gap" in outputs:
                temp = self.temperature
                p = (out.detach().float() / temp).softmax(1)
                log_q = (outputs["gap"].float() / temp).log_softmax(1)
                value = temp ** 2 * (_xlogy(p, p) - p * log_q).sum(1).mean()
            elif name in ("spatial_logits", "attention") and name in outputs and mixed.any():
                grid = outputs[name].shape[-2:]
                cover = box_coverage(t["box"], *grid)
                if name == "spatial_logits":
                    per = spatial_logit_loss(outputs[name], cover, t["label"], t["label_b"])
                else:
                    per = attention_split_loss(outputs[name], cover, (1 - t["lam"]).float())
                value = (per * mixed).sum() / n_mixed
            parts[self.PART[name]] = value
        total = sum(self.weights[n] * parts[self.PART[n]] for n in self.weights) if parts else zero
        return total, parts


CLASSIFICATION_LOSSES = ("saol", "ce")


def build_classification_loss(name: str = "saol", weights: dict | None = None, **kwargs) -> SAOLLoss:
    """loss.name "saol" (the weighted objective above) or "ce" (CutMix CE on "out" alone)."""
    if name not in CLASSIFICATION_LOSSES:
        raise ContextSegError(f"loss.name={name!r} is not a classification loss; use saol or ce")
    unknown = sorted(set(kwargs) - {"temperature"})
    if unknown:
        raise ContextSegError(f"loss.kwargs {unknown} are not options of the classification loss; it takes temperature")
    return SAOLLoss({"out": 1.0} if name == "ce" else weights, **kwargs)
