"""Known-value tests: each asserts the RIGHT number (hand-computed, or from an independent re-computation written
here from the paper's / docstring's formula), not a shape, so that a plausible bug in the code under test fails.
Each test's docstring names the bug it kills (issue "tests that catch real bugs")."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contextseg.data.mix import BatchMix
from contextseg.losses.pixel import CrossEntropy, OhemCrossEntropy
from contextseg.losses.saol import SAOLLoss, sd_loss
from contextseg.metrics.classification import accuracy_from_confusion
from contextseg.metrics.segmentation import metrics_from_confusion
from contextseg.metrics.sod import smeasure
from contextseg.models.heads.aspp import ASPPHead
from contextseg.models.heads.aspp_l import ASPPLHead
from contextseg.models.heads.largefov import LargeFOVHead
from contextseg.models.heads.nonlocal_head import NonLocalHead
from contextseg.models.heads.ocr import SpatialOCR
from contextseg.models.heads.psp import PSPHead
from contextseg.models.multiscale import MultiScale, resize_image

# ----------------------------------------------------------------------------- 1. OCR concat order


def test_ocr_fuse_conv_sees_context_first():
    """Kills: SpatialOCR concatenating [feats, context] instead of the official [context, feats] (HRNet-OCR
    ``SpatialOCR_Module.forward``: ``torch.cat([context, feats], 1)``). The fuse conv is set to pass through only
    its first C input channels, so the output must be the context y, not the pixel features x."""
    torch.manual_seed(0)
    c, ck, k = 4, 3, 2
    m = SpatialOCR(c, ck, c, dropout=0.0).eval()
    conv, bn = m.conv_bn_dropout[0], m.conv_bn_dropout[1][0]
    with torch.no_grad():
        w = torch.zeros(c, 2 * c, 1, 1)
        w[:, :c, 0, 0] = torch.eye(c)  # identity on the first block, zero on the second
        conv.weight.copy_(w)
        bn.running_mean.zero_(), bn.running_var.fill_(1.0), bn.weight.fill_(1.0), bn.bias.zero_()
    feats = torch.rand(1, c, 5, 6) + 0.5  # positive: ReLU would keep them, so a swap shows
    proxy = torch.randn(1, c, k, 1)
    with torch.no_grad():
        context = m.object_context_block(feats, proxy)
        got = m(feats, proxy)
    assert context.abs().sum() > 0
    expected = context / math.sqrt(1.0 + bn.eps)  # BN with identity stats, then ReLU (context >= 0 already)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, feats / math.sqrt(1.0 + bn.eps), atol=1e-2)


# ----------------------------------------------------------------------------- 2. class weights in CE / OHEM


def _ce_by_hand(logits, labels, weights, ignore=255, normalise_by_weights=True):
    """sum_i w_{y_i} (-log softmax(z_i)[y_i]) / (sum_i w_{y_i} or N), over the non-ignored pixels."""
    logp = logits.double().log_softmax(1)
    num = den = 0.0
    n = 0
    b, _, h, w = logits.shape
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(labels[bi, y, x])
                if lab == ignore:
                    continue
                wt = 1.0 if weights is None else float(weights[lab])
                num += -wt * float(logp[bi, lab, y, x])
                den += wt
                n += 1
    return num / (den if normalise_by_weights else n)


def _logits_labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 2
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0, :2] = 255
    labels[1, 3, 4] = 255
    return logits, labels


def test_cross_entropy_uses_class_weights():
    """Kills: CrossEntropy ignoring ``class_weights``. The weighted value must equal torch's
    F.cross_entropy(weight=...) and the hand formula sum w_y CE / sum w_y, and differ from the unweighted one."""
    logits, labels = _logits_labels()
    w = [1.0, 5.0, 1.0]
    weighted = CrossEntropy(class_weights=w)(logits, labels).item()
    plain = CrossEntropy()(logits, labels).item()
    ref = F.cross_entropy(logits, labels, weight=torch.tensor(w), ignore_index=255).item()
    assert weighted == pytest.approx(ref, rel=1e-6)
    assert weighted == pytest.approx(_ce_by_hand(logits, labels, w), rel=1e-6)
    assert plain == pytest.approx(_ce_by_hand(logits, labels, None), rel=1e-6)
    assert abs(weighted - plain) > 1e-2


def test_ohem_uses_class_weights_with_plain_mean():
    """Kills: OhemCrossEntropy ignoring ``class_weights``. With thresh 1.0 and a huge min_kept every valid pixel
    is kept; the module's normalisation (documented in its docstring, as the official HRNet-OCR criterion) is the
    PLAIN mean over kept pixels of the class-weighted per-pixel CE: sum_i w_{y_i} CE_i / N_valid (not / sum w)."""
    logits, labels = _logits_labels(1)
    w = [1.0, 5.0, 1.0]
    ohem = OhemCrossEntropy(thresh=1.0, min_kept=10**6, class_weights=w)(logits, labels).item()
    plain = OhemCrossEntropy(thresh=1.0, min_kept=10**6)(logits, labels).item()
    pixel = F.cross_entropy(logits, labels, weight=torch.tensor(w), ignore_index=255, reduction="none")
    ref = pixel[labels != 255].mean().item()
    assert ohem == pytest.approx(ref, rel=1e-6)
    assert ohem == pytest.approx(_ce_by_hand(logits, labels, w, normalise_by_weights=False), rel=1e-6)
    assert plain == pytest.approx(_ce_by_hand(logits, labels, None), rel=1e-6)
    assert abs(ohem - plain) > 1e-2


# ----------------------------------------------------------------------------- 3. per-class accuracy = recall

# rows: ground truth, columns: prediction; row sums 6, 6, 10 != column sums 8, 7, 7
ASYM = np.array([[5, 1, 0], [3, 2, 1], [0, 4, 6]])


def test_segmentation_per_class_acc_is_recall_and_iou():
    """Kills: per-class accuracy computed as precision (diag / column sum) instead of recall (diag / row sum, rows
    are the ground truth); also pins IoU = tp / (row + col - tp) on an asymmetric matrix."""
    r = metrics_from_confusion(ASYM, ["a", "b", "c"])
    recall = [5 / 6, 2 / 6, 6 / 10]
    iou = [5 / (6 + 8 - 5), 2 / (6 + 7 - 2), 6 / (10 + 7 - 6)]
    assert list(r["per_class_acc"].values()) == pytest.approx(recall, rel=1e-12)
    assert list(r["per_class_iou"].values()) == pytest.approx(iou, rel=1e-12)
    assert r["mean_acc"] == pytest.approx(sum(recall) / 3, rel=1e-12)
    assert r["mIoU"] == pytest.approx(sum(iou) / 3, rel=1e-12)
    assert r["pixel_acc"] == pytest.approx(13 / 22, rel=1e-12)


def test_classification_per_class_acc_is_recall():
    """Kills: accuracy_from_confusion's per-class accuracy computed as precision instead of recall."""
    r = accuracy_from_confusion(ASYM, ["a", "b", "c"])
    recall = [5 / 6, 2 / 6, 6 / 10]
    assert list(r["per_class_acc"].values()) == pytest.approx(recall, rel=1e-12)
    assert r["mean_class_acc"] == pytest.approx(sum(recall) / 3, rel=1e-12)
    assert r["top1"] == pytest.approx(13 / 22, rel=1e-12) and r["images"] == 22


