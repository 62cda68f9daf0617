"""Semantic segmentation: per-pixel classes, trained with pixel losses over the model's outputs, scored by mIoU.

Evaluation runs whole validation images at their own size (engine/evaluator.py), optionally through test-time
multi-scale / flip / sliding windows (models/multiscale.py), an inference backend (engine/backends.py) or an
ensemble of checkpoints (their softmax probabilities averaged, models/ensemble.py).
"""
from __future__ import annotations

import torch

from ..config import Config
from ..data import build_dataset, eval_transform
from ..data.checks import check_labels
from ..data.mix import build_batch_mix
from ..engine import distributed as dist_utils
from ..engine.backends import default_backend, prepare
from ..engine.builders import build_datasets, build_model_for, eval_loader, load_for_eval
from ..engine.checkpoint import model_from_checkpoint
from ..engine.evaluator import EvalRuntime, evaluate
from ..engine.outputs import image_batches, skipped_note
from ..engine.predictor import MAX_PIXELS, Predictor, crop_of
from ..engine.runtime import select_device
from ..errors import ContextSegError
from ..losses import build_loss_for
from ..metrics import format_table
from ..models.ensemble import Ensemble
from ..models.heads.ocr import ocr_head, oracle_regions
from ..models.multiscale import configure_inference, inference_spec
from ..registry import CLASSIFIERS
from .base import Setup, Task, loadable_samples, require_val_set


