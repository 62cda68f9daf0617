"""Salient-object-detection (SOD) metrics: MAE, F-measure, S-measure, E-measure and weighted F-measure.

The numbers are those of PySODMetrics 1.6.2 (the implementation behind most SOD papers' tables,
itself a port of the authors' MATLAB code): same input normalisation, same 256 thresholds, same
`eps`, same per-image scores and the same dataset aggregation (mean over images, then mean / max
over the thresholds of the averaged curve). Ported by reading the definitions, not the code.

Input, per image: `pred` a uint8 saliency map (0..255, min-max normalised here, like MATLAB's
`mapminmax(im2double(pred))`) and `gt` a uint8 mask (foreground where > 128); or, with
`normalize=False`, `pred` float32/float64 in [0, 1] and `gt` bool, used as they are.

    m = SODMetrics()
    for pred, gt in pairs:
        m.update(pred, gt)
    m.compute()  # {"mae", "max_f", "mean_f", "adp_f", "s_measure", "max_e", "mean_e", "adp_e", "w_f"}
    m.curves()   # mean precision / recall / F / E curves, 256 thresholds each
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ContextSegError

EPS = np.spacing(1)  # MATLAB's eps (2.2e-16), used where the MATLAB code guards a division
F_BETA2 = 0.3  # beta^2 of the F-measure, as Achanta et al. 2009 recommend
THRESHOLDS = np.arange(255, -1, -1)  # curve index i binarises at `round-down(255 * pred) >= 255 - i`


def prepare(pred: np.ndarray, gt: np.ndarray, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Check one (pred, gt) pair and return (pred in [0, 1], gt as bool), as PySODMetrics' prepare_data."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ContextSegError(f"SOD metrics: prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
                              "resize the prediction to the mask size before update()")
    if pred.ndim != 2 or pred.size == 0:
        raise ContextSegError(f"SOD metrics: expected one non-empty 2-D (H, W) grayscale map, got shape {pred.shape}; "
                              "pass one image at a time and convert colour maps to one channel")
    if normalize:
        if gt.dtype == bool:
            raise ContextSegError("SOD metrics: gt is boolean but normalize=True expects a uint8 mask "
                                  "(foreground > 128); pass the 0..255 mask, or normalize=False with a float pred "
                                  "in [0, 1]")
        gt = gt > 128
        pred = pred / 255
        lo, hi = pred.min(), pred.max()
        if hi != lo:
            pred = (pred - lo) / (hi - lo)
        return pred, gt
    if pred.dtype not in (np.float32, np.float64) or gt.dtype != bool:
        raise ContextSegError(f"SOD metrics: normalize=False needs a float32/float64 pred and a bool gt, got "
                              f"{pred.dtype} and {gt.dtype}; use normalize=True for uint8 maps")
    if not (0 <= pred.min() and pred.max() <= 1):
        raise ContextSegError("SOD metrics: with normalize=False pred must lie in [0, 1]; "
                              "rescale it or use normalize=True")
    return pred, gt


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between the map and the mask (Perazzi et al., CVPR 2012)."""
    return np.mean(np.abs(pred - gt))


def _adaptive_threshold(pred: np.ndarray) -> float:
    """Twice the mean saliency, capped at 1 (Achanta et al., CVPR 2009)."""
    return min(2 * pred.mean(), 1)


def threshold_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground / background pixel counts predicted positive at each of the 256 THRESHOLDS (255 down to 0)."""
    levels = (pred * 255).astype(np.uint8)  # truncation, as the reference does
    tp = np.cumsum(np.bincount(levels[gt], minlength=256)[::-1])
    fp = np.cumsum(np.bincount(levels[~gt], minlength=256)[::-1])
    return tp, fp


def fmeasure_curves(pred: np.ndarray, gt: np.ndarray, beta2: float = F_BETA2) -> tuple[np.ndarray, ...]:
    """Precision, recall and F_beta over the 256 thresholds (Achanta et al., CVPR 2009).

    F = (1 + beta^2) P R / (beta^2 P + R), taken as 0 where P R = 0; an empty prediction has P = 0.
    """
    tp, fp = threshold_counts(pred, gt)
    predicted = tp + fp
    predicted[predicted == 0] = 1
    precision = tp / predicted
    recall = tp / max(np.count_nonzero(gt), 1)
    numerator = (1 + beta2) * precision * recall
    f = numerator / np.where(numerator == 0, 1, beta2 * precision + recall)
    return precision, recall, f


def adaptive_fmeasure(pred: np.ndarray, gt: np.ndarray, beta2: float = F_BETA2) -> float:
    """F_beta of the map binarised at the adaptive threshold (Achanta et al., CVPR 2009)."""
    binary = pred >= _adaptive_threshold(pred)
    hits = np.count_nonzero(binary & gt)
    if hits == 0:
        return 0.0
    precision = hits / np.count_nonzero(binary)
    recall = hits / np.count_nonzero(gt)
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


def _object_similarity(x: np.ndarray) -> float:
    """Object-aware score 2 mean / (mean^2 + 1 + std) of one region (Fan et al., ICCV 2017, eq. 4-5)."""
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Global SSIM of one quadrant, with the MATLAB code's (N - 1) variances and its 0/0 = 1 convention."""
    n = pred.size
    x, y = np.mean(pred), np.mean(gt)
    var_x = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    var_y = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    cov = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    num = 4 * x * y * cov
    den = (x**2 + y**2) * (var_x + var_y)
    if num != 0:
        return num / (den + EPS)
    return 1.0 if den == 0 else 0.0


