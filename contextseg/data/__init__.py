"""Datasets, transforms, batch mixes and readers; importing this registers "camvid", "folder",
"synthetic", "ecssd", "saliency_folder", "cifar10", "image_folder", "weak_saliency" and "pseudo_labels"."""
from .datasets import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    IMAGE_EXTS,
    CamVid,
    FolderDataset,
    PairedSegmentation,
    build_dataset,
    colour_to_index,
    default_data_root,
    pair_files,
    read_image,
    read_mask,
    voc_palette,
)
from .classification import (
    CIFAR10_CLASSES,
    ImageFolderClassification,
    LabelCutMix,
    build_label_mix,
    classification_train_transform,
    write_image_folder,
)
from .mix import BatchMix, build_batch_mix, copy_paste, cutmix
from .saliency import SaliencyFolder
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, SyntheticScenes, render_scene, write_synthetic_folder
from .weak import JointWeakSaliency, WeakImages, write_synthetic_weak
from .transforms import MEAN, STD, SegTransform, denormalize, eval_transform, mask_to_tensor, to_tensor, train_transform

__all__ = [
    "CAMVID_CLASSES", "CAMVID_PALETTE", "IMAGE_EXTS", "CamVid", "FolderDataset", "PairedSegmentation",
    "build_dataset", "colour_to_index", "default_data_root", "pair_files", "read_image", "read_mask",
    "voc_palette", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "SyntheticScenes", "render_scene",
    "write_synthetic_folder", "MEAN", "STD", "SegTransform", "denormalize", "eval_transform",
    "mask_to_tensor", "to_tensor", "train_transform", "BatchMix", "build_batch_mix", "copy_paste", "cutmix",
    "SaliencyFolder", "CIFAR10_CLASSES", "ImageFolderClassification", "LabelCutMix", "build_label_mix",
    "classification_train_transform", "write_image_folder", "JointWeakSaliency", "WeakImages", "write_synthetic_weak",
]
