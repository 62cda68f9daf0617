"""Losses (CE class weights, OHEM, focal, output weighting) and batch mixes (CutMix, Copy-Paste)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from catalogue import error_message
from contextseg.config import load_config
from contextseg.data.classification import LabelCutMix, build_label_mix
from contextseg.data.mix import SCALE_JITTER, BatchMix, build_batch_mix, copy_paste, cutmix, cutmix_box, scale_jitter
from contextseg.errors import ContextSegError
from contextseg.losses import (CrossEntropy, FocalLoss, OhemCrossEntropy, OutputsLoss, build_loss, build_loss_for,
                               median_frequency_weights, resize_to)


def logits_for(probs):
    """(N,) probabilities of class 0 -> (1, 2, 1, N) logits whose softmax gives exactly them for class 0."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)])[None, :, None, :].float()


# ----------------------------------------------------------------------------- focal


def test_focal_gamma0_equals_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 12, 14))
    labels[0, :3] = 255
    ce = CrossEntropy()(logits, labels)
    fl = FocalLoss(gamma=0.0)(logits, labels)
    assert torch.allclose(fl, ce, rtol=1e-6, atol=0)
    w = [0.5, 1.0, 2.0, 1.5, 0.1]  # with weights, focal is the plain mean of alpha_t * CE_i
    up = resize_to(logits, (12, 14))
    ref = F.cross_entropy(up, labels, weight=torch.tensor(w), ignore_index=255, reduction="none")[labels != 255].mean()
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=w)(logits, labels), ref, rtol=1e-6)


def test_focal_downweights_easy_pixels_by_hand():
    logits, labels = logits_for([0.9, 0.5]), torch.zeros(1, 1, 2, dtype=torch.long)
    ce = CrossEntropy()(logits, labels).item()
    fl = FocalLoss(gamma=2.0)(logits, labels).item()
    assert ce == pytest.approx((-math.log(0.9) - math.log(0.5)) / 2, rel=1e-6)
    # (1 - 0.9)^2 = 0.01 for the easy pixel, (1 - 0.5)^2 = 0.25 for the hard one
    assert fl == pytest.approx((0.01 * -math.log(0.9) + 0.25 * -math.log(0.5)) / 2, rel=1e-5)
    assert fl == pytest.approx(0.0871702, rel=1e-5)
    # a single alpha: 1 - alpha for class 0, alpha for the other classes
    labels2 = torch.tensor([[[0, 1]]])
    logits2 = torch.tensor([[[[math.log(9.0), 0.0]], [[0.0, 0.0]]]])  # p_t = 0.9 (class 0), 0.5 (class 1)
    fa = FocalLoss(gamma=2.0, alpha=0.25)(logits2, labels2).item()
    assert fa == pytest.approx((0.75 * 0.01 * -math.log(0.9) + 0.25 * 0.25 * -math.log(0.5)) / 2, rel=1e-5)


# ----------------------------------------------------------------------------- OHEM


def official_ohem(logits, labels, thresh, min_kept, ignore=255):
    """HRNet-OCR lib/core/criterion.py OhemCrossEntropy, restated for the comparison."""
    pred = F.softmax(logits, dim=1)
    pixel = F.cross_entropy(logits, labels, ignore_index=ignore, reduction="none").view(-1)
    mask = labels.view(-1) != ignore
    tmp = labels.clone()
    tmp[tmp == ignore] = 0
    pred = pred.gather(1, tmp.unsqueeze(1)).view(-1)[mask]
    pred, ind = pred.sort()
    threshold = max(pred[min(min_kept, pred.numel() - 1)].item(), thresh)
    return pixel[mask][ind][pred < threshold].mean()


