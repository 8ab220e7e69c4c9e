"""tools/pretrain.py end to end on tiny ImageFolder trees made in tmp_path.

Runs in-process (no torchrun) except the 2-process test, which uses torchrun on CPU/gloo.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnet_detect import backbones
from resnet_detect.backbones.data import normalize_images
from resnet_detect.backbones.pretraining import ClassificationTask, build_datasets
from resnet_detect.engine.cli import run_tool
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.skipped_images import UnreadableDataError
from resnet_detect.engine.tasks import load_task_config
from tests.torchrun import run_two_processes

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/pretrain/synthetic_resnet18.yaml"
PROVENANCE_KEYS = {"arch", "options", "pixel_mean", "pixel_std", "channel_order",
                   "stride_in_1x1", "class_names", "config"}


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pretrain_tool", ROOT / "tools/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tool() -> ModuleType:
    return load_tool()


def colour_tree(root: Path, train_per_class: int, val_per_class: int, size: int = 20) -> None:
    """Two classes told apart by colour: reddish vs bluish images with noise."""
    rng = np.random.default_rng(0)
    colours = {"blue": (40, 60, 200), "red": (200, 50, 40)}  # RGB
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = np.clip(np.array(rgb) + rng.normal(0, 30, (size, size, 3)), 0, 255)
                cv2.imwrite(str(root / split / name / f"{i}.png"),
                            image.astype(np.uint8)[..., ::-1])


def overrides(data: Path, out: Path, **extra: object) -> list[str]:
    values = {"data.root": data, "train.output_dir": out, "model.name": "cifar_resnet20",
              "data.image_size": 16, "data.val_resize": 16, "data.num_workers": 0,
              "data.scale": "[0.5,1.0]", "train.batch_size": 8, "train.epochs": 2,
              "train.warmup_epochs": 0, "train.optimizer": "sgd", "train.weight_decay": 5e-5,
              "train.log_period": 1, **extra}
    return [str(CONFIG)] + [f"{k}={v}" for k, v in values.items()]


def test_a_diverging_run_is_one_line_and_exit_code_2(tool: ModuleType, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """base_lr 1e9: the loss is not finite after a few steps (was a 40-line traceback)."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    argv = overrides(tmp_path / "data", tmp_path / "out",
                     **{"train.base_lr": 1e9, "train.epochs": 4, "train.batch_size": 4})
    monkeypatch.setattr(sys, "argv", ["tools/pretrain.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool.main)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("pretrain.py: error: loss is not finite at iteration ")
    assert "Lower the learning rate" in err[0]


def test_a_run_folder_of_another_task_is_refused_and_kept(tool: ModuleType,
                                                         tmp_path: Path) -> None:
    """A pretraining into a detector's run folder replaced its model_final.pth (a warning in
    the log only); a folder of the same task is a rerun, and one with no results is free."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    run = tmp_path / "detector"
    run.mkdir()
    (run / "config.yaml").write_text("task: detection\nmodel: {}\n", encoding="utf-8")
    (run / "model_final.pth").write_bytes(b"the detector")
    (run / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"train.output_dir {re.escape(str(run))} holds the "
                                          r"results of a detection run \(model_final.pth, "
                                          r"metrics.json\); this classification run would "
                                          r"replace them"):
        tool.main(overrides(tmp_path / "data", run, **{"train.epochs": 1}))
    assert (run / "model_final.pth").read_bytes() == b"the detector"
    assert not (run / "log.txt").exists()  # refused before its log was opened there
    assert "classification" not in (run / "config.yaml").read_text(encoding="utf-8")
    (run / "model_final.pth").unlink(), (run / "metrics.json").unlink()
    tool.main(overrides(tmp_path / "data", run, **{"train.epochs": 1}))  # nothing to lose
    tool.main(overrides(tmp_path / "data", run, **{"train.epochs": 1}))  # a rerun


def test_an_output_folder_inside_a_split_is_refused(tool: ModuleType, tmp_path: Path) -> None:
    """Its checkpoints and tensorboard folder were written among the class folders (exit 0);
    the next run refused the split ("class folders without images: tensorboard")."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    for inside in ("train", "val/runs/r1"):
        with pytest.raises(ConfigError, match=rf"train.output_dir "
                                              rf"{re.escape(str(tmp_path / 'data' / inside))} is "
                                              rf"inside the dataset's {inside.split('/')[0]} "
                                              r"folder .*: the run's files would be read as a "
                                              r"class there"):
            tool.main(overrides(tmp_path / "data", tmp_path / "data" / inside))
    assert sorted(p.name for p in (tmp_path / "data/train").iterdir()) == ["blue", "red"]
    assert sorted(p.name for p in (tmp_path / "data/val").iterdir()) == ["blue", "red"]


def test_a_resume_into_another_network_names_a_few_keys(tool: ModuleType,
                                                        tmp_path: Path) -> None:
    """--resume with model.name changed: PyTorch's list of every missing key (20 KB) was the
    message; now the first ten of each kind and their counts."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    tool.main(overrides(tmp_path / "data", tmp_path / "out", **{"train.epochs": 1}))
    with pytest.raises(ConfigError) as refused:
        tool.main([*overrides(tmp_path / "data", tmp_path / "out",
                              **{"train.epochs": 2, "model.name": "cifar_resnet32"}), "--resume"])
    message = str(refused.value)
    assert "does not fit this model" in message and len(message) < 2000
    # 2 more blocks in each of 3 stages, 12 tensors each (2 convs, 2 BNs of 5)
    assert re.search(r"\n  missing \(72\): (\S+, ){9}\S+ \.\.\. and 62 more", message), message
    assert "unexpected" not in message and "mis-shaped" not in message


def test_missing_dataset_folder_fails_before_training(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError,
                       match=f"dataset folder not found: {tmp_path}/nowhere/train"):
        tool.main(overrides(tmp_path / "nowhere", tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.pth"))
    # null passed the mandatory ??? check: "dataset folder not found: None/train"
    with pytest.raises(ConfigError, match=r"data.root must be a folder name, got None \(the "
                                          r"dataset's root: root/train/<class>/\*.jpg\)"):
        tool.main(overrides(None, tmp_path / "out"))


def test_short_pretrain_lowers_loss_and_writes_loadable_outputs(
        tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    colour_tree(tmp_path / "data", train_per_class=8, val_per_class=4)
    out = tmp_path / "out"
    # the `solver` keys of older configs still load (moved to `train`, with a warning)
    result = tool.main(overrides(tmp_path / "data", out, **{"solver.epochs": 5,
                                                           "solver.base_lr": 0.05}))
    assert result["metrics"] == {"top1": 100.0, "top5": 100.0}
    assert "top1=100.00  top5=100.00" in capsys.readouterr().out

    # Validation loss against the same network before training (same seed, same init).
    torch.manual_seed(0)
    untrained = backbones.build_classifier("cifar_resnet20", 2).eval()
    trained = result["model"].eval()
    cfg = load_task_config(CONFIG, overrides(tmp_path / "data", out)[1:])[1]
    _, val = build_datasets(cfg)
    images = normalize_images(torch.stack([val[i]["image"] for i in range(len(val))]),
                              cfg.data.pixel_mean, cfg.data.pixel_std)
    labels = torch.tensor([val[i]["label"] for i in range(len(val))])
    with torch.no_grad():
        loss_before = F.cross_entropy(untrained(images), labels).item()
        loss_after = F.cross_entropy(trained(images), labels).item()
    assert loss_after < 0.5 * loss_before

    # The classifier and the backbone files load back, with provenance.
    final = backbones.read_checkpoint(out / "model_final.pth")
    assert set(final["provenance"]) >= PROVENANCE_KEYS
    assert final["provenance"]["arch"] == "cifar_resnet20"
    assert final["provenance"]["class_names"] == ["blue", "red"]
    assert final["provenance"]["channel_order"] == "RGB"
    assert final["provenance"]["config"]["train"]["batch_size"] == 8
    assert final["provenance"]["config"]["train"]["epochs"] == 5
    clone = backbones.build_classifier("cifar_resnet20", 2)
    backbones.load_weights(clone, out / "model_final.pth")
    backbone = backbones.build("cifar_resnet20", weights=out / "backbone_final.pth").eval()
    with torch.no_grad():
        assert torch.equal(clone.eval()(images), trained(images))
        assert torch.equal(backbone(images)["res4"], trained.backbone(images)["res4"])
    assert (out / "config.yaml").is_file() and (out / "last_checkpoint").is_file()
    # an epoch-based run's progress lines say the epoch: 2 steps of 8 images per epoch
    log = (out / "log.txt").read_text()
    assert "iter 2/10 (epoch 1/5)  " in log and "iter 3/10 (epoch 2/5)  " in log
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_model_weights_start_the_backbone_from_torchvision_with_a_new_fc(
        tool: ModuleType, tmp_path: Path) -> None:
    """Fine-tuning: a torchvision resnet18 (1000 classes) starts a 2-class classifier; its
    backbone is torchvision's, its fc new. Weights that record another normalisation are
    refused naming the data keys."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    torch.manual_seed(0)
    torchvision_weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), torchvision_weights)
    args = overrides(tmp_path / "data", tmp_path / "out")[1:] + [
        "model.name=resnet18", f"model.weights={torchvision_weights}"]
    cfg = load_task_config(CONFIG, args)[1]
    task = ClassificationTask()
    task.prepare(cfg)
    model = task.build_model(cfg)
    expected = backbones.build("resnet18", weights=torchvision_weights).state_dict()
    got = model.backbone.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.fc.weight.shape == (2, 512)
    result = tool.main([str(CONFIG), *args, "train.max_iter=2", "train.epochs=null"])
    assert result["iteration"] == 2
    own = tmp_path / "own.pth"
    backbones.save_checkpoint(own, expected, backbones.make_provenance(
        "resnet18", pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0)))
    cifar = tmp_path / "cifar.pth"
    backbones.save_checkpoint(cifar, backbones.build("cifar_resnet20").state_dict(),
                              backbones.make_provenance("cifar_resnet20"))
    with pytest.raises(ValueError, match=r"cifar.pth holds a cifar_resnet20, this model is a "
                                         r"resnet18: the backbone name cifar_resnet20 builds that "
                                         r"net\)"):
        task.build_model(load_task_config(CONFIG, [*args, f"model.weights={cifar}"])[1])
    with pytest.raises(ValueError, match=r"own.pth do not fit this config: data.pixel_mean is "
                                         r"\[123.675,116.28,103.53\], the weights need "
                                         r"\[0.0,0.0,0.0\]; data.pixel_std"):
        task.build_model(load_task_config(CONFIG, [*args, f"model.weights={own}"])[1])


