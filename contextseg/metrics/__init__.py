"""Metrics, by task; one confusion matrix (``confusion_matrix``) serves segmentation, pseudo labels and
classification.

    segmentation.py    SegMetric: mIoU, per-class IoU, pixel and mean accuracy; format_table
    classification.py  top-1, mean and per-class accuracy from the same confusion matrix
    sod.py             SODMetrics: MAE, F-measures, S-measure, E-measures, weighted F (salient objects)
"""
from .classification import accuracy_from_confusion
from .segmentation import SegMetric, confusion_matrix, format_table, metrics_from_confusion
from .sod import SODMetrics

__all__ = ["accuracy_from_confusion", "SegMetric", "confusion_matrix", "format_table", "metrics_from_confusion",
           "SODMetrics"]