# ----------------------------------------------------------------------------- 4. BatchMix probability


def test_batch_mix_applies_with_probability_p_not_1_minus_p():
    """Kills: BatchMix applying the mix with probability 1 - p instead of p (the existing test uses p = 0.5,
    which is symmetric). With p = 0.2 over 2000 seeded batches the mixed fraction must be near 0.2, far from 0.8
    (binomial std 0.009). An unmixed batch is returned as the same objects, a mixed one as new tensors."""
    images = torch.rand(2, 1, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    mix = BatchMix("cutmix", p=0.2, generator=torch.Generator().manual_seed(0))
    n = 2000
    mixed = sum(int(mix(images, labels)[0] is not images) for _ in range(n))
    assert abs(mixed / n - 0.2) < 0.05, mixed / n
    always = BatchMix("cutmix", p=1.0, generator=torch.Generator().manual_seed(0))
    assert all(always(images, labels)[0] is not images for _ in range(20))


# ----------------------------------------------------------------------------- 5-6. MultiScale


class ConstToy(nn.Module):
    """'out' = h and 'aux' = 100 + h everywhere, h the height of the input it gets (so each scale's maps are
    different known constants); records the input sizes."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.num_classes, self.in_channels = 2, 3
        self.sizes = []

    def forward(self, x, return_feat=False):
        b, _, h, w = x.shape
        self.sizes.append((h, w))
        ones = torch.ones(b, 2, h, w) + 0 * self.dummy
        return {"out": float(h) * ones, "aux": (100.0 + h) * ones}


def test_multiscale_merges_aux_from_each_scales_aux():
    """Kills: MultiScale merging the extra training outputs ("aux", "pam", "cam") from each scale's "out" instead of
    each scale's own "aux". Scales 0.5 / 1.0 of an 8x8 image: out = 4, 8 and aux = 104, 108 -> avg out 6, aux 106."""
    model = MultiScale(ConstToy(), scales=(0.5, 1.0), merge="avg").train()
    out = model(torch.zeros(1, 3, 8, 8))
    assert torch.allclose(out["out"], torch.full((1, 2, 8, 8), 6.0))
    assert torch.allclose(out["aux"], torch.full((1, 2, 8, 8), 106.0))
    assert torch.allclose(out["out_s0.5"], torch.full((1, 2, 8, 8), 4.0))
    model = MultiScale(ConstToy(), scales=(0.5, 1.0), merge="max").train()
    assert torch.allclose(model(torch.zeros(1, 3, 8, 8))["aux"], torch.full((1, 2, 8, 8), 108.0))


def test_multiscale_scaled_sizes_are_rounded_not_truncated():
    """Kills: scaled image sizes truncated (int(s * H)) instead of rounded. The documented rule is round(s * H)
    (``resize_image``; the code rounds halves up, int(s * H + 0.5), as the official HRNet ``int(x + 0.5)``):
    0.75 * 33 = 24.75 -> 25 (not 24), 0.75 * 31 = 23.25 -> 23, 0.5 * 33 = 16.5 -> 17 (not 16), 0.5 * 31 = 15.5 -> 16."""
    assert resize_image(torch.zeros(1, 3, 33, 31), 0.75).shape[-2:] == (25, 23)
    toy = ConstToy()
    MultiScale(toy, scales=(0.5, 0.75, 1.0), merge="avg").eval()(torch.zeros(1, 3, 33, 31))
    assert toy.sizes == [(17, 16), (25, 23), (33, 31)]


# ----------------------------------------------------------------------------- 7. SAOL self-distillation


def _sd_by_hand(gap, out, y, beta, t):
    """(1 - beta) CE(gap, y) + beta T^2 KL(softmax(out / T) || softmax(gap / T)), one sample, plain Python."""
    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]
    ce = -math.log(softmax(gap)[y])
    p = softmax([a / t for a in out])  # teacher: SAOL output
    q = softmax([a / t for a in gap])  # student: GAP-FC
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return (1 - beta) * ce + beta * t * t * kl


