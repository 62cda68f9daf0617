"""Babysitting checks (`contextseg doctor CONFIG`): quick tests that a model, its loss, its optimiser settings and
its data are sane before a long run. Each check returns a dict with a ``verdict`` (PASS / WARN / FAIL), a one-line
``summary``, the numbers behind it and the paths of its ``plots``; ``run_doctor`` runs a selection for a Config,
prints them and writes ``OUT/doctor.json``.

    init       CE at initialisation vs ln(K) over the labelled (non-ignored) pixels (Karpathy, "A Recipe for Training
               Neural Networks", 2019: "verify loss @ init"): a fresh classifier predicts about uniform probabilities.
    overfit    one small fixed batch (no augmentation) driven to near-zero loss in a bounded number of steps.
    lr         learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", Sec. 3.3;
               fastai's lr_find): the lr grows exponentially from lr_min to lr_max, one batch per step; stops when the
               smoothed loss exceeds 4x its minimum. Suggested lr = (lr at the smoothed minimum) / 10, the rule of
               fastai v1's lr_find plot; the steepest descent of the smoothed loss (d loss / d log lr) is reported too.
               The model's initial weights are restored afterwards.
    ratios     update-to-weight ratio ||w_{t+1} - w_t|| / ||w_t|| per parameter group (backbone stages, head parts)
               over a few steps of the configured optimiser at the configured lr (about 1e-3 is healthy; WARN
               below 1e-4 or above 1e-2), and per stage the ReLU outputs' zero share, dead channels (zero for
               every pixel of the batch) and activation mean / std (forward hooks).
    gradcheck  torch.autograd.gradcheck in float64 of our own modules on tiny inputs, parameters included: the OCR
               gather (SpatialGather) and distribution (ObjectAttentionBlock, SpatialOCR; eval mode, so BN is affine
               and dropout off), SEBlock, NonLocal2d, the multi-scale merges (MultiScale avg / max / attention /
               hierarchical on a toy model) and hierarchical_weights.
    data       per-class pixel shares of the raw labels, images with only ignore pixels, label values outside the
               classes and unreadable pairs (named by file), and a bar chart of the shares.

All training-dynamics checks run in float32 without autocast and start from copies of the same initial model.

During training, ``update_stats(model, old_params)`` (with ``snapshot_params`` taken before the optimiser step) gives
the same update ratios and gradient norms for the metrics log.
"""
from .common import (  # noqa: F401
    CHECKS, FAIL, PASS, STEM_NAMES, WARN, batch_stream, fixed_batch, fixed_crop_transform, group_name,
    snapshot_params, update_stats, worst,
)
from .training import (  # noqa: F401
    ActivationStats, check_init_loss, check_overfit, check_update_ratios, lr_range_test,
)
from .gradients import check_gradients, gradcheck_cases  # noqa: F401
from .data_checks import check_data, scan_labels  # noqa: F401
from .doctor import DEFAULT_STEPS, Doctor, format_result, parse_checks, parse_steps, run_doctor  # noqa: F401
from ...errors import ContextSegError  # noqa: F401  (tests import it from here)