def test_unreadable_images_are_skipped_and_counted(
        tool: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=2)
    bad_train = tmp_path / "data/train/red/3.png"
    bad_val = tmp_path / "data/val/blue/0.png"
    bad_train.write_bytes(b"truncated")
    bad_val.write_bytes(b"")
    # 8 training images, 4 per step, 1 epoch: the stream reads each index exactly once.
    with caplog.at_level(logging.INFO):
        result = tool.main(overrides(tmp_path / "data", tmp_path / "out",
                                     **{"train.epochs": 1, "train.batch_size": 4}))
    assert f"skipping unreadable image: {bad_train}: cannot be decoded" in caplog.text
    assert f"skipping unreadable image: {bad_val}: an empty file (0 bytes)" in caplog.text
    assert "train: skipped 1 unreadable image reads" in caplog.text
    assert ("val: 1 of 4 images could not be read (the warnings above name them): the "
            "metrics are those of the others") in caplog.text
    assert result["skipped"] == 1
    # 3 scored validation images: accuracy is a multiple of 1/3.
    assert round(result["metrics"]["top1"] * 3 / 100, 6) in (0.0, 1.0, 2.0, 3.0)


def test_an_evaluation_without_a_readable_image_scores_nothing() -> None:
    """Every val image unreadable gave top-1 0.00, a score a train.best_metric compares."""
    task = ClassificationTask()
    metrics = task.evaluate(torch.nn.Linear(2, 2), [[], []], torch.device("cpu"))
    assert all(np.isnan(v) for v in metrics["classification"].values())
    assert task.summary(metrics) == task.summary({}) == "top1=n/a  top5=n/a"
    assert task.summary({"classification": {"top1": 50.0, "top5": 100.0}}) == \
        "top1=50.00  top5=100.00"


def test_an_evaluation_under_bf16_without_kernels_says_nothing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pretraining with train.amp=bf16 on a CPU without bf16 kernels repeated "training in
    float32" at every evaluation (the training says it once)."""
    from resnet_detect.engine import amp
    monkeypatch.setattr(amp, "cpu_supports_bf16", lambda: False)
    task = ClassificationTask()
    task.amp = "bf16"
    with caplog.at_level(logging.WARNING):
        task.evaluate(torch.nn.Linear(2, 2), [[], []], torch.device("cpu"))
        assert amp.amp_for_device("bf16", "cpu") is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "AMP bf16 is not supported on this cpu: training in float32"]


