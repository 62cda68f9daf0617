"""SOD metrics against PySODMetrics 1.6.2, the implementation the SOD literature reports.

The reference numbers below were produced by the real package in a throwaway venv
(`pip install pysodmetrics==1.6.2`, numpy 2.3.4, scipy 1.17.1), not by contextseg, from the pairs
that `make_pair` / `CASES` below build. To regenerate them, build the same pairs there and run

    from py_sod_metrics import MAE, Fmeasure, Smeasure, Emeasure, WeightedFmeasure
    for pred, gt, normalize in pairs: each_metric.step(pred, gt, normalize=normalize)
    mae = MAE.get_results()["mae"]; f = Fmeasure.get_results(); e = Emeasure.get_results()["em"]
    max_f, mean_f, adp_f = f["fm"]["curve"].max(), f["fm"]["curve"].mean(), f["fm"]["adp"]
    max_e, mean_e, adp_e = e["curve"].max(), e["curve"].mean(), e["adp"]
    s_measure = Smeasure.get_results()["sm"]; w_f = WeightedFmeasure.get_results()["wfm"]
    curves: f["pr"]["p"], f["pr"]["r"], f["fm"]["curve"], e["curve"]

and print the floats with repr(). Locally contextseg reproduces them bit for bit (also on 300 extra
random pairs of sizes 8..60 checked outside this file); TOL = 1e-12 only leaves room for a last-bit
difference in numpy's vectorised exp / summation on other CPUs, far below the 4 decimals papers print.
The pairs use only + - * / floor on seeded integers, so they are the same on every platform.
pysodmetrics is deliberately not imported here: CI does not install it.
"""
import math

import numpy as np
import pytest

from contextseg.errors import ContextSegError
from contextseg.metrics.sod import SODMetrics, smeasure, prepare

TOL = 1e-12


