"""Data checks: class pixel shares, all-ignore images, label values outside the classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from ...errors import ContextSegError
from .common import FAIL, PASS, WARN, _result


# ----------------------------------------------------------------------------- data


def _label_name(dataset, i: int) -> str:
    for attr in ("mask_path", "image_path"):
        if hasattr(dataset, attr):
            try:
                return str(getattr(dataset, attr)(i))
            except Exception:  # noqa: BLE001 - a name is a nicety
                pass
    return f"#{i}"


def _load_label(dataset, i: int) -> np.ndarray:
    if hasattr(dataset, "raw"):  # reads the image too: a mask of another size than its image fails here
        return np.asarray(dataset.raw(i)[1])
    if hasattr(dataset, "load_label"):
        return np.asarray(dataset.load_label(i))
    label = dataset[i][1]
    return label.numpy() if isinstance(label, Tensor) else np.asarray(label)


def scan_labels(dataset, max_samples: int | None = None, progress: bool = False) -> dict:
    """Raw-label statistics of one split: per-class pixel counts, ignore pixels, images with only ignore pixels,
    values outside 0..K-1 (and not the ignore index) per file, and pairs that fail to load (ContextSegError)."""
    from tqdm import tqdm

    k, ignore = dataset.num_classes, getattr(dataset, "ignore_index", 255)
    n = len(dataset)
    idx = range(n) if not max_samples or max_samples >= n else \
        sorted(set(np.linspace(0, n - 1, max_samples).round().astype(int).tolist()))
    counts = np.zeros(k, dtype=np.int64)
    ignored = outside = 0
    all_ignore, out_of_range, errors = [], [], []
    for i in tqdm(idx, desc="labels", disable=not progress, leave=False, dynamic_ncols=True):
        try:
            label = _load_label(dataset, i)
        except ContextSegError as exc:
            errors.append({"file": _label_name(dataset, i), "error": str(exc).strip().splitlines()[-1]})
            continue
        flat = label.ravel()
        values, c = np.unique(flat, return_counts=True)
        values = values.astype(np.int64)
        inside = (values >= 0) & (values < k)
        counts[values[inside]] += c[inside]
        is_ignore = values == ignore
        ignored += int(c[is_ignore].sum())
        bad = ~inside & ~is_ignore
        if bad.any():
            outside += int(c[bad].sum())
            out_of_range.append({"file": _label_name(dataset, i), "values": values[bad].tolist(),
                                 "pixels": int(c[bad].sum())})
        if flat.size and is_ignore.all():
            all_ignore.append(_label_name(dataset, i))
    labelled = int(counts.sum())
    total = labelled + ignored + outside
    return {"samples": len(idx), "of": n, "pixels": total, "labelled_pixels": labelled,
            "ignore_share": ignored / max(total, 1), "out_of_range_pixels": outside, "counts": counts.tolist(),
            "shares": (counts / max(labelled, 1)).tolist(), "all_ignore": all_ignore, "out_of_range": out_of_range,
            "errors": errors}


def check_data(datasets: dict, max_samples: int | None = None, out_dir: str | Path | None = None,
               progress: bool = False, rare: float = 1e-3) -> dict:
    """Label checks over {split: dataset}. FAIL: labels outside the classes or pairs that fail to load; WARN: images
    with only ignore pixels, or classes absent from a split; shares below ``rare`` are listed (with a hint at
    class weights) without changing the verdict."""
    first = next(iter(datasets.values()))
    classes = list(getattr(first, "classes", [str(c) for c in range(first.num_classes)]))
    splits = {name: scan_labels(ds, max_samples, progress) for name, ds in datasets.items()}
    problems, warnings, notes = [], [], []
    for name, s in splits.items():
        if s["errors"]:
            files = ", ".join(e["file"] for e in s["errors"][:3]) + (" ..." if len(s["errors"]) > 3 else "")
            problems.append(f"{name}: {len(s['errors'])} pair(s) rejected by the dataset ({files}); first: "
                            f"{s['errors'][0]['error']}")
        if s["out_of_range"]:
            files = ", ".join(r["file"] for r in s["out_of_range"][:3])
            values = sorted({v for r in s["out_of_range"] for v in r["values"]})
            problems.append(f"{name}: {len(s['out_of_range'])} label file(s) have values {values[:10]} outside "
                            f"0..{len(classes) - 1} and not ignore ({files})")
        if s["all_ignore"]:
            warnings.append(f"{name}: {len(s['all_ignore'])} image(s) have only ignore pixels "
                            f"({', '.join(s['all_ignore'][:3])})")
        absent = [c for c, n in zip(classes, s["counts"]) if n == 0]
        if absent and s["labelled_pixels"]:
            warnings.append(f"{name}: classes never present in {s['samples']} images: {', '.join(absent)}")
        rare_c = [f"{c} ({100 * v:.3f}%)" for c, v in zip(classes, s["shares"]) if 0 < v < rare]
        if rare_c:
            notes.append(f"{name}: rare classes {', '.join(rare_c)}; consider loss.kwargs.class_weights="
                         f"median_frequency or loss.name=ohem")
    plots = []
    if out_dir is not None:
        from ...visualize import plot_class_frequencies

        path = Path(out_dir) / "class_frequencies.png"
        plot_class_frequencies(classes, {n: s["shares"] for n, s in splits.items()}, path,
                               getattr(first, "palette", None))
        plots.append(str(path))
    verdict = FAIL if problems else WARN if warnings else PASS
    main = next(iter(splits.values()))
    shares = [v for v in main["shares"] if v > 0]
    imbalance = max(shares) / min(shares) if shares else None
    summary = (f"{sum(s['samples'] for s in splits.values())} label maps in {', '.join(splits)}; "
               f"ignore {100 * main['ignore_share']:.1f}% of pixels; most/least frequent class "
               f"{imbalance:.1f}x" if imbalance else "no labelled pixels")
    return _result("data", verdict, summary, classes=classes, splits=splits, imbalance=imbalance,
                   problems=problems or None, warnings=warnings or None, notes=notes or None, plots=plots)