def test_the_log_says_a_training_runs_under_autocast(
        tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """train.amp=bf16 on a CPU with bf16 kernels trained under bf16 without a word in the log
    (config.yaml alone said it); without the kernels the warning says float32."""
    from resnet_detect.engine import amp
    colour_tree(tmp_path / "data", train_per_class=2, val_per_class=1)
    for kernels in (True, False):
        monkeypatch.setattr(amp, "cpu_supports_bf16", lambda: kernels)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            tool.main(overrides(tmp_path / "data", tmp_path / f"out_{kernels}", **{
                "train.amp": "bf16", "train.epochs": 1, "train.batch_size": 4}))
        said = [r.getMessage() for r in caplog.records]
        assert ("training under bf16 autocast (train.amp)" in said) is kernels
        assert ("AMP bf16 is not supported on this cpu: training in float32" in said) \
            is not kernels


def test_training_stops_when_most_images_of_a_window_are_unreadable(
        tool: ModuleType, tmp_path: Path) -> None:
    """All or most images unreadable (a wrong folder, a lost mount): stopped after one
    window of steps, not trained on nothing to the end; half of them is still trained on."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    for name in ["red/0", "red/1", "blue/0", "blue/1"]:
        (tmp_path / f"data/train/{name}.png").write_bytes(b"")
    # 8 images, 4 per step: every epoch reads each once, 20 steps = the window (10 epochs)
    result = tool.main(overrides(tmp_path / "data", tmp_path / "half",
                                 **{"train.epochs": 11, "train.batch_size": 4}))
    assert result["iteration"] == 22 and result["skipped"] == 44  # exactly half: trained
    (tmp_path / "data/train/red/2.png").write_bytes(b"")
    with pytest.raises(UnreadableDataError, match=r"50 of the 80 training images read in "
                                                  r"iterations 1-20 could not be read .* Check "
                                                  r"data.root and the images; then --resume "):
        tool.main(overrides(tmp_path / "data", tmp_path / "most",
                            **{"train.epochs": 11, "train.batch_size": 4}))
    assert not (tmp_path / "most/model_final.pth").exists()


def test_a_batch_of_unreadable_images_leaves_the_weights_as_they_were(
        tool: ModuleType, tmp_path: Path) -> None:
    """A step with nothing to learn from took an optimizer step on zero gradients, whose
    weight decay (and momentum) still moved the weights."""
    colour_tree(tmp_path / "data", train_per_class=2, val_per_class=1)
    for path in (tmp_path / "data/train").rglob("*.png"):
        path.write_bytes(b"")
    tool.main(overrides(tmp_path / "data", tmp_path / "out",
                        **{"train.epochs": 3, "train.batch_size": 2,
                           "train.checkpoint_period": 1, "train.weight_decay": 0.1,
                           "train.max_to_keep": "null"}))
    first = torch.load(tmp_path / "out/model_0000001.pth", weights_only=True)["model"]
    last = torch.load(tmp_path / "out/model_0000006.pth", weights_only=True)["model"]
    assert all(torch.equal(first[k], last[k]) for k in first)


def test_resumed_run_ends_with_the_same_weights(tool: ModuleType, tmp_path: Path) -> None:
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    extra = {"train.epochs": 3, "train.batch_size": 4, "train.checkpoint_period": 2,
             "train.max_to_keep": "null", "model.options.drop_path_rate": 0.2}
    full = tool.main(overrides(tmp_path / "data", tmp_path / "a", **extra))["model"]
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a/model_0000002.pth", tmp_path / "b")
    (tmp_path / "b/last_checkpoint").write_text("model_0000002.pth\n")
    torch.manual_seed(99)
    resumed = tool.main(overrides(tmp_path / "data", tmp_path / "b", **extra)
                        + ["--resume"])["model"]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert sorted(p.name for p in (tmp_path / "b").glob("model_0*.pth")) == [
        "model_0000002.pth", "model_0000004.pth", "model_0000006.pth"]


def test_a_run_s_config_resumed_from_another_folder_names_its_run(
        tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`RUN/config.yaml --resume` from another working folder than the run's (a requeue):
    its relative train.output_dir named a folder of no checkpoint, and a new run started
    there with a warning; refused, naming the override that continues the run."""
    colour_tree(tmp_path / "data", train_per_class=2, val_per_class=1)
    monkeypatch.chdir(tmp_path)
    argv = overrides(tmp_path / "data", Path("runs/r"), **{"train.epochs": 1,
                                                          "train.batch_size": 2})
    tool.main(argv)
    run = tmp_path / "runs/r"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=re.escape(
            f"--resume: {run / 'config.yaml'} is the config of the run in {run}, whose "
            f"train.output_dir runs/r is relative to the folder that run was started from; "
            f"from here it is {elsewhere / 'runs/r'}, which holds no checkpoint: add "
            f"train.output_dir={run} to continue that run")):
        tool.main([str(run / "config.yaml"), "--resume"])
    assert not (elsewhere / "runs").exists()
    # a train.output_dir given is a run of its own: --resume starts it (detectron2's habit of
    # --resume on every launch)
    tool.main([str(run / "config.yaml"), "--resume", "train.output_dir=variant"])
    assert (elsewhere / "variant/model_final.pth").is_file()
    # from the run's own folder, or with the override, it resumes (nothing left: finished)
    monkeypatch.chdir(tmp_path)
    tool.main([str(run / "config.yaml"), "--resume"])
    # a run of an absolute train.output_dir moved: not said to be relative
    tool.main(overrides(tmp_path / "data", tmp_path / "abs", **{"train.epochs": 1,
                                                                "train.batch_size": 2}))
    (tmp_path / "abs").rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match=re.escape(
            f"whose train.output_dir {tmp_path / 'abs'} holds no checkpoint (the run was "
            f"moved?): add train.output_dir={tmp_path / 'moved'}")):
        tool.main([str(tmp_path / "moved/config.yaml"), "--resume"])