def test_sd_loss_by_hand_teacher_is_out_with_t_squared():
    """Kills: sd_loss with teacher and student swapped (KL(softmax(gap/T) || softmax(out/T))) and sd_loss without
    its T^2 factor. T = 2, beta = 0.5, plain labels; the gradient must flow into gap only (out is the detached
    teacher)."""
    gap_v = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.5]]
    out_v = [[0.0, 3.0, -1.0], [2.0, 0.5, -0.5]]
    y = [1, 0]
    gap = torch.tensor(gap_v, dtype=torch.float64, requires_grad=True)
    out = torch.tensor(out_v, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(y)
    t = SAOLLoss.targets(labels, 2, "cpu")
    got = sd_loss(gap, out, t, beta=0.5, temperature=2.0)
    expected = [_sd_by_hand(g, o, yy, 0.5, 2.0) for g, o, yy in zip(gap_v, out_v, y)]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    got.sum().backward()
    assert gap.grad is not None and gap.grad.abs().sum() > 0
    assert out.grad is None or out.grad.abs().sum() == 0
    # the same through the loss module (term "gap" alone, batch mean)
    total, parts = SAOLLoss({"gap": 1.0}, temperature=2.0, beta=0.5)({"out": out, "gap": gap}, labels)
    assert total.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert parts["sd"].item() == pytest.approx(sum(expected) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- 8. heads against their formulas


def _randomise(module, seed=0):
    """Random weights everywhere, BN with random running stats and affine (eval mode), float64."""
    g = torch.Generator().manual_seed(seed)
    module.double().eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.3)
    return module


def _conv(x, conv, dilation=1):
    k = conv.weight.shape[-1]
    return F.conv2d(x, conv.weight, conv.bias, padding=dilation * (k // 2), dilation=dilation)


def _bn(x, bn):
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _cbr(x, seq, dilation=1):
    """ReLU(BN(conv(x))) of a conv_bn_relu Sequential (conv, BN, ReLU)."""
    return torch.relu(_bn(_conv(x, seq[0], dilation), seq[1]))


def _adaptive_avg(x, b):
    """Adaptive average pooling into b x b bins: bin i spans [floor(i H / b), ceil((i + 1) H / b))."""
    h, w = x.shape[-2:]
    out = torch.zeros(*x.shape[:2], b, b, dtype=x.dtype)
    for i in range(b):
        for j in range(b):
            y0, y1 = (i * h) // b, -((-(i + 1) * h) // b)
            x0, x1 = (j * w) // b, -((-(j + 1) * w) // b)
            out[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(dim=(2, 3))
    return out


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)  # DEFAULT_ALIGN_CORNERS


def test_psp_head_matches_pyramid_pooling_formula():
    """Kills: a wrong PSP pyramid (bins, pooling, BN/ReLU order, concat order [x, u_1, u_2, u_3, u_6], bottleneck,
    classifier). Independent re-computation from Zhao et al. 2017 Sec. 3.2 on a 1x4x8x8 map."""
    head = _randomise(PSPHead([4], num_classes=2, pool_channels=2, channels=3, dropout=0.0))
    assert head.align_corners is True and head.bins == (1, 2, 3, 6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pyramid = [x]
    for b, branch in zip((1, 2, 3, 6), head.psp_modules):
        pooled = _adaptive_avg(x, b)
        pyramid.append(_up(torch.relu(_bn(_conv(pooled, branch[1]), branch[2])), (8, 8)))
    h = _cbr(torch.cat(pyramid, 1), head.bottleneck)
    expected = _conv(h, head.cls_head)
    with torch.no_grad():
        got = head([x])["out"]
    assert torch.allclose(got, expected, atol=1e-10)


def test_aspp_head_matches_formula():
    """Kills: a wrong ASPP (branch dilation/padding, missing or mis-broadcast image pooling, concat order
    [a_0, a_r..., a_pool], projection, classifier). Independent re-computation from Chen et al. 2017 Sec. 3.3."""
    head = _randomise(ASPPHead([3], num_classes=2, rates=(1, 2), channels=4, dropout=0.0))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    branches = [_cbr(x, head.aspp[0])] + [_cbr(x, head.aspp[i + 1], dilation=r) for i, r in enumerate((1, 2))]
    gap = x.mean(dim=(2, 3), keepdim=True)
    pool = torch.relu(_bn(_conv(gap, head.image_pool[1]), head.image_pool[2]))
    branches.append(pool.expand(-1, -1, 8, 8))
    expected = _conv(_cbr(torch.cat(branches, 1), head.project), head.cls_head)
    with torch.no_grad():
        got = head([x])["out"]
    assert torch.allclose(got, expected, atol=1e-10)


def test_aspp_l_head_is_sum_of_dilated_classifiers():
    """Kills: ASPP-L not summing its four dilated 3x3 classifiers (DeepLab v2 Fig. 4(b)) with the right rates."""
    head = _randomise(ASPPLHead([3], num_classes=2, rates=(1, 2, 3)))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = sum(_conv(x, br, dilation=r) for br, r in zip(head.branches, (1, 2, 3)))
    with torch.no_grad():
        assert torch.allclose(head([x])["out"], expected, atol=1e-10)


def test_largefov_head_matches_formula():
    """Kills: a wrong LargeFOV head (fc6 dilation / ReLU, fc7, fc8 order)."""
    head = _randomise(LargeFOVHead([3], num_classes=2, dilation=2, channels=4))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = torch.relu(_conv(torch.relu(_conv(x, head.fc6[0], dilation=2)), head.fc7[0]))
    with torch.no_grad():
        assert torch.allclose(head([x])["out"], _conv(h, head.cls_head), atol=1e-10)


def test_nonlocal_head_matches_formula():
    """Kills: a wrong non-local head: embedded-Gaussian weights softmax_j(theta_i . phi_j / sqrt(C')), the residual
    z = x + BN(W_z y), and concat order [x, h] before conv_cat (Wang et al. 2018; mmseg NLHead)."""
    head = _randomise(NonLocalHead([3], num_classes=2, channels=4, reduction=2, dropout=0.0))
    nl = head.nl_block
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = _cbr(x, head.reduce)
    theta = _conv(r, nl.theta).flatten(2)[0]  # (C', N)
    phi = _conv(r, nl.phi).flatten(2)[0]
    g = _conv(r, nl.g).flatten(2)[0]
    n = theta.shape[1]
    y = torch.zeros_like(g)
    for i in range(n):
        s = torch.stack([theta[:, i] @ phi[:, j] for j in range(n)]) / math.sqrt(2)
        wts = torch.exp(s - s.max())
        y[:, i] = (g * (wts / wts.sum())).sum(1)
    z = r + _bn(_conv(y.reshape(1, 2, 6, 6), nl.conv_out[0]), nl.conv_out[1])
    h = _cbr(torch.cat([x, _cbr(z, head.conv)], 1), head.conv_cat)
    with torch.no_grad():
        assert torch.allclose(head([x])["out"], _conv(h, head.cls_head), atol=1e-10)


# ----------------------------------------------------------------------------- 9. S-measure edge case by hand


def _smeasure_by_hand(pred, gt, alpha=0.5):
    """S = alpha S_object + (1 - alpha) S_region (Fan et al. 2017), written from contextseg.metrics.sod's docstrings:
    object score 2 m / (m^2 + 1 + std) (ddof 1) of pred on the foreground and of 1 - pred on the background,
    weighted by the foreground share; region score: the 4 quadrants split at the foreground centroid
    (round half-to-even, + 1), each a global SSIM weighted by its area share, an empty quadrant dropped
    (area weight 0)."""
    h, w = gt.shape
    fg = [float(pred[i, j]) for i in range(h) for j in range(w) if gt[i, j]]
    bg = [1.0 - float(pred[i, j]) for i in range(h) for j in range(w) if not gt[i, j]]

    def obj(v):
        m = sum(v) / len(v)
        sd = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return 2 * m / (m * m + 1 + sd)

    ratio = len(fg) / (h * w)
    s_obj = ratio * obj(fg) + (1 - ratio) * obj(bg)
    ys = [i for i in range(h) for j in range(w) if gt[i, j]]
    xs = [j for i in range(h) for j in range(w) if gt[i, j]]
    cy, cx = round(sum(ys) / len(ys)) + 1, round(sum(xs) / len(xs)) + 1  # Python round: half to even

    def ssim(rows, cols):
        p = [float(pred[i, j]) for i in rows for j in cols]
        q = [float(gt[i, j]) for i in rows for j in cols]
        n = len(p)
        mx, my = sum(p) / n, sum(q) / n
        vx = sum((a - mx) ** 2 for a in p) / (n - 1)
        vy = sum((b - my) ** 2 for b in q) / (n - 1)
        cov = sum((a - mx) * (b - my) for a, b in zip(p, q)) / (n - 1)
        num, den = 4 * mx * my * cov, (mx * mx + my * my) * (vx + vy)
        return num / den if num != 0 else (1.0 if den == 0 else 0.0)

    s_reg = 0.0
    for rows, cols in ((range(0, cy), range(0, cx)), (range(0, cy), range(cx, w)),
                       (range(cy, h), range(0, cx)), (range(cy, h), range(cx, w))):
        if len(rows) and len(cols):
            s_reg += ssim(rows, cols) * len(rows) * len(cols) / (h * w)
    return max(0.0, alpha * s_obj + (1 - alpha) * s_reg)


def test_smeasure_tiny_edge_case_by_hand():
    """Kills: a wrong S-measure where the foreground centroid lies in the last column (right quadrants empty; the
    reference PySODMetrics gives NaN there). 2x2, gt foreground at (0, 1) only, pred [[.2, .8], [.4, 0]]:
        S_object = 1/4 * 2(.8)/(.64 + 1) + 3/4 * 2(.8)/(.64 + 1 + .2)    (bg 1 - pred = .8, .6, 1: mean .8, std .2)
        centroid -> cy = 1, cx = 2 = W: quadrants LT (row 0) and LB (row 1), weights 1/2 each, right ones empty
        SSIM(LT) = 4(.5)(.5)(.3) / ((.25 + .25)(.18 + .5)) = 15/17,  SSIM(LB) = 0 (gt constant 0, num 0, den > 0)
        S = (S_object + 15/34) / 2"""
    pred = np.array([[0.2, 0.8], [0.4, 0.0]])
    gt = np.array([[False, True], [False, False]])
    s_object = 0.25 * 1.6 / 1.64 + 0.75 * 1.6 / 1.84
    expected = 0.5 * s_object + 0.5 * (0.5 * 15 / 17)
    assert _smeasure_by_hand(pred, gt) == pytest.approx(expected, rel=1e-12)
    assert smeasure(pred, gt) == pytest.approx(expected, rel=1e-12)


def test_smeasure_of_the_reference_edge_pair_by_hand():
    """Kills: a wrong ``EDGE_S_MEASURE`` pin (tests/test_sod_metrics.py, our own number where PySODMetrics gives
    NaN) or a wrong S-measure on that pair: the plain-Python formula above must give the pinned number."""
    path = Path(__file__).with_name("test_sod_metrics.py")
    spec = importlib.util.spec_from_file_location("_sod_cases_for_known_values", path)
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    pred8, gt8 = cases.edge_pair()
    pred = pred8 / 255
    pred = (pred - pred.min()) / (pred.max() - pred.min())  # mapminmax, as prepare()
    gt = gt8 > 128
    cy = round(np.nonzero(gt)[0].mean()) + 1
    cx = round(np.nonzero(gt)[1].mean()) + 1
    assert cx == gt.shape[1] and 0 < cy < gt.shape[0]  # the right quadrants really are empty
    hand = _smeasure_by_hand(pred, gt)
    assert hand == pytest.approx(cases.EDGE_S_MEASURE, abs=1e-12)
    assert smeasure(pred, gt) == pytest.approx(hand, abs=1e-12)


# ----------------------------------------------------------------------------- metrics: the cases mutation testing
# found untested (benchmarks/mutation.py metrics)


def test_segmentation_metrics_table_by_hand():
    """The printed table: exact lines, n/a for a class absent from labels and predictions, percentages x100."""
    from contextseg.metrics.segmentation import format_table

    # rows truth, columns prediction; class "c" never occurs; "b" is predicted once but never true
    m = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    r = metrics_from_confusion(m, ["a", "b", "c"])
    assert r["per_class_iou"] == {"a": 0.75, "b": 0.0, "c": None}
    assert r["per_class_acc"] == {"a": 0.75, "b": None, "c": None}
    assert format_table(r).splitlines() == [
        "class        IoU     Acc",
        "a          75.00   75.00",
        "b           0.00     n/a",
        "c            n/a     n/a",
        "mean       37.50   75.00   pixel acc 75.00",
    ]


def test_segmentation_metrics_of_nothing_are_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" from an all-NaN IoU vector
        r = metrics_from_confusion(np.zeros((2, 2), np.int64))
    assert math.isnan(r["mIoU"]) and math.isnan(r["pixel_acc"]) and math.isnan(r["mean_acc"])
    assert r["per_class_iou"] == {"0": None, "1": None}


def test_confusion_matrix_and_segmetric_defaults():
    from contextseg.metrics.segmentation import SegMetric, confusion_matrix

    pred = torch.tensor([[0, 0], [1, 0]])
    label = torch.tensor([[0, 255], [0, 0]])
    # class 2 occurs nowhere: the matrix still has its row and column (bincount's minlength)
    assert confusion_matrix(pred, label, 3).tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"prediction \(2, 2\) and label \(1, 4\) differ"):
        confusion_matrix(pred, label.reshape(1, 4), 3)
    metric = SegMetric(3)  # ignore_index 255 by default, class names "0", "1", "2"
    metric.update(pred[None], label[None])
    assert metric.matrix.dtype == torch.int64 and metric.matrix.tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0]]
    r = metric.compute()
    assert list(r["per_class_iou"]) == ["0", "1", "2"] and r["pixel_acc"] == pytest.approx(2 / 3)
    named = SegMetric(3, class_names=["x", "y", "z"])
    named.update(pred[None], label[None])
    assert named.compute()["per_class_iou"] == {"x": pytest.approx(2 / 3), "y": 0.0, "z": None}


def test_classification_accuracy_with_absent_and_single_classes():
    # truth rows: "a" 1 image (right), "b" none, "c" 3 images (2 right, 1 taken for "a")
    m = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 2]])
    r = accuracy_from_confusion(m)
    assert r["top1"] == pytest.approx(3 / 4) and r["images"] == 4
    assert r["per_class_acc"] == {"0": 1.0, "1": 0.0, "2": pytest.approx(2 / 3)}
    assert r["mean_class_acc"] == pytest.approx((1 + 2 / 3) / 2)  # over the classes that occur
    assert accuracy_from_confusion(np.eye(2, dtype=np.int64) * 3, ["cat", "dog"])["per_class_acc"] == {"cat": 1.0,
                                                                                                        "dog": 1.0}
    assert accuracy_from_confusion(np.array([[0, 1], [0, 0]]))["top1"] == 0.0  # one image, wrong
    assert accuracy_from_confusion(np.array([[1, 0], [0, 0]]))["top1"] == 1.0  # one image, right
    empty = accuracy_from_confusion(np.zeros((2, 2)))
    assert empty == {"top1": 0.0, "images": 0, "mean_class_acc": 0.0, "per_class_acc": {"0": 0.0, "1": 0.0}}