def smeasure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure-measure S = alpha S_object + (1 - alpha) S_region (Fan et al., ICCV 2017)."""
    fg_ratio = np.mean(gt)
    if fg_ratio == 0:
        return 1 - np.mean(pred)
    if fg_ratio == 1:
        return np.mean(pred)
    s_object = (_object_similarity(pred[gt]) * fg_ratio
                + _object_similarity((1 - pred)[~gt]) * (1 - fg_ratio))
    # region term: split at the foreground centroid (rounded half-to-even, +1 for MATLAB's inclusive 1:X)
    h, w = gt.shape
    rows, cols = np.nonzero(gt)
    cy, cx = int(np.round(rows.mean())) + 1, int(np.round(cols.mean())) + 1
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    s_region = 0.0
    for rs, cs, weight in ((slice(0, cy), slice(0, cx), w_lt), (slice(0, cy), slice(cx, w), w_rt),
                           (slice(cy, h), slice(0, cx), w_lb), (slice(cy, h), slice(cx, w), w_rb)):
        if pred[rs, cs].size:  # an empty quadrant (centroid in the last row/column) counts 0, not NaN
            s_region = s_region + _ssim(pred[rs, cs], gt[rs, cs]) * weight
    return max(0.0, s_object * alpha + s_region * (1 - alpha))


def _enhanced_alignment(tp, fp, n_fg: int, size: int):
    """E-measure of binary maps from counts; tp, fp may be ints or arrays (Fan et al., IJCAI 2018).

    Each of the four (pred, gt) value pairs has a constant alignment 2 a b / (a^2 + b^2) of the
    mean-removed values a, b, enhanced as (1 + align)^2 / 4 and weighted by its pixel count.
    """
    pred_fg = tp + fp
    pred_bg = size - pred_fg
    if n_fg == 0:
        total = pred_bg
    elif n_fg == size:
        total = pred_fg
    else:
        fn = n_fg - tp
        tn = pred_bg - fn
        mean_pred, mean_gt = pred_fg / size, n_fg / size
        total = 0
        for count, a, b in ((tp, 1 - mean_pred, 1 - mean_gt), (fp, 1 - mean_pred, -mean_gt),
                            (fn, -mean_pred, 1 - mean_gt), (tn, -mean_pred, -mean_gt)):
            align = 2 * (a * b) / (a**2 + b**2 + EPS)
            total = total + (align + 1) ** 2 / 4 * count
    return total / (size - 1 + EPS)


def emeasure_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-measure at each of the 256 THRESHOLDS (Fan et al., IJCAI 2018)."""
    tp, fp = threshold_counts(pred, gt)
    return _enhanced_alignment(tp, fp, np.count_nonzero(gt), gt.shape[0] * gt.shape[1])


def adaptive_emeasure(pred: np.ndarray, gt: np.ndarray) -> float:
    """E-measure of the map binarised at twice its mean (Fan et al., IJCAI 2018)."""
    binary = pred >= _adaptive_threshold(pred)
    tp, fp = np.count_nonzero(binary & gt), np.count_nonzero(binary & ~gt)
    return _enhanced_alignment(tp, fp, np.count_nonzero(gt), gt.shape[0] * gt.shape[1])


def _matlab_gaussian(size: int = 7, sigma: float = 5) -> np.ndarray:
    """MATLAB's fspecial('gaussian', size, sigma): sampled, tiny values zeroed, normalised to sum 1."""
    r = (size - 1) / 2
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