def test_resume_with_other_train_settings(tool: ModuleType, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A longer run continues under its new settings and says which changed; a run shorter
    than the checkpoint or with another optimizer is refused before anything is written.
    Every training checkpoint records what model_final.pth does (for eval and export)."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    extra = {"train.epochs": 2, "train.batch_size": 4, "train.checkpoint_period": 2}
    tool.main(overrides(tmp_path / "data", out, **extra))
    mid = torch.load(out / "model_0000002.pth", weights_only=True)
    assert mid["provenance"]["class_names"] == ["blue", "red"]
    assert mid["provenance"]["config"]["train"]["epochs"] == 2
    config = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="model_0000004.pth is at iteration 4, past this "
                                         "run's 2"):
        tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 1})
                  + ["--resume"])
    with pytest.raises(ValueError, match="trained with train.optimizer=sgd, this run asks "
                                         "for adamw: its state cannot continue another "
                                         r"optimizer; start a new run from its weights "
                                         r"\(model.weights=PATH\) in another train.output_dir"):
        tool.main(overrides(tmp_path / "data", out, **{**extra, "train.optimizer": "adamw"})
                  + ["--resume"])
    # a class renamed: as many classes, but "red" would now be label 0
    renamed = tmp_path / "renamed"
    shutil.copytree(tmp_path / "data", renamed)
    for split in ("train", "val"):
        (renamed / split / "blue").rename(renamed / split / "sky")
    with pytest.raises(ValueError, match=r"trained with the class_names \['blue', 'red'\], this "
                                         r"run's data gives \['red', 'sky'\]: its labels would "
                                         "mean other classes"):
        tool.main(overrides(renamed, out, **{**extra, "train.epochs": 3}) + ["--resume"])
    # other normalisation: the weights would see other inputs (it resumed without a word)
    with pytest.raises(ValueError, match=r"checkpoint .*model_0000004.pth do not fit this "
                                         r"config: data.pixel_mean is \[0,0,0\], the weights "
                                         r"need \[123.675,116.28,103.53\]"):
        tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 3})
                  + ["data.pixel_mean=[0,0,0]", "--resume"])
    assert (out / "config.yaml").read_text() == config
    with caplog.at_level(logging.WARNING):
        result = tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 3,
                                                                  "train.base_lr": 0.05})
                           + ["--resume"])
    assert result["iteration"] == 6
    assert "train.base_lr: 0.002 -> 0.05, train.epochs: 2 -> 3" in caplog.text
    assert "epochs: 3" in (out / "config.yaml").read_text()
    # images removed (the unreadable ones the warnings named): the epochs end sooner, and the
    # refusal says why
    fewer = tmp_path / "fewer"
    shutil.copytree(tmp_path / "data", fewer)
    for name in ("blue/2", "blue/3", "red/2", "red/3"):
        (fewer / f"train/{name}.png").unlink()
    with pytest.raises(ValueError, match="past this run's 3 .*; the run that wrote it had 8 "
                                         "training images, this one has 4: nothing to resume"):
        tool.main(overrides(fewer, out, **{**extra, "train.epochs": 3}) + ["--resume"])
    caplog.clear()
    # and a val image more: the scores before and after are of other images (it was silent)
    shutil.copyfile(fewer / "val/blue/0.png", fewer / "val/blue/1.png")
    with caplog.at_level(logging.WARNING):
        tool.main(overrides(fewer, out, **{**extra, "train.epochs": 7}) + ["--resume"])
    assert "on another training set; the run that wrote it had 8 training images, this one " \
           "has 4: the images are drawn in another order" in caplog.text
    assert "on another val split: the run that wrote it evaluated 2 images, this one has 3; " \
           "the scores before and after this point are not comparable" in caplog.text


def test_model_best_keeps_the_weights_of_the_best_evaluation(
        tool: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """train.best_metric: model_best.pth holds the weights of the evaluation that scored
    highest (per the logged evaluations in scalars.jsonl), equal to that step's checkpoint;
    a resumed run competes with it."""
    colour_tree(tmp_path / "data", train_per_class=8, val_per_class=6)
    out = tmp_path / "out"
    args = overrides(tmp_path / "data", out, **{
        "train.epochs": None, "train.max_iter": 10, "train.base_lr": 0.05, "train.eval_period": 1,
        "train.checkpoint_period": 1, "train.max_to_keep": 100,
        "train.best_metric": "classification/top1"})
    tool.main(args)

    def check_best(iterations: list[int]) -> None:
        logged = [json.loads(line) for line in (out / "scalars.jsonl").read_text().splitlines()]
        top1 = {line["iteration"]: line["classification/top1"] for line in logged
                if "classification/top1" in line}
        assert sorted(top1) == iterations and len(set(top1.values())) > 1
        first_best = max(top1, key=lambda i: (top1[i], -i))
        best = torch.load(out / "model_best.pth", map_location="cpu", weights_only=True)
        assert best["best"] == {"metric": "classification/top1", "value": top1[first_best],
                                "mode": "max"}
        assert best["iteration"] == first_best
        assert best["provenance"]["class_names"] == ["blue", "red"]
        at_that_step = torch.load(out / f"model_{first_best:07d}.pth", map_location="cpu",
                                  weights_only=True)["model"]
        for key, value in at_that_step.items():
            assert torch.equal(value, best["model"][key]), key

    check_best(list(range(1, 11)))
    # resumed: its evaluations compete with the best the folder holds (starting from none,
    # iteration 11 would replace an equal best of an earlier iteration)
    tool.main(args + ["train.max_iter=12", "--resume"])
    check_best(list(range(1, 13)))
    # resumed from before it: its weights are of an abandoned course, which moves aside (it
    # stayed, kept over this course's lower scores)
    best_iter = torch.load(out / "model_best.pth", weights_only=True)["iteration"]
    assert best_iter >= 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tool.main(args + ["train.max_iter=12", "--resume-from",
                          str(out / f"model_{best_iter - 1:07d}.pth")])
    assert (f"model_best.pth was scored at iteration {best_iter}, after the checkpoint this "
            f"run resumed from (iteration {best_iter - 1})") in caplog.text
    aside = torch.load(out / "abandoned/model_best.pth", weights_only=True)
    assert aside["iteration"] == best_iter and (out / "abandoned/model_best.pth.sha256").is_file()
    assert best_iter <= torch.load(out / "model_best.pth", weights_only=True)["iteration"] <= 12
    # a metric no evaluation gives: refused before anything is read or written (it was found
    # at the first evaluation, and the run went on without a model_best.pth)
    with pytest.raises(ConfigError, match="train.best_metric 'bbox/AP' is not a metric of this "
                                          "task's evaluations; valid: classification/top1, "
                                          "classification/top5"):
        tool.main(overrides(tmp_path / "data", tmp_path / "other", **{
            "train.epochs": None, "train.max_iter": 2, "train.eval_period": 1,
            "train.best_metric": "bbox/AP"}))
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="train.best_metric must be group/key"):
        tool.main(overrides(tmp_path / "data", tmp_path / "bad",
                            **{"train.best_metric": "top1"}))
    assert not (tmp_path / "bad").exists()


def test_a_val_resize_far_above_the_crop_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """A trial: data.image_size=32 under the default data.val_resize=256 scored the centre
    eighth of each image without a word."""
    from resnet_detect.backbones.pretraining import check_data_settings
    from resnet_detect.engine.tasks import load_task_config

    config = ROOT / "configs/pretrain/synthetic_resnet18.yaml"
    with caplog.at_level(logging.WARNING):
        check_data_settings(load_task_config(config, ["data.root=d"])[1])  # (48 in 54)
        assert caplog.text == ""
        for _ in range(2):  # (checked twice in a run: said once)
            check_data_settings(load_task_config(config, ["data.root=d", "data.image_size=32",
                                                          "data.val_resize=256"])[1])
    assert caplog.text.count("data.val_resize 256 for crops of data.image_size 32: the "
                             "evaluation scores the centre 12% of each image's shorter side "
                             "(torchvision and timm resize to about the crop / 0.875: "
                             "data.val_resize=37)") == 1