# ----------------------------------------------------------------------------- pixel losses: what mutation testing
# found untested (benchmarks/mutation.py losses)


def test_loss_weight_validation_names_the_problem():
    from contextseg.errors import ContextSegError
    from contextseg.losses.pixel import FocalLoss

    for bad in ([1.0, -1.0], [1.0, float("inf")]):
        with pytest.raises(ContextSegError, match=r"class_weights must be finite and >= 0, got \[1\.0, (-1\.0|inf)\]"):
            CrossEntropy(class_weights=bad)
    assert CrossEntropy(class_weights=[0.0, 1.0]).class_weights.tolist() == [0.0, 1.0]  # a zero weight is allowed
    assert CrossEntropy(class_weights=[1, 2]).class_weights.dtype == torch.float32
    logits, labels = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    for loss in (CrossEntropy(class_weights=[1.0, 2.0]), OhemCrossEntropy(class_weights=[1.0, 2.0])):
        with pytest.raises(ContextSegError, match="class_weights has 2 values but the model predicts 3 classes"):
            loss(logits, labels)
    with pytest.raises(ContextSegError, match="focal alpha has 2 values but the model predicts 3 classes"):
        FocalLoss(alpha=[0.5, 0.5])(logits, labels)
    with pytest.raises(ContextSegError, match=r"alpha must be finite and >= 0, got \[-0\.5"):
        FocalLoss(alpha=[-0.5, 0.5])
    with pytest.raises(ContextSegError, match=r"a single focal alpha is a weight in \[0, 1\], got 1\.5"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ContextSegError, match="focal gamma must be >= 0, got -1"):
        FocalLoss(gamma=-1)
    with pytest.raises(ContextSegError, match=r"ohem thresh is a probability in \(0, 1\], got 0"):
        OhemCrossEntropy(thresh=0)
    with pytest.raises(ContextSegError, match=r"ohem thresh is a probability in \(0, 1\], got 1\.5"):
        OhemCrossEntropy(thresh=1.5)
    FocalLoss(alpha=0.0), FocalLoss(alpha=1.0), OhemCrossEntropy(thresh=1.0)  # the closed ends are valid


