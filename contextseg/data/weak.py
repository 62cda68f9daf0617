"""Data for weakly supervised segmentation with SSNet (Zeng et al. ICCV 2019): a segmentation set seen only through
image-level labels, a saliency set with masks, and the pseudo-label folders of stage 2.

- Image-level labels: class k is present in an image when it covers at least ``min_fraction`` (0.5%) of the image's
  pixels. They are derived once from the label maps (``derive_image_labels``) or read from a JSON file
  (``data.kwargs.image_labels``; written there when it does not exist yet); training never reads a pixel label of the
  segmentation set: ``WeakImages`` reads images only.
- ``JointWeakSaliency`` (dataset "weak_saliency", split train): sample i = segmentation image i and a saliency image
  drawn at random (seeded per sample by the trainer), both cut to the training crop:
  (images (2, 3, H, W), {"labels": (C,) float, "mask": (H, W) saliency {0, 1, 255}, ["pseudo": (H, W) channels]}).
  ``unpair`` turns a batch into (2B, 3, H, W): B segmentation images, then B saliency images (one forward pass; the
  official code runs one batch of each per step and sums the two losses, as we do). ``data.kwargs.saliency: null``
  leaves the saliency set out (the ablation "stage 1 without saliency": image labels alone; samples (1, 3, H, W)).
- Channels: SSNet predicts C + 1 maps, channel 0 background. A dataset without a background class (CamVid) has
  C = K classes, channel c = class c - 1, and background maps to 255 (ignore); ``background_class=b`` names a
  dataset class that is background (VOC's 0): it takes channel 0 and the other K - 1 classes follow in order.
- "pseudo_labels": images of a source dataset's split with the masks of a pseudo-label folder (stage 2 through the
  ordinary segmentation training); its other splits are the source's own (true labels, for evaluation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import ContextSegError
from ..registry import DATASETS
from .datasets import PairedSegmentation, build_dataset, read_image, read_mask
from .synthetic import SyntheticScenes, write_synthetic_folder
from .transforms import eval_transform

IGNORE = 255


class ClassLayout:
    """Dataset classes (K) <-> SSNet channels (C + 1, channel 0 background); see the module docstring."""

    def __init__(self, classes, palette=None, background_class: int | None = None):
        k = len(classes)
        if background_class is not None and (isinstance(background_class, bool) or not isinstance(background_class, int)
                                             or not 0 <= background_class < k):
            raise ContextSegError(f"background_class must be a class index 0..{k - 1} or null, got {background_class!r}")
        self.background_class = background_class
        self.foreground = [c for c in range(k) if c != background_class]  # channel i + 1 <-> class foreground[i]
        palette = list(palette or [(0, 0, 0)] * k)
        bg = background_class
        self.names = ["background" if bg is None else classes[bg]] + [classes[c] for c in self.foreground]
        self.palette = [(0, 0, 0) if bg is None else tuple(palette[bg])] + [tuple(palette[c]) for c in self.foreground]
        self.channel_to_class = np.array([IGNORE if bg is None else bg] + self.foreground, dtype=np.uint8)
        self.class_to_channel = np.full(256, IGNORE, dtype=np.int64)
        self.class_to_channel[self.foreground] = np.arange(1, len(self.foreground) + 1)
        if bg is not None:
            self.class_to_channel[bg] = 0

    @property
    def num_foreground(self) -> int:
        return len(self.foreground)


def label_map_of(dataset, i: int) -> np.ndarray:
    """The i-th (H, W) label map of a segmentation set (for deriving image labels and for evaluation only)."""
    return dataset.load_label(i) if hasattr(dataset, "load_label") else dataset.raw(i)[1]


def read_image_only(dataset, i: int) -> np.ndarray:
    """The i-th image of a segmentation set, uint8 (H, W, 3), without touching its label map (procedural sets render
    both and drop the label)."""
    if isinstance(dataset, PairedSegmentation):
        return read_image(dataset.files[i])
    return dataset.raw(i)[0]


def image_keys(dataset) -> list[str]:
    """One name per image (its file stem), the key of the image-label and pseudo-label files."""
    keys = [Path(dataset.image_path(i)).stem for i in range(len(dataset))]
    if len(set(keys)) != len(keys):
        raise ContextSegError("two images of the segmentation set share a file stem; image-level and pseudo labels are "
                              "keyed by stem, rename them")
    return keys


def derive_image_labels(dataset, min_fraction: float = 0.005, progress: bool = True) -> np.ndarray:
    """(N, K) uint8: class k present in image i when its pixels are >= min_fraction of the image's H x W pixels
    (ignored pixels count in the total, never as a class). Reads every label map once."""
    if not 0.0 < min_fraction < 1.0:
        raise ContextSegError(f"min_fraction is a share of the pixels in (0, 1), got {min_fraction}")
    k = dataset.num_classes
    out = np.zeros((len(dataset), k), dtype=np.uint8)
    for i in tqdm(range(len(dataset)), desc="image labels", disable=not progress, leave=False):
        label = np.asarray(label_map_of(dataset, i))
        counts = np.bincount(label.ravel().astype(np.int64), minlength=256)[:k]
        out[i] = counts >= min_fraction * label.size
    return out


def save_image_labels(path, dataset, labels: np.ndarray, min_fraction: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ",\n".join(f"  {json.dumps(key)}: {json.dumps(np.flatnonzero(row).tolist())}"
                      for key, row in zip(image_keys(dataset), labels))  # one image per line
    path.write_text(f'{{"classes": {json.dumps(list(dataset.classes))}, "min_fraction": {min_fraction},\n'
                    f' "images": {{\n{rows}\n }}\n}}\n')


def load_image_labels(path, dataset) -> np.ndarray:
    """(N, K) uint8 from a file written by ``save_image_labels`` (keys: image stems), checked against ``dataset``."""
    data = json.loads(Path(path).read_text())
    if list(data.get("classes", [])) != list(dataset.classes):
        raise ContextSegError(f"image labels {path} are for classes {data.get('classes')}, the dataset has "
                              f"{list(dataset.classes)}; delete the file to derive them again")
    rows = data["images"]
    keys = image_keys(dataset)
    missing = [k for k in keys if k not in rows]
    if missing:
        raise ContextSegError(f"image labels {path} lack {len(missing)} image(s), e.g. {missing[0]!r}; delete the file "
                              f"to derive them again")
    out = np.zeros((len(keys), dataset.num_classes), dtype=np.uint8)
    for i, key in enumerate(keys):
        out[i, rows[key]] = 1
    return out


def image_labels_for(dataset, path=None, min_fraction: float = 0.005, progress: bool = True) -> np.ndarray:
    """Read ``path`` when it exists, else derive from the label maps (and write ``path`` when given)."""
    if path and Path(path).is_file():
        return load_image_labels(path, dataset)
    labels = derive_image_labels(dataset, min_fraction, progress)
    if path:
        save_image_labels(path, dataset, labels, min_fraction)
    return labels


class WeakImages(Dataset):
    """A segmentation set seen through image-level labels: item i -> (image (3, H, W), {"labels": (C,) float over
    the layout's foreground classes[, "pseudo": (H, W) channel indices from ``pseudo_dir``]}). The set's own label
    maps are never read."""

    def __init__(self, dataset, labels: np.ndarray, layout: ClassLayout, transform, pseudo_dir=None):
        if len(labels) != len(dataset):
            raise ContextSegError(f"{len(labels)} image labels for {len(dataset)} images")
        self.dataset, self.layout, self.transform = dataset, layout, transform or eval_transform()
        self.labels = torch.from_numpy(np.asarray(labels)[:, layout.foreground].astype(np.float32))
        self.pseudo = None
        if pseudo_dir is not None:
            self.pseudo = pseudo_masks(pseudo_dir, dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image = read_image_only(self.dataset, i)
        if self.pseudo is None:
            return self.transform(image, None)[0], {"labels": self.labels[i]}
        mask = read_mask(self.pseudo[i])
        if mask.shape != image.shape[:2]:
            raise ContextSegError(f"pseudo label {self.pseudo[i]} is {mask.shape[::-1]}, its image "
                                  f"{image.shape[1::-1]}; write the pseudo labels again")
        x, y = self.transform(image, mask)
        return x, {"labels": self.labels[i], "pseudo": torch.from_numpy(self.layout.class_to_channel)[y]}


class JointWeakSaliency(Dataset):
    """Stage-1/2 training pairs (see the module docstring); length = the segmentation set's. ``saliency`` None: the
    segmentation images alone, (1, 3, H, W) and no "mask"."""

    task = "weak_saliency"
    ignore_index = IGNORE

    def __init__(self, weak: WeakImages, saliency=None):
        if saliency is not None and len(saliency) == 0:
            raise ContextSegError("the saliency training set is empty")
        self.weak, self.saliency = weak, saliency
        self.classes, self.palette = weak.layout.names, weak.layout.palette
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.weak)

    def __getitem__(self, i: int):
        image, target = self.weak[i]
        if self.saliency is None:
            return image[None], target
        sal_image, mask = self.saliency[int(torch.randint(len(self.saliency), ()))]
        if sal_image.shape != image.shape:
            raise ContextSegError(f"a segmentation image came out as {tuple(image.shape)} and a saliency image as "
                                  f"{tuple(sal_image.shape)}; both need the same training crop (data.crop_size)")
        return torch.stack([image, sal_image]), {**target, "mask": mask}


def unpair(images: torch.Tensor, targets):
    """Batch transform: (B, 2, 3, H, W) -> (2B, 3, H, W), the B segmentation images first ((B, 1, 3, H, W) ->
    (B, 3, H, W) without a saliency set)."""
    return torch.cat(images.unbind(1)), targets


def pseudo_masks(folder, dataset) -> list[Path]:
    """folder/STEM.png for every image of ``dataset``, or one clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContextSegError(f"pseudo-label folder {folder} not found; write it first with `contextseg pseudo-labels "
                              f"STAGE1_CONFIG --checkpoint STAGE1.pt --out {folder}`")
    masks = [folder / f"{key}.png" for key in image_keys(dataset)]
    missing = [m for m in masks if not m.is_file()]
    if missing:
        raise ContextSegError(f"{len(missing)} pseudo label(s) missing in {folder}, e.g. {missing[0].name}; write the "
                              f"folder again for this dataset and split")
    return masks


@dataclass
class WeakSpec:
    """data.kwargs of a "weak_saliency" config: segmentation / saliency = {dataset: NAME, root: ..., other dataset
    options} (saliency also train_split / val_split, default train / val; ``saliency: null``: no saliency set, image
    labels alone), image_labels (JSON path), min_fraction, background_class, pseudo_labels (a folder: stage 2 adds
    the pseudo-label CE)."""

    segmentation: dict = field(default_factory=dict)
    saliency: dict | None = field(default_factory=dict)
    image_labels: str | None = None
    min_fraction: float = 0.005
    background_class: int | None = None
    pseudo_labels: str | None = None

    @classmethod
    def parse(cls, kwargs: dict) -> "WeakSpec":
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ContextSegError(f"data.kwargs {unknown} are not options of dataset 'weak_saliency'; it takes "
                                  f"{', '.join(known)}")
        spec = cls(**kwargs)
        for name in ("segmentation", "saliency"):
            part = getattr(spec, name)
            if name == "saliency" and part is None:
                continue
            if not isinstance(part, dict) or "dataset" not in part:
                hint = "{dataset: camvid}" if name == "segmentation" else "{dataset: ecssd}, or null for none"
                raise ContextSegError(f"data.kwargs.{name} must be a mapping with a dataset name, e.g. {hint}")
        return spec

    def segmentation_set(self, split: str, transform=None):
        opts = dict(self.segmentation)
        return build_dataset(opts.pop("dataset"), split, root=opts.pop("root", None), transform=transform, **opts)

    def saliency_set(self, which: str, transform=None):
        """which: "train" or "val" (mapped through the saliency train_split / val_split options); None when the config
        has no saliency set (``saliency: null``)."""
        if self.saliency is None:
            return None
        opts = dict(self.saliency)
        splits = {"train": opts.pop("train_split", "train"), "val": opts.pop("val_split", "val")}
        ds = build_dataset(opts.pop("dataset"), splits[which], root=opts.pop("root", None), transform=transform, **opts)
        if getattr(ds, "task", None) != "saliency":
            raise ContextSegError(f"data.kwargs.saliency.dataset={self.saliency['dataset']!r} is not a saliency "
                                  f"dataset; use ecssd or saliency_folder")
        return ds

    def layout(self, dataset) -> ClassLayout:
        return ClassLayout(dataset.classes, dataset.palette, self.background_class)


def build_joint(spec: WeakSpec, split: str = "train", transform=None, progress: bool = True,
                labels_path=None) -> JointWeakSaliency:
    """The training pairs of ``spec`` (image labels from spec.image_labels, else derived and written to
    ``labels_path`` when given)."""
    seg = spec.segmentation_set(split)
    labels = image_labels_for(seg, spec.image_labels or labels_path, spec.min_fraction, progress)
    weak = WeakImages(seg, labels, spec.layout(seg), transform, spec.pseudo_labels)
    return JointWeakSaliency(weak, spec.saliency_set("train", transform))


def weak_saliency(split: str = "train", root=None, transform=None, **kwargs):
    """"weak_saliency": SSNet's joint data (split train); other splits give the segmentation set's split with its
    true labels (evaluation). Options: see ``WeakSpec``."""
    spec = WeakSpec.parse(kwargs)
    if split == "train":
        return build_joint(spec, split, transform)
    return spec.segmentation_set(split, transform)


weak_saliency.task = "weak_saliency"
DATASETS.register("weak_saliency")(weak_saliency)


@DATASETS.register("pseudo_labels")
def pseudo_labels(split: str = "train", root=None, transform=None, labels: str | None = None,
                  source: str = "camvid", source_kwargs: dict | None = None, labelled_split: str = "train"):
    """"pseudo_labels": split ``labelled_split`` = the images of ``source`` with the masks in folder ``labels``
    (written by `contextseg pseudo-labels`); other splits = ``source``'s own (true labels)."""
    src = build_dataset(source, split, root=root, transform=transform, **dict(source_kwargs or {}))
    if split != labelled_split:
        return src
    if labels is None:
        raise ContextSegError("dataset 'pseudo_labels' needs data.kwargs.labels: the folder written by "
                              "`contextseg pseudo-labels`")
    if not isinstance(src, PairedSegmentation):
        raise ContextSegError(f"pseudo_labels needs a source of image files (camvid, folder), not {source!r}")
    ds = PairedSegmentation(src.files, pseudo_masks(labels, src), src.classes, src.palette, transform)
    ds.root, ds.split = Path(labels), split
    return ds


def write_synthetic_weak(root, n_train: int = 8, n_val: int = 2, n_saliency: int = 8, size=(48, 64),
                         seed: int = 0) -> dict:
    """A tiny SSNet playground: root/seg/{train,val}/{images,masks} (procedural scenes, 6 classes) and
    root/sod/{images,masks} (other scenes; salient = the four object classes). Returns both roots."""
    root = Path(root)
    write_synthetic_folder(root / "seg", n_train, size, seed, split="train")
    write_synthetic_folder(root / "seg", n_val, size, seed, split="val")
    sod = root / "sod"
    (sod / "images").mkdir(parents=True, exist_ok=True)
    (sod / "masks").mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(num_samples=n_saliency, size=size, seed=seed + 1, split="train")
    for i in range(n_saliency):
        image, label = scenes.raw(i)
        mask = np.where((label >= 2) & (label != IGNORE), 255, 0).astype(np.uint8)
        Image.fromarray(image).save(sod / "images" / f"{i:05d}.png")
        Image.fromarray(mask).save(sod / "masks" / f"{i:05d}.png")
    return {"segmentation": str(root / "seg"), "saliency": str(sod)}