def test_bad_config_values_are_named(tool: ModuleType, tmp_path: Path) -> None:
    colour_tree(tmp_path / "data", train_per_class=2, val_per_class=1)
    with pytest.raises(ValueError, match="train.batch_size 64 exceeds the 4 training images"):
        tool.main(overrides(tmp_path / "data", tmp_path / "o", **{"train.batch_size": 64}))
    for key, value, valid in (("lr_decay", "linear", "cosine, poly, step"),
                              ("optimizer", "adam", "sgd, adamw")):
        with pytest.raises(ValueError, match=f"unknown train.{key} '{value}'; valid: {valid}$"):
            tool.main(overrides(tmp_path / "data", tmp_path / key,
                                **{f"train.{key}": value, "train.batch_size": 2}))
        assert not (tmp_path / key).exists()  # refused before the run began
    # log_period=0 failed after the data was read and config.yaml rewritten (beside an
    # earlier run's files when resuming)
    for key, value, least in (("log_period", 0, 1), ("checkpoint_period", -5, 0),
                              ("eval_period", -1, 0)):
        with pytest.raises(ValueError, match=f"train.{key} must be >= {least}, got {value}"):
            tool.main(overrides(tmp_path / "data", tmp_path / key,
                                **{f"train.{key}": value, "train.batch_size": 2}))
        assert not (tmp_path / key).exists()
    # a batch of 0 and -1 workers failed in the loaders, after config.yaml and scalars.jsonl
    # were rewritten; a negative clipping norm turned every gradient around, silently
    for key, value, message in (
            ("train.batch_size", 0, "train.batch_size must be a positive integer"),
            ("data.num_workers", -1, "data.num_workers must be an integer >= 0"),
            ("train.clip_grad_norm", -1.0, "train.clip_grad_norm must be > 0, or 0 or null"),
            # the lr turned negative (SGD climbs the loss) or rose
            ("train.final_lr_factor", -0.5, r"train.final_lr_factor must be in 0..1"),
            ("train.final_lr_factor", 2.0, r"train.final_lr_factor must be in 0..1"),
            # these two were named without their train. prefix after an unrelated lr_steps=[]
            ("train.lr_power", 0, r"train.lr_power must be a number > 0"),
            ("train.warmup_factor", 2, r"train.warmup_factor must be in 0..1"),
            # torch checks its optimizers' defaults, not each group's: these trained on
            ("train.gamma", -0.5, r"train.gamma must be in \(0, 1\]"),
            ("train.gamma", 10, r"train.gamma must be in \(0, 1\]"),
            ("train.weight_decay", -1, r"train.weight_decay must be a number >= 0"),
            ("train.momentum", 1.5, r"train.momentum must be in \[0, 1\)"),
            ("train.momentum", -0.5, r"train.momentum must be in \[0, 1\)"),
            ("train.max_to_keep", -1, r"train.max_to_keep must be a positive integer")):
        step = {"train.lr_decay": "step", "train.lr_step_epochs": "[1]"} \
            if key == "train.gamma" else {}  # (a cosine decay has no gamma)
        with pytest.raises(ConfigError, match=f"{message}.* got {value}$"):
            tool.main(overrides(tmp_path / "data", tmp_path / key, **step, **{key: value}))
        assert not (tmp_path / key).exists()
    # an infinite power trained at an lr of 0 without a word
    with pytest.raises(ConfigError, match=r"train.lr_power must be a number > 0 .*, got inf$"):
        tool.main(overrides(tmp_path / "data", tmp_path / "power", **{"train.lr_power": ".inf"}))
    # what the recipe does not use is not refused: an AdamW config's momentum: null (the
    # helper's mmdetection-style config), a cosine decay's gamma
    tool.main(overrides(tmp_path / "data", tmp_path / "unused", **{
        "train.optimizer": "adamw", "train.momentum": None, "train.gamma": None,
        "train.epochs": 1, "train.batch_size": 2}))
    # keys whose default is null took any kind of value: a traceback deep in the runner
    # (and 0 epochs trained one step)
    for key, value, message in (
            ("train.clip_grad_norm", "[1]", r"train.clip_grad_norm must be > 0, or 0 or null "
                                            r"for no clipping, got \[1\]"),
            ("train.max_iter", "[1,2]", r"train.max_iter must be a number, got \[1, 2\] in "
                                        r"override 'train.max_iter=\[1,2\]'"),
            ("train.max_iter", "0", r"train.max_iter must be a positive integer "
                                    r"\(iterations\), or null with train.epochs, got 0"),
            ("train.epochs", 0, r"train.epochs must be a positive number .* got 0")):
        extra = {"train.epochs": None, "train.lr_step_epochs": "[]"} \
            if key == "train.max_iter" else {}
        with pytest.raises(ConfigError, match=message):
            tool.main(overrides(tmp_path / "data", tmp_path / "null_kind",
                                **{**extra, key: value}))
        assert not (tmp_path / "null_kind").exists()
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(ValueError, match=f"the output folder {tmp_path / 'a_file'} is a file"):
        tool.main(overrides(tmp_path / "data", tmp_path / "a_file", **{"train.batch_size": 2}))
    assert (tmp_path / "a_file").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown config key 'solver' in override 'solver.lr=0.1'"):
        tool.main(overrides(tmp_path / "data", tmp_path / "o", **{"solver.lr": 0.1}))


@pytest.mark.slow
def test_processes_that_read_different_data_stop_before_training(tmp_path: Path) -> None:
    """Each node with its own copy of the data, one copy short of images: the two schedules
    differed and the collectives waited for each other for 30 minutes."""
    colour_tree(tmp_path / "data_0", train_per_class=4, val_per_class=1)
    colour_tree(tmp_path / "data_1", train_per_class=3, val_per_class=1)
    args = [a if not a.startswith("data.root=") else f"data.root={tmp_path}/data_${{oc.env:RANK}}"
            for a in overrides(tmp_path / "unused", tmp_path / "out",
                               **{"train.epochs": 2, "train.batch_size": 4})]
    log = run_two_processes("pretrain", args, tmp_path, fails=True)
    assert "DatasetError: the processes read different data; every one needs the same" in log
    assert "  rank 0: 8 train / 2 val images, 2 classes" in log
    assert "  rank 1: 6 train / 2 val images, 2 classes" in log
    assert not list((tmp_path / "out").glob("*.pth"))
    # the same counts, one image moved to the other class in rank 1's copy: trained on both
    # labellings unseen
    shutil.rmtree(tmp_path / "data_1")
    shutil.copytree(tmp_path / "data_0", tmp_path / "data_1")
    (tmp_path / "data_1/train/red/0.png").rename(tmp_path / "data_1/train/blue/9.png")
    (tmp_path / "data_1/train/blue/0.png").rename(tmp_path / "data_1/train/red/9.png")
    log = run_two_processes("pretrain", args, tmp_path, fails=True)
    assert ("DatasetError: processes 1 read other training data than process 0: the same "
            "counts and classes (8 train / 2 val images, 2 classes), but other file names or "
            "labels") in log
    assert not list((tmp_path / "out").glob("*.pth"))