def test_focal_loss_gamma_one_and_default_by_formula():
    from contextseg.losses.pixel import FocalLoss

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5))
    labels[0, 0, 0] = 255
    logp = F.log_softmax(logits, 1).gather(1, labels.clamp(max=3).unsqueeze(1)).squeeze(1)[labels != 255]
    for gamma in (1.0, 2.0):
        want = (-(1 - logp.exp()) ** gamma * logp).mean()
        assert FocalLoss(gamma=gamma)(logits, labels) == pytest.approx(float(want), rel=1e-5)
    assert FocalLoss()(logits, labels) == pytest.approx(float(FocalLoss(gamma=2.0)(logits, labels)))  # default 2


def test_losses_resize_logits_with_the_models_align_corners():
    """Stride-4 logits are resized to the labels with the loss's align_corners (the model's), not a default."""
    from contextseg.losses.pixel import FocalLoss

    torch.manual_seed(0)
    logits, labels = torch.randn(1, 3, 4, 5), torch.randint(0, 3, (1, 15, 19))
    for ac in (False, True):
        up = F.interpolate(logits, size=(15, 19), mode="bilinear", align_corners=ac)
        for loss, want in ((CrossEntropy(), F.cross_entropy(up, labels)),
                           (OhemCrossEntropy(thresh=1.0), F.cross_entropy(up, labels)),
                           (FocalLoss(gamma=0.0), F.cross_entropy(up, labels))):
            loss.align_corners = ac
            assert float(loss(logits, labels)) == pytest.approx(float(want), rel=1e-5), (type(loss).__name__, ac)