def make_pair(seed, h=40, w=50):
    """Elliptic blob mask + smooth noisy uint8 saliency map near it (1 or 2 blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    gt = np.zeros((h, w), bool)
    pred = np.zeros((h, w))
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = int(rng.integers(5, h - 5)), int(rng.integers(5, w - 5))
        ry, rx = int(rng.integers(3, 12)), int(rng.integers(3, 15))
        gt |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        jy, jx = (int(v) for v in rng.integers(-3, 4, size=2))
        pred = np.maximum(pred, 1 - (((yy - cy - jy) / (ry + 2)) ** 2 + ((xx - cx - jx) / (rx + 2)) ** 2) / 2)
    noise = rng.integers(-40, 41, size=(h, w))
    pred8 = np.clip(np.floor(pred * 200) + 30 + noise, 0, 255).astype(np.uint8)
    return pred8, np.where(gt, 255, 0).astype(np.uint8)


def make_cases():
    """name -> (pred, gt, normalize), including the edge cases."""
    out = {}
    out["blobs_0"] = make_pair(0) + (True,)
    out["blobs_1"] = make_pair(1) + (True,)
    out["blobs_odd_size"] = make_pair(2, 31, 23) + (True,)
    pred, _ = make_pair(3)
    out["empty_gt"] = (pred, np.zeros_like(pred), True)
    pred, _ = make_pair(4)
    out["full_gt"] = (pred, np.full_like(pred, 255), True)
    _, gt = make_pair(5)
    out["constant_pred"] = (np.full_like(gt, 128), gt, True)
    out["zero_pred"] = (np.zeros_like(gt), gt, True)
    _, gt = make_pair(6)
    out["pred_equals_gt"] = (gt.copy(), gt, True)
    out["inverted_pred"] = (255 - gt, gt, True)
    pred, gt = make_pair(7)
    out["float_pred_bool_gt"] = (pred / 255, gt > 128, False)
    return out


def edge_pair():
    """Foreground in the last column only: the centroid split leaves the right quadrants empty."""
    gt = np.zeros((40, 50), np.uint8)
    gt[10:20, 49] = 255
    gt[12, 48] = 255
    return make_pair(8)[0], gt


# ---- reference numbers: pysodmetrics 1.6.2 (see the module docstring) ----
SINGLE = {
    "blobs_0": {
        "mae": 0.2345254901960784, "max_f": 0.7352880016635476, "mean_f": 0.5141841415624102,
        "adp_f": 0.7215012976642043, "s_measure": 0.628130774508407, "max_e": 0.9147007327510285,
        "mean_e": 0.607908707926879, "adp_e": 0.9073324705698353, "w_f": 0.46597349006758243,
    },
    "blobs_1": {
        "mae": 0.17960588235294117, "max_f": 0.5920149719276357, "mean_f": 0.3602321852752372,
        "adp_f": 0.4299696253796828, "s_measure": 0.5983003171097107, "max_e": 0.9658743870266908,
        "mean_e": 0.5892392023411994, "adp_e": 0.6646462406454493, "w_f": 0.21442696818140788,
    },
    "blobs_odd_size": {
        "mae": 0.28832604570579984, "max_f": 0.7967233009708737, "mean_f": 0.6313451891837538,
        "adp_f": 0.149581589958159, "s_measure": 0.6502622505345513, "max_e": 0.8387226308687267,
        "mean_e": 0.5896828224130036, "adp_e": 0.2753459542229191, "w_f": 0.6567739080125463,
    },
    "empty_gt": {
        "mae": 0.22263333333333332, "max_f": 0.0, "mean_f": 0.0,
        "adp_f": 0.0, "s_measure": 0.7773666666666667, "max_e": 0.9989994997498749,
        "mean_e": 0.7747174368434218, "adp_e": 0.8429214607303652, "w_f": 0.0,
    },
    "full_gt": {
        "mae": 0.7031901960784315, "max_f": 1.0, "mean_f": 0.5475755220857732,
        "adp_f": 0.5192192192192193, "s_measure": 0.29680980392156864, "max_e": 1.0005002501250626,
        "mean_e": 0.29970649387193593, "adp_e": 0.19959979989994997, "w_f": 0.5490700249587681,
    },
    "constant_pred": {
        "mae": 0.5014196078431372, "max_f": 0.17226810063376224, "mean_f": 0.08680697258498174,
        "adp_f": 0.0, "s_measure": 0.5163158806121608, "max_e": 0.25012506253126565,
        "mean_e": 0.25012506253126565, "adp_e": 0.25012506253126565, "w_f": 0.15693630356457017,
    },
    "zero_pred": {
        "mae": 0.138, "max_f": 0.17226810063376224, "mean_f": 0.0006729222681006338,
        "adp_f": 0.17226810063376224, "s_measure": 0.5479999999999999, "max_e": 0.25012506253126565,
        "mean_e": 0.25012506253126565, "adp_e": 0.25012506253126565, "w_f": 0.1356073639488999,
    },
    "pred_equals_gt": {
        "mae": 0.0, "max_f": 1.0, "mean_f": 0.9967314782514556,
        "adp_f": 1.0, "s_measure": 0.9999999999999857, "max_e": 1.0005002501250568,
        "mean_e": 0.9975690970485188, "adp_e": 1.0005002501250568, "w_f": 1.0,
    },
    "inverted_pred": {
        "mae": 1.0, "max_f": 0.16325843237261226, "mean_f": 0.0006377282514555166,
        "adp_f": 0.0, "s_measure": 0.0, "max_e": 0.25012506253126565,
        "mean_e": 0.0009770510255127565, "adp_e": 9.331898447572505e-30, "w_f": 0.0,
    },
    "float_pred_bool_gt": {
        "mae": 0.27240588235294116, "max_f": 0.7174528301886792, "mean_f": 0.4888837214015017,
        "adp_f": 0.7117500000000001, "s_measure": 0.6389387793513972, "max_e": 0.8901610983568187,
        "mean_e": 0.5636988755263912, "adp_e": 0.8456071937881108, "w_f": 0.45598016386740664,
    },
}
DATASET = {
    "mae": 0.35401064378626623, "max_f": 0.4269736101309852, "mean_f": 0.3627069860864669,
    "adp_f": 0.3704289832855028, "s_measure": 0.5654124472704447, "max_e": 0.6163225018179566,
    "mean_e": 0.49237498120593937, "adp_e": 0.5236203495044218, "w_f": 0.3634768222601182,
}
CURVE_INDICES = (0, 1, 32, 64, 128, 192, 254, 255)
DATASET_CURVES = {
    "precision": (110.30015383296083, [
        0.5675, 0.5688888888888889, 0.5297927400206084, 0.49762290145670124,
        0.43745007863550034, 0.36515452897039713, 0.3007386539728919, 0.23595119214586258,
    ]),
    "recall": (122.76319941717576, [
        0.1127441080923233, 0.11357739421130349, 0.19110660631942286, 0.3196737871719786,
        0.5975267999489962, 0.6402501416430595, 0.6914, 0.9,
    ]),
    "fmeasure": (92.85298843813553, [
        0.14938902794106762, 0.1524797502661061, 0.3173767349540043, 0.4050077304980733,
        0.4209015423498005, 0.36702363724513465, 0.3191542187857953, 0.2658546799063662,
    ]),
    "emeasure": (126.04799518872048, [
        0.3623675738391214, 0.36315897212359405, 0.455531329712869, 0.5928160451338542,
        0.5677525790857318, 0.4686332747963057, 0.30731340009235364, 0.3001726811439428,
    ]),
}
EDGE = {
    "mae": 0.3012137254901961, "max_f": 0.007138221933809215, "mean_f": 0.0012355562146359887,
    "adp_f": 0.0, "max_e": 0.9921855964850573, "mean_e": 0.3308233297648043,
    "adp_e": 0.273391620224327, "w_f": 0.009125588609034481,
}

# contextseg's own S-measure for edge_pair(); the reference gives NaN there (see test_edge_case_empty_quadrant).
EDGE_S_MEASURE = 0.3976169497135405


def _metrics(pairs, normalize=True):
    m = SODMetrics(normalize=normalize)
    for pred, gt, norm in pairs:
        m.update(pred, gt, normalize=norm)
    return m


@pytest.mark.parametrize("name", list(SINGLE))
def test_single_image_matches_reference(name):
    got = _metrics([make_cases()[name]]).compute()
    assert list(got) == list(SODMetrics.KEYS)
    for key, expected in SINGLE[name].items():
        assert abs(got[key] - expected) <= TOL, (name, key, got[key], expected)


def test_dataset_aggregation_and_curves_match_reference():
    m = _metrics(make_cases().values())
    assert len(m) == len(SINGLE)
    got = m.compute()
    for key, expected in DATASET.items():
        assert abs(got[key] - expected) <= TOL, (key, got[key], expected)
    curves = m.curves()
    assert curves["thresholds"][0] == 255 and curves["thresholds"][-1] == 0
    for key, (total, samples) in DATASET_CURVES.items():
        assert curves[key].shape == (256,)
        assert abs(curves[key].sum() - total) <= 256 * TOL, key
        assert np.abs(curves[key][list(CURVE_INDICES)] - samples).max() <= TOL, key
    assert got["max_f"] == curves["fmeasure"].max() and got["mean_e"] == curves["emeasure"].mean()


def test_edge_case_empty_quadrant():
    """The reference's S-measure is NaN here (mean of an empty quadrant); ours drops that quadrant,
    whose area weight is 0. Every other metric still matches the reference."""
    got = _metrics([edge_pair() + (True,)]).compute()
    for key, expected in EDGE.items():
        assert abs(got[key] - expected) <= TOL, (key, got[key], expected)
    assert math.isfinite(got["s_measure"])
    assert abs(got["s_measure"] - EDGE_S_MEASURE) <= TOL


def test_perfect_and_worst_maps():
    _, gt = make_pair(6)
    best = _metrics([(gt.copy(), gt, True)]).compute()
    assert best["mae"] == 0 and best["w_f"] == 1 and best["max_f"] == 1
    worst = _metrics([(255 - gt, gt, True)]).compute()
    assert worst["mae"] == 1 and worst["s_measure"] == 0 and worst["w_f"] == 0


def test_prepare_normalises_like_mapminmax():
    pred = np.array([[10, 20], [30, 110]], np.uint8)
    p, g = prepare(pred, np.array([[0, 128], [129, 255]], np.uint8))
    assert np.allclose(p, [[0, 0.1], [0.2, 1]]) and g.tolist() == [[False, False], [True, True]]
    # a constant map is only divided by 255
    assert np.allclose(prepare(np.full((2, 2), 51, np.uint8), np.zeros((2, 2), np.uint8))[0], 0.2)


def test_errors_name_the_problem():
    pred, gt = make_pair(0)
    m = SODMetrics()
    with pytest.raises(ContextSegError, match="no image was added"):
        m.compute()
    with pytest.raises(ContextSegError, match="differs from ground-truth shape"):
        m.update(pred, gt[:, :-1])
    with pytest.raises(ContextSegError, match="2-D"):
        m.update(pred[None], gt[None])
    with pytest.raises(ContextSegError, match="float32/float64 pred and a bool gt"):
        m.update(pred, gt, normalize=False)
    with pytest.raises(ContextSegError, match=r"\[0, 1\]"):
        m.update(pred * 2.0, gt > 128, normalize=False)
    with pytest.raises(ContextSegError, match="gt is boolean"):
        m.update(pred, gt > 128)
    assert len(m) == 0
    m.update(pred, gt)
    m.reset()
    assert len(m) == 0


def test_function_api():
    pred, gt = prepare(*make_pair(0))
    assert abs(smeasure(pred, gt) - SINGLE["blobs_0"]["s_measure"]) <= TOL


def test_prepare_messages_name_the_problem_and_the_fix():
    def message(*args, **kw):
        with pytest.raises(ContextSegError) as err:
            prepare(*args, **kw)
        return str(err.value)

    u8 = np.zeros((2, 3), np.uint8)
    assert message(u8, np.zeros((3, 2), np.uint8)) == (
        "SOD metrics: prediction shape (2, 3) differs from ground-truth shape (3, 2); resize the prediction to the "
        "mask size before update()")
    for shape in ((2, 3, 3), (1, 0)):
        assert message(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)) == (
            f"SOD metrics: expected one non-empty 2-D (H, W) grayscale map, got shape {shape}; pass one image at a "
            f"time and convert colour maps to one channel")
    prepare(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))  # one pixel is an image
    assert message(u8, u8.astype(bool)) == (
        "SOD metrics: gt is boolean but normalize=True expects a uint8 mask (foreground > 128); pass the 0..255 "
        "mask, or normalize=False with a float pred in [0, 1]")
    for pred, gt, got in ((u8, u8.astype(bool), "uint8 and bool"), (u8.astype(np.float32), u8, "float32 and uint8")):
        assert message(pred, gt, normalize=False) == (
            f"SOD metrics: normalize=False needs a float32/float64 pred and a bool gt, got {got}; use "
            f"normalize=True for uint8 maps")
    for value in (1.5, -0.5):
        assert message(np.full((2, 3), value), u8.astype(bool), normalize=False) == (
            "SOD metrics: with normalize=False pred must lie in [0, 1]; rescale it or use normalize=True")


def test_merged_shards_equal_one_pass():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (9, 11)).astype(np.uint8), (rng.random((9, 11)) > 0.5).astype(np.uint8) * 255)
             for _ in range(5)]
    whole, a, b = SODMetrics(), SODMetrics(), SODMetrics()
    for i, (p, g) in enumerate(pairs):
        whole.update(p, g)
        (a if i < 2 else b).update(p, g)
    merged = SODMetrics.merged([a, b])
    assert len(merged) == 5 and merged.compute() == whole.compute() and len(a) == 2 and len(b) == 3
    for key, curve in whole.curves().items():
        np.testing.assert_array_equal(merged.curves()[key], curve)
    raw = SODMetrics.merged([SODMetrics(normalize=False)])
    assert raw.normalize is False and SODMetrics.merged([]).normalize is True