class SegmentationTask(Task):
    name = "segmentation"
    datasets = ("segmentation",)
    doctor = True
    key_metric = "mIoU"

    def check(self, cfg: Config) -> None:
        if cfg.model.arch in CLASSIFIERS:
            raise ContextSegError(f"model.arch={cfg.model.arch!r} is an image classifier; train it on a "
                                  f"classification dataset (cifar10, image_folder), not {cfg.data.dataset!r}")
        if cfg.model.arch == "ssnet":
            raise ContextSegError(f"model 'ssnet' predicts a background channel plus the classes and trains on "
                                  f"data.dataset=weak_saliency, not {cfg.data.dataset!r}; see configs/weak/")

    def outputs(self, dataset) -> int:
        """Logit channels of a model for ``dataset``."""
        return dataset.num_classes

    def build_loss(self, cfg: Config, train_set, progress: bool):
        return build_loss_for(cfg, train_set, progress=progress)

    def evaluator(self, cfg: Config, val_set, runtime: EvalRuntime):
        """model -> metrics of ``val_set`` (whole images; a rank's shard in a distributed run)."""
        loader = eval_loader(val_set, cfg, dist_utils.get_rank(), dist_utils.get_world_size())
        return lambda model: self.score(model, loader, val_set, runtime)

    def score(self, model, loader, val_set, runtime: EvalRuntime) -> dict:
        return evaluate(model, loader, val_set.num_classes, val_set.classes, val_set.ignore_index, runtime)

    def setup(self, cfg: Config, progress: bool) -> Setup:
        train_set, val_set = build_datasets(cfg)
        for dataset in (train_set, val_set):  # every mask once, before step 1 (cached): data/checks.py
            if dataset is not None:
                check_labels(dataset, progress)
        model = build_model_for(cfg, self.outputs(train_set))
        loss = self.build_loss(cfg, train_set, progress)
        runtime = EvalRuntime.from_config(cfg, progress=progress)
        meta = {"classes": list(train_set.classes), "palette": [tuple(c) for c in train_set.palette]}
        return Setup(model, loss, train_set, self.evaluator(cfg, val_set, runtime) if val_set is not None else None, meta,
                     self.key_metric, build_batch_mix(cfg.data, ignore_index=train_set.ignore_index))

    def format(self, result: dict) -> str:
        text = format_table(result) if result.get("per_class_iou") else ""
        if "oracle" in result:
            o = result["oracle"]
            text += (f"\nGT-OCR ({o['mode']}: ground-truth object regions"
                     f"{' and pixel-region relations' if o['mode'] == 'full' else ''}): mIoU {100 * o['mIoU']:.2f} "
                     f"against {100 * result['mIoU']:.2f} with the predicted soft regions "
                     f"({100 * (o['mIoU'] - result['mIoU']):+.2f})")
        return text

    def evaluate(self, cfg: Config, checkpoints: list[str], progress: bool, backend: str | None,
                 inference: dict) -> tuple[dict, dict]:
        """Checkpoints (several: an ensemble averaging softmax probabilities) through the test-time options and an
        inference backend (None: bf16 eager where native, else the exact torch backend; "auto": the fastest exact
        one; an ensemble or an .onnx file runs as it is)."""
        oracle = inference.pop("oracle", None)
        skip_bad = inference.pop("skip_bad", False)
        if oracle and (len(checkpoints) > 1 or any(v not in (None, False) for v in inference.values())):
            raise ContextSegError("--oracle-regions evaluates one OCR checkpoint as trained, without test-time options")
        _, val_set = build_datasets(cfg, train=False)
        require_val_set(val_set)
        if skip_bad:  # bad pairs are listed after the report instead of stopping the evaluation
            samples, skipped = loadable_samples(val_set, progress)
        else:
            check_labels(val_set, progress)
            samples, skipped = val_set, []
        models = [configure_inference(load_for_eval(cfg, c, self.outputs(val_set)), **inference) for c in checkpoints]
        model = models[0] if len(models) == 1 else Ensemble(models, names=checkpoints)
        device = select_device(cfg.device)
        model.to(device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        loader = eval_loader(samples, cfg)
        amp = cfg.train.amp
        backend = "eager" if oracle else backend or default_backend(amp, device)  # the oracle needs the module
        if backend != "eager" and len(models) == 1 and getattr(model, "session", None) is None:
            calibration = calibration_batches(cfg) if backend == "int8" else None
            model, amp = prepare(model, backend, next(iter(loader))[0].to(device), amp, device, calibration)
        used = getattr(model, "backend", "eager")
        if progress:
            print(f"inference: backend {used}" + (f", amp {amp}" if used == "eager" else ""))
        runtime = EvalRuntime(device, amp, cfg.train.channels_last, progress)
        result = self.score(model, loader, val_set, runtime)
        report = {"inference": inference_spec(models[0]), "backend": used}
        if skip_bad:
            report["skipped"] = skipped
        if oracle:
            if ocr_head(model) is None:
                raise ContextSegError(f"--oracle-regions replaces the OCR head's object regions; {checkpoints[0]!r} "
                                      f"has no OCR head (model.arch=ocr)")
            gt = evaluate_with_oracle(model, loader, val_set, runtime, oracle)
            result["oracle"] = {"mode": oracle, "mIoU": gt["mIoU"], "pixel_acc": gt["pixel_acc"],
                                "per_class_iou": gt["per_class_iou"]}
        if len(checkpoints) > 1:
            report["ensemble"] = "mean of softmax probabilities"
        return result, report

    def predict(self, checkpoints: list, inputs, out_dir, options: dict) -> str:
        """Label maps (STEM.png), colour maps and overlays per image (``Predictor.predict_files``: never over the
        inputs, names kept apart, temp + rename writes, a lock on the folder); images above ``max_pixels`` (or
        every image with window "auto") in sliding windows of the training crop; ``skip_bad`` skips and lists
        unreadable files instead of stopping at the first."""
        o = options
        calibration = image_batches([o["calibration"]]) if o.get("calibration") else None
        inference = {k: o.get(k) for k in ("scales", "merge", "flip", "window", "stride")}
        crop = None
        if o.get("loaded") is not None:  # the first checkpoint, already read
            crop = crop_of(o["loaded"])
            checkpoints = [model_from_checkpoint(o["loaded"], source=str(checkpoints[0])), *checkpoints[1:]]
        pred = Predictor(checkpoints, device=o.get("device", "auto"), amp=o.get("amp", "auto"),
                         backend=o.get("backend"), calibration=calibration,
                         max_pixels=o.get("max_pixels", MAX_PIXELS), train_crop=crop, **inference)
        written = pred.predict_files(inputs, out_dir, alpha=o.get("alpha", 0.5), progress=o.get("progress", True),
                                     save_attention=o.get("save_attention", False),
                                     skip_bad=o.get("skip_bad", False))
        extra = ", _attn_s*.png" if o.get("save_attention") else ""
        note = skipped_note(pred.skipped)
        return f"wrote {len(written)} label maps (+ _color.png, _overlay.jpg{extra}) to {out_dir}" + \
            (f"\n{note}" if note else "")


def evaluate_with_oracle(model, loader, val_set, runtime: EvalRuntime, mode: str = "regions") -> dict:
    """GT-OCR (Yuan et al. 2020, Fig. 1): the metrics of ``model`` (an OCR model) when its object regions (and, in
    mode "full", its pixel-region relations) come from each image's ground truth instead of its soft regions."""
    return evaluate(model, loader, val_set.num_classes, val_set.classes, val_set.ignore_index, runtime,
                    desc="eval GT-OCR", per_batch=lambda labels: oracle_regions(model, labels, mode))


def calibration_batches(cfg: Config, count: int = 16) -> list:
    """``count`` training images (evenly spaced, whole, normalised as for evaluation) that calibrate int8
    quantisation: from the training split, so the evaluated split stays unseen."""
    images = build_dataset(cfg.data.dataset, cfg.data.train_split, root=cfg.data.root, transform=eval_transform(),
                           **dict(cfg.data.kwargs))
    step = max(1, len(images) // count)
    return [images[i][0].unsqueeze(0) for i in range(0, len(images), step)[:count]]