def test_ohem_on_out_only_and_weighted_ce_with_its_ignore_index_on_the_others():
    """build_loss("ohem"): OHEM on "out", plain CE with the same class weights and ignore index on "aux" (official)."""
    from contextseg.losses.outputs import build_loss

    torch.manual_seed(0)
    out, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 7
    weights = [1.0, 2.0, 0.5]
    loss = build_loss("ohem", {"out": 1.0, "aux": 0.4}, ignore_index=7, thresh=0.7, min_kept=1, class_weights=weights)
    total, parts = loss({"out": out, "aux": aux}, labels)
    ohem = OhemCrossEntropy(thresh=0.7, min_kept=1, ignore_index=7, class_weights=weights)(out, labels)
    ce_aux = F.cross_entropy(aux, labels, weight=torch.tensor(weights), ignore_index=7)
    assert float(parts["out"]) == pytest.approx(float(ohem)) and float(parts["aux"]) == pytest.approx(float(ce_aux))
    assert float(total) == pytest.approx(float(ohem + 0.4 * ce_aux))
    assert float(ohem) != pytest.approx(float(F.cross_entropy(out, labels, weight=torch.tensor(weights),
                                                              ignore_index=7)))  # OHEM did drop pixels
    # the default weights are the segmentation ones, 1.0 out + 0.4 aux
    total, _ = build_loss("ce")({"out": out, "aux": aux}, labels.clamp(max=2))
    assert float(total) == pytest.approx(float(F.cross_entropy(out, labels.clamp(max=2))
                                               + 0.4 * F.cross_entropy(aux, labels.clamp(max=2))))


