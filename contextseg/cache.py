"""Where contextseg keeps what it can recompute (ONNX exports, label checks): $CONTEXTSEG_CACHE, else
$XDG_CACHE_HOME/contextseg, else ~/.cache/contextseg."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("CONTEXTSEG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "contextseg"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
