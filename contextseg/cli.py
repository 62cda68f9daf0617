"""`contextseg train|eval|predict|bench|export|doctor|pseudo-labels|models`."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ContextSegError

BACKEND_CHOICES = ("eager", "auto", "torch", "compile", "onnxruntime", "openvino", "bf16", "int8")


class _WindowAction(argparse.Action):
    """--window H W, or --window auto (predict: sliding windows of the training crop)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if list(values) == ["auto"]:
            setattr(namespace, self.dest, "auto")
            return
        try:
            h, w = (int(v) for v in values)
        except ValueError:
            parser.error(f"{option_string} takes H W (two integers) or auto, got {' '.join(values)}")
        setattr(namespace, self.dest, [h, w])


def _add_inference_options(p: argparse.ArgumentParser, auto_window: bool = False) -> None:
    """Test-time multi-scale / flip / sliding-window flags shared by eval and predict (none = as trained);
    ``auto_window``: --window also takes "auto"."""
    g = p.add_argument_group("multi-scale and sliding-window inference")
    g.add_argument("--scales", type=float, nargs="+", metavar="S",
                   help="image pyramid scales, e.g. --scales 0.5 1.0 1.5 2.0 (default: as trained, usually 1.0)")
    g.add_argument("--merge", choices=["avg", "max", "attention", "hierarchical"],
                   help="how scales are merged (default avg; attention/hierarchical need a checkpoint trained with "
                        "model.kwargs.multiscale)")
    g.add_argument("--flip", action="store_true", help="also average the horizontally flipped image's logits")
    if auto_window:
        g.add_argument("--window", nargs="+", action=_WindowAction, metavar=("H|auto", "W"),
                       help="sliding-window inference with H x W windows (e.g. the training crop); auto: windows of "
                            "the checkpoint's training crop (1024 x 1024 when unknown) every 2/3 of a window")
    else:
        g.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                       help="sliding-window inference with H x W windows (e.g. the training crop)")
    g.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                   help="sliding-window step (default: the window, no overlap; e.g. 2/3 of it)")


def _add_backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKEND_CHOICES, metavar="NAME",
                   help="inference engine: eager, torch (BatchNorm folded + channels_last), compile, onnxruntime, "
                        "openvino, auto (the fastest exact one, probed once per model and size), bf16, int8 "
                        "(default: bf16 eager where the CPU runs it natively, else torch)")


