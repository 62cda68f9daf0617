import pytest

from contextseg.config import load_config, parse_overrides
from contextseg.errors import ContextSegError


def test_overrides_parse_yaml_values():
    tree = parse_overrides(["train.lr=1e-3", "data.crop_size=[64,64]", "model.arch=fcn", "train.channels_last=true"])
    assert tree == {"train": {"lr": 1e-3, "channels_last": True}, "data": {"crop_size": [64, 64]},
                    "model": {"arch": "fcn"}}


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {arch: fcn}\ntrain: {iters: 10, lr: 0.1}\n")
    cfg = load_config(p, ["train.iters=20"])
    assert cfg.model.arch == "fcn" and cfg.train.iters == 20 and cfg.train.lr == 0.1


@pytest.mark.parametrize("bad, word", [
    (["train.itres=5"], "iters"),          # typo: suggests the right key
    (["modle.arch=fcn"], "model"),
    (["train.iters=abc"], "integer"),
    (["train.amp=fp8"], "amp"),
    (["nonsense"], "key=value"),
])
def test_bad_keys_are_named(bad, word):
    with pytest.raises(ContextSegError, match=word):
        load_config(None, bad)


def test_missing_file():
    with pytest.raises(ContextSegError, match="not found"):
        load_config("nope.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))
    assert configs
    for c in configs:
        load_config(c)
