"""Experiment configuration: dataclasses, YAML files and `key=value` overrides.

    cfg = load_config("configs/camvid/ocr_w18s_v2.yaml", ["train.iters=2000", "model.arch=fcn"])

Unknown or mistyped keys are errors that name the key and the keys that exist; values are parsed
as YAML (`train.lr=1e-3`, `data.crop_size=[256,256]`) and type-checked against the defaults.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ContextSegError


@dataclass
class ModelConfig:
    arch: str = "ocr"
    backbone: str = "hrnetv2_w18_small_v2"
    num_classes: int | None = None  # None: taken from the dataset
    in_channels: int = 3
    kwargs: dict = field(default_factory=dict)  # extra head/backbone arguments, e.g. {output_stride: 16}
    pretrained: str | None = None  # a local official weights file (HRNet seg / ImageNet, torchvision ResNet)
    pretrained_parts: str = "auto"  # "auto": backbone and, when the file has one, head; "backbone": backbone only


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list = field(default_factory=lambda: [96, 128])  # [H, W]
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    jitter: bool = True
    batch_size: int = 8  # per process: a run with N processes (torchrun, --nproc N) steps on N x batch_size samples
    eval_batch_size: int = 1
    # DataLoader worker processes; -1: auto (runtime.loader_workers: none on a CPU with at most 4 cores, where
    # workers would take the cores the compute threads need)
    num_workers: int = -1
    kwargs: dict = field(default_factory=dict)  # extra dataset arguments
    mix: str = "none"  # batch mix in training: none | cutmix | copy_paste (contextseg/data/mix.py)
    mix_prob: float = 0.5  # probability that a training batch is mixed
    mix_kwargs: dict = field(default_factory=dict)  # e.g. {alpha: 1.0} or {classes: [8, 9], scale_range: [0.5, 1.5]}


@dataclass
class TrainConfig:
    iters: int = 1000
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 0
    warmup_ratio: float = 0.1  # warm-up starts at lr * warmup_ratio
    poly_power: float = 0.9
    min_lr: float = 0.0
    # auto: bf16 where the hardware runs it natively (AVX-512-BF16 / AMX CPU, CUDA), else fp32; or none | bf16 | fp16
    # (fp16 only on CUDA); engine.runtime.resolve_amp decides, and the run prints and saves its choice and reason
    amp: str = "auto"
    channels_last: bool = False
    # torch.compile the training step's model (inductor): measured 1.15x over eager channels_last for OCR +
    # W18-Small-v2 at 360x480 on an AVX2 CPU, after ~90 s of compilation; pays for long runs only
    compile: bool = False
    eval_interval: int = 200
    log_interval: int = 20
    checkpoint_interval: int = 200
    grad_clip: float | None = None  # max global gradient norm (None: no clipping)
    accumulate: int = 1  # batches per optimizer step (gradient accumulation); global batch = procs x batch x this
    # DDP only: allow parameters that get no gradient (an output the loss ignores); costs a traversal of the
    # autograd graph per step, so it is off unless a run stops with the message that asks for it
    find_unused_parameters: bool = False


@dataclass
class LossConfig:
    name: str = "ce"  # ce | ohem | focal | edge_hold | saol | ssnet (contextseg/losses/)
    # output name or glob pattern -> weight, e.g. {out: 1.0, aux: 0.4, "out_s*": 0.4}; None: the task's default
    # (segmentation {out: 1.0, aux: 0.4}, SAOL all terms 1.0, SSNet {cls, saliency, seg} 1.0)
    weights: dict | None = None
    # loss arguments, e.g. {class_weights: median_frequency} or [..] for ce/ohem; {thresh: 0.7, min_kept: 100000}
    # for ohem; {gamma: 2.0, alpha: [..]} for focal
    kwargs: dict = field(default_factory=dict)


@dataclass
class Config:
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = 0
    # segmentation | saliency | classification | weak (contextseg/tasks/); None: inferred from data.dataset
    task: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ContextSegError(f"config key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                                      f"keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unknown_key(key: str, known: list[str], where: str) -> ContextSegError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ContextSegError(f"unknown config key {where}{key!r}.{hint} Keys here: {', '.join(known)}")


def _check_type(path: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ContextSegError(f"config key {path!r} must be true or false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContextSegError(f"config key {path!r} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContextSegError(f"config key {path!r} must be an integer, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ContextSegError(f"config key {path!r} must be a string, got {value!r}")
    elif isinstance(default, (list, dict)) and not isinstance(value, type(default)):
        raise ContextSegError(f"config key {path!r} must be a {type(default).__name__}, got {value!r}")
    return value


def _merge(obj, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ContextSegError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), prefix)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _check_type(prefix + key, value, current))
    return obj


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=0.1', 'model.arch=fcn'] -> {'train': {'lr': 0.1}, 'model': {'arch': 'fcn'}}."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ContextSegError(f"override {item!r} is not key=value (example: train.lr=0.01)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
            if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
        except yaml.YAMLError as exc:
            raise ContextSegError(f"cannot parse the value of override {item!r}: {exc}") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def config_from_dict(values: dict | None) -> Config:
    return validate(_merge(Config(), values or {}))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then the overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ContextSegError(f"config file {str(path)!r} not found (see configs/ for examples)")
        with open(path) as f:
            try:
                values = yaml.load(f, Loader=_UniqueKeyLoader) or {}
            except yaml.YAMLError as exc:
                raise ContextSegError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        _merge(cfg, values)
    _merge(cfg, parse_overrides(overrides or []))
    return validate(cfg)


# numeric fields: (section.key, lowest allowed value, whether the lowest is allowed, the fix)
RANGES = [
    ("train.iters", 1, True, "the number of optimizer steps"),
    ("train.lr", 0, False, "a learning rate such as 0.01"),
    ("train.momentum", 0, True, "in [0, 1), e.g. 0.9"),
    ("train.weight_decay", 0, True, "e.g. 5e-4, or 0"),
    ("train.warmup_iters", 0, True, "steps of linear warm-up, or 0"),
    ("train.warmup_ratio", 0, True, "the warm-up's first lr as a fraction of lr, e.g. 0.1"),
    ("train.poly_power", 0, True, "e.g. 0.9"),
    ("train.min_lr", 0, True, "e.g. 0"),
    ("train.eval_interval", 1, True, "evaluate every N steps, e.g. 200"),
    ("train.log_interval", 1, True, "log every N steps, e.g. 20"),
    ("train.checkpoint_interval", 1, True, "write last.pt every N steps, e.g. 200"),
    ("train.grad_clip", 0, False, "a maximum gradient norm such as 1.0, or null for none"),
    ("train.accumulate", 1, True, "batches per optimizer step, e.g. 1"),
    ("data.batch_size", 1, True, "samples per step and process, e.g. 8"),
    ("data.eval_batch_size", 1, True, "images per evaluation batch, e.g. 1"),
    ("data.num_workers", -1, True, "DataLoader workers, or -1 for auto"),
    ("data.mix_prob", 0, True, "a probability in [0, 1]"),
    ("model.in_channels", 1, True, "3 for RGB images"),
    ("model.num_classes", 1, True, "the number of classes, or null to take the dataset's"),
    ("seed", 0, True, "a non-negative integer"),
]


def _check_ranges(cfg: Config) -> None:
    for path, low, inclusive, fix in RANGES:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise ContextSegError(f"{path}={node!r} must be a number ({fix})")
        bad = isinstance(node, float) and not math.isfinite(node)
        bad = bad or (node < low if inclusive else node <= low)
        if bad:
            relation = ">=" if inclusive else ">"
            raise ContextSegError(f"{path}={node!r} is out of range: it must be {relation} {low} ({fix})")
    if cfg.train.momentum >= 1:
        raise ContextSegError(f"train.momentum={cfg.train.momentum} must be below 1 (e.g. 0.9)")
    if cfg.data.mix_prob > 1:
        raise ContextSegError(f"data.mix_prob={cfg.data.mix_prob} is a probability in [0, 1]")
    sizes = [*cfg.data.crop_size, *cfg.data.scale_range]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 for v in sizes):
        raise ContextSegError(f"data.crop_size {cfg.data.crop_size} and data.scale_range {cfg.data.scale_range} must "
                              f"hold positive numbers, e.g. crop_size [512, 512], scale_range [0.5, 2.0]")
    if cfg.data.scale_range[0] > cfg.data.scale_range[1]:
        raise ContextSegError(f"data.scale_range {cfg.data.scale_range} is [min, max]: the first must not exceed "
                              f"the second")


def validate(cfg: Config) -> Config:
    t, d = cfg.train, cfg.data
    if t.optimizer not in ("sgd", "adamw"):
        raise ContextSegError(f"train.optimizer must be 'sgd' or 'adamw', got {t.optimizer!r}")
    if t.amp not in ("auto", "none", "bf16", "fp16"):
        raise ContextSegError(f"train.amp must be 'auto', 'none', 'bf16' or 'fp16', got {t.amp!r}")
    if len(d.crop_size) != 2 or len(d.scale_range) != 2:
        raise ContextSegError("data.crop_size is [H, W] and data.scale_range is [min, max]")
    _check_ranges(cfg)
    if d.mix not in ("none", "cutmix", "copy_paste"):
        raise ContextSegError(f"data.mix must be 'none', 'cutmix' or 'copy_paste', got {d.mix!r}")
    w = cfg.loss.weights
    if w is not None and (not isinstance(w, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                         for v in w.values())):
        raise ContextSegError(f"loss.weights maps output names to numbers, e.g. {{out: 1.0, aux: 0.4}}; got {w!r}")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
