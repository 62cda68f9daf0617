"""Image classification (SAOL, Kim et al. CVPR 2020; or a plain GAP-FC classifier).

Datasets that declare ``task = "classification"`` ("cifar10", "image_folder") train here: CIFAR augmentation (pad 4,
random crop, flip; ``data.kwargs.pad``), CutMix on label pairs (``data.mix=cutmix``), the SAOL objective
(losses/saol.py), and top-1 accuracy of the model's "out" (SAOL) and, when it has one, of its "gap" output (the
self-distilled GAP-FC branch): keys ``top1``, ``top1_gap``, ``mean_class_acc``, ``per_class_acc``, ``images``.
"Best" is the highest top-1 of "out".
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..config import Config
from ..data import build_dataset, build_label_mix, classification_train_transform, eval_transform, read_image
from ..data.classification import check_distort, distorted_eval_transform
from ..data.transforms import denormalize
from ..engine import distributed as dist_utils
from ..engine.builders import build_model_for, eval_loader, load_for_eval
from ..engine.checkpoint import load_checkpoint, model_from_checkpoint, remove_stale_temps, training_crop
from ..engine.evaluator import EvalRuntime
from ..engine.outputs import (FolderLock, check_output_folder, collect_images, make_folder, output_stems,
                              save_image, skipped_note, unreadable_images, write_text)
from ..engine.runtime import autocast, select_device
from ..errors import ContextSegError
from ..losses import WithSourceLogits, build_classification_loss
from ..metrics import accuracy_from_confusion, confusion_matrix
from ..onnx_graph import OnnxModel, is_onnx
from ..registry import CLASSIFIERS
from ..visualize import heatmap
from .base import Setup, Task, loadable_samples, refuse_inference_options, require_val_set

DISTORT_VAL_SEED = 0  # data.kwargs.distort: the validation images' distortions (the same in every run)


class ClassificationTask(Task):
    name = "classification"
    datasets = ("classification",)
    key_metric = "top1"

    def check(self, cfg: Config) -> None:
        if cfg.model.arch not in CLASSIFIERS:
            raise ContextSegError(f"dataset {cfg.data.dataset!r} is for image classification: set model.arch to "
                                  f"{' or '.join(CLASSIFIERS.names())} (model.arch={cfg.model.arch!r} is a "
                                  f"segmentation head), e.g. configs/cifar10/saol_resnet20.yaml")

    def setup(self, cfg: Config, progress: bool) -> Setup:
        train_set, val_set = build_datasets(cfg)
        model = build_model_for(cfg, train_set.num_classes)
        loss = build_classification_loss(cfg.loss.name, cfg.loss.weights, **cfg.loss.kwargs)
        evaluate_fn = None
        if val_set is not None:
            loader = eval_loader(val_set, cfg, dist_utils.get_rank(), dist_utils.get_world_size())
            runtime = EvalRuntime.from_config(cfg, progress=progress)
            evaluate_fn = lambda model: evaluate_classification(model, loader, val_set.num_classes,  # noqa: E731
                                                                val_set.classes, runtime)
        mix = build_label_mix(cfg.data)
        if mix is not None and loss.needs_source_logits:  # L_ss2's targets: the unmixed source images' spatial logits
            mix = WithSourceLogits(mix, model)
        meta = {"classes": list(train_set.classes), "palette": [tuple(c) for c in train_set.palette]}
        return Setup(model, loss, train_set, evaluate_fn, meta, self.key_metric, mix)

    def format(self, result: dict) -> str:
        if not result:
            return ""
        gap = f"  GAP-FC top-1 {100 * result['top1_gap']:.2f}%" if "top1_gap" in result else ""
        return (f"top-1 {100 * result['top1']:.2f}%{gap}  mean class acc {100 * result['mean_class_acc']:.2f}%  "
                f"({result['images']} images)")

    def evaluate(self, cfg: Config, checkpoints: list[str], progress: bool, backend: str | None,
                 inference: dict) -> tuple[dict, dict]:
        if len(checkpoints) != 1:
            raise ContextSegError("classification checkpoints are evaluated one at a time (a .pt file, zoo:NAME or "
                                  "an exported .onnx file)")
        checkpoint = checkpoints[0]
        skip_bad = inference.pop("skip_bad", False)
        refuse_inference_options(inference, "a classifier")
        _, val_set = build_datasets(cfg, train=False)
        require_val_set(val_set)
        samples, skipped = loadable_samples(val_set, progress) if skip_bad else (val_set, [])
        model = load_for_eval(cfg, checkpoint, val_set.num_classes)
        device = select_device(cfg.device)
        model.to(device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        runtime = EvalRuntime(device, cfg.train.amp, cfg.train.channels_last, progress)
        return (evaluate_classification(model, eval_loader(samples, cfg), val_set.num_classes, val_set.classes,
                                        runtime), {"skipped": skipped} if skip_bad else {})

    def predict(self, checkpoints: list, inputs, out_dir, options: dict) -> str:
        if len(checkpoints) > 1 or any(options.get(k) not in (None, False)
                                       for k in ("scales", "merge", "flip", "window", "stride")):
            raise ContextSegError("a classification checkpoint predicts alone, without test-time options")
        rows = predict_files(options.get("loaded") or checkpoints[0], inputs, out_dir, device=options.get("device", "auto"),
                             amp=options.get("amp", "none"), progress=options.get("progress", True),
                             skip_bad=options.get("skip_bad", False))
        return f"wrote predictions.json for {len(rows)} images to {out_dir}"


def build_datasets(cfg: Config, train: bool = True):
    """(train set with the CIFAR augmentation or None, val set or None); ``data.kwargs.pad`` (4) is the crop padding.
    ``data.kwargs.distort`` ({rotate, scale, translate}: ``data.classification.random_distortion``) distorts the
    training images (before the padding and crop) and the validation images, each of those the same way at every
    evaluation (seeded by its index and DISTORT_VAL_SEED, not by the run's seed: every run sees the same set)."""
    d = cfg.data
    kwargs = dict(d.kwargs)
    pad = kwargs.pop("pad", 4)
    distort = check_distort(kwargs.pop("distort", None))
    train_set = None
    if train:
        tf = classification_train_transform(tuple(d.crop_size), pad=pad, hflip=d.hflip, distort=distort)
        train_set = build_dataset(d.dataset, d.train_split, root=d.root, transform=tf, **kwargs)
    val_tf, val_kwargs = eval_transform(), kwargs
    if distort:  # a fixed distorted validation set
        val_tf, val_kwargs = distorted_eval_transform(distort), dict(kwargs, transform_seed=DISTORT_VAL_SEED)
    val_set = build_dataset(d.dataset, d.val_split, root=d.root, transform=val_tf, **val_kwargs) \
        if d.val_split else None
    return train_set, val_set


@torch.no_grad()
def evaluate_classification(model, loader, num_classes: int, classes=None, runtime: EvalRuntime = EvalRuntime(),
                            desc: str = "eval") -> dict:
    """Top-1 accuracy of ``model(x)["out"]`` (and of "gap" when present) over (image, label) batches; per-class
    accuracy of "out". Restores the model's mode. Distributed: counts are summed over the ranks' shards."""
    device = torch.device(runtime.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # truth x prediction of "out"
    gap = torch.zeros(2, dtype=torch.long)  # correct, counted
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc=desc, disable=not runtime.progress, leave=False, dynamic_ncols=True):
            images = images.to(device)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, runtime.amp):
                out = model(images)
            confusion += confusion_matrix(out["out"].float().argmax(1).cpu(), labels, num_classes, ignore_index=-1)
            if "gap" in out:
                gap += torch.tensor([int((out["gap"].float().argmax(1).cpu() == labels).sum()), len(labels)])
    finally:
        model.train(was_training)
    if runtime.distributed:
        confusion, gap = dist_utils.all_reduce_sum(confusion), dist_utils.all_reduce_sum(gap)
    result = accuracy_from_confusion(confusion.numpy(), list(classes) if classes else None)
    if gap[1] > 0:
        result["top1_gap"] = gap[0].item() / gap[1].item()
    return result