@pytest.mark.slow
def test_processes_started_otherwise_or_without_their_data_stop_together(tmp_path: Path) -> None:
    """An override given on one node only trained other weights on it, unreported (or, for a
    length, hung); a node without the data stopped alone, the others said only that a peer
    closed the connection."""
    colour_tree(tmp_path / "data_0", train_per_class=4, val_per_class=1)
    args = overrides(tmp_path / "data_0", tmp_path / "out", **{"train.epochs": 2,
                                                               "train.batch_size": 4})
    seeds = args + ["train.seed=${oc.decode:${oc.env:RANK}}"]
    log = run_two_processes("pretrain", seeds, tmp_path, fails=True)
    assert ("ConfigError: the processes were started with other settings; every node needs "
            "the same command") in log
    assert "  train.seed: rank 0 0, rank 1 1" in log
    missing = [a if not a.startswith("data.root=")
               else f"data.root={tmp_path}/data_${{oc.env:RANK}}" for a in args]
    log = run_two_processes("pretrain", missing, tmp_path, fails=True)
    assert ("OtherProcessFailed: another process could not find its weights or read its "
            "data:\n  rank 1: FileNotFoundError: dataset folder not found: "
            f"{tmp_path}/data_1/train") in log
    # (model.weights missing on one node: the same step, task.prepare, as the data)
    # before the processes join: a config file or a --resume-from checkpoint on one node only
    (tmp_path / "config_0.yaml").write_text(f"_base_: {CONFIG}\n")
    # (what reads as a training checkpoint before the data: rank 0 goes on)
    torch.save({"model": {}, "iteration": 1, "rng": []}, tmp_path / "ckpt_0.pth")
    for argv, what, why in (
            ([str(tmp_path / "config_{RANK}.yaml"), *args[1:]], "read its config",
             f"ConfigError: config file not found: {tmp_path}/config_1.yaml"),
            ([*args, "--resume-from", str(tmp_path / "ckpt_{RANK}.pth")],
             "find its --resume-from checkpoint", "UnreadableCheckpointError: --resume-from: "
             f"checkpoint not found: {tmp_path}/ckpt_1.pth")):
        log = run_two_processes("pretrain", argv, tmp_path, fails=True, timeout=120)
        # raised before the run's log exists: in the traceback, under torchrun's rank prefix
        assert re.search(rf"OtherProcessFailed: another process could not {what}:\n"
                         rf"\[rank0\]:   rank 1: {re.escape(why)}", log), log[-3000:]
    assert not list((tmp_path / "out").glob("*.pth"))


def test_a_process_without_readable_images_leaves_the_others_step_whole(
        tool: ModuleType, tmp_path: Path) -> None:
    """DDP averages the gradients over every process, an empty batch's zeros included: with
    one of two processes' images unreadable, the step was half a single process's on the same
    images (unseen in the logged loss). Two images, one of them garbage, one step."""
    colour_tree(tmp_path / "data", train_per_class=1, val_per_class=1)
    (tmp_path / "data/train/red/0.png").write_bytes(b"garbage")
    one_step = {"train.epochs": "null", "train.max_iter": 1, "train.batch_size": 2,
                "train.momentum": 0, "train.weight_decay": 0, "model.options.norm": "gn",
                "train.checkpoint_period": 100}

    def weights(out: str, lr: float, two_processes: bool = False) -> dict[str, torch.Tensor]:
        args = overrides(tmp_path / "data", tmp_path / out, **one_step, **{"train.base_lr": lr})
        if two_processes:
            log = run_two_processes("pretrain", args, tmp_path, timeout=120)
            # the total over both processes, said once (rank 1 said it again)
            assert log.count("skipped 1 unreadable image reads") == 1, log
            return torch.load(tmp_path / out / "rank0.pth", weights_only=True)
        return tool.main(args)["model"].state_dict()

    start = weights("start", 1e-30)
    one, two = weights("one", 0.1), weights("two", 0.1, two_processes=True)
    step_one = torch.cat([(one[k] - start[k]).flatten() for k in start if "weight" in k])
    step_two = torch.cat([(two[k] - start[k]).flatten() for k in start if "weight" in k])
    assert step_one.norm() > 0
    assert float(step_two.norm() / step_one.norm()) == pytest.approx(1.0, abs=0.01)  # was 0.5
    assert float(F.cosine_similarity(step_one, step_two, dim=0)) > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2])
def test_two_process_torchrun_ranks_end_identical(tmp_path: Path, steps: int) -> None:
    """With accumulation_steps=2 too: DDP averages the gradients at the last of the batches."""
    colour_tree(tmp_path / "data", train_per_class=6, val_per_class=3)
    out = tmp_path / "out"
    out.mkdir()
    args = overrides(tmp_path / "data", tmp_path / "unused", **{
        "train.epochs": 2, "train.batch_size": 4, "train.accumulation_steps": steps})
    args = [a for a in args if not a.startswith("train.output_dir=")] + [
        f"train.output_dir={out}"]
    log = run_two_processes("pretrain", args, tmp_path)
    assert ("12 train / 6 val images, 2 classes, 2 processes x 2 images per step"
            + (" in 2 batches of 1" if steps == 2 else "\n")) in log
    assert ("training for 6 iterations (3 per epoch): cosine decay; evaluated at the end "
            "(to evaluate every epoch: train.eval_period_epochs=1)\n") in log
    images = 2 // steps
    assert (f"BatchNorm layers train on {images} images per process, each of the 2 processes "
            "with its own statistics: norm: gn needs no batch statistics") in log
    rank0 = torch.load(out / "rank0.pth", weights_only=True)
    rank1 = torch.load(out / "rank1.pth", weights_only=True)
    final = backbones.read_checkpoint(out / "model_final.pth")["model"]
    torch.manual_seed(0)
    init = backbones.build_classifier("cifar_resnet20", 2).state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final[key]), key
    assert not torch.equal(rank0["fc.weight"], init["fc.weight"])


def test_the_unreadable_window_counts_steps_not_accumulated_batches() -> None:
    """accumulation_steps=4, one image a drawn batch, none readable: the window is 20 steps
    of 4 batches (it was 20 batches, named iterations -14-5)."""
    from resnet_detect.engine.skipped_images import UNREADABLE_WINDOW, SkipCounter
    counter = SkipCounter(batches_per_step=4)
    for iteration in range(UNREADABLE_WINDOW - 1):
        for _ in range(4):
            counter.add_batch(1, 0, iteration)
    for _ in range(3):
        counter.add_batch(1, 0, UNREADABLE_WINDOW - 1)
    with pytest.raises(UnreadableDataError, match="80 of the 80 training images read in "
                                                  "iterations 1-20 could not be read"):
        counter.add_batch(1, 0, UNREADABLE_WINDOW - 1)


