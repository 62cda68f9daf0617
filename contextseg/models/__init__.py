"""Models: ``create_model(arch, backbone=..., num_classes=..., in_channels=..., **kwargs) -> Segmentor``.

Backbones are registered in ``registry.BACKBONES`` (name -> ``(in_channels=3, **backbone_kwargs) -> module``),
segmentation architectures in ``registry.HEADS`` (name -> ``(backbone_module, num_classes, **head_kwargs) -> head``).
``create_model`` sends each keyword to the builder whose parameter it names (backbone first; a name both take is an
error), so heads must not reuse backbone option names.
"""
from __future__ import annotations

import difflib
import inspect

from ..errors import ContextSegError
from ..registry import BACKBONES, CLASSIFIERS, HEADS
from . import backbones, heads  # noqa: F401  (importing them registers the built-in names)
from .fuse import fuse_conv_bn
from .heads.aux import AuxFCNHead
from .multiscale import MultiScale, sliding_window_inference
from .resize import DEFAULT_ALIGN_CORNERS, align_corners_of, set_align_corners
from .segmentor import Segmentor
from .stn import SpatialTransformer, STNClassifier, build_stn  # spatial transformers (stn=...)

__all__ = [
    "create_model", "list_models", "list_backbones", "Segmentor", "fuse_conv_bn", "MultiScale",
    "sliding_window_inference", "align_corners_of", "set_align_corners",
    "SpatialTransformer", "STNClassifier",  # spatial transformers
]