def test_outputs_loss_skips_absent_names_and_matches_patterns():
    from contextseg.losses.outputs import OutputsLoss

    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 4, 4))
    outs = {"out": torch.randn(1, 3, 4, 4), "out_s0.5": torch.randn(1, 3, 4, 4), "attention": torch.randn(1, 3, 4, 4)}
    ce = CrossEntropy()
    loss = OutputsLoss(ce, {"aux": 0.4, "out": 1.0, "out_s*": 0.25})  # "aux" absent: skipped, the others still count
    total, parts = loss(outs, labels)
    assert set(parts) == {"out", "out_s0.5"}
    assert float(total) == pytest.approx(float(ce(outs["out"], labels) + 0.25 * ce(outs["out_s0.5"], labels)))
    assert OutputsLoss(ce, {"out[": 1.0}).weight_of("out[") == 1.0  # an exact name wins even when it looks like a glob
    assert OutputsLoss(ce, {"out_s?.5": 2.0}).weight_of("out_s0.5") == 2.0
    assert OutputsLoss(ce, {"ou": 1.0}).weight_of("out") == 0.0  # a plain name is no pattern: no prefix match
    with pytest.raises(KeyError, match=r"none of the loss outputs \['aux'\] is in the model's outputs \['out'"):
        OutputsLoss(ce, {"aux": 1.0})({"out": outs["out"]}, labels)