def test_lr_multipliers_train_a_module_faster_and_resume_with_other_factors(
        tool: ModuleType, tmp_path: Path) -> None:
    """train.lr_multipliers: the fc layer at 10x the lr of the rest through the schedule; a
    resume may change the factor (this run's applies), not the modules named (the optimizer's
    state is grouped by them), refused before anything is written, as a module the model
    does not have."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    extra = {"train.epochs": 2, "train.batch_size": 4, "train.checkpoint_period": 2,
             "train.lr_decay": "cosine", "train.final_lr_factor": 0.1}

    def groups(name: str) -> list[tuple[float, int]]:
        state = torch.load(out / name, map_location="cpu", weights_only=True)
        return [(g["lr"], len(g["params"])) for g in state["optimizer"]["param_groups"]]

    tool.main(overrides(tmp_path / "data", out, **extra) + ["train.lr_multipliers.fc=10"])
    (lr, _), _, (fc_lr, fc_weights), (_, fc_biases) = groups("model_0000002.pth")
    assert 0 < lr < 0.002 and fc_lr == pytest.approx(10 * lr, rel=1e-12)
    assert (fc_weights, fc_biases) == (1, 1)
    tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 3})
              + ["train.lr_multipliers={fc: 5}", "--resume"])
    (lr, _), _, (fc_lr, _), _ = groups("model_0000006.pth")
    assert fc_lr == pytest.approx(5 * lr, rel=1e-12)
    config = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"trained with train.lr_multipliers for \['fc'\], this "
                                         r"run names \['backbone.res2', 'fc'\]: the optimizer's "
                                         r"state is grouped by them"):
        tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 4})
                  + ["train.lr_multipliers={fc: 5, backbone.res2: 0.1}", "--resume"])
    assert (out / "config.yaml").read_text() == config
    with pytest.raises(ValueError, match="train.lr_multipliers names head, which holds no "
                                         "parameter of this model; its modules include: "
                                         "backbone, backbone.res2, backbone.res3, "
                                         "backbone.res4, backbone.stem, fc$"):
        tool.main(overrides(tmp_path / "data", tmp_path / "other", **extra)
                  + ["train.lr_multipliers.head=2"])
    assert not list((tmp_path / "other").glob("*.pth"))
    with pytest.raises(ValueError, match="train.lr_multipliers.fc must be a number > 0"):
        tool.main(overrides(tmp_path / "data", tmp_path / "other", **extra)
                  + ["train.lr_multipliers.fc=0"])


def test_a_checkpoint_older_than_a_train_key_resumes_without_a_change_of_it(
        tool: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint written before train.lr_multipliers existed logged "train.lr_multipliers:
    None -> {}" among the settings changed at its resume."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    extra = {"train.epochs": 2, "train.batch_size": 4, "train.checkpoint_period": 2}
    tool.main(overrides(tmp_path / "data", out, **extra))
    state = torch.load(out / "model_0000004.pth", map_location="cpu", weights_only=True)
    del state["provenance"]["config"]["train"]["lr_multipliers"]
    torch.save(state, out / "model_0000004.pth")
    (out / "model_0000004.pth.sha256").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        tool.main(overrides(tmp_path / "data", out, **{**extra, "train.epochs": 3})
                  + ["--resume"])
    (line,) = [r.getMessage() for r in caplog.records
               if "train settings other than the run" in r.getMessage()]
    assert line.endswith(": train.epochs: 2 -> 3")


def test_bad_crop_and_normalisation_settings_are_named_before_the_scan(
        tool: ModuleType, tmp_path: Path) -> None:
    """Albumentations' own checks raised tracebacks after both splits were scanned (minutes
    on ImageNet); a std of 0 stopped at step 0 on a NaN loss, a smoothing of 1.5 at the first
    step, one of -0.1 trained."""
    missing = tmp_path / "not_scanned"  # each refusal comes before the folders are read
    for key, value, message in (
            ("data.scale", "[1.0,0.08]", r"data.scale must be two numbers 0 < min <= max <= 1 "
                                         r"\(the random crop's share of the image's area\), "
                                         r"got \[1.0, 0.08\]"),
            ("data.scale", "[0,1.5]", r"data.scale must be two numbers"),
            ("data.image_size", 0, r"data.image_size must be a positive integer \(pixels\), "
                                   r"got 0"),
            ("data.val_resize", 12, r"data.val_resize \(12, the shorter side the val images are "
                                    r"resized to\) must be >= data.image_size \(16"),
            ("data.pixel_mean", "[1,2]", r"data.pixel_mean must be 3 numbers \(RGB, 0..255 "
                                         r"scale\), got \[1, 2\]"),
            ("data.pixel_std", "[0,1,1]", r"data.pixel_std must be 3 numbers \(RGB, 0..255 "
                                          r"scale; each > 0\), got \[0, 1, 1\]"),
            ("model.label_smoothing", 1.5, r"model.label_smoothing must be in \[0, 1\) .* got "
                                           r"1.5"),
            ("model.label_smoothing", -0.1, r"model.label_smoothing must be in \[0, 1\)")):
        with pytest.raises(ConfigError, match=message):
            tool.main(overrides(missing, tmp_path / "out", **{key: value}))
    # fp16 on a CPU: refused before the folders are scanned (minutes on ImageNet)
    with pytest.raises(ConfigError, match=r"^train.amp=fp16 runs on a GPU only"):
        tool.main(overrides(missing, tmp_path / "out", **{"train.amp": "fp16"}))
    # torchvision's Normalize values, on a 0..1 scale: inputs of about +-1000 trained silently
    with pytest.raises(ConfigError, match=r"^data.pixel_mean \[0.485,0.456,0.406\] and "
                                          r"data.pixel_std \[0.229,0.224,0.225\] are on a 0..1 "
                                          r"scale .*data.pixel_mean=\[123.675,116.28,103.53\] "
                                          r"data.pixel_std=\[58.395,57.12,57.375\]$"):
        tool.main(overrides(missing, tmp_path / "out", **{
            "data.pixel_mean": "[0.485,0.456,0.406]", "data.pixel_std": "[0.229,0.224,0.225]"}))
    assert not list((tmp_path / "out").glob("*.pth"))


def test_one_class_is_refused(tool: ModuleType, tmp_path: Path) -> None:
    """One class trained at loss 0 (one logit's cross-entropy) and wrote a random backbone,
    top-1 100."""
    colour_tree(tmp_path / "data", train_per_class=2, val_per_class=1)
    shutil.rmtree(tmp_path / "data/train/red")
    shutil.rmtree(tmp_path / "data/val/red")
    with pytest.raises(DatasetError, match=r"data/train has 1 class folder \(blue\): a "
                                           r"classifier needs at least 2"):
        tool.main(overrides(tmp_path / "data", tmp_path / "out"))


def test_eval_scores_a_classifier_as_its_training_did_and_torchvision_weights(
        tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """tools/eval.py refused classifiers (timm's validate.py, torchvision's --test-only):
    a run's weights score what its last evaluation printed; torchvision's weights take the val
    folder's sorted classes as their labels."""
    from tests.tools.test_train_eval_demo import load_tool as load_named_tool

    evaluate = load_named_tool("eval").main
    colour_tree(tmp_path / "data", train_per_class=8, val_per_class=3)
    for i in range(2):  # 3 blue, 1 red: a mapping turned around scores otherwise
        (tmp_path / f"data/val/red/{i + 1}.png").unlink()
    out = tmp_path / "run"
    args = overrides(tmp_path / "data", out, **{"train.epochs": 3, "train.base_lr": 0.05})
    tool.main(args)
    trained = json.loads((out / "metrics.json").read_text())["classification"]
    result = evaluate([*args, "--weights", str(out / "model_final.pth"),
                       "--output", str(tmp_path / "eval")])
    assert result["classification"] == trained
    assert result["images"] == {"images": 4, "unreadable": 0}
    assert json.loads((tmp_path / "eval/metrics.json").read_text())["classification"] == trained
    assert f"top1={trained['top1']:.2f}" in capsys.readouterr().out
    torch.set_default_dtype(torch.float64)  # a caller's: it built float64 weights, then failed
    try:
        assert evaluate([*args, "--weights", str(out / "model_final.pth"), "--output",
                         str(tmp_path / "eval64")])["classification"] == trained
    finally:
        torch.set_default_dtype(torch.float32)
    # at another image size than its run's: another top-1 without a word (the export warned)
    with caplog.at_level(logging.WARNING):
        evaluate([*args, "data.image_size=12", "--weights", str(out / "model_final.pth"),
                  "--output", str(tmp_path / "eval12")])
    assert (f"{out / 'model_final.pth'} was evaluated with data.image_size=16; this evaluation "
            f"resizes with this config's 12") in caplog.text
    # no val image readable: exit code 2, no metrics.json (it printed top1=n/a, exit 0, and
    # warned "the metrics are those of the others")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(tmp_path / "data", unreadable)
    for image in (unreadable / "val").rglob("*.png"):
        image.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"^val: none of the 4 images could be read \(the "
                                           r"warnings above name them\): nothing was scored$"):
        evaluate([*args, f"data.root={unreadable}", "--weights",
                  str(out / "model_final.pth"), "--output", str(tmp_path / "eval_none")])
    assert not (tmp_path / "eval_none/metrics.json").exists()
    with pytest.raises(ConfigError, match=r"--save-predictions writes sem_seg class maps; "
                                          r".* is a 'classification' config$"):
        evaluate([*args, "--weights", str(out / "model_final.pth"), "--save-predictions",
                  "--output", str(tmp_path / "eval2")])
    with pytest.raises(ConfigError, match=r"^model: unknown backbone 'resnet-18' \(did you mean "
                                          r"'resnet18'\?\); valid: "):
        evaluate([*args, "model.name=resnet-18", "--weights", str(out / "model_final.pth"),
                  "--output", str(tmp_path / "eval3")])  # was ArgumentError's traceback

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=2).eval()
    weights = tmp_path / "tv_resnet18.pth"
    torch.save(reference.state_dict(), weights)
    tv_args = overrides(tmp_path / "data", out, **{"model.name": "resnet18"})
    cfg = load_task_config(CONFIG, tv_args[1:])[1]
    _, val = build_datasets(cfg)
    images = normalize_images(torch.stack([val[i]["image"] for i in range(len(val))]),
                              cfg.data.pixel_mean, cfg.data.pixel_std)
    labels = torch.tensor([val[i]["label"] for i in range(len(val))])  # blue 0, red 1
    with torch.no_grad():
        expected = 100.0 * (reference(images).argmax(1) == labels).float().mean().item()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        result = evaluate([*tv_args, "--weights", str(weights), "--output",
                           str(tmp_path / "tv")])
    # their published top-1's crops and precision were not this config's, without a word
    assert (f"{weights} records no evaluation of its own (torchvision's or timm's): scored with "
            f"data.val_interpolation=area and train.amp=") in caplog.text
    assert expected in (25.0, 75.0)  # one class for all: a mapping turned around would differ
    assert result["classification"]["top1"] == pytest.approx(expected)
    assert result["classification"]["top5"] == 100.0
    with pytest.raises(DatasetError, match=r"tv_resnet18.pth predicts 2 classes and names none; "
                                           r".*data/val has 1 class folders"):
        shutil.rmtree(tmp_path / "data/val/red")
        evaluate([*tv_args, "--weights", str(weights), "--output", str(tmp_path / "tv1")])


