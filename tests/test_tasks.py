"""Tasks as peers: the one place a config's or a checkpoint's task is decided, and the table the CLI dispatches by."""
from pathlib import Path

import pytest

from contextseg.cli import main
from contextseg.config import Config, load_config
from contextseg.errors import ContextSegError
from contextseg.tasks import TASKS, Task, declared_task, task_for, task_for_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_every_task_implements_the_interface():
    assert set(TASKS) == {"segmentation", "saliency", "classification", "weak"}
    for name, task in TASKS.items():
        assert task.name == name
        for method in ("setup", "format", "evaluate", "predict"):
            assert getattr(type(task), method) is not getattr(Task, method), f"{name} lacks {method}"


@pytest.mark.parametrize("dataset,task", [("synthetic", "segmentation"), ("camvid", "segmentation"),
                                          ("pseudo_labels", "segmentation"), ("ecssd", "saliency"),
                                          ("saliency_folder", "saliency"), ("cifar10", "classification"),
                                          ("image_folder", "classification"), ("weak_saliency", "weak")])
def test_task_inferred_from_the_dataset(dataset, task):
    assert declared_task(dataset) == task
    cfg = Config()
    cfg.data.dataset = dataset
    assert cfg.task is None and task_for(cfg).name == task  # an old config without task:


def test_shipped_configs_name_their_task():
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load_config(path)
        assert cfg.task == declared_task(cfg.data.dataset), path


def test_a_task_that_does_not_fit_the_data_is_one_clear_error():
    with pytest.raises(ContextSegError, match="dataset 'synthetic' is for segmentation"):
        task_for(load_config(ROOT / "configs/synthetic_ocr.yaml", ["task=classification"]))
    with pytest.raises(ContextSegError, match="is not a task"):
        task_for(load_config(ROOT / "configs/synthetic_ocr.yaml", ["task=boxes"]))
    assert main(["train", str(ROOT / "configs/synthetic_ocr.yaml"), "task=saliency", "--no-progress"]) == 2


def test_checkpoint_task_from_its_config_or_arch():
    cfg = Config()
    cfg.data.dataset = "cifar10"
    assert task_for_checkpoint({"config": cfg.to_dict()}).name == "classification"  # saved without task:
    cfg.task = "classification"
    assert task_for_checkpoint({"config": cfg.to_dict()}).name == "classification"
    assert task_for_checkpoint({"model_args": {"arch": "saol"}}).name == "classification"
    assert task_for_checkpoint({"model_args": {"arch": "ssnet"}}).name == "weak"
    assert task_for_checkpoint({"model_args": {"arch": "ocr"}}).name == "segmentation"
