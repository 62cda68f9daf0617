"""Label checks at the start of a run: every mask of a paired dataset is read once, before training, so a bad file
stops the run at step 0 with a report of every bad file instead of at the step that first samples it.

A mask passes when its values are class indices or the ignore index after the dataset's mapping and its size is
its image's (the image's header, EXIF orientation applied). Results are cached by file (path, size, modification
time) and dataset mapping in CACHE/label_checks.json, so the next run over unchanged files skips the reading.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..cache import cache_dir
from ..errors import ContextSegError

ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def image_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied), from its header."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in ROTATED else (h, w)


def _key(dataset, i: int) -> str:
    parts = []
    for p in (Path(dataset.files[i]), Path(dataset.masks[i])):
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    mapping = f"{dataset.num_classes}:{dataset.raw_ignore}:{sorted(dataset.label_map.items())}:{dataset.palette_masks}"
    return hashlib.sha1("|".join([*parts, mapping]).encode()).hexdigest()


def check_labels(dataset, progress: bool = False, limit: int = 10) -> int:
    """Read every mask of ``dataset`` (a PairedSegmentation; others pass) and raise one ContextSegError listing the
    bad files (at most ``limit`` named, all counted); returns how many masks were read (cache misses)."""
    if not (hasattr(dataset, "masks") and hasattr(dataset, "load_label")):
        return 0
    path = cache_dir() / "label_checks.json"
    try:
        passed = set(json.loads(path.read_text())) if path.is_file() else set()
    except (OSError, ValueError):
        passed = set()
    bad, read, keys = [], 0, []
    for i in tqdm(range(len(dataset)), desc="check labels", disable=not progress, leave=False, dynamic_ncols=True):
        try:
            key = _key(dataset, i)
        except OSError as exc:
            bad.append(f"{dataset.masks[i]}: {exc.strerror}")
            continue
        if key in passed:
            continue
        read += 1
        try:
            dataset.load_label(i, image_shape(Path(dataset.files[i])))
            keys.append(key)
        except ContextSegError as exc:
            bad.append(str(exc).split(". Fix:")[0].split("; ")[0])
        except OSError as exc:
            bad.append(f"{dataset.files[i]} or {dataset.masks[i]}: unreadable ({exc.__class__.__name__})")
    if keys:
        try:
            path.write_text(json.dumps(sorted(passed | set(keys))))
        except OSError:
            pass  # a cache that cannot be written only costs time
    if bad:
        shown = "; ".join(bad[:limit]) + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")
        raise ContextSegError(f"{len(bad)} of {len(dataset)} label files are bad: {shown}. Fix or remove them (labels "
                              f"are 0..{dataset.num_classes - 1} or 255, at their image's size; see data.kwargs "
                              f"label_map / ignore_index)")
    return read