def test_loss_kwargs_resolution_from_the_dataset():
    from contextseg.config import load_config
    from contextseg.errors import ContextSegError
    from contextseg.losses.outputs import build_loss, build_loss_for, resolve_loss_kwargs
    from contextseg.losses.pixel import median_frequency_weights

    class Labels:  # a dataset stand-in: raw labels, its ignore index and class count
        ignore_index, num_classes = 7, 3
        labels = [np.array([[0, 0, 1], [7, 2, 2]]), np.array([[1, 1, 7], [7, 0, 0]])]

        def __len__(self):
            return 2

        def load_label(self, i):
            return self.labels[i]

    data = Labels()
    want = median_frequency_weights(data, 3, ignore_index=7)
    with pytest.raises(ContextSegError, match=r"label values \[7\]"):  # 7 is a class value unless it is ignored
        resolve_loss_kwargs({"class_weights": "median_frequency"}, data)
    for spelling in ("median_frequency", "median-frequency", "Median_Freq"):
        assert resolve_loss_kwargs({"class_weights": spelling}, data, ignore_index=7)["class_weights"] == want
    cfg = load_config(None, ["loss.name=ce", "loss.kwargs={class_weights: median_frequency}",
                             "loss.weights={out: 1.0, aux: 0.2}"])
    loss = build_loss_for(cfg, data, progress=False)
    assert loss.criterion.ignore_index == 7 and loss.weights == {"out": 1.0, "aux": 0.2}
    assert loss.criterion.class_weights.tolist() == pytest.approx(want)
    with pytest.raises(ContextSegError, match=r"loss.kwargs.class_weights='inverse' is not known; use median_frequency"):
        resolve_loss_kwargs({"class_weights": "inverse"}, data)
    with pytest.raises(ContextSegError, match="loss.kwargs.alpha=median_frequency needs the training set to count"):
        resolve_loss_kwargs({"alpha": "median_frequency"}, None, num_classes=3)
    with pytest.raises(ContextSegError, match="loss.kwargs.class_weights has 2 values but the dataset has 3 classes"):
        resolve_loss_kwargs({"class_weights": [1.0, 2.0]}, data)
    with pytest.raises(ContextSegError, match=r"loss 'ce' has no argument\(s\) \['gamma'\]; its arguments "
                                              r"\(loss.kwargs\) are: class_weights$"):
        build_loss("ce", gamma=2.0)