def _inference_kwargs(args) -> dict:
    return dict(scales=args.scales, merge=args.merge, flip=args.flip, window=args.window, stride=args.stride)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contextseg", description="Dense prediction with context and attention.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML file, e.g. configs/synthetic_ocr.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.iters=500 model.arch=fcn")
    t.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (OUTPUT_DIR/last.pt); the run then "
                   "ends with the weights and metrics of an uninterrupted one")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes (DistributedDataParallel; one per GPU, or gloo on the CPU), as "
                        "`torchrun --standalone --nproc_per_node=N -m contextseg train ...`; data.batch_size is per process")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir (its checkpoints, "
                   "metrics and summary are deleted first); without it such an output_dir is refused")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    e.add_argument("config", help="YAML file, or zoo:NAME (the zoo model's training config; the model itself unless "
                                  "--checkpoint names another)")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                   help="a checkpoint (or zoo:NAME), or several: an ensemble that averages their softmax "
                        "probabilities")
    e.add_argument("--split", help="dataset split to evaluate (default: data.val_split)")
    e.add_argument("--oracle-regions", nargs="?", const="regions", choices=["regions", "full"], metavar="MODE",
                   help="GT-OCR (OCR models): also evaluate with the ground truth as the object regions (regions) or as "
                        "regions and pixel-region relations (full), and report both mIoUs")
    e.add_argument("--out", metavar="JSON", help="also write the metrics as JSON")
    e.add_argument("--skip-bad", action="store_true",
                   help="leave out samples whose image or mask cannot be read or is invalid, and list them after the "
                        "report (default: stop and name every bad mask before evaluating)")
    e.add_argument("--no-progress", action="store_true")
    _add_backend_option(e)
    _add_inference_options(e)

    r = sub.add_parser("predict", help="predict label maps and overlays for images")
    r.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                       help="a checkpoint (or zoo:NAME), or several: an ensemble that averages their softmax "
                            "probabilities (put the images before --checkpoint)")
    which.add_argument("--model", metavar="NAME", help="a model of the zoo (`contextseg zoo` lists them)")
    r.add_argument("--out", required=True, metavar="DIR",
                   help="folder for STEM.png, STEM_color.png, STEM_overlay.jpg (not a folder of the input images; "
                        "inputs that share a stem are written as STEM_EXT.png)")
    r.add_argument("--device", default="auto")
    r.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="autocast precision (default auto: bf16 where the hardware runs it natively, else fp32)")
    r.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--save-attention", action="store_true",
                   help="also write each scale's attention weights as STEM_attn_sSCALE.png (attention merges)")
    _add_backend_option(r)
    r.add_argument("--calibration", metavar="DIR", help="images that calibrate --backend int8 (e.g. 16 training "
                                                         "images of the model's data)")
    r.add_argument("--max-pixels", type=int, default=4_000_000, metavar="N",
                   help="images of more than N pixels run in sliding windows of the training crop (as --window auto) "
                        "so that they fit in memory (default 4000000 = 2000 x 2000; 0: never)")
    r.add_argument("--skip-bad", action="store_true",
                   help="skip image files that cannot be read and list them at the end (default: stop and name the "
                        "first one before writing anything)")
    _add_inference_options(r, auto_window=True)

    x = sub.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch with onnxruntime")
    x.add_argument("checkpoint", metavar="CKPT")
    x.add_argument("--out", required=True, metavar="ONNX", help="the file to write, e.g. model.onnx (an existing file "
                   "is replaced only if contextseg exported it)")
    x.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="example input size the graph is traced at (default 512 512; a classifier: its training "
                        "crop, the only size its graph takes)")
    x.add_argument("--output", choices=["logits", "labels"], default="logits",
                   help="graph output: logits (B, K, H, W) or argmax labels (B, H, W) int64 (a classifier: (B, K) "
                        "or (B,))")
    x.add_argument("--static", action="store_true", help="fixed batch 1 and --size (default: dynamic B, H, W)")
    x.add_argument("--opset", type=int, default=18)
    x.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto")
    x.add_argument("--scales", type=float, nargs="+", metavar="S", help="export a test-time pyramid too")
    x.add_argument("--merge", choices=["avg", "max", "attention", "hierarchical"])
    x.add_argument("--flip", action="store_true", help="export flip averaging too")

    b = sub.add_parser("bench", help="inference (and --train: training-step) speed of a checkpoint or a model in "
                                     "every mode and backend this machine offers")
    b.add_argument("model", metavar="CKPT_OR_ARCH:BACKBONE",
                   help="a checkpoint, or e.g. ocr:hrnetv2_w18_small_v2 for a freshly initialised model")
    b.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size (default 512 512; a classifier: its training crop, 32 32 for ARCH:BACKBONE)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--num-classes", type=int, default=19, help="for ARCH:BACKBONE (default 19)")
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--modes", "--backend", nargs="+", metavar="MODE", dest="modes",
                   help="inference modes: eager eager_cl torch compile onnxruntime openvino auto bf16 fp16 int8 "
                        "(default: those this machine offers; compile and int8 only when named)")
    b.add_argument("--train", nargs="*", metavar="MODE", default=None,
                   help="also time training steps: fp32 fp32_cl bf16_cl compile (no names: fp32 fp32_cl bf16_cl)")
    b.add_argument("--calibration", metavar="DIR", help="images that calibrate the int8 mode (e.g. 16 training images)")
    b.add_argument("--val", metavar="CONFIG", help="with a checkpoint: also evaluate it through each approximate mode "
                   "(bf16, int8) and eager fp32 on CONFIG's validation split, and print the mIoU change beside the "
                   "speed (int8 then calibrates on 16 training images of CONFIG)")
    b.add_argument("--device", default="auto")
    b.add_argument("--out", metavar="JSON", help="also write every row as JSON")

    w = sub.add_parser("pseudo-labels", help="write stage-2 pseudo labels from a stage-1 SSNet checkpoint and report "
                                             "their mIoU against the true labels")
    w.add_argument("config", help="the stage-1 config, e.g. configs/weak/ssnet_stage1_camvid_ecssd.yaml")
    w.add_argument("overrides", nargs="*")
    w.add_argument("--checkpoint", required=True, metavar="CKPT", help="the stage-1 SSNet checkpoint")
    w.add_argument("--out", required=True, metavar="DIR", help="folder for STEM.png label maps and pseudo_labels.json: "
                   "a new or empty one, or one an earlier pseudo-labels run wrote (never the dataset's folders)")
    w.add_argument("--split", help="segmentation split to label (default: data.train_split)")
    w.add_argument("--rule", choices=["official", "restrict"], default="official",
                   help="official: absent classes' logits zeroed, then the arg max (jsws syn_stage1.py; an absent "
                        "class can still win); restrict: absent classes removed")
    w.add_argument("--min-prob", type=float, default=0.0,
                   help="pixels whose class probability is below this are left unlabelled (255); 0: the official "
                        "rule, every pixel labelled")
    w.add_argument("--bg-threshold", type=float, metavar="T",
                   help="saliency rule: background where S < T, unlabelled where the segmentation says background "
                        "but S >= T (default: off, background from the segmentation alone)")
    w.add_argument("--no-report", action="store_true", help="do not read the true labels for the mIoU report")
    w.add_argument("--no-progress", action="store_true")

    sub.add_parser("models", help="list model architectures and backbones")
    z = sub.add_parser("zoo", help="list the trained models that ship with contextseg, with their metrics "
                                   "(`contextseg zoo add ...` packs a trained checkpoint into the zoo)")
    z.add_argument("--json", action="store_true", help="print the manifest entries as JSON")
    zs = z.add_subparsers(dest="zoo_command")
    za = zs.add_parser("add", help="pack a checkpoint as a zoo model: safetensors (float16 when the key metric moves "
                                   "< 0.1 point), metrics, samples; see contextseg/zoo_pack.py")
    za.add_argument("name", help="the zoo name, e.g. camvid-ocr")
    za.add_argument("--checkpoint", required=True, metavar="CKPT")
    za.add_argument("--config", required=True, help="the config it was trained with")
    za.add_argument("overrides", nargs="*", help="the key=value overrides it was trained with")
    za.add_argument("--command", dest="train_command",
                    help="the exact training command (default: contextseg train CONFIG OVERRIDES)")
    za.add_argument("--samples", type=int, default=4, help="validation images shipped with it (default 4; "
                                                          "classification: one per class)")
    za.add_argument("--half", choices=["auto", "yes", "no"], default="auto")
    za.add_argument("--scales", type=float, nargs="+", metavar="S",
                    help="serve the model at these input scales, e.g. 0.5 for a model trained on images read at half "
                         "size (data.kwargs.image_scale=0.5); it is measured on the images at their own size")

    v = sub.add_parser("env", help="this machine as speed figures need it: CPU, instruction sets, threads, the "
                                   "precision amp=auto picks, inference backends, measured conv GFLOP/s")
    v.add_argument("--json", metavar="FILE", help="also write it as JSON")
    v.add_argument("--no-measure", action="store_true", help="skip the convolution throughput probes (~2 s)")

    d = sub.add_parser("doctor", help="babysitting checks before a long run (init loss, overfit one batch, lr range "
                                      "test, update ratios, gradchecks, data); exit status 1 on a FAIL")
    d.add_argument("config")
    d.add_argument("overrides", nargs="*")
    d.add_argument("--checks", default="all", metavar="LIST",
                   help="comma-separated subset of init,overfit,lr,ratios,gradcheck,data (default: all)")
    d.add_argument("--out", metavar="DIR", help="where doctor.json and the PNGs go (default: OUTPUT_DIR/doctor)")
    d.add_argument("--steps", nargs="+", metavar="[CHECK=]N",
                   help="N for the overfit, lr and ratios loops, or per check: init=2 overfit=100 lr=60 ratios=5 "
                        "(the defaults; init counts batches)")
    d.add_argument("--batch-size", type=int, metavar="B", help="batch size of init/lr/ratios (default: data.batch_size)")
    d.add_argument("--data-samples", type=int, metavar="N", help="label maps checked per split, evenly spaced "
                                                                   "(default: all)")
    d.add_argument("--lr-range", type=float, nargs=2, default=[1e-6, 1.0], metavar=("MIN", "MAX"),
                   help="learning rates swept by the lr range test (default: 1e-6 1)")
    d.add_argument("--no-progress", action="store_true")
    p.commands = sub.choices  # name -> the command's own parser (_parse)
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
    """The command's own parser reads its arguments intermixed, so key=value overrides may also follow the flags
    (`train CFG --no-progress train.iters=5`); a command with subcommands of its own (zoo) parses plainly."""
    commands = parser.commands
    if not argv or argv[0] not in commands or argv[0] == "zoo":
        return parser.parse_args(argv)  # --help, a mistyped command, zoo [add]
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(_parser(), sys.argv[1:] if argv is None else list(argv))
    try:
        return COMMANDS[args.command](args)
    except ContextSegError as exc:
        message = str(exc).strip()
        if "Original Traceback" in message:  # raised inside a DataLoader worker: keep the message only
            message = message.splitlines()[-1].split("ContextSegError: ", 1)[-1]
        print(f"contextseg {args.command}: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


def _config(args, evaluation: bool = False):
    """The run's config: a YAML file or zoo:NAME (the zoo model's training config; for evaluation, with the
    entry's ``eval_overrides``, e.g. images read at their own size for a model served at scale 0.5), then the
    command line's overrides."""
    from .config import config_from_dict, load_config, parse_overrides
    from .engine.zoo import entry, is_zoo

    if is_zoo(args.config):
        e = entry(args.config)
        values = e["config"]
        extra = e.get("eval_overrides", []) if evaluation else []
        for section, items in parse_overrides([*extra, *args.overrides]).items():
            values[section] = {**values.get(section, {}), **items} if isinstance(items, dict) else items
        return config_from_dict(values)
    return load_config(args.config, args.overrides)


def _train(args) -> int:
    from .tasks import run_training

    cfg = _config(args)
    if args.nproc is not None and args.nproc > 1:
        from .engine.distributed import launch

        worker_argv = ["train", args.config, *args.overrides, *(["--resume", args.resume] if args.resume else []),
                       *(["--overwrite"] if args.overwrite else []), *(["--no-progress"] if args.no_progress else [])]
        return launch(args.nproc, worker_argv)
    summary = run_training(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # a distributed worker: rank 0 reports
        return 0
    resumed = f" ({summary['steps_this_session']} this session)" if args.resume else ""
    print(f"done: step {summary['step']}{resumed} in {summary['train_seconds']:.0f} s; "
          f"best {100 * summary['best']:.2f} {summary['key_metric']}; checkpoints in {cfg.output_dir}")
    return 0


def _eval(args) -> int:
    from .tasks import task_for

    # `--checkpoint A.pt B.pt key=value`: key=value words after the checkpoints are overrides
    given = args.checkpoint or []
    moved = [c for c in given if "=" in c and not os.path.exists(c)]
    args.overrides = [*args.overrides, *moved]
    cfg = _config(args, evaluation=True)
    checkpoints = [c for c in given if c not in moved]
    if not checkpoints:
        if not args.config.startswith("zoo:"):
            raise ContextSegError("no checkpoint given; pass --checkpoint A.pt (or zoo:NAME), or evaluate a zoo "
                                  "model with `contextseg eval zoo:NAME`")
        checkpoints = [args.config]
    task_for(cfg).evaluate_checkpoint(cfg, checkpoints, split=args.split, progress=not args.no_progress,
                                      out=args.out, backend=args.backend, oracle=args.oracle_regions,
                                      skip_bad=args.skip_bad,
                                      **_inference_kwargs(args))
    return 0


def _predict(args) -> int:
    from pathlib import Path

    from .engine.checkpoint import load_checkpoint
    from .onnx_graph import is_onnx, onnx_task
    from .tasks import TASKS, task_for_checkpoint

    if args.model:
        args.checkpoint = [args.model if args.model.startswith("zoo:") else f"zoo:{args.model}"]
    first = args.checkpoint[0]
    loaded = None if is_onnx(first) else load_checkpoint(first)  # read once: its config names the task
    task = TASKS[onnx_task(first) if Path(first).is_file() else "segmentation"] if loaded is None \
        else task_for_checkpoint(loaded)
    if args.max_pixels < 0:
        raise ContextSegError(f"--max-pixels must be >= 0 (0: never switch to sliding windows), got {args.max_pixels}")
    options = dict(device=args.device, amp=args.amp, alpha=args.alpha, backend=args.backend,
                   calibration=args.calibration, save_attention=args.save_attention, progress=not args.no_progress,
                   loaded=loaded, max_pixels=args.max_pixels, skip_bad=args.skip_bad, **_inference_kwargs(args))
    print(task.predict(args.checkpoint, args.inputs, args.out, options))
    return 0


def _pseudo_labels(args) -> int:
    from .tasks.weak import write_pseudo_labels

    result = write_pseudo_labels(_config(args), args.checkpoint, args.out, split=args.split, min_prob=args.min_prob,
                                 rule=args.rule, bg_threshold=args.bg_threshold, progress=not args.no_progress,
                                 report=not args.no_report)
    print(f"wrote {result['images']} pseudo labels and pseudo_labels.json to {args.out}")
    return 0


def _doctor(args) -> int:
    from .engine.diagnostics import parse_checks, parse_steps, run_doctor
    from .tasks import task_for

    cfg = _config(args)
    task = task_for(cfg)
    if not task.doctor:
        raise ContextSegError(f"doctor checks segmentation configs; for a {task.name} config run a short "
                              "`contextseg train CONFIG train.iters=...` instead")
    report = run_doctor(cfg, parse_checks(args.checks), args.out, steps=parse_steps(args.steps),
                        batch_size=args.batch_size, data_samples=args.data_samples, lr_range=args.lr_range,
                        progress=not args.no_progress)
    return 1 if report["overall"] == "FAIL" else 0


def _zoo(args) -> int:
    import json

    from .engine.zoo import format_zoo, manifest

    if args.zoo_command == "add":
        from .zoo_pack import add_to_zoo

        e = add_to_zoo(args.name, args.checkpoint, args.config, args.overrides, command=args.train_command,
                       samples=args.samples, half=args.half, scales=args.scales)
        print(f"added {e['name']}: {e['headline']} ({e['dtype']}, {e['size_mb']} MB; float16 changes "
              f"{e['key_metric']} by {100 * e['float16_change']:+.3f} points); on its {e['samples']['root']}: "
              f"{e['samples']['metrics']}")
        return 0
    models = manifest()
    print(json.dumps(list(models.values()), indent=2) if args.json else format_zoo(models))
    return 0


def _models(args) -> int:
    from .models import list_backbones, list_models

    print("architectures:", ", ".join(list_models()))
    print("backbones:    ", ", ".join(list_backbones()))
    return 0


def _env(args) -> int:
    from .engine.env_report import environment, format_environment
    from .engine.runtime import write_json

    info = environment(measure=not args.no_measure)
    print(format_environment(info))
    if args.json:
        write_json(args.json, info)
    return 0


def _export(args) -> int:
    from .export import check_export_target, export_onnx

    from pathlib import Path

    from .engine.checkpoint import load_checkpoint
    from .onnx_graph import is_onnx

    check_export_target(args.out, args.checkpoint)  # never over the checkpoint, before reading it
    source = args.checkpoint
    if (Path(source).is_file() or source.startswith("zoo:")) and not is_onnx(source):
        source = load_checkpoint(source)  # read once; its config gives a classifier's input size
    report = export_onnx(source, args.out, size=args.size, output=args.output,
                         dynamic=not args.static, opset=args.opset, exporter=args.exporter, scales=args.scales,
                         merge=args.merge, flip=args.flip)
    print(report.summary())
    return 0


def _checkpoint_model(model: str):
    """(the model, its training crop) of a checkpoint file or zoo:NAME, its file read once; (None, None) for an
    .onnx file or ARCH:BACKBONE."""
    from pathlib import Path

    from .engine.checkpoint import load_checkpoint, model_from_checkpoint, training_crop
    from .onnx_graph import is_onnx

    if (Path(model).is_file() or model.startswith("zoo:")) and not is_onnx(model):
        ckpt = load_checkpoint(model)
        return model_from_checkpoint(ckpt, source=model), training_crop(ckpt)
    return None, None


def _bench(args) -> int:
    from pathlib import Path

    import torch

    from .engine.bench import benchmark, settle_batchnorm
    from .engine.checkpoint import load_model
    from .models import create_model
    from .registry import is_classifier

    model, crop = _checkpoint_model(args.model)  # a checkpoint's model, read once
    fresh = False
    if model is None and (Path(args.model).suffix.lower() in (".pt", ".pth") or Path(args.model).is_file()):
        model = load_model(args.model)  # an .onnx file, or a checkpoint path that does not exist (its error)
    elif model is None and ":" in args.model:
        arch, backbone = args.model.split(":", 1)
        model, fresh = create_model(arch, backbone=backbone, num_classes=args.num_classes), True
    elif model is None:
        raise ContextSegError(f"{args.model!r} is neither a checkpoint file nor ARCH:BACKBONE (e.g. "
                              f"ocr:hrnetv2_w18_small_v2; `contextseg models` lists the names)")
    if args.batch < 1 or args.repeats < 1:
        raise ContextSegError("--batch and --repeats must be >= 1")
    classifier = is_classifier(model)
    if classifier and args.val:
        raise ContextSegError("--val reports the mIoU change of dense models; for a classifier compare "
                              "`contextseg eval CONFIG --checkpoint CKPT` with the exported .onnx file")
    default = (crop or getattr(model, "input_size", None) or (32, 32)) if classifier else (512, 512)
    args.size = list(args.size or default)
    if fresh:
        settle_batchnorm(model, torch.randn(2, getattr(model, "in_channels", 3), *args.size))
    from .engine.bench import default_train_modes
    from .engine.outputs import image_batches
    from .engine.env_report import environment
    from .engine.runtime import select_device, write_json

    train_modes = None
    if args.train is not None:
        train_modes = args.train or default_train_modes(select_device(args.device))
    calibration = image_batches([args.calibration], args.size) if args.calibration else None
    print(f"{args.model}: batch {args.batch} x {args.size[0]}x{args.size[1]}, median of {args.repeats} runs")
    rows = benchmark(model, size=args.size, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                     modes=args.modes, device=args.device, train_modes=train_modes, calibration=calibration)
    if args.val:
        _bench_val(args, rows)
    if args.out:
        write_json(args.out, {"model": args.model, "machine": environment(measure=False), "rows": rows})
    return 0


def _bench_val(args, rows: list) -> None:
    """Val mIoU of the checkpoint through eager fp32 and each approximate mode that ran: rows gain val_mIoU and
    mIoU_change (points against eager fp32)."""
    import contextlib
    import io
    from pathlib import Path

    from .config import load_config
    from .tasks import task_for

    if not (Path(args.model).is_file() or args.model.startswith("zoo:")):
        raise ContextSegError("--val evaluates a checkpoint file; ARCH:BACKBONE models are untrained")
    cfg = load_config(args.val, ["train.amp=none"])
    ran = {r["mode"] for r in rows if r["kind"] == "infer" and "skipped" not in r}
    scores = {}
    for mode in ["eager"] + [m for m in ("bf16", "int8") if m in ran]:
        with contextlib.redirect_stdout(io.StringIO()):
            scores[mode] = task_for(cfg).evaluate_checkpoint(cfg, args.model, progress=False, backend=mode)["mIoU"]
        print(f"val mIoU through {mode}: {100 * scores[mode]:.2f}"
              + (f" ({100 * (scores[mode] - scores['eager']):+.2f} points)" if mode != "eager" else ""))
    for row in rows:
        if row["kind"] == "infer" and row["mode"] in scores:
            row["val_mIoU"] = scores[row["mode"]]
            row["mIoU_change"] = scores[row["mode"]] - scores["eager"]


COMMANDS = {"train": _train, "eval": _eval, "predict": _predict, "pseudo-labels": _pseudo_labels, "doctor": _doctor,
            "models": _models, "zoo": _zoo, "env": _env, "export": _export, "bench": _bench}


if __name__ == "__main__":  # python -m contextseg.cli ... (as python -m contextseg ...)
    sys.exit(main())
