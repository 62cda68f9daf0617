"""Weakly supervised segmentation with SSNet (Zeng et al. ICCV 2019): the task (task.py) and the stage-2 pseudo
labels written from a stage-1 model (pseudo_labels.py)."""
from .pseudo_labels import write_pseudo_labels
from .task import WeakTask

__all__ = ["WeakTask", "write_pseudo_labels"]
