"""Spatial transformers (Jaderberg et al. 2015, models/stn.py): identity initialisation, the affine_grid arithmetic
(align_corners=False), gradients, the crop (hard attention) mode, create_model(stn=...), the distorted CIFAR data,
and train / eval / predict (STEM_stn.png) from the CLI."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contextseg.cli import main
from contextseg.config import load_config
from contextseg.data import build_dataset, write_image_folder
from contextseg.data.classification import classification_train_transform, distorted_eval_transform
from contextseg.errors import ContextSegError
from contextseg.models import SpatialTransformer, create_model
from contextseg.tasks.classification import build_datasets, stn_picture


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def set_theta(stn, bias):
    """Make the localisation net output ``bias`` for every input (last FC weights are zero at the start)."""
    with torch.no_grad():
        stn.fc_loc[-1].weight.zero_()
        stn.fc_loc[-1].bias.copy_(torch.tensor(bias, dtype=stn.fc_loc[-1].bias.dtype))


@pytest.mark.parametrize("mode", ["affine", "crop"])
def test_identity_initialisation_reproduces_the_input(mode):
    torch.manual_seed(0)
    stn = SpatialTransformer(3, mode=mode)
    x = torch.randn(2, 3, 32, 32)
    y, theta = stn(x)
    assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3))
    assert y.shape == x.shape and torch.allclose(y, x, atol=1e-5)
    z = torch.randn(1, 3, 45, 37)  # any size
    assert torch.allclose(stn(z)[0], z, atol=1e-5)
    assert n_params(stn) == (3 * 8 * 49 + 8) + (8 * 10 * 25 + 10) + (160 * 32 + 32) + (32 + 1) * (6 if mode ==
                                                                                                  "affine" else 3)


def test_known_translation_moves_a_pixel():
    """align_corners=False: output (i, j) reads the input at normalised (x_t + tx, y_t + ty), one pixel = 2 / n, so
    tx = 0.5 on 8 columns reads 2 columns further right (the pattern moves 2 left) and ty = -0.25 moves it 1 down."""
    stn = SpatialTransformer(1, channels=(2, 2), kernel_sizes=(1, 1))
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 5] = 1.0
    set_theta(stn, [1.0, 0, 0.5, 0, 1, -0.25])
    y, theta = stn(x)
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 4, 3] = 1.0
    assert torch.allclose(y, expected, atol=1e-6)
    torch.testing.assert_close(theta, torch.tensor([[[1.0, 0, 0.5], [0, 1, -0.25]]]))
    # a square translated by a non-integer shift: bilinear weights, and zeros where the grid leaves the image
    square = torch.zeros(1, 1, 8, 8)
    square[..., 2:4, 2:4] = 1.0
    half = stn.sample(square, torch.tensor([[[1.0, 0, 0.125], [0, 1, 0]]]))  # half a pixel
    assert torch.allclose(half[0, 0, 2], torch.tensor([0, 0.5, 1, 0.5, 0, 0, 0, 0]))
    off = stn.sample(square, torch.tensor([[[1.0, 0, 2.0], [0, 1, 0]]]))  # everything read outside: zeros
    assert off.abs().max() == 0


def test_gradcheck_through_the_module():
    torch.manual_seed(0)
    for mode in ("affine", "crop"):
        stn = SpatialTransformer(1, mode=mode, channels=(2, 3), kernel_sizes=(3, 3), hidden=4, pool_size=2).double()
        with torch.no_grad():  # theta depends on the input: gradients flow through the localisation net too
            stn.fc_loc[-1].weight.normal_(0, 0.1)
        x = torch.randn(1, 1, 10, 10, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: stn(t)[0], (x,), eps=1e-6, atol=1e-5)
        assert torch.autograd.gradcheck(lambda t: stn(t)[1], (x,), eps=1e-6, atol=1e-5)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.15, 1.1, -0.05]]], dtype=torch.float64, requires_grad=True)
    img = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t: stn.sample(i, t, (5, 4)), (img, theta))  # w.r.t. input and theta


def test_crop_mode_enlarges_the_central_half():
    stn = SpatialTransformer(1, mode="crop", channels=(2, 2), kernel_sizes=(1, 1))
    set_theta(stn, [math.log(1 / 3), 0.0, 0.0])  # s = min(1, 2 sigmoid(r)) = 0.5, t = 0
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()  # value = column index
    y, theta = stn(ramp)
    torch.testing.assert_close(theta, torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]]))
    # output column j reads column 1.75 + 0.5 j: the central half [1.5, 5.5) of the 8 columns, enlarged twice
    torch.testing.assert_close(y[0, 0, 0], 1.75 + 0.5 * torch.arange(8.0))
    x = torch.randn(1, 1, 8, 8)
    inner = F.interpolate(x[..., 2:6, 2:6], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(stn(x)[0][..., 1:7, 1:7], inner[..., 1:7, 1:7])
    glimpse = SpatialTransformer(1, mode="crop", channels=(2, 2), kernel_sizes=(1, 1), output_size=(4, 4))
    set_theta(glimpse, [math.log(1 / 3), 0.0, 0.0])
    torch.testing.assert_close(glimpse(x)[0], x[..., 2:6, 2:6])  # at 4 x 4: exactly the central pixels
    set_theta(glimpse, [-30.0, 0.0, 0.0])
    assert 0 < glimpse(x)[1][0, 0, 0] < 1e-6  # s stays in (0, 1]
    set_theta(glimpse, [30.0, 0.0, 0.0])
    assert glimpse(x)[1][0, 0, 0] == 1.0


def test_create_model_with_stn_trains_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    model = create_model("gap", backbone="cifar_resnet20", num_classes=10, stn={"mode": "affine"})
    plain = create_model("gap", backbone="cifar_resnet20", num_classes=10)
    keys, plain_keys = model.state_dict().keys(), plain.state_dict().keys()
    assert set(keys) - set(plain_keys) == {k for k in keys if k.startswith("stn.")} and set(plain_keys) <= set(keys)
    assert n_params(model) == n_params(plain) + n_params(model.stn) == 269722 + 8544
    assert model.init_args["stn"] == {"mode": "affine"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = model.train()(x)
    assert set(out) == {"out", "stn_theta"} and out["stn_theta"].shape == (4, 2, 3)
    F.cross_entropy(out["out"], y).backward()
    assert model.stn.fc_loc[-1].weight.grad.abs().sum() > 0  # the task's loss reaches the localisation net
    optimizer.step()
    assert not torch.allclose(model.stn.theta(x), torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    out = model.eval()(x)
    assert set(out) == {"out", "stn_theta", "stn_input"} and out["stn_input"].shape == (4, 3, 32, 32)
    rebuilt = create_model(**model.init_args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    torch.save({"model_args": model.init_args, "model": model.state_dict()}, tmp_path / "stn.pt")
    from contextseg.engine.checkpoint import load_model
    loaded = load_model(tmp_path / "stn.pt")
    torch.testing.assert_close(loaded(x)["out"], out["out"])
    crop = create_model("saol", backbone="cifar_resnet20", num_classes=5, stn={"mode": "crop", "output_size": [24, 24]})
    out = crop.eval()(x)
    assert out["stn_input"].shape == (4, 3, 24, 24) and out["out"].shape == (4, 5) and "attention" in out
    assert create_model(**crop.init_args).stn.output_size == (24, 24)


@pytest.mark.parametrize("arch", ["gap", "saol"])
def test_models_without_stn_keep_their_parameters(arch):
    base = create_model(arch, backbone="cifar_resnet20", num_classes=10)
    for off in (None, False):
        model = create_model(arch, backbone="cifar_resnet20", num_classes=10, stn=off)
        assert type(model) is type(base) and n_params(model) == n_params(base)
        assert list(model.state_dict()) == list(base.state_dict()) and "stn" not in model.init_args
    if arch == "gap":
        assert n_params(base) == 269722


def test_stn_option_errors():
    with pytest.raises(ContextSegError, match="segmentation head"):
        create_model("fcn", backbone="cifar_resnet20", num_classes=3, stn=True)
    with pytest.raises(ContextSegError, match="unknown stn option"):
        create_model("gap", backbone="cifar_resnet20", num_classes=3, stn={"mdoe": "crop"})
    with pytest.raises(ContextSegError, match="'affine' or 'crop'"):
        SpatialTransformer(3, mode="projective")
    with pytest.raises(ContextSegError, match="H, W >= 18"):
        SpatialTransformer(3)(torch.randn(1, 3, 16, 16))


def test_distortion_is_seeded_and_fixed_on_val(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, per_class=3, size=(32, 32))
    image = np.asarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3)), dtype=np.uint8)
    distort = {"rotate": 45, "scale": [0.7, 1.2], "translate": 0.15}
    tf = classification_train_transform(pad=0, hflip=False, distort=distort)
    torch.manual_seed(1)
    a = tf(image)[0]
    torch.manual_seed(1)
    assert torch.equal(a, tf(image)[0]) and not torch.equal(a, tf(image)[0])
    plain = build_dataset("image_folder", "all", root=root)
    val = build_dataset("image_folder", "all", root=root, transform=distorted_eval_transform(distort),
                        transform_seed=0)
    assert torch.equal(val[2][0], val[2][0]) and not torch.equal(val[2][0], plain[2][0])
    other = build_dataset("image_folder", "all", root=root, transform=distorted_eval_transform(distort),
                          transform_seed=1)
    assert not torch.equal(val[2][0], other[2][0])  # the draw follows the seed
    with pytest.raises(ContextSegError, match="unknown distort option"):
        cfg = load_config("configs/cifar10/gap_resnet20_distorted.yaml",
                          [f"data.root={root}", "data.dataset=image_folder", "data.kwargs={distort: {shear: 3}}"])
        build_datasets(cfg)


def test_configs_differ_only_by_the_stn():
    stn = load_config("configs/cifar10/stn_resnet20.yaml")
    gap = load_config("configs/cifar10/gap_resnet20_distorted.yaml")
    base = load_config("configs/cifar10/gap_resnet20.yaml")
    assert stn.task == gap.task == "classification" and stn.model.kwargs == {"stn": {"mode": "affine"}}
    assert gap.model.kwargs == {} and stn.data.kwargs == gap.data.kwargs and "distort" in gap.data.kwargs
    assert stn.train == gap.train == base.train and stn.loss == gap.loss == base.loss


def test_train_eval_predict_cli_writes_the_stn_picture(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, per_class=4, size=(32, 32))
    out = tmp_path / "run"
    common = [f"output_dir={out}", "data.dataset=image_folder", f"data.root={root}",
              "data.kwargs={val_every: 2, distort: {rotate: 30, scale: [0.8, 1.1], translate: 0.1}}",
              "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0", "train.iters=1",
              "train.eval_interval=1", "train.warmup_iters=0", "train.log_interval=1"]
    cfg = "configs/cifar10/stn_resnet20.yaml"
    assert main(["train", cfg, *common, "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["images"] == 6
    assert main(["eval", cfg, *common, "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "e.json"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(summary["final"]["top1"])
    assert main(["predict", str(root / "disc" / "00000.jpg"), "--checkpoint", str(out / "best.pt"),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    row = json.loads((tmp_path / "pred" / "predictions.json").read_text())[0]
    picture = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "pred" / "00000_stn.png"))
    assert row["stn"].endswith("00000_stn.png") and np.array(row["stn_theta"]).shape == (2, 3)
    assert picture.shape == (128, 256, 3)  # 32 x 32 enlarged 4 times, beside its transformed version
    assert stn_picture(np.zeros((32, 32, 3), np.uint8), np.zeros((16, 24, 3), np.uint8)).shape == (128, 128 + 192, 3)


def test_localisation_net_trains_at_a_tenth_of_the_rate():
    """lr_mult (0.1 by default): the STN's parameters get their own optimizer group at 0.1 x train.lr, the poly
    schedule scales both groups alike; without an STN there is one group."""
    from types import SimpleNamespace

    from contextseg.engine.schedules import PolyLR
    from contextseg.engine.trainer import build_optimizer

    cfg = SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    model = create_model("gap", backbone="cifar_resnet20", num_classes=10, stn=True)
    opt = build_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.stn.parameters()}
    sched = PolyLR(opt, total_iters=10, power=1.0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    assert len(build_optimizer(create_model("gap", backbone="cifar_resnet20", num_classes=10), cfg).param_groups) == 1
    assert len(build_optimizer(create_model("gap", backbone="cifar_resnet20", num_classes=10,
                                            stn={"lr_mult": 1.0}), cfg).param_groups) == 1
    with pytest.raises(ContextSegError, match="lr_mult"):
        create_model("gap", backbone="cifar_resnet20", num_classes=10, stn={"lr_mult": 0})