def test_ohem_threshold_binding():
    probs = [0.1, 0.3, 0.6, 0.9, 0.05]
    logits, labels = logits_for(probs), torch.zeros(1, 1, 5, dtype=torch.long)
    labels[0, 0, 4] = 255  # the hardest pixel is ignored: never kept
    ohem = OhemCrossEntropy(thresh=0.7, min_kept=1)
    assert ohem.kept_mask(logits, labels).view(-1).tolist() == [True, True, True, False, False]
    expected = -(math.log(0.1) + math.log(0.3) + math.log(0.6)) / 3
    assert ohem(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert ohem(logits, labels).item() == pytest.approx(official_ohem(logits, labels, 0.7, 1).item(), rel=1e-6)


def test_ohem_min_kept_binding():
    probs = [0.1, 0.3, 0.6, 0.9, 0.95]
    logits, labels = logits_for(probs), torch.zeros(1, 1, 5, dtype=torch.long)
    ohem = OhemCrossEntropy(thresh=0.2, min_kept=3)  # only 0.1 is below 0.2: raised to the 3 hardest
    assert ohem.kept_mask(logits, labels).view(-1).tolist() == [True, True, True, False, False]
    expected = -(math.log(0.1) + math.log(0.3) + math.log(0.6)) / 3
    assert ohem(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert ohem(logits, labels).item() == pytest.approx(official_ohem(logits, labels, 0.2, 3).item(), rel=1e-6)


def test_ohem_matches_official_rule_on_random_batches():
    g = torch.Generator().manual_seed(3)
    # min_kept < valid pixels (448): the same set; at min_kept >= 448 the official rule drops the most
    # confident pixel, which ours keeps (see the OhemCrossEntropy docstring)
    for thresh, min_kept in [(0.7, 50), (0.7, 400), (0.3, 10), (0.2, 300), (0.9, 447)]:
        logits = torch.randn(2, 4, 8, 8, generator=g) * 2
        labels = torch.randint(0, 4, (2, 16, 16), generator=g)
        labels[1, :4] = 255
        ours = OhemCrossEntropy(thresh=thresh, min_kept=min_kept)(logits, labels)
        ref = official_ohem(resize_to(logits, (16, 16)), labels, thresh, min_kept)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_ohem_keeps_all_equals_ce_and_has_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, 0] = 255
    ohem = OhemCrossEntropy(thresh=1.0, min_kept=1)(logits, labels)
    assert torch.allclose(ohem, CrossEntropy()(logits, labels), rtol=1e-6)
    ohem.backward()
    assert logits.grad.abs().sum() > 0
    # min_kept >= the number of valid pixels keeps them all, whatever thresh
    assert torch.allclose(OhemCrossEntropy(thresh=0.01, min_kept=10**6)(logits, labels), CrossEntropy()(logits, labels))


@pytest.mark.parametrize("loss", [CrossEntropy(), OhemCrossEntropy(min_kept=5), FocalLoss(gamma=2.0),
                                  FocalLoss(gamma=1.0, alpha=[1.0, 2.0, 0.5]), CrossEntropy(class_weights=[1, 2, 3])])
def test_losses_resize_and_ignore(loss):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 10, 12), generator=g)
    labels[:, :, :4] = 255
    value = loss(logits, labels)
    up = F.interpolate(logits, size=(10, 12), mode="bilinear", align_corners=True)
    assert value.item() == pytest.approx(loss(up, labels).item(), rel=1e-6)
    # ignored pixels change nothing whatever their logits
    other = up.detach().clone()
    other[:, :, :, :4] = torch.randn(2, 3, 10, 4, generator=g) * 10
    assert loss(other, labels).item() == pytest.approx(loss(up.detach(), labels).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    all_ignored = loss(logits, torch.full((2, 10, 12), 255))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad


# ----------------------------------------------------------------------------- class weights


LABELS = [np.array([[0, 0], [0, 1]], dtype=np.uint8), np.array([[1, 1], [255, 2]], dtype=np.uint8)]
# counts 3, 3, 1; labelled pixels of images holding the class: 4, 4 + 3, 3
# freq = 3/4, 3/7, 1/3; median 3/7 -> w = 4/7, 1, 9/7
EXPECTED = [4 / 7, 1.0, 9 / 7]


class RawOnly:
    num_classes, ignore_index = 3, 255

    def __len__(self):
        return len(LABELS)

    def raw(self, i):
        return np.zeros((2, 2, 3), np.uint8), LABELS[i]

    def __getitem__(self, i):
        raise AssertionError("median frequency must read raw labels, not transformed samples")


def test_median_frequency_by_hand():
    assert median_frequency_weights(LABELS, 3) == pytest.approx(EXPECTED)
    assert median_frequency_weights(torch.from_numpy(np.stack(LABELS)).long(), 3) == pytest.approx(EXPECTED)
    assert median_frequency_weights(RawOnly(), 3) == pytest.approx(EXPECTED)
    pairs = [(torch.zeros(3, 2, 2), torch.from_numpy(a).long()) for a in LABELS]  # a dataset without raw()
    assert median_frequency_weights(pairs, 3) == pytest.approx(EXPECTED)
    # a class absent from every image gets weight 1; a bad label value is named
    assert median_frequency_weights(LABELS, 4)[3] == 1.0
    with pytest.raises(ContextSegError, match="outside"):
        median_frequency_weights([np.array([[7]])], 3)


def test_build_loss_for_median_frequency_and_lists():
    cfg = load_config(None, ["loss.kwargs={class_weights: median_frequency}"])
    loss = build_loss_for(cfg, RawOnly(), progress=False)
    assert loss.criterion.class_weights.tolist() == pytest.approx(EXPECTED)
    cfg = load_config(None, ["loss.name=ohem", "loss.kwargs={class_weights: [1, 2, 3], min_kept: 10}"])
    assert build_loss_for(cfg, RawOnly(), progress=False).criterion.class_weights.tolist() == [1, 2, 3]
    cfg = load_config(None, ["loss.name=focal", "loss.kwargs={alpha: median_frequency, gamma: 1.0}"])
    assert build_loss_for(cfg, RawOnly(), progress=False).criterion.alpha.tolist() == pytest.approx(EXPECTED)
    with pytest.raises(ContextSegError, match="one weight per class"):
        build_loss_for(load_config(None, ["loss.kwargs={class_weights: [1, 2]}"]), RawOnly(), progress=False)
    with pytest.raises(ContextSegError, match="thresh"):
        build_loss("ce", thresh=0.7)  # a typo'd or misplaced argument names the loss's arguments
    with pytest.raises(ContextSegError, match="build_loss_for"):
        build_loss("ce", class_weights="median_frequency")
    default = build_loss_for(load_config(None, []), RawOnly(), progress=False)  # unchanged default: plain CE
    assert isinstance(default.criterion, CrossEntropy) and default.criterion.class_weights is None


def test_outputs_loss_patterns():
    crit = OutputsLoss(CrossEntropy(), {"out": 1.0, "aux": 0.4, "out_s*": 0.25})
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (1, 8, 8), generator=g)
    outs = {k: torch.randn(1, 3, 4, 4, generator=g) for k in ("out", "aux", "out_s0.5", "out_s2.0")}
    outs["attention"] = torch.rand(1, 1, 4, 4, generator=g)  # matched by no key: not in the loss
    total, parts = crit(outs, labels)
    assert set(parts) == {"out", "aux", "out_s0.5", "out_s2.0"}
    expected = parts["out"] + 0.4 * parts["aux"] + 0.25 * (parts["out_s0.5"] + parts["out_s2.0"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    exact_wins = OutputsLoss(CrossEntropy(), {"out*": 0.5, "out": 1.0})
    assert exact_wins.weight_of("out") == 1.0 and exact_wins.weight_of("out_s0.5") == 0.5


# ----------------------------------------------------------------------------- batch mixes


def blob_labels(g, b=4, h=24, w=20, k=5):
    """Piecewise-constant labels with a few ignore blocks: several connected components per class."""
    coarse = torch.randint(0, k + 1, (b, 1, h // 4, w // 4), generator=g).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    labels[labels == k] = 255
    return labels


def as_image(labels, c=3):
    """Images that encode their labels: every channel is label + 1 (so 0 is only ever Copy-Paste's padding)."""
    return (labels[:, None].float() + 1).expand(-1, c, -1, -1).contiguous()


def assert_consistent(images, labels):
    """Every pixel's label is the one its image value came with; padded pixels (image 0) are ignored (255)."""
    pad = (images[:, 0] == 0)
    assert (labels[pad] == 255).all(), "padding not ignored"
    assert torch.equal(images[:, :1].expand_as(images), images), "channels disagree"
    assert torch.equal(images[:, 0][~pad], labels[~pad].float() + 1), "image and label disagree after mixing"


def test_cutmix_keeps_image_and_label_consistent():
    g = torch.Generator().manual_seed(0)
    changed = 0
    for trial in range(200):
        labels = blob_labels(g)
        images = as_image(labels)
        alpha = [0.2, 1.0, 4.0][trial % 3]
        out_i, out_l = cutmix(images, labels, alpha=alpha, box=["reference", "inside"][trial % 2], generator=g)
        assert_consistent(out_i, out_l)
        assert out_l.dtype == torch.int64 and out_i.shape == images.shape
        assert torch.equal(images, as_image(labels))  # inputs untouched
        changed += int(not torch.equal(out_l, labels))
    assert changed > 100
    with pytest.raises(ContextSegError, match="box"):
        cutmix(images, labels, box="centre")


def test_cutmix_inside_box_area_follows_beta():
    rng = np.random.default_rng(0)
    areas = np.array([np.prod(cutmix_box(100, 120, 1.0, rng, "inside")[2:]) / (100 * 120) for _ in range(4000)])
    assert abs(areas.mean() - 0.5) < 0.02  # Beta(1, 1): uniform area fraction
    assert abs(np.mean(areas < 0.25) - 0.25) < 0.03
    small = np.array([np.prod(cutmix_box(100, 120, 0.2, rng, "inside")[2:]) / 12000 for _ in range(4000)])
    assert abs(small.mean() - 0.5) < 0.03 and np.mean((small < 0.1) | (small > 0.9)) > 0.5  # U-shaped
    for _ in range(200):
        top, left, h, w = cutmix_box(7, 9, 1.0, rng, "inside")
        assert 0 <= top and top + h <= 7 and 0 <= left and left + w <= 9


def test_cutmix_reference_box_is_centred_and_clipped():
    """clovaai/CutMix-PyTorch train.py rand_bbox: centre uniform over the pixels, sides int(sqrt(1 - lam) * side),
    clipped at the border. Mean pasted area at alpha 1: (r - r^2/4)^2 averaged over r^2 ~ U(0, 1) = 0.321 for a
    continuous image, a little less with the integer sides (0.30-0.32 here), not Beta(1, 1)'s 0.5."""
    rng = np.random.default_rng(0)
    boxes = np.array([cutmix_box(100, 120, 1.0, rng) for _ in range(4000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (top + h <= 100).all() and (left >= 0).all() and (left + w <= 120).all()
    areas = h * w / 12000
    assert 0.29 < areas.mean() < 0.335
    touching = (top == 0) | (left == 0) | (top + h == 100) | (left + w == 120)
    assert touching.mean() > 0.5  # clipped boxes are common; "inside" boxes touch the border far less often
    assert (h % 2 == 0).sum() > 0 and (h <= 98).all() and (w <= 118).all()  # sides 2 * (cut // 2) before clipping


def test_label_cutmix_lam_is_the_clipped_box_area():
    """LabelCutMix (default box "reference"): lam = 1 - pasted area / image area, as train.py recomputes it; mean
    pasted area about 0.31 at alpha 1; the pasted pixels are exactly the partner's inside the box."""
    g = torch.Generator().manual_seed(0)
    mix = LabelCutMix(p=1.0, alpha=1.0, generator=g)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 32, 32).contiguous()
    labels = torch.arange(4)
    cut, lam = [], []
    for k in range(2000):
        mixed, t = mix(images, labels)
        y0, x0, y1, x1 = (t["box"][0] * 32).round().long().tolist()
        cut.append((y1 - y0) * (x1 - x0) / 1024)
        lam.append(t["lam"])
        if k < 100:  # the pixels: the partner's inside the box, the own image outside
            inside = torch.zeros(32, 32, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(mixed[:, 0, inside], t["label_b"][:, None].float().expand(-1, int(inside.sum())))
            assert torch.equal(mixed[:, 0, ~inside], images[:, 0, ~inside])
    assert torch.allclose(torch.stack(lam), 1.0 - torch.tensor(cut, dtype=torch.float32)[:, None].expand(-1, 4))
    assert 0.28 < np.mean(cut) < 0.33
    inside = LabelCutMix(p=1.0, alpha=1.0, generator=torch.Generator().manual_seed(0), box="inside")
    assert 0.45 < np.mean([1 - inside(images, labels)[1]["lam"][0].item() for _ in range(1000)]) < 0.55
    with pytest.raises(ContextSegError, match="box"):
        LabelCutMix(box="centre")
    cfg = load_config(None, ["data.mix=cutmix", "data.mix_prob=1.0", "data.mix_kwargs={alpha: 1.0, box: inside}"])
    assert build_label_mix(cfg.data).box == "inside"
    assert build_label_mix(load_config(None, ["data.mix=cutmix", "data.mix_prob=1.0"]).data).box == "reference"


def test_scale_jitter_crops_or_pads_back_to_the_size():
    """Scale jitter at a fixed output size (LSJ / SSJ): resize by s, then a random crop (s > 1) or padding with the
    ignore label and image 0 (s < 1), image and label alike; flips are exact."""
    label = torch.zeros(8, 8, dtype=torch.long)
    label[2:6, 2:6] = 1
    image = as_image(label[None])[0]
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(20):
        img, lab = scale_jitter(image, label, (0.5, 0.5), 0.0, rng, image_mode="nearest")
        assert img.shape == image.shape and lab.shape == label.shape
        assert_consistent(img[None], lab[None])
        ys, xs = torch.nonzero(lab != 255, as_tuple=True)
        top, left = int(ys.min()), int(xs.min())
        assert int((lab != 255).sum()) == 16 and int(ys.max()) == top + 3 and int(xs.max()) == left + 3
        expect = torch.zeros(4, 4, dtype=torch.long)
        expect[1:3, 1:3] = 1  # the 4x4 object at half scale
        assert torch.equal(lab[top:top + 4, left:left + 4], expect)
        offsets.add((top, left))
    assert len(offsets) > 3  # the shrunk image is placed at random offsets
    up = label.repeat_interleave(2, 0).repeat_interleave(2, 1)
    for _ in range(20):
        img, lab = scale_jitter(image, label, (2.0, 2.0), 0.0, rng, image_mode="nearest")
        assert_consistent(img[None], lab[None])
        assert (lab != 255).all() and any(torch.equal(lab, up[y:y + 8, x:x + 8]) for y in range(9) for x in range(9))
    label[0, 0] = 2
    img, lab = scale_jitter(as_image(label[None])[0], label, (1.0, 1.0), 1.0, rng)
    assert torch.equal(lab, label.flip(-1)) and lab[0, 7] == 2
    img, lab = scale_jitter(image, label, (0.8, 0.8), 0.0, rng, ignore_index=7)  # bilinear image, nearest label
    assert (lab == 7).any() and img.shape == image.shape


def test_copy_paste_jitters_both_images():
    """Both images are jittered (Ghiasi et al. 2021, Sec. 3): with no object to paste, the destination still comes
    out flipped and rescaled; destination=False keeps it (contextseg's earlier source-only jitter)."""
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    labels[:, 0, 0] = 3
    images = as_image(labels)
    for seed in range(5):
        out_i, out_l = copy_paste(images, labels, classes=[9], scale_range=(0.5, 0.5), flip=0.0,
                                  generator=torch.Generator().manual_seed(seed), image_mode="nearest")
        assert_consistent(out_i, out_l)
        assert ((out_l != 255).sum((1, 2)) == 16).all()  # each destination shrunk to 4x4 and padded
        same = copy_paste(images, labels, classes=[9], scale_range=(0.5, 0.5), destination=False,
                          generator=torch.Generator().manual_seed(seed))
        assert torch.equal(same[0], images) and torch.equal(same[1], labels)
    out_i, out_l = copy_paste(images, labels, classes=[9], scale_range=(1.0, 1.0), flip=1.0,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_l, labels.flip(-1)) and torch.equal(out_i, images.flip(-1))
    for name, (lo, hi) in (("standard", (0.8, 1.25)), ("large", (0.1, 2.0))):
        assert SCALE_JITTER[name] == (lo, hi)
        copy_paste(images, labels, scale_range=name, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ContextSegError, match="scale_range"):
        copy_paste(images, labels, scale_range="huge")


def coded_batch(g, b=4):
    """blob labels and images whose channel 0 encodes label + 1 and channel 1 the sample index + 1."""
    labels = blob_labels(g, b=b)
    images = as_image(labels, 2).clone()
    images[:, 1] = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1)
    return images, labels


def test_copy_paste_labels_follow_pixels_over_many_trials():
    g = torch.Generator().manual_seed(1)
    changed = pasted = padded = 0
    for trial in range(120):
        images, labels = coded_batch(g)
        before = images.clone(), labels.clone()
        classes = [None, [3], [0, 2]][trial % 3]
        scale = ["standard", "large", (0.5, 2.0)][trial % 3]
        out_i, out_l = copy_paste(images, labels, classes=classes, scale_range=scale, flip=0.5,
                                  image_mode="nearest", generator=g)
        assert out_i.shape == images.shape and out_l.shape == labels.shape and out_l.dtype == torch.int64
        assert torch.equal(images, before[0]) and torch.equal(labels, before[1])  # inputs untouched
        pad = out_i[:, 0] == 0
        assert (out_i[:, 1][pad] == 0).all() and (out_l[pad] == 255).all()
        assert torch.equal(out_i[:, 0][~pad], out_l[~pad].float() + 1)  # the label follows the pixel exactly
        for i in range(len(out_l)):
            foreign = (out_i[i, 1] != 0) & (out_i[i, 1] != i + 1)  # pixels from the partner
            assert (out_l[i][foreign] != 255).all()  # ignored source pixels and source padding are never pasted
            if classes is not None:
                assert np.isin(out_l[i][foreign].numpy(), classes).all()
            pasted += int(foreign.sum())
        padded += int(pad.sum())
        changed += int(not torch.equal(out_l, labels))
    assert changed > 100 and pasted > 0 and padded > 0


def test_copy_paste_bilinear_labels_follow_mask():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        labels = blob_labels(g)
        out_i, out_l = copy_paste(as_image(labels), labels, classes=[2], destination=False, generator=g)  # bilinear
        new = out_l != labels
        assert (out_l[new] == 2).all()
        touched = (out_i != as_image(labels)).any(1)  # bilinear: pasted pixels may blend, but only pasted ones
        assert (out_l[touched] == 2).all()


def swap_generator():
    """A generator whose first randperm(2) swaps the two samples (the same seed replays it)."""
    for seed in range(100):
        if torch.randperm(2, generator=torch.Generator().manual_seed(seed)).tolist() == [1, 0]:
            return seed
    raise AssertionError


def test_copy_paste_occludes_and_flips_exactly():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 2:4] = 255  # ignored pixels of the target are occluded too
    labels[1] = 255
    labels[1, 1:3, 0:2] = 2  # one object on an ignored background
    seed = swap_generator()
    for flip, cols in ((0.0, slice(0, 2)), (1.0, slice(6, 8))):
        out_i, out_l = copy_paste(as_image(labels), labels, scale_range=(1.0, 1.0), flip=flip, object_prob=1.0,
                                  generator=torch.Generator().manual_seed(seed))
        dest = labels.flip(-1) if flip else labels  # both images are flipped
        expect0 = dest[0].clone()
        expect0[1:3, cols] = 2
        assert torch.equal(out_l[0], expect0)
        expect1 = torch.zeros(8, 8, dtype=torch.long)  # sample 0's two class-0 regions cover sample 1 ...
        expect1[2:4] = dest[1, 2:4]  # ... except where sample 0 is ignored: those pixels are not pasted
        assert torch.equal(out_l[1], expect1)
        assert_consistent(out_i, out_l)


def test_copy_paste_scales_objects_and_picks_subsets():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1] = 255
    labels[1, 2:6, 2:6] = 4
    seed = swap_generator()
    _, out_l = copy_paste(as_image(labels), labels, classes=[4], scale_range=(0.5, 0.5), flip=0.0,
                          image_mode="nearest", generator=torch.Generator().manual_seed(seed), object_prob=1.0)
    assert int((out_l[0] == 4).sum()) == 4  # a 4x4 object at half scale is 2x2
    # object_prob None (official code): m ~ U{0..n} of the n objects, so with 3 objects each count 0..3 appears
    labels = torch.zeros(2, 9, 9, dtype=torch.long)
    labels[1, 0:2, 0:2] = labels[1, 4:6, 4:6] = labels[1, 7:9, 0:2] = 1
    swaps = [s for s in range(400) if torch.randperm(2, generator=torch.Generator().manual_seed(s)).tolist() == [1, 0]]
    counts = []
    for s in swaps[:60]:
        _, out_l = copy_paste(as_image(labels), labels, classes=[1], scale_range=(1.0, 1.0), flip=0.0,
                              generator=torch.Generator().manual_seed(s))
        counts.append(int((out_l[0] == 1).sum()) // 4)
    assert set(counts) == {0, 1, 2, 3}


def test_mixes_are_deterministic_with_a_seeded_generator():
    labels = blob_labels(torch.Generator().manual_seed(4))
    images = as_image(labels) + torch.rand(labels.shape[0], 3, *labels.shape[1:], generator=torch.Generator().manual_seed(5))
    for fn in (cutmix, copy_paste):
        a = fn(images, labels, generator=torch.Generator().manual_seed(7))
        b = fn(images, labels, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        others = [fn(images, labels, generator=torch.Generator().manual_seed(s)) for s in range(8, 12)]
        assert any(not torch.equal(a[1], o[1]) for o in others)
    torch.manual_seed(9)
    a = cutmix(images, labels)
    torch.manual_seed(9)
    b = cutmix(images, labels)  # no generator: torch's global RNG, which checkpoints restore
    assert torch.equal(a[0], b[0])


def test_batch_mix_probability_and_config():
    labels = blob_labels(torch.Generator().manual_seed(6))
    images = as_image(labels)
    g = torch.Generator().manual_seed(0)
    never = BatchMix("cutmix", p=0.0, generator=g)
    assert never(images, labels)[0] is images
    half = BatchMix("copy_paste", p=0.5, generator=g, image_mode="nearest")
    applied = 0
    for _ in range(60):
        out_i, out_l = half(images, labels)
        assert_consistent(out_i, out_l)
        applied += int(out_i is not images)
    assert 15 <= applied <= 45
    with pytest.raises(ContextSegError, match="alpha"):
        BatchMix("cutmix", alpha_=1.0)
    with pytest.raises(ContextSegError, match="unknown batch mix"):
        BatchMix("mixup")
    assert build_batch_mix(load_config(None, []).data) is None  # default: no mix
    cfg = load_config(None, ["data.mix=copy_paste", "data.mix_prob=1.0", "data.mix_kwargs={classes: [1]}"])
    mix = build_batch_mix(cfg.data, ignore_index=255)
    assert mix.mix == "copy_paste" and mix.kwargs["classes"] == [1] and mix.p == 1.0
    with pytest.raises(ContextSegError, match="data.mix"):
        load_config(None, ["data.mix=mixup"])


def test_trainer_applies_batch_transform(tmp_path):
    from torch.utils.data import TensorDataset

    from contextseg.engine.trainer import Trainer

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    labels = torch.randint(0, 3, (4, 8, 8))
    data = TensorDataset(as_image(labels), labels)
    cfg = load_config(None, ["train.iters=2", "data.batch_size=2", "data.num_workers=0", "device=cpu",
                             f"output_dir={tmp_path}", "train.log_interval=1"])
    seen = []

    def transform(images, labels):
        assert_consistent(images, labels)
        seen.append(images.shape)
        return cutmix(images, labels)

    Trainer(cfg, Tiny(), build_loss("ce", {"out": 1.0}), data, progress=False, batch_transform=transform).fit()
    assert len(seen) == 2


# ----------------------------------------------------------------------------- mixes: edges and messages



def test_mixes_check_their_inputs_with_one_message_each():
    images, labels = torch.zeros(2, 3, 4, 6), torch.zeros(2, 4, 6, dtype=torch.long)
    bad = [(images[0], labels), (images, labels[None]), (images, labels[:1]), (images, labels[:, :, :5]),
           (labels.float(), labels)]
    for im, lab in bad:
        for mix in (cutmix, copy_paste):
            assert error_message(lambda: mix(im, lab)) == (
                f"batch mixes take images (B, C, H, W) and labels (B, H, W) of the same B, H, W; got "
                f"{tuple(im.shape)} and {tuple(lab.shape)}")
    assert error_message(lambda: cutmix(images, labels, alpha=0)) == "cutmix alpha must be > 0, got 0"
    assert error_message(lambda: copy_paste(images, labels, image_mode="bicubic")) == (
        "copy_paste image_mode is 'bilinear' or 'nearest', got 'bicubic'")
    assert error_message(lambda: copy_paste(images, labels, object_prob=1.5)) == (
        "copy_paste object_prob is None or a probability in [0, 1], got 1.5")
    for p in (0.0, 1.0):
        copy_paste(images, labels, object_prob=p)
    assert error_message(lambda: copy_paste(images, labels, scale_range=[0, 1])) == (
        "copy_paste scale_range must be [min, max] with 0 < min <= max, got [0, 1]")
    from contextseg.data.mix import _scale_range
    assert _scale_range([0.5, 1.5]) == (0.5, 1.5) and _scale_range("large") == (0.1, 2.0)


def test_mix_defaults_follow_the_papers():
    # Copy-Paste flips each image with probability 0.5 (Ghiasi et al. Sec. 3): nothing pasted (no such class), scale 1
    b = 400
    images = torch.zeros(b, 1, 2, 2)
    images[..., 0] = 1.0
    labels = torch.zeros(b, 2, 2, dtype=torch.long)
    out, _ = copy_paste(images, labels, classes=[5], scale_range=[1.0, 1.0], generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 1] == 1).float().mean().item()
    assert abs(flipped - 0.5) < 0.07
    # CutMix lam ~ Beta(1, 1) (Yun et al. Sec. 3.1: alpha 1): with the "inside" box the pasted area fraction is
    # uniform (variance 1/12; alpha 2 would give 1/20)
    images = torch.stack([torch.zeros(1, 40, 40), torch.ones(1, 40, 40)])
    labels = torch.zeros(2, 40, 40, dtype=torch.long)
    g, areas = torch.Generator().manual_seed(0), []
    while len(areas) < 400:
        out, _ = cutmix(images, labels, box="inside", generator=g)
        if out[0].any():  # the two samples swapped
            areas.append(out[0].mean().item())
    assert abs(np.var(areas) - 1 / 12) < 0.015 and abs(np.mean(areas) - 0.5) < 0.05
    # the numpy RNG behind the mixes takes one of 2^62 seeds from the torch generator: no two draws alike
    from contextseg.data.mix import _numpy_rng
    g = torch.Generator().manual_seed(0)
    assert len({int(_numpy_rng(g).integers(2**62)) for _ in range(300)}) == 300


def test_batch_mix_settings_and_messages():
    assert BatchMix().mix == "cutmix" and BatchMix().p == 0.5
    assert error_message(lambda: BatchMix("mixup")) == (
        "unknown batch mix 'mixup'; use one of none, cutmix, copy_paste (data.mix)")
    assert error_message(lambda: BatchMix("cutmix", 1.5)) == (
        "batch mix probability must be in [0, 1], got 1.5 (data.mix_prob)")
    for name in ("images", "labels", "sigma"):
        assert error_message(lambda: BatchMix("cutmix", **{name: 1})) == (
            f"cutmix has no argument(s) ['{name}'] (data.mix_kwargs); its arguments: alpha, box")
    assert error_message(lambda: BatchMix("copy_paste", alpha=1)).endswith(
        "its arguments: classes, scale_range, flip, object_prob, destination, image_mode")
    assert BatchMix("copy_paste", ignore_index=7).kwargs["ignore_index"] == 7
    assert "ignore_index" not in BatchMix("cutmix", ignore_index=7).kwargs
    # build_batch_mix: attributes a config lacks take their defaults (no mix, probability 0, no kwargs)
    from types import SimpleNamespace as NS
    assert build_batch_mix(NS()) is None and build_batch_mix(NS(mix="cutmix")) is None
    assert build_batch_mix(NS(mix_prob=0.5)) is None
    assert build_batch_mix(NS(mix="cutmix", mix_prob=0.0)) is None
    g = torch.Generator()
    built = build_batch_mix(NS(mix="copy_paste", mix_prob=0.3), ignore_index=7, generator=g)
    assert (built.mix, built.p, built.generator, built.kwargs) == ("copy_paste", 0.3, g, {"ignore_index": 7})


def test_batch_mix_draws_only_from_its_generator():
    images = torch.randn(4, 3, 8, 8)
    labels = torch.randint(0, 3, (4, 8, 8))
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global RNG differs; the mix's own generator decides everything
        mix = BatchMix("cutmix", 0.5, generator=torch.Generator().manual_seed(3))
        runs.append([mix(images, labels) for _ in range(6)])
    for (i1, l1), (i2, l2) in zip(*runs):
        assert torch.equal(i1, i2) and torch.equal(l1, l2)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    out = BatchMix("cutmix", 0.0, generator=g)(images, labels)
    assert out[0] is images and torch.equal(g.get_state(), state)  # p = 0: no coin tossed, the stream untouched


SWAP = 1  # torch.randperm(2) with this seed is [1, 0]: the two samples swap


def test_cutmix_box_follows_the_image_shape_and_pastes_thin_strips(monkeypatch):
    images = torch.arange(2 * 3 * 16 * 40, dtype=torch.float32).view(2, 3, 16, 40)
    labels = torch.zeros(2, 16, 40, dtype=torch.long)
    labels[1] = 1
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out, _ = cutmix(images, labels, box="inside", generator=g)
        changed = (out != images).any(1).any(0)
        if changed.any():
            rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
            h, w = len(rows), len(cols)  # sides round(sqrt(1 - lam) * 16), round(sqrt(1 - lam) * 40)
            assert abs(h / 16 - w / 40) <= 1 / 16 + 1 / 40
    import contextseg.data.mix as mix_module
    for box in ((5, 3, 1, 7), (2, 9, 6, 1)):  # one-pixel strips are pasted too
        monkeypatch.setattr(mix_module, "cutmix_box", lambda *a, b=box: b)
        out, lab = cutmix(images, labels, generator=torch.Generator().manual_seed(SWAP))
        top, left, h, w = box
        assert torch.randperm(2, generator=torch.Generator().manual_seed(SWAP)).tolist() == [1, 0]
        assert torch.equal(lab[:, top:top + h, left:left + w], labels.flip(0)[:, top:top + h, left:left + w])
    rng = np.random.default_rng(0)
    boxes = [cutmix_box(16, 40, 1.0, rng) for _ in range(300)]
    assert min(b[0] for b in boxes) == 0 and min(b[1] for b in boxes) == 0  # clipped at the top and left edges


def test_components_number_each_region_once():
    from contextseg.data.mix import _components
    label = np.array([[1, 1, 0, 2],
                      [0, 0, 0, 2],
                      [1, 0, 255, 2]])
    ids, n = _components(label, None, 255)
    assert n == 4 and sorted(np.unique(ids).tolist()) == [0, 1, 2, 3, 4]  # class 0 is one region; 255 never
    assert len(np.unique(ids[label == 1])) == 2 and len(np.unique(ids[label == 2])) == 1
    ids, n = _components(label, {1, 2}, 255)
    assert n == 3 and sorted(np.unique(ids).tolist()) == [0, 1, 2, 3] and (ids[label == 0] == 0).all()


def test_place_crops_and_pads_non_square_patches():
    from contextseg.data.mix import _place
    src = torch.arange(6.0).view(1, 2, 3)
    assert _place(src, 3, 4, 1, 1, fill=-1).tolist() == [[[-1, -1, -1, -1], [-1, 0, 1, 2], [-1, 3, 4, 5]]]
    assert _place(src, 3, 4, -1, 2, fill=-1).tolist() == [[[-1, -1, 3, 4], [-1, -1, -1, -1], [-1, -1, -1, -1]]]
    assert (_place(src, 3, 4, 5, 0, fill=-1) == -1).all()  # wholly outside: only fill
    assert (_place(src, 3, 4, 0, 9, fill=-1) == -1).all()


def test_scale_jitter_offsets_cover_every_position_and_tiny_scales_keep_one_pixel():
    rows = torch.arange(8).view(8, 1).expand(8, 8).contiguous()
    image = rows[None].float()
    tops_small, tops_large, lefts_large = set(), set(), set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, lab = scale_jitter(image, rows, (0.5, 0.5), 0.0, rng, "nearest")  # 4x4 content on an 8x8 canvas
        kept = (lab != 255).nonzero()
        tops_small.add(int(kept[:, 0].min()))
        lefts_large.add(int(kept[:, 1].min()))
        _, lab = scale_jitter(image, rows, (2.0, 2.0), 0.0, rng, "nearest")  # a 16x16 image cropped to 8x8
        tops_large.add(int(lab[0, 0]) * 2)  # the crop's top row in the 16x16 image (row r shows r // 2)
    assert tops_small == set(range(5)) and lefts_large == set(range(5))
    assert tops_large == set(range(0, 9, 2))
    cols = rows.t().contiguous()
    lefts = {int(scale_jitter(cols[None].float(), cols, (2.0, 2.0), 0.0, rng, "nearest")[1][0, 0]) for _ in range(200)}
    assert lefts == set(range(5))
    image, lab = scale_jitter(image, rows, (0.1, 0.1), 0.0, np.random.default_rng(0))  # round(0.8) -> 1 pixel
    assert (lab != 255).sum() == 1 and (image != 0).sum() <= 1
    # bilinear resize as F.interpolate(align_corners=False): the crop is a window of it
    smooth = torch.arange(16.0).view(1, 4, 4)
    up = F.interpolate(smooth[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    out, _ = scale_jitter(smooth, torch.zeros(4, 4, dtype=torch.long), (2.0, 2.0), 0.0, np.random.default_rng(1))
    assert any(torch.equal(out, up[:, t:t + 4, s:s + 4]) for t in range(5) for s in range(5))


def test_copy_paste_pads_with_the_given_ignore_index_and_picks_objects_by_the_rule():
    images = torch.randn(2, 3, 8, 8)
    labels = torch.ones(2, 8, 8, dtype=torch.long)
    for destination in (True, False):
        _, lab = copy_paste(images, labels, scale_range=[0.5, 0.5], ignore_index=7, destination=destination,
                            generator=torch.Generator().manual_seed(0))
        assert set(lab.unique().tolist()) <= {1, 7} and (lab == 255).sum() == 0
        if destination:
            assert (lab == 7).any()
    # one object per source (class 1 in a 0 background): object_prob 0 still pastes exactly one object
    b = 200
    images = torch.zeros(b, 1, 6, 6)
    labels = torch.zeros(b, 6, 6, dtype=torch.long)
    labels[:, 1:3, 1:3] = 1
    images[:, :, 1:3, 1:3] = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1) + 1
    kw = dict(classes=[1], scale_range=[1.0, 1.0], flip=0.0, destination=False, image_mode="nearest")
    out, _ = copy_paste(images, labels, object_prob=0.0, generator=torch.Generator().manual_seed(0), **kw)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 1:3, 1:3], images[perm][:, :, 1:3, 1:3])
    # object_prob None: m ~ U{0..n} of the n objects; n = 1 -> pasted in half of the samples
    out, _ = copy_paste(images, labels, generator=torch.Generator().manual_seed(0), **kw)
    pasted = (out != images).flatten(1).any(1).float().mean().item()
    same = (perm == torch.arange(b)).float().mean().item()  # a sample drawing itself changes nothing
    assert abs(pasted - 0.5 * (1 - same)) < 0.08


def test_outputs_loss_defaults_skipped_outputs_and_per_output_criteria():
    torch.manual_seed(0)
    logits = {"aux": torch.randn(2, 3, 4, 4), "out": torch.randn(2, 3, 4, 4)}  # "aux" first: it is skipped below
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    ce = lambda v: F.cross_entropy(v, labels, ignore_index=255)  # noqa: E731
    _, parts = build_loss()(logits, labels)  # "ce" with ignore_index 255 by default
    torch.testing.assert_close(parts["out"], ce(logits["out"]))
    total, parts = build_loss(weights={"out": 1.0})(logits, labels)  # a zero-weight output is passed over
    assert set(parts) == {"out"}
    torch.testing.assert_close(total, ce(logits["out"]))
    _, parts = build_loss("focal", {"out": 1.0, "aux": 1.0}, gamma=2.0)(logits, labels)  # focal on every output
    for name in ("out", "aux"):
        torch.testing.assert_close(parts[name], FocalLoss(gamma=2.0, ignore_index=255)(logits[name], labels))
