"""Data: transforms keep image and mask aligned, synthetic scenes, folder datasets, CamVid, errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextseg.data import (
    MEAN,
    STD,
    CamVid,
    FolderDataset,
    SyntheticScenes,
    build_dataset,
    denormalize,
    eval_transform,
    read_image,
    read_mask,
    train_transform,
    write_synthetic_folder,
)
from contextseg.data import synthetic as synthetic_module
from contextseg.errors import ContextSegError

COLOURS = np.array([(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)], np.uint8)


def block_pair(seed: int, h: int = 64, w: int = 96, block: int = 16):
    """An image of flat colour blocks and the mask of their class: mask = f(image content)."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(COLOURS), (h // block, w // block))
    mask = np.kron(classes, np.ones((block, block), np.int64)).astype(np.uint8)
    return COLOURS[mask], mask


def classify(image_u8: np.ndarray) -> np.ndarray:
    d = ((image_u8[:, :, None, :].astype(np.int32) - COLOURS[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("crop", [(48, 64), (96, 128)])  # smaller and larger than the image
def test_train_transform_keeps_image_and_mask_aligned(crop):
    tf = train_transform(crop_size=crop, scale_range=(0.5, 2.0), hflip=0.5, jitter=False)
    torch.manual_seed(0)
    padded = 0
    for seed in range(12):
        image, mask = block_pair(seed)
        x, y = tf(image, mask)
        assert x.dtype == torch.float32 and x.shape == (3, *crop)
        assert y.dtype == torch.int64 and y.shape == crop
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 255}
        pad = y == 255  # the input mask has no 255: every 255 is padding
        padded += int(pad.sum())
        # Padding is the mean colour, i.e. 0 after normalisation.
        if pad.any():
            assert x[:, pad].abs().max().item() < 0.05
        # Compare away from label edges (bilinear mixes colours there): a 3x3 neighbourhood of one label.
        yp = torch.nn.functional.pad(y[None, None].float(), (1, 1, 1, 1), mode="replicate")
        interior = (torch.nn.functional.max_pool2d(yp, 3, 1) == -torch.nn.functional.max_pool2d(-yp, 3, 1))[0, 0]
        valid = ~pad & interior
        pred = torch.from_numpy(classify(denormalize(x)))
        agree = (pred[valid] == y[valid]).float().mean().item()
        assert valid.sum() > 500
        assert agree > 0.99, f"image and mask disagree on {1 - agree:.1%} of pixels (seed {seed})"
    if crop == (96, 128):
        assert padded > 0  # a crop larger than the image must have been padded


def test_train_transform_is_reproducible_under_torch_seed_and_jitter_changes_only_image():
    image, mask = block_pair(3)
    tf = train_transform(crop_size=(48, 48), jitter=True)
    torch.manual_seed(7)
    a = tf(image, mask)
    torch.manual_seed(7)
    b = tf(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outs = {tuple(tf(image, mask)[1].flatten()[:50].tolist()) for _ in range(6)}
    assert len(outs) > 1  # different draws without reseeding


def test_eval_transform_normalises_whole_image_and_image_only_path():
    image, mask = block_pair(1, h=37, w=53, block=1)
    tf = eval_transform()
    x, y = tf(image, mask)
    assert x.shape == (3, 37, 53) and y.shape == (37, 53) and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(mask.astype(np.int64)))
    expect = (image[5, 7].astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(x[:, 5, 7].numpy(), expect, atol=1e-5)
    x_only, none = tf(image, None)  # prediction: no mask -> (image, None)
    assert none is None and torch.equal(x_only, x)
    assert torch.equal(tf.image_only(image), x)
    assert np.array_equal(denormalize(x), image)
    # train transform: image-only path gives the crop size
    assert train_transform(crop_size=32).image_only(image).shape == (3, 32, 32)


def test_synthetic_is_deterministic_varies_and_covers_all_classes():
    ds = SyntheticScenes(num_samples=10, seed=0)
    im0, lb0 = ds.raw(0)
    im0b, lb0b = SyntheticScenes(num_samples=10, seed=0).raw(0)
    assert np.array_equal(im0, im0b) and np.array_equal(lb0, lb0b)
    assert im0.dtype == np.uint8 and im0.shape == (96, 128, 3) and lb0.shape == (96, 128)
    assert not np.array_equal(im0, ds.raw(1)[0])
    assert not np.array_equal(im0, SyntheticScenes(num_samples=10, seed=1).raw(0)[0])
    assert not np.array_equal(im0, SyntheticScenes(num_samples=10, seed=0, split="val").raw(0)[0])
    seen = set()
    for i in range(10):
        seen |= set(np.unique(ds.raw(i)[1]).tolist())
    assert seen == set(range(ds.num_classes)) | {255}
    assert ds.num_classes == len(ds.classes) == len(ds.palette) == 6 and ds.ignore_index == 255
    x, y = ds[2]
    assert x.shape == (3, 96, 128) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert str(ds.image_path(2)).endswith("00002.png")
    assert len(build_dataset("synthetic", "val", num_samples=3)) == 3


def test_synthetic_scenes_are_drawn_once_and_kept_read_only(monkeypatch):
    ds = SyntheticScenes(num_samples=3, seed=0)
    im, lb = ds.raw(1)
    assert ds.raw(1)[0] is im and ds.raw(-2)[1] is lb  # kept: the second read draws nothing
    assert not im.flags.writeable and not lb.flags.writeable  # no transform can edit the kept pair
    fresh = SyntheticScenes(num_samples=3, seed=0, split="train")
    fresh._cache = None
    assert np.array_equal(im, fresh.raw(1)[0]) and np.array_equal(lb, fresh.raw(1)[1])
    x1, x2 = ds[1][0], ds[1][0]
    assert torch.equal(x1, x2)
    monkeypatch.setattr(synthetic_module, "CACHE_BYTES", 3 * 96 * 128 * 4 - 1)  # one byte short: drawn each time
    big = SyntheticScenes(num_samples=3, seed=0)
    assert big.raw(1)[0] is not big.raw(1)[0] and big.raw(1)[0].flags.writeable


def test_folder_dataset_round_trip(tmp_path):
    classes = write_synthetic_folder(tmp_path, n=4, size=(48, 64), seed=3)
    ds = FolderDataset(tmp_path, classes)
    ref = SyntheticScenes(num_samples=4, size=(48, 64), seed=3)
    assert len(ds) == 4 and ds.classes == classes and ds.num_classes == 6 and ds.ignore_index == 255
    for i in range(4):
        img, lab = ds.raw(i)
        rimg, rlab = ref.raw(i)
        assert np.array_equal(img, rimg) and np.array_equal(lab, rlab)
    x, y = ds[0]
    assert x.shape == (3, 48, 64) and y.shape == (48, 64) and y.dtype == torch.int64
    assert ds.image_path(1).name == "00001.png" and ds.image_path(1).exists()
    # classes from classes.txt, palette defaults to one colour per class, registry path
    ds2 = build_dataset("folder", split=None, root=tmp_path)
    assert ds2.classes == classes and len(ds2.palette) == 6
    # split sub-folders
    write_synthetic_folder(tmp_path / "s", n=2, size=(32, 32), split="val")
    assert len(FolderDataset(tmp_path / "s", classes, split="val")) == 2


def test_image_scale_reads_pairs_at_the_reduced_size(tmp_path):
    """image_scale=0.5: image area-averaged, mask by nearest neighbour (its values stay class indices)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, 4:] = 200  # right half bright
    image[0, 0] = 40  # one pixel that area averaging spreads over its 2x2 block: (40 + 0 + 0 + 0) / 4 = 10
    mask = np.zeros((6, 8), np.uint8)
    mask[:, 4:] = 1
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    im, lab = FolderDataset(tmp_path, ["bg", "fg"], image_scale=0.5).raw(0)
    assert im.shape == (3, 4, 3) and lab.shape == (3, 4)
    assert im[0, 0, 0] == 10 and (im[:, 2:] == 200).all() and (im[1:, :2] == 0).all()
    assert lab.tolist() == [[0, 0, 1, 1]] * 3
    x, y = FolderDataset(tmp_path, ["bg", "fg"], image_scale=2.0)[0]
    assert x.shape == (3, 12, 16) and y.shape == (12, 16) and set(y.unique().tolist()) == {0, 1}
    with pytest.raises(ContextSegError, match="image_scale"):
        FolderDataset(tmp_path, ["bg", "fg"], image_scale=0)
    Image.fromarray(mask * 255).save(tmp_path / "masks" / "a.png")  # a saliency mask (255 = salient)
    im, lab = build_dataset("saliency_folder", None, root=tmp_path, image_scale=0.5).raw(0)  # ECSSD's class
    assert im.shape == (3, 4, 3) and lab.tolist() == [[0, 0, 1, 1]] * 3


def test_folder_dataset_label_map_ignore_and_colour_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    raw = np.array([[0, 1, 2, 7]] * 2, np.uint8).repeat(4, 0).repeat(2, 1)
    Image.fromarray(raw).save(tmp_path / "masks" / "a.png")
    ds = FolderDataset(tmp_path, ["bg", "a", "b"], ignore_index=7)
    assert set(np.unique(ds[0][1].numpy()).tolist()) == {0, 1, 2, 255}
    ds = FolderDataset(tmp_path, 2, label_map={0: 255, 1: 0, 2: 1, 7: 255})
    assert set(np.unique(ds[0][1].numpy()).tolist()) == {0, 1, 255}
    palette = [(200, 0, 0), (0, 200, 0)]
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = palette[0]
    rgb[:, 4:6] = palette[1]  # columns 6-7 stay black -> ignore
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    lab = FolderDataset(tmp_path, ["x", "y"], palette=palette)[0][1]
    assert lab[0].tolist() == [0, 0, 0, 0, 1, 1, 255, 255]


def test_read_image_converts_to_rgb(tmp_path):
    Image.fromarray(np.full((5, 6), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((5, 6, 4), 90, np.uint8), "RGBA").save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        im = read_image(tmp_path / name)
        assert im.shape == (5, 6, 3) and im.dtype == np.uint8
    assert read_mask(tmp_path / "g.png").shape == (5, 6)


# ----------------------------------------------------------------------------- clear errors


def test_error_missing_folder(tmp_path):
    with pytest.raises(ContextSegError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere", ["a", "b"])
    with pytest.raises(ContextSegError, match=r"(?s)nowhere.*data\.root"):
        CamVid(root=tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ContextSegError, match="no images"):
        FolderDataset(tmp_path / "empty", ["a", "b"])
    with pytest.raises(ContextSegError, match="unknown dataset"):
        build_dataset("camvidd", "train")


def test_error_image_without_mask(tmp_path):
    write_synthetic_folder(tmp_path, n=3, size=(32, 32))
    (tmp_path / "masks" / "00001.png").unlink()
    with pytest.raises(ContextSegError, match="00001"):
        FolderDataset(tmp_path, 6)


def test_error_size_mismatch(tmp_path):
    write_synthetic_folder(tmp_path, n=2, size=(32, 48))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / "00001.png")
    ds = FolderDataset(tmp_path, 6)
    ds[0]
    with pytest.raises(ContextSegError, match=r"(?s)00001.*48x32.*30x20"):
        ds[1]


def test_error_label_out_of_range(tmp_path):
    write_synthetic_folder(tmp_path, n=2, size=(32, 32))
    bad = np.zeros((32, 32), np.uint8)
    bad[0, :3] = [9, 12, 3]
    Image.fromarray(bad).save(tmp_path / "masks" / "00000.png")
    with pytest.raises(ContextSegError, match=r"(?s)00000\.png.*\[9, 12\].*label_map"):
        FolderDataset(tmp_path, 6)[0]
    ok = FolderDataset(tmp_path, 6, label_map={9: 255, 12: 5})[0][1]
    assert ok[0, :3].tolist() == [255, 5, 3]


def test_camvid_groups_merge_classes_and_ignore_the_rest(tmp_path):
    for part in ("train", "trainannot"):
        (tmp_path / part).mkdir()
    mask = np.tile(np.arange(12, dtype=np.uint8), (4, 1))  # raw 0..10 = the classes, 11 = unlabelled
    Image.fromarray(mask).save(tmp_path / "trainannot" / "a.png")
    Image.fromarray(np.zeros((4, 12, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    groups = {"background": ["sky", "road", "building"], "car": ["car"], "person": ["pedestrian", "bicyclist"]}
    ds = build_dataset("camvid", "train", root=tmp_path, groups=groups)
    assert ds.classes == ["background", "car", "person"] and ds.palette[1] == (64, 0, 128)
    row = ds[0][1][0].tolist()  # one value per raw class 0..11
    #      sky  building pole road sidewalk tree sign fence car ped bic  unlabelled
    assert row == [0, 0, 255, 0, 255, 255, 255, 255, 1, 2, 2, 255]
    for bad, match in (({"a": ["cat"]}, "not a class"), ({"a": ["car"], "b": ["car"]}, "one only"),
                       ({"a": []}, "no classes"), ({}, "must map")):
        with pytest.raises(ContextSegError, match=match):
            build_dataset("camvid", "train", root=tmp_path, groups=bad)


# ----------------------------------------------------------------------------- real CamVid


def camvid_root() -> Path:
    env = os.environ.get("CONTEXTSEG_DATA")
    if env:
        p = Path(env)
        return p / "camvid" if (p / "camvid").is_dir() else p
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"


@pytest.mark.real_data
def test_camvid_loads_real_data():
    root = camvid_root()
    if not (root / "train").is_dir():
        pytest.skip(f"CamVid not found at {root}")
    train, val = CamVid(root, "train"), CamVid(root, "val")
    assert len(train) == 367 and len(val) == 101
    assert train.num_classes == 11 and len(train.palette) == 11 and train.classes[0] == "sky"
    seen = set()
    for ds, i in ((train, 0), (train, 200), (val, 50)):
        x, y = ds[i]
        assert x.shape == (3, 360, 480) and x.dtype == torch.float32
        assert y.shape == (360, 480) and y.dtype == torch.int64
        seen |= set(y.unique().tolist())
        assert ds.image_path(i).name == ds.mask_path(i).name
    assert seen <= set(range(11)) | {255} and 255 in seen
    assert len(build_dataset("camvid", "val", root=root)) == 101