@torch.no_grad()
def predict_files(checkpoint, inputs, out_dir, device: str = "auto", amp: str = "none", progress: bool = True,
                  skip_bad: bool = False) -> list:
    """Classify images with a checkpoint (a path, zoo:NAME, a ``load_checkpoint`` dict, or an exported .onnx file,
    run by onnxruntime on the CPU: class and probability only, no attention picture): prints ``NAME: class (prob)`` per
    image, writes OUT/predictions.json and, for a SAOL model, OUT/STEM_attention.png (the image beside its spatial
    attention map, upsampled bilinearly and shown as a heatmap scaled to its maximum); for a model with a spatial
    transformer, OUT/STEM_stn.png (the image beside the transformed image its backbone saw; ``stn_picture``) and
    "stn_theta" in predictions.json. Images of another size than the training crop are resized to it.

    As ``Predictor.predict_files``: an OUT that holds input images is refused, same-stem images get distinct names
    (``output_stems``), every file goes through a temp file + rename, OUT/.contextseg.lock keeps a second writer
    out, and unreadable files stop the run before anything is written unless ``skip_bad`` (then they are skipped,
    printed and left out of predictions.json)."""
    images = collect_images(inputs)
    out_dir = check_output_folder(out_dir, images)
    bad = unreadable_images(images)
    if bad and not skip_bad:
        raise ContextSegError(f"cannot read image {bad[0][0]} ({bad[0][1]}); replace or remove it, or pass "
                              f"--skip-bad to predict the other images and list the unreadable ones")
    skipped, skip = list(bad), {p for p, _ in bad}
    stems = output_stems(images, ("_attention", "_stn"))
    if not isinstance(checkpoint, dict) and is_onnx(checkpoint):
        dev, model = torch.device("cpu"), OnnxModel(checkpoint)
        crop = tuple(model.input_size or ())
    else:
        dev = select_device(device)
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt, dev, source=str(checkpoint) if not isinstance(checkpoint, dict) else "")
        crop = tuple(training_crop(ckpt) or ())
    classes = model.classes or [str(i) for i in range(model.num_classes)]
    transform = eval_transform()
    make_folder(out_dir)
    rows = []
    with FolderLock(out_dir, "predict"):
        remove_stale_temps(out_dir)
        todo = [(p, s) for p, s in zip(images, stems) if p not in skip]
        for path, stem in tqdm(todo, desc="predict", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                image = read_image(path)
            except ContextSegError as exc:
                why = str(exc).split(f"{path}: ", 1)[-1].removesuffix(" Is it a valid image file?").rstrip(".")
                if not skip_bad:
                    raise ContextSegError(f"cannot read image {path} ({why}); replace or remove it, or pass "
                                          f"--skip-bad to predict the other images") from None
                skipped.append((path, why))
                continue
            if len(crop) == 2 and image.shape[:2] != crop:
                image = cv2.resize(image, (int(crop[1]), int(crop[0])), interpolation=cv2.INTER_AREA)
            with autocast(dev, amp):
                out = model(transform(image, None)[0][None].to(dev))
            probs = out["out"].float().softmax(1)[0].cpu()
            k = int(probs.argmax())
            row = {"image": str(path), "class": classes[k], "index": k, "prob": float(probs[k])}
            if "gap" in out:
                row["gap_class"] = classes[int(out["gap"].argmax(1)[0])]
            if "attention" in out:
                row["attention"] = str(out_dir / f"{stem}_attention.png")
                save_image(attention_picture(image, out["attention"].float()[0, 0].cpu().numpy()), row["attention"])
            if "stn_input" in out:  # spatial transformer: the input beside what the backbone saw
                row["stn"] = str(out_dir / f"{stem}_stn.png")
                row["stn_theta"] = [[round(float(v), 6) for v in r] for r in out["stn_theta"].float()[0].cpu()]
                save_image(stn_picture(image, denormalize(out["stn_input"].float()[0].cpu())), row["stn"])
            print(f"{path.name}: {row['class']} ({100 * row['prob']:.1f}%)")
            rows.append(row)
        write_text(out_dir / "predictions.json", json.dumps(rows, indent=2))
    if skipped:
        print(skipped_note(skipped))
    return rows


def attention_picture(image: np.ndarray, attention: np.ndarray, min_side: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 image and (h, w) attention -> image | heatmap side by side, enlarged to >= min_side px."""
    f = max(1, math.ceil(min_side / min(image.shape[:2])))
    big = cv2.resize(image, (image.shape[1] * f, image.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    att = cv2.resize(attention.astype(np.float32), big.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    heat = heatmap(att, 0.0, float(att.max()) or 1.0)
    blend = (0.4 * big.astype(np.float32) + 0.6 * heat.astype(np.float32)).astype(np.uint8)
    return np.concatenate([big, blend], axis=1)


def stn_picture(image: np.ndarray, transformed: np.ndarray, min_side: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 image and (h, w, 3) uint8 spatial-transformer output -> the two side by side, enlarged (nearest)
    to >= min_side px; the output is brought to the image's height."""
    f = max(1, math.ceil(min_side / min(image.shape[:2])))
    big = cv2.resize(image, (image.shape[1] * f, image.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    width = max(1, round(transformed.shape[1] * big.shape[0] / transformed.shape[0]))
    moved = cv2.resize(np.ascontiguousarray(transformed), (width, big.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([big, moved], axis=1)
