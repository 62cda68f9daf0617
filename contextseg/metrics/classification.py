"""Classification accuracy from a confusion matrix (rows: truth, columns: prediction): top-1, mean and per-class
accuracy."""
from __future__ import annotations

import numpy as np


def accuracy_from_confusion(matrix: np.ndarray, class_names: list[str] | None = None) -> dict:
    """(K, K) counts -> {top1, images, mean_class_acc (over classes that occur), per_class_acc}."""
    m = np.asarray(matrix, dtype=np.float64)
    total, support = m.sum(), m.sum(1)
    per_class = np.diag(m) / np.maximum(support, 1)
    names = list(class_names) if class_names else [str(i) for i in range(len(m))]
    present = per_class[support > 0]
    return {"top1": float(np.trace(m) / max(total, 1)), "images": int(total),
            "mean_class_acc": float(present.mean()) if present.size else 0.0,
            "per_class_acc": dict(zip(names, per_class.tolist()))}
