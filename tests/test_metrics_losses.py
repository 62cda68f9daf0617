import math

import numpy as np
import pytest
import torch

from contextseg.losses import CrossEntropy, build_loss
from contextseg.metrics import SegMetric, confusion_matrix, format_table, metrics_from_confusion


def test_confusion_matrix_by_hand():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    m = confusion_matrix(pred, label, 3)
    # rows = truth, cols = prediction; the ignored pixel (255) is not counted
    expected = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert torch.equal(m, expected)


def test_metrics_by_hand():
    m = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    r = metrics_from_confusion(m, ["a", "b", "c"])
    # IoU_a = 1/(2+2-1) = 1/3, IoU_b = 2/(3+3-2) = 1/2, IoU_c = 1/(2+2-1) = 1/3
    assert r["per_class_iou"]["a"] == pytest.approx(1 / 3)
    assert r["per_class_iou"]["b"] == pytest.approx(1 / 2)
    assert r["mIoU"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 7)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert "mean" in format_table(r)


def test_absent_class_left_out_of_mean():
    m = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    r = metrics_from_confusion(m)
    assert r["per_class_iou"]["2"] is None
    assert r["mIoU"] == pytest.approx(1.0)


def test_segmetric_resizes_logits_and_accumulates():
    metric = SegMetric(2)
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    label = torch.ones(1, 4, 4, dtype=torch.long)
    label[0, 0, 0] = 0
    metric.update(logits, label)
    metric.update(logits, label)
    assert metric.matrix.tolist() == [[0, 2], [0, 30]]


def test_ce_ignores_and_resizes():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0] = 255
    loss = CrossEntropy()(logits, labels)
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    ref = torch.nn.functional.cross_entropy(up[1:], labels[1:])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    all_ignored = CrossEntropy()(logits, torch.full((2, 8, 8), 255))
    assert all_ignored.item() == 0.0


def test_outputs_loss_weights_and_missing_aux():
    crit = build_loss("ce", {"out": 1.0, "aux": 0.4})
    labels = torch.randint(0, 3, (1, 8, 8))
    out, aux = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    total, parts = crit({"out": out, "aux": aux}, labels)
    assert total.item() == pytest.approx(parts["out"].item() + 0.4 * parts["aux"].item(), rel=1e-6)
    total, parts = crit({"out": out}, labels)  # an FCN head has no aux output
    assert set(parts) == {"out"}
    uniform = crit({"out": torch.zeros(1, 3, 8, 8)}, labels)[0]
    assert uniform.item() == pytest.approx(math.log(3), rel=1e-6)