def test_lr_step_epochs_past_the_run_are_named_by_their_key(tool: ModuleType,
                                                             tmp_path: Path) -> None:
    """The error named the runner's iterations (lr_steps=[90, 180, 240] in iterations)."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    with pytest.raises(ConfigError, match=r"invalid train config \(train.epochs=2, "
                                          r"train.lr_step_epochs=\[1,3\], "
                                          r"train.warmup_epochs=0; 1 iterations per epoch\): .*; "
                                          r"train.lr_step_epochs must lie within train.epochs$"):
        tool.main(overrides(tmp_path / "data", tmp_path / "out",
                            **{"train.lr_step_epochs": "[1,3]", "train.lr_decay": "step"}))


def test_own_classifier_weights_of_the_same_classes_keep_their_fc(
        tool: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """model.weights always started a new fc, also from this project's classifier of the same
    classes (a fine-tuning at another crop size lost its head); timm keeps a fitting one."""
    colour_tree(tmp_path / "data", train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    tool.main(overrides(tmp_path / "data", out))
    final = backbones.read_checkpoint(out / "model_final.pth")["model"]

    def built_from(weights: Path) -> torch.nn.Module:
        cfg = load_task_config(CONFIG, overrides(tmp_path / "data", tmp_path / "ft", **{
            "model.weights": weights, "data.image_size": 24, "data.val_resize": 24})[1:])[1]
        task = ClassificationTask()
        task.prepare(cfg)
        torch.manual_seed(1)
        return task.build_model(cfg)

    with caplog.at_level(logging.INFO):
        model = built_from(out / "model_final.pth")
    assert torch.equal(model.fc.weight, final["fc.weight"])
    assert torch.equal(model.backbone.state_dict()["stem.conv.weight"],
                       final["backbone.stem.conv.weight"])
    assert "model_final.pth: the fc too (trained on these classes)" in caplog.text
    with caplog.at_level(logging.INFO):
        assert not torch.equal(built_from(out / "backbone_final.pth").fc.weight,
                               final["fc.weight"])
    assert "backbone_final.pth: the backbone; the fc is new (the weights have no fc)" \
        in caplog.text  # (a new fc went without a word)
    (tmp_path / "data/train/red").rename(tmp_path / "data/train/rose")  # other classes
    (tmp_path / "data/val/red").rename(tmp_path / "data/val/rose")
    with caplog.at_level(logging.INFO):
        assert not torch.equal(built_from(out / "model_final.pth").fc.weight, final["fc.weight"])
    assert ("model_final.pth: the backbone; the fc is new (the weights were trained on other "
            "classes)") in caplog.text


def test_nesterov_without_momentum_is_named(tmp_path: Path) -> None:
    """torch's traceback, after the data scan and the model build."""
    from resnet_detect.engine.train_settings import check_train_choices

    cfg = load_task_config(CONFIG, overrides(tmp_path, tmp_path / "out", **{
        "train.optimizer": "sgd", "train.nesterov": True, "train.momentum": 0})[1:])[1]
    with pytest.raises(ConfigError, match=r"^train.nesterov needs train.momentum > 0$"):
        check_train_choices(cfg.train)
    cfg.train.momentum = 0.9
    check_train_choices(cfg.train)