def _positive_int(name: str, value, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContextSegError(f"{name} must be an integer >= 1, got {value!r}; {hint}")


def _option_names(fn, skip: set[str]) -> list[str]:
    """Named keyword parameters of a registered builder, minus the ones create_model passes itself."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds and p.name not in skip]


def create_model(
    arch: str,
    backbone: str = "hrnetv2_w18_small_v2",
    num_classes: int = 19,
    in_channels: int = 3,
    multiscale: dict | None = None,
    aux: bool | dict | None = None,
    align_corners: bool = DEFAULT_ALIGN_CORNERS,
    stn: bool | dict | None = None,
    **kwargs,
) -> Segmentor | MultiScale:
    """Build ``arch`` (e.g. "fcn", "ocr", "psp") on ``backbone`` (e.g. "hrnetv2_w48", "resnet101").

    The model maps a float batch (B, in_channels, H, W) to {"out": (B, num_classes, h, w)}, plus "aux" of the same
    shape in training mode for heads with an auxiliary output (OCR). h, w is the resolution of the features the
    head uses: ceil(H/4), ceil(W/4) for the HRNet heads; the stride of c5 (8 or 16) for heads on a dilated ResNet.

    Extra keyword arguments are routed by name: those that the backbone builder takes (``output_stride``,
    ``deep_stem`` for "resnet50"/"resnet101") go to the backbone, all others to the head (``mid_channels``,
    ``in_index``, ``rates``, ...). E.g. ``create_model("psp", backbone="resnet50", num_classes=19, output_stride=8)``.

    ``multiscale=dict(scales=[0.5, 1.0], merge="hierarchical", ...)`` wraps the model in ``MultiScale`` (the keys are
    its keyword arguments), e.g. to train attention over scales; from a config: ``model.kwargs.multiscale``.

    ``aux`` adds an auxiliary FCN head (``AuxFCNHead``: 3x3 conv 256, classifier) whose logits are the "aux" output
    in training (deep supervision, loss weight ``loss.weights.aux``): True puts it on the backbone's c4 (ResNet), a
    dict gives its options (``in_index``, ``channels``, ``dropout``). None (default) follows the paper: on for "psp"
    on a ResNet (PSPNet, Sec. 3.4), off otherwise. OCR has its own "aux" output (the soft object regions).

    ``align_corners`` (default True, as the official code of HRNet-OCR and of the heads it is compared with; see
    ``models/resize.py`` and docs/fidelity.md) is how every bilinear resize inside the model, in its losses, metrics
    and predictions aligns the grids; it is part of the model (a model trained one way and run the other way gives
    other outputs) and recorded in ``init_args`` and checkpoints.

    ``stn`` (classifiers only: "gap", "saol") puts a ``SpatialTransformer`` (Jaderberg et al. 2015, models/stn.py)
    in front of the backbone: True for its defaults (affine, identity at the start), a dict for its options
    (``mode: crop``, ``output_size``, the localisation net's widths); the output dict gains "stn_theta" (B, 2, 3) and,
    in eval mode, "stn_input" (the transformed input). None / False (default) builds the plain model, whose parameter
    names do not change.

    ``model.init_args`` records every argument in this flat form, so ``create_model(**model.init_args)`` rebuilds
    the same model (same parameter names and shapes; weights are initialised afresh).
    """
    classifier = isinstance(arch, str) and arch in CLASSIFIERS
    if not classifier and isinstance(arch, str) and arch not in HEADS:
        close = difflib.get_close_matches(arch, list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ContextSegError(f"unknown model {arch!r}.{hint} Known models: {', '.join(list_models())}")
    build_head = CLASSIFIERS.get(arch) if classifier else HEADS.get(arch)
    build_backbone = BACKBONES.get(backbone)
    if classifier and (aux or multiscale is not None):
        raise ContextSegError(f"model {arch!r} is an image classifier (B, K logits): it takes neither aux nor "
                              f"multiscale; drop them")
    if stn not in (None, False) and not classifier:  # spatial transformer: classifiers only
        raise ContextSegError(f"stn (a spatial transformer in front of the backbone) is for the image classifiers "
                              f"{', '.join(CLASSIFIERS.names())}; model {arch!r} is a segmentation head: drop stn")
    _positive_int("num_classes", num_classes, "set it to the number of classes in your labels (19 for Cityscapes)")
    _positive_int("in_channels", in_channels, "use 3 for RGB images, 1 for grayscale")
    backbone_opts = _option_names(build_backbone, skip={"in_channels"})
    head_opts = _option_names(build_head, skip=set(list(inspect.signature(build_head).parameters)[:2]))
    both = sorted(set(backbone_opts) & set(head_opts) & set(kwargs))
    if both:
        raise ContextSegError(
            f"option(s) {both} are taken by both model {arch!r} and backbone {backbone!r}, so create_model cannot "
            f"route them; rename the head's option"
        )
    backbone_kwargs = {k: v for k, v in kwargs.items() if k in backbone_opts}
    head_kwargs = {k: v for k, v in kwargs.items() if k not in backbone_opts}
    try:
        inspect.signature(build_head).bind(None, num_classes, **head_kwargs)
    except TypeError:
        raise ContextSegError(
            f"model {arch!r} on backbone {backbone!r} does not take the options {sorted(head_kwargs)}; model {arch!r} "
            f"accepts: {', '.join(head_opts) or '(no extra options)'}; backbone {backbone!r} accepts: "
            f"{', '.join(backbone_opts) or '(no extra options)'}"
        ) from None
    body = build_backbone(in_channels=in_channels, **backbone_kwargs)
    head = build_head(body, num_classes, **head_kwargs)
    aux_head = _aux_head(aux, arch, backbone, body, num_classes)
    stn_module = build_stn(stn, in_channels)  # spatial transformer: None unless stn is given
    model = Segmentor(body, head, aux_head) if stn_module is None else STNClassifier(stn_module, body, head, aux_head)
    model = set_align_corners(model, align_corners)
    model.init_args = dict(arch=arch, backbone=backbone, num_classes=num_classes, in_channels=in_channels,
                           align_corners=bool(align_corners), **kwargs)
    if stn_module is not None:  # spatial transformer
        model.init_args["stn"] = True if stn is True else dict(stn)
    if aux is not None:
        model.init_args["aux"] = aux
    if multiscale is None:
        return model
    if not isinstance(multiscale, dict):
        raise ContextSegError(f"multiscale must be a mapping of MultiScale options, e.g. "
                              f"{{scales: [0.5, 1.0], merge: hierarchical}}, got {multiscale!r}")
    options = _option_names(MultiScale, skip={"model"})
    unknown = sorted(set(multiscale) - set(options))
    if unknown:
        raise ContextSegError(f"unknown multiscale option(s) {unknown}; MultiScale accepts: {', '.join(options)}")
    return MultiScale(model, **multiscale)


def _aux_head(aux, arch: str, backbone: str, body, num_classes: int) -> AuxFCNHead | None:
    """The auxiliary head ``create_model(aux=...)`` asks for (None: the paper's choice, see ``create_model``)."""
    c4 = getattr(body, "aux_in_index", None)
    if aux is None:
        aux = arch == "psp" and c4 is not None
    if aux is False:
        return None
    if aux is not True and not isinstance(aux, dict):
        raise ContextSegError(f"aux must be true, false or a mapping of AuxFCNHead options, got {aux!r}")
    if arch == "ocr":
        raise ContextSegError("model 'ocr' already has an auxiliary output (its soft object regions); drop aux=...")
    options = {} if aux is True else dict(aux)
    unknown = sorted(set(options) - set(_option_names(AuxFCNHead, skip={"in_channels", "num_classes"})))
    if unknown:
        raise ContextSegError(f"unknown aux option(s) {unknown}; the auxiliary head accepts: in_index, channels, "
                              f"dropout")
    if "in_index" not in options:
        if c4 is None:
            raise ContextSegError(
                f"backbone {backbone!r} has no default map for an auxiliary head (ResNets use c4); name one, "
                f"e.g. aux={{in_index: 2}}"
            )
        options["in_index"] = c4
    return AuxFCNHead(body.out_channels, num_classes, **options)


def list_models() -> list[str]:
    """Names of the architectures ``create_model`` accepts as ``arch``: segmentation heads and the image
    classification output layers ("saol", "gap")."""
    return sorted(HEADS.names() + CLASSIFIERS.names())


def list_backbones() -> list[str]:
    """Names of the backbones ``create_model`` accepts as ``backbone``."""
    return BACKBONES.names()