def weighted_fmeasure(pred: np.ndarray, gt: np.ndarray, beta: float = 1) -> float:
    """Weighted F-measure (Margolin et al., CVPR 2014); 0 when the mask has no foreground.

    Background errors are replaced by the error at the nearest foreground pixel (pixel dependency),
    foreground errors are smoothed by a 7x7 sigma-5 Gaussian where that lowers them, and background
    errors are weighted by 2 - exp(ln(0.5) / 5 * distance to the foreground) (pixel importance).
    Note `beta` enters as (1 + beta) R P / (R + beta P), unsquared, as in the MATLAB code (beta = 1).
    """
    if not gt.any():
        return 0.0
    bg = ~gt
    dist, (iy, ix) = ndimage.distance_transform_edt(bg, return_indices=True)
    err = np.abs(pred - gt)
    err_dep = err.copy()
    err_dep[bg] = err[iy[bg], ix[bg]]
    smoothed = ndimage.convolve(err_dep, weights=_matlab_gaussian(), mode="constant", cval=0)
    err_min = np.where(gt & (smoothed < err), smoothed, err)
    importance = np.where(bg, 2 - np.exp(np.log(0.5) / 5 * dist), 1.0)
    err_w = err_min * importance
    tp_w = np.sum(gt) - np.sum(err_w[gt])
    fp_w = np.sum(err_w[bg])
    recall = 1 - np.mean(err_w[gt])
    precision = tp_w / (tp_w + fp_w + EPS)
    return (1 + beta) * recall * precision / (recall + beta * precision + EPS)


class SODMetrics:
    """Accumulates the SOD metrics image by image; `compute()` gives the dataset numbers.

    Every score is averaged over images; max_f / mean_f (max_e / mean_e) are the max / mean over the
    256 thresholds of the image-averaged F (E) curve, as PySODMetrics and the SOD papers report them.
    """

    KEYS = ("mae", "max_f", "mean_f", "adp_f", "s_measure", "max_e", "mean_e", "adp_e", "w_f")

    def __init__(self, normalize: bool = True):
        self.normalize = normalize
        self.reset()

    def reset(self) -> None:
        self._scores = {k: [] for k in ("mae", "adp_f", "s_measure", "adp_e", "w_f")}
        self._curves = {k: [] for k in ("precision", "recall", "fmeasure", "emeasure")}

    def __len__(self) -> int:
        return len(self._scores["mae"])

    def update(self, pred: np.ndarray, gt: np.ndarray, normalize: bool | None = None) -> None:
        """Add one image: pred (H, W) saliency map and gt (H, W) mask, in the convention of `prepare`."""
        pred, gt = prepare(pred, gt, self.normalize if normalize is None else normalize)
        precision, recall, f = fmeasure_curves(pred, gt)
        for key, value in (("precision", precision), ("recall", recall), ("fmeasure", f),
                           ("emeasure", emeasure_curve(pred, gt))):
            self._curves[key].append(value)
        for key, value in (("mae", mae(pred, gt)), ("adp_f", adaptive_fmeasure(pred, gt)),
                           ("s_measure", smeasure(pred, gt)), ("adp_e", adaptive_emeasure(pred, gt)),
                           ("w_f", weighted_fmeasure(pred, gt))):
            self._scores[key].append(value)

    @classmethod
    def merged(cls, parts: list["SODMetrics"]) -> "SODMetrics":
        """One accumulator holding the images of all ``parts`` (e.g. the shards of a distributed evaluation)."""
        out = cls(parts[0].normalize if parts else True)
        for part in parts:
            for key in out._scores:
                out._scores[key] += part._scores[key]
            for key in out._curves:
                out._curves[key] += part._curves[key]
        return out

    def _check(self) -> None:
        if not len(self):
            raise ContextSegError("SOD metrics: no image was added; call update(pred, gt) before compute()")

    def curves(self) -> dict:
        """Image-averaged curves (float64, length 256) and their `thresholds` (255 down to 0, in 0..255 levels)."""
        self._check()
        out = {k: np.mean(np.array(v, dtype=np.float64), axis=0) for k, v in self._curves.items()}
        out["thresholds"] = THRESHOLDS.copy()
        return out

    def compute(self) -> dict:
        """Dataset scores as a flat dict of floats with the keys in `KEYS`."""
        self._check()
        c = self.curves()
        out = {k: float(np.mean(np.array(v, dtype=np.float64))) for k, v in self._scores.items()}
        out.update(max_f=float(c["fmeasure"].max()), mean_f=float(c["fmeasure"].mean()),
                   max_e=float(c["emeasure"].max()), mean_e=float(c["emeasure"].mean()))
        return {k: out[k] for k in self.KEYS}
