"""Every task trains through the one runner (engine.runner.run_training): the guarantees it
gives detection hold for segmentation and pretraining too (bit-identical resume, a batch of
unreadable images skipped and counted), and a new task needs only its task object."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from resnet_detect.engine import cli
from resnet_detect.engine.checkpoint import BestWeights, Checkpointer
from resnet_detect.engine.preemption import TrainingInterrupted
from resnet_detect.engine.trainer import NonFiniteLossError
from resnet_detect.engine.runner import run_training
from resnet_detect.engine.task_api import TaskData
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.tasks import TASK_MODULES, config_task, load_task_config, task_module
from tests.tools.test_kill_resume import assert_killed_run_resumes_bit_identical, quickstart_args
from tests.tools.test_segmentation_tools import CONFIG as SEG_CONFIG
from tests.tools.test_segmentation_tools import overrides as seg_overrides
from tests.tools.test_train_eval_demo import data, load_tool

__all__ = ["data"]
ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIGS = {"detection": "configs/detection/base_faster_rcnn.yaml",
                "sem_seg": "configs/segmentation/base_deeplab.yaml",
                "classification": "configs/pretrain/base_classifier.yaml"}


def test_every_shipped_config_names_its_task_and_shares_the_train_keys() -> None:
    shared = set(OmegaConf.load(ROOT / "configs/base_train.yaml").train)
    for name, base in BASE_CONFIGS.items():
        module = task_module(name)
        assert Path(module.BASE_CONFIG) == ROOT / base
        assert module.TASK.name == name
        _, cfg = load_task_config(ROOT / base, ["data.root=x"] if name == "classification" else [])
        assert set(cfg.train) == shared, name   # one train section, the same keys for all
    assert set(TASK_MODULES) == set(BASE_CONFIGS)
    for path in sorted((ROOT / "configs").glob("[dsp]*/*.yaml")):
        extra = ["data.root=x"] if "pretrain" in str(path) else []
        name, cfg = load_task_config(path, extra)
        assert cfg.task == name and name in TASK_MODULES, path
    for path in sorted((ROOT / "configs/analyze").glob("*.yaml")):
        assert config_task(path) == "analyze"  # studies, not a training task
    with pytest.raises(ConfigError, match=r"a study config \(task: analyze\) is run by "
                                          r"tools/analyze.py STUDY --config CONFIG"):
        load_task_config(ROOT / "configs/analyze/cifar10.yaml")
    with pytest.raises(ConfigError, match="unknown task 'analyse'; valid: detection, sem_seg"):
        load_task_config(ROOT / "configs/analyze/cifar10.yaml", ["task=analyse"])
    # a tool of one task (tools/pretrain.py: classification) given another task's config
    with pytest.raises(ConfigError, match=r"faster_rcnn_R_18_FPN.yaml is for task 'detection', "
                                          r"not 'classification': tools/train.py, tools/eval.py"):
        load_task_config(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml",
                         task="classification")
    name, _ = load_task_config(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml",
                               task="detection")
    assert name == "detection"


@pytest.fixture
def runner_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The task names the tools hand to run_training (the one runner) during a test; the
    tests below run every task through the tools, so together they show that each goes
    through the runner."""
    seen: list[str] = []
    real = cli.run_training

    def recording(task: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(task.name)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(cli, "run_training", recording)  # what tools call
    return seen


class _Points(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(3, generator=g)
        return {"x": x, "y": x.sum(dim=0, keepdim=True) + 0.01 * index}


class _RegressionTask:
    """The smallest task: everything else (loop, checkpoints, resume, logs) is the runner's."""

    name = "regression"
    primary_metrics = "regression"

    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=_Points(), val=None, description="16 points")

    def build_model(self, cfg: Any) -> nn.Module:
        return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1))

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        x = torch.stack([s["x"] for s in batch])
        y = torch.stack([s["y"] for s in batch])
        return {"loss_mse": ((model(x) - y) ** 2).mean()}

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        return {}

    def save_final(self, cfg: Any, model: nn.Module, iteration: int) -> list[Path]:
        path = Path(cfg.train.output_dir) / "model_final.pth"
        torch.save(model.state_dict(), path)
        return [path]

    def summary(self, metrics: dict) -> str:
        return ""


def _toy_config(out: Path) -> Any:
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs/base_train.yaml"),
                          {"data": {"num_workers": 0}})
    cfg.train.update(output_dir=str(out), batch_size=4, max_iter=6, optimizer="adamw",
                     base_lr=0.01, lr_decay="cosine", warmup_iters=2, checkpoint_period=2,
                     max_to_keep=None, clip_grad_norm=1.0)
    return cfg


def assert_resume_from_step_2_is_bit_identical(tmp_path: Path, train: Any) -> None:
    """`train(output_dir, resume)` -> model: a run resumed from the checkpoint at step 2 of
    another run (in a fresh folder, after reseeding) ends with that run's weights."""
    full = train(tmp_path / "a", False)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a/model_0000002.pth", tmp_path / "b")
    (tmp_path / "b/last_checkpoint").write_text("model_0000002.pth\n")
    torch.manual_seed(123)  # everything must come from the checkpoint
    resumed = train(tmp_path / "b", True)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # the same config: no key is named as changed (model, train or data settings)
    assert "settings other than the run" not in (tmp_path / "b/log.txt").read_text()
    return full


def assert_interrupted_run_resumes_bit_identical(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  args: list[str], full: nn.Module, *,
                                                  at_step: int, signum: int) -> None:
    """tools/train.py ARGS stopped by `signum` during step `at_step` exits with 128 + signum,
    says how to resume, and `--resume` ends with `full`'s weights."""
    real = cli.run_training
    with monkeypatch.context() as patch:
        patch.setattr(cli, "run_training", lambda task, *a, **k: real(
            signal_at_step(task, at_step, signum), *a, **k))
        with pytest.raises(SystemExit) as stopped:
            load_tool("train").main(args)
    assert stopped.value.code == 128 + signum
    assert f"after iteration {at_step} of" in capsys.readouterr().err
    resumed = load_tool("train").main([*args, "--resume"])["model"]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _tool_trainer(tool: str, args: list[str]) -> Any:
    return lambda out, resume: load_tool(tool).main(
        [*args, f"train.output_dir={out}", *(["--resume"] if resume else [])])["model"]


def signal_at_step(task: Any, step: int, signum: int) -> Any:
    """`task` whose `losses` sends `signum` to this process during its `step`-th call (1-based),
    as a scheduler or Ctrl-C would while that step is in flight."""
    calls = []
    real = task.losses

    def losses(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return real(*args)

    task.losses = losses
    return task


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_fresh_run_stopped_before_its_first_checkpoint_leaves_the_earlier_curves(
        tmp_path: Path, error: type[BaseException]) -> None:
    """A run started afresh (no --resume) in a finished run's folder emptied its scalars.jsonl
    and hid its tensorboard steps at once: an error at the first step (or a kill before the
    first checkpoint) erased the record of the run whose checkpoints stayed. (A Ctrl-C outside
    the training's signal handling, where the loaders start, is a KeyboardInterrupt.)"""
    cpu, out = torch.device("cpu"), tmp_path / "run"
    cfg = _toy_config(out)
    cfg.train.log_period = 1
    run_training(_RegressionTask(), cfg, cpu)

    def curves() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in
                [out / "scalars.jsonl", *(out / "tensorboard").iterdir()]}
    finished = curves()
    assert finished["scalars.jsonl"].count(b"\n") == 6

    class Failing(_RegressionTask):
        def losses(self, *args: Any) -> Any:
            assert not (out / "scalars.jsonl").read_text()  # (this run's, empty at its start)
            raise error("a bug in the task")
    with pytest.raises(error, match="a bug in the task"):
        run_training(Failing(), cfg, cpu)
    assert curves() == finished and not (out / ".replaced_run").exists()


def test_a_new_task_needs_only_its_task_object_and_resumes_bit_identical(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    full = run_training(_RegressionTask(), _toy_config(tmp_path / "toy"), cpu)
    assert full["iteration"] == 6 and (tmp_path / "toy/model_final.pth").is_file()
    # the logged scalars as JSON lines too (log_period 20: the last step only)
    lines = [json.loads(line) for line in (tmp_path / "toy/scalars.jsonl").read_text()
             .splitlines()]
    assert [line["iteration"] for line in lines] == [6]
    assert lines[0]["train/loss_mse"] == lines[0]["train/total_loss"] > 0
    assert {"train/lr", "train/it_per_s", "train/data_time"} <= set(lines[0])
    with caplog.at_level(logging.WARNING):  # a fresh run into the folder of a finished one
        run_training(_RegressionTask(), _toy_config(tmp_path / "toy"), cpu)
    assert f"{tmp_path / 'toy'} holds model_final.pth of an earlier run: not this run's " \
           "until it replaces them at its end" in caplog.text
    assert [json.loads(line)["iteration"] for line in (tmp_path / "toy/scalars.jsonl")
            .read_text().splitlines()] == [6]  # this run's only, not [6, 6]
    assert_resume_from_step_2_is_bit_identical(tmp_path, lambda out, resume: run_training(
        _RegressionTask(), _toy_config(out), cpu, resume=resume)["model"])
    # SIGTERM during step 3 (no periodic checkpoint there): that step ends, a checkpoint is
    # written, and --resume continues to the uninterrupted run's weights
    with pytest.raises(TrainingInterrupted, match=r"after iteration 3 of 6.*--resume to "
                       r"continue \(from Python: run_training\(\.\.\., resume=True\)\)") as stop:
        run_training(signal_at_step(_RegressionTask(), 3, signal.SIGTERM),
                     _toy_config(tmp_path / "c"), cpu)
    assert (stop.value.iteration, stop.value.exit_code) == (3, 143)
    assert (tmp_path / "c/last_checkpoint").read_text() == "model_0000003.pth\n"
    assert not (tmp_path / "c/model_final.pth").exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        resumed = run_training(_RegressionTask(), _toy_config(tmp_path / "c"), cpu, resume=True)
    assert resumed["iteration"] == 6
    # (it said "training for 6 iterations from iteration 3", read as 6 more)
    assert "training to iteration 6 from iteration 3 (3 iterations)" in caplog.text
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key


def test_a_callers_hooks_run_after_the_runners_and_see_a_resumed_start(tmp_path: Path) -> None:
    """run_training(..., hooks=[...]): detectron2's register_hooks, for a Python caller."""
    seen: list[tuple[str, int, bool, float]] = []

    class Recording:
        def before_train(self, trainer: Any) -> None:
            seen.append(("before", trainer.start_iter, False, 0.0))

        def after_step(self, trainer: Any) -> None:
            # the step's checkpoint (every 2 steps) is written before this hook runs
            written = (tmp_path / f"toy/model_{trainer.iter:07d}.pth").is_file()
            seen.append(("step", trainer.iter, written, float(trainer.loss_dict["loss_mse"])))

        def after_train(self, trainer: Any) -> None:
            seen.append(("after", trainer.iter, False, 0.0))

    cpu = torch.device("cpu")
    run_training(_RegressionTask(), _toy_config(tmp_path / "toy"), cpu, hooks=[Recording()])
    assert [(stage, i, written) for stage, i, written, _ in seen] == [
        ("before", 0, False), *[("step", i, i % 2 == 0) for i in range(1, 7)], ("after", 6, False)]
    assert all(loss > 0 for stage, _, _, loss in seen if stage == "step")
    (tmp_path / "toy/last_checkpoint").write_text("model_0000004.pth\n")
    seen.clear()
    run_training(_RegressionTask(), _toy_config(tmp_path / "toy"), cpu, resume=True,
                 hooks=[Recording()])
    assert [(stage, i) for stage, i, _, _ in seen] == [("before", 4), ("step", 5), ("step", 6),
                                                       ("after", 6)]


def test_a_task_or_hooks_lacking_what_the_runner_calls_are_refused_before_training(
        tmp_path: Path) -> None:
    """A task with a misspelt save_final trained to the end, then failed; hooks= given a
    class, or a hook of mmdetection's after_train_iter alone (never called), ran unchecked
    (train.hooks refuses them)."""
    class Misspelt(_RegressionTask):
        save_finalx = _RegressionTask.save_final

    Misspelt.save_final = None  # type: ignore[assignment]

    class MmdetHook:
        def after_train_iter(self, runner: Any) -> None:
            pass

    cpu = torch.device("cpu")
    for task, hooks, message in (
            (Misspelt(), [], r"^the task Misspelt has no save_final: a task supplies what "
                             r"engine.task_api.Task lists \(docs/extending.md\)$"),
            (_RegressionTask(), [MmdetHook], r"^hooks\[0\] is the class MmdetHook: give an "
                                             r"instance, MmdetHook\(...\)$"),
            (_RegressionTask(), [MmdetHook()], r"^hooks\[0\]: MmdetHook has none of "
                                               r"before_train, after_step, after_train")):
        with pytest.raises(TypeError, match=message):
            run_training(task, _toy_config(tmp_path / "toy"), cpu, hooks=hooks)
        assert not (tmp_path / "toy").exists()  # (nothing started)


def test_a_resumed_run_is_not_said_to_start_from_random_weights(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--resume said "no weights are given: the backbone starts from random weights" and then
    loaded the checkpoint's; a fresh run, or a --resume with nothing to resume, says it."""
    cpu = torch.device("cpu")

    def config(out: Path) -> Any:
        cfg = _toy_config(out)
        cfg.model = {"weights": None, "backbone": {"weights": None, "freeze_at": 0}}
        return cfg

    said = "no weights are given (model.weights, model.backbone.weights null)"
    runs = (("fresh", False, True), ("fresh", True, False), ("empty", True, True))
    for folder, resume, expected in runs:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run_training(_RegressionTask(), config(tmp_path / folder), cpu, resume=resume)
        assert (said in caplog.text) == expected, (folder, resume)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "fresh/model_0000002.pth", tmp_path / "copy")  # no last_checkpoint
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_training(_RegressionTask(), config(tmp_path / "other"), cpu,
                     resume=tmp_path / "copy/model_0000002.pth")
    assert said not in caplog.text
    # a fine-tuning resumed: its model.weights' "start from scratch" warnings are not its state
    replaced = "the weights model.weights (w.pth) gave the model are replaced by the checkpoint's"
    for resume in (False, True):
        cfg = config(tmp_path / "tuned")
        cfg.model.weights = "w.pth"  # (the toy task reads none)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run_training(_RegressionTask(), cfg, cpu, resume=resume)
        assert (replaced in caplog.text) == resume


def test_a_sigterm_repeated_during_the_stops_save_is_the_same_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """The stop's checkpoint was saved after the signal handlers were given back: a launcher
    forwarding the job's SIGTERM then killed the run under its save (no checkpoint, no
    message). And a stop at a checkpoint's iteration wrote that checkpoint twice."""
    cpu = torch.device("cpu")
    outside: list[int] = []
    real_save = Checkpointer.save

    def forwarded_during_save(self: Checkpointer, iteration: int, extra: Any = None) -> Path:
        if iteration == 3:  # the stop's save (the periodic ones are at 2, 4, 6)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, iteration, extra)

    monkeypatch.setattr(Checkpointer, "save", forwarded_during_save)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: outside.append(signum))
    try:
        with pytest.raises(TrainingInterrupted, match="after iteration 3 of 6.*--resume"):
            run_training(signal_at_step(_RegressionTask(), 3, signal.SIGTERM),
                         _toy_config(tmp_path / "c"), cpu)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert outside == []  # the run's handler took it, not the one outside the run
    assert "received SIGTERM again (a launcher forwarding it): still finishing" in caplog.text
    assert (tmp_path / "c/last_checkpoint").read_text() == "model_0000003.pth\n"
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(TrainingInterrupted,
                                                      match="after iteration 4 of 6"):
        run_training(signal_at_step(_RegressionTask(), 4, signal.SIGTERM),
                     _toy_config(tmp_path / "d"), cpu)
    assert caplog.text.count(f"saved checkpoint {tmp_path / 'd/model_0000004.pth'}") == 1


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (Windows)")
def test_sighup_stops_a_run_as_sigterm_does(tmp_path: Path, hangup_not_ignored: None) -> None:
    """The terminal or ssh session a run was started in closing: was a kill, nothing saved."""
    with pytest.raises(TrainingInterrupted, match="SIGHUP stopped training after iteration 3 "
                                                  "of 6") as stopped:
        run_training(signal_at_step(_RegressionTask(), 3, signal.SIGHUP),
                     _toy_config(tmp_path / "e"), torch.device("cpu"))
    assert stopped.value.exit_code == 129
    assert (tmp_path / "e/last_checkpoint").read_text() == "model_0000003.pth\n"


def test_writes_that_fail_besides_the_checkpoints_are_warned_of_and_training_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A full disk or a folder in a file's place stopped the run with a traceback at the
    scalars (its steps since the last checkpoint lost) and at model_best.pth, and failed a
    finished run at metrics.json; a console gone (a closed ssh terminal, `| head`) stopped
    it at its first results table."""
    from resnet_detect.engine import checkpoint
    from resnet_detect.engine.logging import print_and_log

    out = tmp_path / "run"
    out.mkdir()
    (out / "scalars.jsonl").mkdir()
    (out / "metrics.json").mkdir()

    real_save = checkpoint.atomic_save

    def full_disk_for_the_best(obj: Any, path: Any, **kwargs: Any) -> None:
        if Path(path).name == "model_best.pth":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_save", full_disk_for_the_best)

    class GoneConsole:
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

        def flush(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

    class Tabled(_RandomEvalTask):
        def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
            print_and_log("a results table")
            return {"regression": {"score": 1.0}}

    cfg = _toy_config(out)
    cfg.train.update(eval_period=2, best_metric="regression/score", log_period=1)
    monkeypatch.setattr("sys.stdout", GoneConsole())
    with caplog.at_level(logging.WARNING):
        result = run_training(Tabled(), cfg, torch.device("cpu"))
    monkeypatch.undo()
    assert result["iteration"] == 6 and (out / "model_final.pth").is_file()
    assert (f"cannot write the scalars of iteration 1 to {out / 'scalars.jsonl'} "
            f"(IsADirectoryError: Is a directory): no more are written there; training goes "
            f"on") in caplog.text
    assert (f"cannot write {out / 'model_best.pth'} (OSError: No space left on device): the "
            f"best regression/score so far, 1.0000 at iteration 2, is not kept") in caplog.text
    assert (f"cannot write {out / 'metrics.json'} (IsADirectoryError: Is a directory): the "
            f"final weights are written") in caplog.text
    assert (out / "log.txt").read_text().count("a results table") == 3


class _SomeUnreadable(_Points):
    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | None:
        return None if key[0] % 5 == 0 else super().__getitem__(key)  # 4 of the 16


class _SomeUnreadableTask(_RegressionTask):
    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=_SomeUnreadable(), val=None, description="16 points")


def test_the_count_of_unreadable_images_covers_the_whole_of_a_resumed_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(It counted the steps after the resume only.)"""
    cpu = torch.device("cpu")
    full = run_training(_SomeUnreadableTask(), _toy_config(tmp_path / "full"), cpu)
    assert full["skipped"] >= 4  # 24 draws: a pass over the 16 (4 unreadable), then 8 more
    with pytest.raises(TrainingInterrupted):
        run_training(signal_at_step(_SomeUnreadableTask(), 3, signal.SIGTERM),
                     _toy_config(tmp_path / "cut"), cpu)
    resumed = run_training(_SomeUnreadableTask(), _toy_config(tmp_path / "cut"), cpu,
                           resume=True)
    assert resumed["skipped"] == full["skipped"]
    assert f"train: skipped {full['skipped']} unreadable image reads" in caplog.text


class _RandomEvalTask(_RegressionTask):
    """Its evaluation draws from every global generator, as a dataset or model may."""

    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=_Points(), val=_Points(), description="16 points")

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        torch.rand(3), np.random.rand(), random.random()
        return {"regression": {"score": 1.0}}


def test_evaluations_leave_the_training_random_stream_as_it_was(tmp_path: Path) -> None:
    """The dropout of the toy model draws from torch's generator: with an evaluation every 2
    steps the weights are those of a run without any, and a resume from a step that was
    evaluated (checkpoint written before the evaluation) still ends bit-identical."""
    cpu = torch.device("cpu")
    plain = run_training(_RegressionTask(), _toy_config(tmp_path / "plain"), cpu)["model"]

    def train(out: Path, resume: bool) -> nn.Module:
        cfg = _toy_config(out)
        cfg.train.eval_period = 2
        return run_training(_RandomEvalTask(), cfg, cpu, resume=resume)["model"]
    evaluated = assert_resume_from_step_2_is_bit_identical(tmp_path, train)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, evaluated.state_dict()[key]), key


class _SignalInEvalTask(_RegressionTask):
    """Its evaluations read the val batches one by one; during evaluation number `at` a stop
    signal arrives after the first batch (a scheduler preempting the job then)."""

    def __init__(self, at: int) -> None:
        self.at, self.evaluations, self.batches = at, 0, 0

    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=_Points(), val=[{"x": torch.zeros(3)}] * 16,
                        description="16 points")

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        self.evaluations += 1
        for batch in loader:
            self.batches += 1
            if self.evaluations == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
        # a score of the weights alone (lowest, with best_metric_mode min, at the first)
        first = float(next(iter(model.parameters())).detach().abs().sum())
        return {"regression": {"batches": float(self.batches), "first": first}}


@pytest.mark.parametrize("period,at,iteration,then,evaluated_after", [
    (2, 1, 2, "the evaluation at iteration 2 runs again first", 48),
    (4, 1, 4, "the evaluation at iteration 4 runs again first", 32),
    (2, 3, 6, "the evaluation after the last step runs again, then the final weights", 16)])
def test_a_stop_signal_during_an_evaluation_ends_it_and_saves(
        tmp_path: Path, period: int, at: int, iteration: int, then: str,
        evaluated_after: int) -> None:
    """SIGTERM during the evaluation at step 2 (every 2 steps), or during the one after the
    last step: the evaluation stops after the batch in flight (it went on over the whole
    split, minutes at COCO scale, while the scheduler's grace period ran out), a checkpoint is
    written, and --resume runs that evaluation again first and ends with the uninterrupted
    run's weights, final files, evaluations and model_best.pth."""
    cpu = torch.device("cpu")

    def config(out: Path, mode: str) -> Any:
        cfg = _toy_config(out)
        cfg.train.update(eval_period=period, checkpoint_period=period,
                         best_metric="regression/first", best_metric_mode=mode)
        return cfg

    def evaluations(run: str) -> list[tuple[int, float]]:
        return [(line["iteration"], line["regression/first"]) for line in map(
            json.loads, (tmp_path / run / "scalars.jsonl").read_text().splitlines())
            if "regression/first" in line]
    full = run_training(_SignalInEvalTask(at=0), config(tmp_path / "full", "min"), cpu)
    # 16 val images at steps 2, 4 and 6 (every 4 steps: 4 and the last)
    assert full["metrics"]["batches"] == (48.0 if period == 2 else 32.0)
    # the mode in which the first evaluation is the best: the one a stop then ends
    scores = [score for _, score in evaluations("full")]
    mode = "min" if scores[0] < min(scores[1:]) else "max"
    assert scores[0] < min(scores[1:]) or scores[0] > max(scores[1:])
    if mode == "max":
        full = run_training(_SignalInEvalTask(at=0), config(tmp_path / "full", mode), cpu)
    task = _SignalInEvalTask(at=at)
    with pytest.raises(TrainingInterrupted, match=f"SIGTERM stopped the evaluation at "
                                                  f"iteration {iteration} of 6.*--resume "
                                                  f"to continue \\(from Python: run_training"
                                                  f"\\(\\.\\.\\., resume=True\\)\\); {then}"):
        run_training(task, config(tmp_path / "run", mode), cpu)
    assert task.batches == 16 * (at - 1) + 1
    assert (tmp_path / "run/last_checkpoint").read_text() == f"model_{iteration:07d}.pth\n"
    assert not (tmp_path / "run/model_final.pth").exists()
    resumed = run_training(_SignalInEvalTask(at=0), config(tmp_path / "run", mode), cpu,
                           resume=True)
    assert resumed["iteration"] == 6 and (tmp_path / "run/model_final.pth").is_file()
    assert resumed["metrics"]["batches"] == evaluated_after  # 16 per evaluation
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    # every evaluation as in the uninterrupted run, and the best of them (the first)
    assert evaluations("run") == evaluations("full") and len(evaluations("full")) == -(-6 // period)
    bests = [torch.load(tmp_path / run / "model_best.pth", weights_only=True) for run in
             ("full", "run")]
    assert bests[0]["iteration"] == bests[1]["iteration"] == period
    assert all(torch.equal(bests[0]["model"][k], bests[1]["model"][k]) for k in bests[0]["model"])


class _Killed(BaseException):
    """A kill -9 as the run sees it: nothing after the raise runs, nothing is saved."""


class _KilledTask(_SignalInEvalTask):
    """Killed during evaluation number `at` (after its first batch), or during the training
    step after it (`in_step`: the evaluation is done and logged)."""

    def __init__(self, at: int, in_step: bool = False) -> None:
        super().__init__(at=0)
        self.killed_at, self.in_step, self.killing = at, in_step, False

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        if self.evaluations + 1 == self.killed_at and not self.in_step:
            next(iter(loader))
            raise _Killed
        result = super().evaluate(model, loader, device)
        self.killing = self.evaluations == self.killed_at
        return result

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        if self.killing:
            raise _Killed
        return super().losses(model, batch, device)


@pytest.mark.parametrize("eval_period,checkpoint_period,at,when,resumed_at", [
    (2, 2, 1, "evaluation", 2), (2, 4, 2, "evaluation", 4), (2, 2, 3, "evaluation", 6),
    (2, 2, 1, "step", 2), (2, 2, 1, "best", 2), (2, 4, 1, "evaluation", None),
    (2, 2, 1, "evaluation", "model_0000002.pth")])
def test_a_kill_during_an_evaluation_runs_it_again_at_the_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eval_period: int,
        checkpoint_period: int, at: int, when: str, resumed_at: int | str | None) -> None:
    """A kill -9 (the out-of-memory killer) during the evaluation at a checkpoint's iteration
    (or while its model_best.pth is written: the evaluation's one scalars.jsonl line comes
    after) leaves no word of it; --resume (or --resume-from that checkpoint) starts from it and
    runs the evaluation first, as scalars.jsonl has no line of it: the evaluations and
    model_best.pth are the uninterrupted run's. A kill in the step after a logged evaluation
    does not run it twice; one at an iteration without a checkpoint trains the steps again and
    evaluates there. A finished run resumed (its final weights lost) logs its final
    evaluation once."""
    cpu = torch.device("cpu")

    def config(out: Path) -> Any:
        cfg = _toy_config(out)
        cfg.train.update(eval_period=eval_period, checkpoint_period=checkpoint_period,
                         best_metric="regression/first", best_metric_mode="min")
        return cfg

    def evaluations(run: str) -> list[tuple[int, float]]:
        logged = tmp_path / run / "scalars.jsonl"  # (none before the first line)
        return [(line["iteration"], line["regression/first"]) for line in map(
            json.loads, logged.read_text().splitlines() if logged.exists() else [])
            if "regression/first" in line]
    full = run_training(_SignalInEvalTask(at=0), config(tmp_path / "full"), cpu)
    scores = [score for _, score in evaluations("full")]
    assert len(scores) == 3 and scores[0] < min(scores[1:])  # the first is the best
    in_step = when == "step"
    if when == "best":
        def killed(*args: Any) -> None:
            raise _Killed
        monkeypatch.setattr(BestWeights, "update", killed)
    with pytest.raises(_Killed):
        run_training(_KilledTask(at if when != "best" else 0, in_step),
                     config(tmp_path / "run"), cpu)
    monkeypatch.undo()
    assert not (tmp_path / "run/model_final.pth").exists()
    assert evaluations("run") == evaluations("full")[:at - 1 + in_step]
    resume = str(tmp_path / "run" / resumed_at) if isinstance(resumed_at, str) else True
    resumed = run_training(_SignalInEvalTask(at=0), config(tmp_path / "run"), cpu,
                           resume=resume)
    log = (tmp_path / "run/log.txt").read_text()
    again = ("which scalars.jsonl has no line of (a kill during it, or a run that did not "
             "evaluate there), runs now")
    assert (f"the evaluation at iteration 2, {again}" in log) == (
        resumed_at in (2, "model_0000002.pth") and not in_step)
    assert (f"the evaluation at iteration 4, {again}" in log) == (resumed_at == 4)
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    assert evaluations("run") == evaluations("full")  # each once
    (tmp_path / "run/model_final.pth").unlink()
    run_training(_SignalInEvalTask(at=0), config(tmp_path / "run"), cpu, resume=True)
    assert evaluations("run") == evaluations("full")  # the final one evaluated again, once
    lines = [line for line in map(json.loads, (tmp_path / "run/scalars.jsonl").read_text()
                                  .splitlines()) if "regression/first" in line]
    assert all(sorted(line) == ["iteration", "regression/batches", "regression/first"]
               for line in lines)  # one line per evaluation
    bests = [torch.load(tmp_path / run / "model_best.pth", weights_only=True) for run in
             ("full", "run")]
    assert bests[0]["iteration"] == bests[1]["iteration"] == 2
    assert all(torch.equal(bests[0]["model"][k], bests[1]["model"][k]) for k in bests[0]["model"])


def test_periods_in_epochs_evaluate_and_save_at_each_epochs_end(tmp_path: Path) -> None:
    """mmdetection's epoch-based val_interval=1 and checkpoint interval=1:
    train.eval_period_epochs and train.checkpoint_period_epochs count epochs (16 points at
    batch 4: 4 iterations each)."""
    cfg = _toy_config(tmp_path / "run")
    cfg.train.update(max_iter=None, warmup_iters=0, epochs=3, checkpoint_period=0,
                     eval_period_epochs=1, checkpoint_period_epochs=2)
    task = _SignalInEvalTask(at=0)
    result = run_training(task, cfg, torch.device("cpu"))
    assert result["iteration"] == 12
    assert task.evaluations == 3  # at iterations 4, 8 and 12
    assert sorted(p.name for p in (tmp_path / "run").glob("model_0*.pth")) == [
        "model_0000008.pth", "model_0000012.pth"]  # (and the last iteration's)
    assert ("training for 12 iterations (4 per epoch): cosine decay; evaluated every 4 "
            "iterations and at the end") in (tmp_path / "run/log.txt").read_text()
    # in a run of iterations too (detectron2's max_iter, evaluated every epoch)
    cfg = _toy_config(tmp_path / "iterations")
    cfg.train.update(eval_period_epochs=0.5, checkpoint_period=0)
    task = _SignalInEvalTask(at=0)
    run_training(task, cfg, torch.device("cpu"))
    assert task.evaluations == 3  # at iterations 2, 4 and 6 of 6
    cfg.train.update(batch_size=32)  # more than the 16 points: no epoch
    with pytest.raises(ConfigError, match="train.batch_size 32 exceeds the 16 training images: "
                                          "no epoch for train.eval_period_epochs to count"):
        run_training(task, cfg, torch.device("cpu"))
    cfg.train.update(max_iter=None, warmup_iters=0, epochs=3, eval_period_epochs=0)
    with pytest.raises(ConfigError, match=r"train.eval_period_epochs must be a positive number "
                                          r"of epochs, or null for train.eval_period in "
                                          r"iterations, got 0"):
        run_training(task, cfg, torch.device("cpu"))


class _FailingAtStep3(_RegressionTask):
    def __init__(self) -> None:
        self.steps = 0

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("out of memory")
        return super().losses(model, batch, device)


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_the_earlier_run_whole(
        tmp_path: Path) -> None:
    """A fresh run into a finished run's folder wrote its config.yaml at its start; an error
    (or a kill) before its first checkpoint left that beside the earlier run's checkpoints,
    and `RUN/config.yaml --resume` trained the earlier run on with the new run's settings."""
    cpu = torch.device("cpu")
    earlier = run_training(_RegressionTask(), _toy_config(tmp_path), cpu)
    config_text = (tmp_path / "config.yaml").read_text()
    cfg = _toy_config(tmp_path)
    cfg.train.update(max_iter=40, checkpoint_period=10)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(_FailingAtStep3(), cfg, cpu)
    assert (tmp_path / "config.yaml").read_text() == config_text
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth\n"
    # its first checkpoint writes the new run's config.yaml with it
    run_training(_RegressionTask(), cfg, cpu)
    assert "max_iter: 40" in (tmp_path / "config.yaml").read_text()
    assert earlier["iteration"] == 6


class _FailingEvalTask(_SignalInEvalTask):
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        self.evaluations += 1
        if self.evaluations == self.at:
            raise UnicodeEncodeError("charmap", "круг", 0, 1, "character maps to <undefined>")
        return super().evaluate(model, loader, device)


def test_an_evaluation_that_fails_saves_the_steps_done_first(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An error inside a periodic evaluation (a class name the console could not print, an
    out-of-memory) lost every step since the last checkpoint: they are saved, and --resume
    runs that evaluation first and continues to the uninterrupted run's weights and
    evaluations (the evaluation was lost)."""
    cpu = torch.device("cpu")

    def config(out: Path) -> Any:
        cfg = _toy_config(out)
        cfg.train.update(eval_period=3, checkpoint_period=0)
        return cfg

    def evaluations(run: str) -> list[tuple[int, float]]:
        return [(line["iteration"], line["regression/first"]) for line in map(
            json.loads, (tmp_path / run / "scalars.jsonl").read_text().splitlines())
            if "regression/first" in line]
    full = run_training(_SignalInEvalTask(at=0), config(tmp_path / "full"), cpu)
    with pytest.raises(UnicodeEncodeError):
        run_training(_FailingEvalTask(at=1), config(tmp_path / "run"), cpu)
    assert "the evaluation at iteration 3 failed (below); saved the 3 steps done" in caplog.text
    assert (tmp_path / "run/last_checkpoint").read_text() == "model_0000003.pth\n"
    resumed = run_training(_SignalInEvalTask(at=0), config(tmp_path / "run"), cpu, resume=True)
    assert resumed["iteration"] == 6
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    assert evaluations("run") == evaluations("full") and len(evaluations("full")) == 2
    # the periodic checkpoint of that iteration is there already: written again, saying so
    cfg = config(tmp_path / "both")
    cfg.train.checkpoint_period = 3
    with pytest.raises(UnicodeEncodeError):
        run_training(_FailingEvalTask(at=1), cfg, cpu)
    assert "the evaluation at iteration 3 failed (below); saved the 3 steps done in " \
           f"{tmp_path / 'both/model_0000003.pth'}" in caplog.text
    cfg = config(tmp_path / "both")
    cfg.train.checkpoint_period = 3
    run_training(_SignalInEvalTask(at=0), cfg, cpu, resume=True)
    assert evaluations("both") == evaluations("full")


def test_segmentation_resumed_interrupted_or_killed_run_ends_bit_identical(
        data: Path, tmp_path: Path, runner_calls: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the quickstart recipe: dropout in the heads, augmentation on, AdamW + cosine with warmup,
    # gradient clipping, one loader worker
    args = quickstart_args("sem_seg", data)
    full = assert_resume_from_step_2_is_bit_identical(tmp_path, _tool_trainer("train", args))
    assert runner_calls == ["sem_seg", "sem_seg"]
    # Ctrl-C during step 3 of tools/train.py: exit 130 after a checkpoint; --resume ends equal
    assert_interrupted_run_resumes_bit_identical(
        monkeypatch, capsys, [*args, f"train.output_dir={tmp_path / 'c'}"], full, at_step=3,
        signum=signal.SIGINT)
    # kill -9 after the first checkpoint (no chance to save): --resume ends equal
    assert_killed_run_resumes_bit_identical(args, tmp_path / "d", full)


def test_segmentation_batches_of_unreadable_images_are_skipped_and_counted(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        runner_calls: list[str]) -> None:
    images = tmp_path / "images"
    shutil.copytree(data / "images/train", images)
    for path in images.glob("*.jpg"):
        path.write_bytes(b"truncated")  # every training batch is empty
    result = load_tool("train").main([str(SEG_CONFIG), *seg_overrides(data), "train.max_iter=2",
                                      f"data.train.img_dir={images}",
                                      f"train.output_dir={tmp_path / 'out'}"])
    assert result["iteration"] == 2 and result["skipped"] == 4
    assert "train: skipped 4 unreadable image reads" in caplog.text
    assert (tmp_path / "out/model_final.pth").is_file()
    assert runner_calls == ["sem_seg"]


def test_pretraining_batches_of_unreadable_images_are_skipped_and_counted(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        runner_calls: list[str]) -> None:
    root = tmp_path / "classification"
    shutil.copytree(data / "classification", root)
    for path in (root / "train").rglob("*.png"):
        path.write_bytes(b"")  # every training batch is empty
    result = load_tool("pretrain").main([
        str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"), f"data.root={root}",
        "data.num_workers=0", "data.image_size=32", "data.val_resize=36", "train.epochs=null",
        "train.max_iter=2", "train.batch_size=2", "train.warmup_epochs=0",
        f"train.output_dir={tmp_path / 'out'}"])
    assert result["iteration"] == 2 and result["skipped"] == 4
    assert "train: skipped 4 unreadable image reads" in caplog.text
    assert set(result["metrics"]) == {"top1", "top5"}  # the readable val split is scored
    assert runner_calls == ["classification"]


@pytest.mark.slow
def test_detection_resumed_or_killed_run_ends_bit_identical(data: Path, tmp_path: Path,
                                                  runner_calls: list[str]) -> None:
    # the quickstart's recipe: AdamW, cosine with warmup, clipping, flips, one loader worker
    args = quickstart_args("detection", data)
    full = assert_resume_from_step_2_is_bit_identical(tmp_path, _tool_trainer("train", args))
    assert runner_calls == ["detection", "detection"]
    assert_killed_run_resumes_bit_identical(args, tmp_path / "c", full)  # kill -9, --resume


class _EmptyRegressionTask(_RegressionTask):
    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=torch.utils.data.TensorDataset(torch.zeros(0, 3)), val=None,
                        description="0 points")


class _DivergingRegressionTask(_RegressionTask):
    steps = 0

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        self.steps += 1
        losses = dict(super().losses(model, batch, device))
        return {**losses, "loss_nan": losses["loss_mse"] * (math.nan if self.steps == 3 else 0)}


class _DivergingAfterStep4(_RegressionTask):
    steps = 0

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Mapping[str, torch.Tensor]:
        self.steps += 1
        losses = dict(super().losses(model, batch, device))
        return {k: v * math.nan for k, v in losses.items()} if self.steps == 5 else losses


def test_resume_from_an_earlier_checkpoint_abandons_the_later_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After a divergence the newest checkpoint may already hold diverged weights; --resume
    could only follow last_checkpoint to it. --resume-from takes an earlier one, and the
    folder's later checkpoints give way to the new course."""
    cpu = torch.device("cpu")

    def config(out: Path) -> Any:
        cfg = _toy_config(out)
        cfg.train.log_period = 1
        return cfg

    full = run_training(_RegressionTask(), config(tmp_path / "a"), cpu)["model"]
    with pytest.raises(NonFiniteLossError, match="at iteration 4"):
        run_training(_DivergingAfterStep4(), config(tmp_path / "b"), cpu)
    assert (tmp_path / "b/last_checkpoint").read_text() == "model_0000004.pth\n"
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*model_0000003\.pth"):
        run_training(_RegressionTask(), config(tmp_path / "b"), cpu,
                     resume=tmp_path / "b/model_0000003.pth")
    with caplog.at_level(logging.INFO):
        resumed = run_training(_RegressionTask(), config(tmp_path / "b"), cpu,
                               resume=tmp_path / "b/model_0000002.pth")
    assert resumed["iteration"] == 6
    assert f"resumed from {tmp_path / 'b/model_0000002.pth'} at iteration 2" in caplog.text
    assert "holds checkpoints from iteration 2 on (model_0000004.pth): this run continues " \
           "from" in caplog.text
    assert (tmp_path / "b/abandoned/model_0000004.pth").is_file()
    assert (tmp_path / "b/last_checkpoint").read_text() == "model_0000006.pth\n"
    # the abandoned course's logged steps 3 and 4 gave way to the new course's
    logged = [json.loads(line) for line in (tmp_path / "b/scalars.jsonl").read_text()
              .splitlines()]
    assert [line["iteration"] for line in logged] == [1, 2, 3, 4, 5, 6]
    assert logged == [json.loads(line) | {"train/it_per_s": logged[i]["train/it_per_s"],
                                          "train/data_time": logged[i]["train/data_time"]}
                      for i, line in enumerate((tmp_path / "a/scalars.jsonl").read_text()
                                               .splitlines())]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    # a finished course's final weights go with its later checkpoints (model_final.pth of
    # iteration 6 stayed beside the new course's checkpoints, as if it were theirs)
    final = (tmp_path / "b/model_final.pth").read_bytes()
    with pytest.raises(TrainingInterrupted):
        run_training(signal_at_step(_RegressionTask(), 1, signal.SIGTERM), config(tmp_path / "b"),
                     cpu, resume=tmp_path / "b/model_0000004.pth")
    assert not (tmp_path / "b/model_final.pth").exists()
    assert (tmp_path / "b/abandoned/model_final.pth").read_bytes() == final
    # a second course abandoned keeps the first's files (they were replaced)
    run_training(_RegressionTask(), config(tmp_path / "b"), cpu, resume=True)
    second = (tmp_path / "b/model_final.pth").read_bytes()
    with caplog.at_level(logging.WARNING):
        run_training(_RegressionTask(), config(tmp_path / "b"), cpu,
                     resume=tmp_path / "b/model_0000004.pth")
    assert "holds checkpoints and results from iteration 4 on (model_0000005.pth, " \
           "model_0000006.pth, model_final.pth" in caplog.text
    assert (tmp_path / "b/abandoned/model_final.pth").read_bytes() == final
    assert (tmp_path / "b/abandoned/model_final.1.pth").read_bytes() == second
    args = cli.config_argument_parser(None, resume=True).parse_intermixed_args(
        ["c.yaml", "--resume-from", "out/model_0000002.pth", "train.base_lr=0.01"])
    assert (args.resume_from, args.overrides) == ("out/model_0000002.pth", ["train.base_lr=0.01"])


def test_a_folder_another_live_run_trains_into_is_refused(tmp_path: Path) -> None:
    """Two runs into one output folder (launched twice, or requeued while the first still
    runs) mixed their checkpoints and logs; the lock dies with its process (kill -9 too)."""
    from resnet_detect.engine.run_lock import FolderInUseError, exclusive_output_dir

    cpu = torch.device("cpu")
    with exclusive_output_dir(tmp_path / "busy"):  # the other run
        with pytest.raises(FolderInUseError, match=rf"{tmp_path / 'busy'} is in use by another "
                                                   rf"training run \(pid {os.getpid()} on "):
            run_training(_RegressionTask(), _toy_config(tmp_path / "busy"), cpu)
        assert not (tmp_path / "busy/log.txt").exists()  # nothing written
    assert run_training(_RegressionTask(), _toy_config(tmp_path / "busy"), cpu)["iteration"] == 6
    # a loader worker forked while the lock is held does not keep it after the run
    with exclusive_output_dir(tmp_path / "forked"):
        workers = iter(torch.utils.data.DataLoader(list(range(4)), num_workers=1))
        next(workers)
    with exclusive_output_dir(tmp_path / "forked"):  # was refused while the worker lived
        pass
    del workers


def test_a_file_system_without_flock_trains_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Lustre without -o flock and some FUSE mounts answer ENOSYS: every run was refused as
    "in use by another training run"."""
    import errno

    from resnet_detect.engine import run_lock

    def unsupported(*args: Any) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", unsupported)
    with caplog.at_level(logging.WARNING):
        result = run_training(_RegressionTask(), _toy_config(tmp_path / "lustre"),
                              torch.device("cpu"))
    assert result["iteration"] == 6
    assert f"cannot lock {tmp_path / 'lustre'} (Function not implemented)" in caplog.text
    monkeypatch.setattr(run_lock, "fcntl", None)  # Windows: no fcntl module at all
    with caplog.at_level(logging.WARNING):
        run_training(_RegressionTask(), _toy_config(tmp_path / "windows"), torch.device("cpu"))
    assert f"no flock on this platform: this run does not keep others out of " \
           f"{tmp_path / 'windows'}" in caplog.text


def test_steps_under_another_decay_and_a_best_metric_without_val_are_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The cosine quickstart took detectron2's SOLVER.STEPS (train.lr_steps) and ignored them
    without a word; train.best_metric without a val split trained to the end and kept no
    model_best.pth without a word."""
    cfg = _toy_config(tmp_path / "cosine")
    cfg.train.lr_steps = [3]
    with caplog.at_level(logging.WARNING):
        run_training(_RegressionTask(), cfg, torch.device("cpu"))
    assert ("train.lr_steps=[3] is not used: train.lr_decay is cosine (steps apply with "
            "train.lr_decay=step)") in caplog.text
    caplog.clear()
    cfg = _toy_config(tmp_path / "best")
    cfg.train.best_metric = "loss/mse"
    with pytest.raises(ConfigError, match=r"^train.best_metric=loss/mse keeps the weights of "
                                          r"the best evaluation, and this run has no val split "
                                          r"to evaluate on: set a val split, or "
                                          r"train.best_metric=null$"):
        run_training(_RegressionTask(), cfg, torch.device("cpu"))
    assert not list((tmp_path / "best").glob("*.pth"))
    with caplog.at_level(logging.WARNING):  # the quickstart's own steps: none, nothing said
        run_training(_RegressionTask(), _toy_config(tmp_path / "plain"), torch.device("cpu"))
    assert "is not used" not in caplog.text


def test_training_that_cannot_succeed_stops_before_the_first_step_or_at_the_bad_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    for lr, why in [(0.0, "the weights would never change"),
                    (-0.1, "the steps would climb the loss"),
                    (math.inf, "the first step would make every weight infinite or NaN"),
                    (math.nan, "the first step would make every weight infinite or NaN")]:
        cfg = _toy_config(tmp_path / "lr0")
        cfg.train.base_lr = lr
        with pytest.raises(ValueError, match=rf"train.base_lr is {lr}: {why}; set a positive "
                                             rf"learning rate"):
            run_training(_RegressionTask(), cfg, cpu)
        assert not (tmp_path / "lr0").exists()  # refused before anything was written
    cfg = _toy_config(tmp_path / "steps")  # the 1x recipe's steps kept in a short run
    cfg.train.update(lr_decay="step", lr_steps=[60000, 80000])
    with pytest.raises(ValueError, match=r"lr steps must be increasing iterations in 1..6, got "
                                         r"\[60000, 80000\]; a shorter run needs shorter steps: "
                                         r"train.lr_steps=\[4,5\] .* or train.lr_steps=\[\]"):
        run_training(_EmptyRegressionTask(), cfg, cpu)  # before the data: not "empty"
    assert not (tmp_path / "steps").exists()
    for seed in (-1, None, 2**31):  # detectron2's -1 and mmdetection's None draw one there
        cfg = _toy_config(tmp_path / "seed")
        cfg.train.seed = seed
        with pytest.raises(ValueError, match=rf"train.seed must be an integer in "
                                             rf"0..2147483647, got {seed}"):
            run_training(_EmptyRegressionTask(), cfg, cpu)
        assert not (tmp_path / "seed").exists()
    cfg = _toy_config(tmp_path / "warmup")  # the 1x recipe's 1000 warmup steps, 6 in all
    cfg.train.warmup_iters = 1000
    with caplog.at_level(logging.WARNING):
        run_training(_RegressionTask(), cfg, cpu)
    assert "train.warmup_iters is 1000 iterations, the whole run is 6: the lr climbs for the " \
           "whole run and never reaches train.base_lr" in caplog.text
    with pytest.raises(ValueError, match=r"the training set is empty \(0 points\)"):
        run_training(_EmptyRegressionTask(), _toy_config(tmp_path / "empty"), cpu)
    with pytest.raises(NonFiniteLossError, match=r"at iteration 2 .*loss_nan=nan"):
        run_training(_DivergingRegressionTask(), _toy_config(tmp_path / "nan"), cpu)
    # log.txt says why the run stopped (it ended at the last progress line)
    assert "training stopped: NonFiniteLossError: loss is not finite at iteration 2" in (
        tmp_path / "nan/log.txt").read_text()


@pytest.mark.parametrize("benchmark", [True, False])
def test_train_cudnn_benchmark_sets_cudnn_autotuning(tmp_path: Path, benchmark: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not benchmark)
    cfg = _toy_config(tmp_path)
    cfg.train.update(max_iter=1, warmup_iters=0, cudnn_benchmark=benchmark)
    seen = []

    class Task(_RegressionTask):
        def losses(self, *args: Any) -> Mapping[str, torch.Tensor]:
            seen.append(torch.backends.cudnn.benchmark)
            return super().losses(*args)
    run_training(Task(), cfg, torch.device("cpu"))
    assert seen == [benchmark]
    assert torch.backends.cudnn.benchmark is not benchmark  # the caller's, after the run


def test_a_python_caller_s_random_streams_logging_and_grad_mode_are_its_own_after_a_run(
        tmp_path: Path) -> None:
    """A training left the global generators seeded (a random search in a notebook drew the
    same values after every run), the root logger at INFO with handlers on the finished
    run's log.txt (the caller's lines went there), and failed under torch.no_grad()."""
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    ours = logging.FileHandler(tmp_path / "app.log")
    root.addHandler(ours)
    try:
        with torch.no_grad():
            result = run_training(_RegressionTask(), _toy_config(tmp_path / "run"), "cpu")
            assert not torch.is_grad_enabled()  # (inside the run only)
        assert result["iteration"] == 6
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
        assert root.level == level and root.handlers == [*handlers, ours]
        logging.getLogger("app").warning("after the run")
        assert "after the run" not in (tmp_path / "run/log.txt").read_text()
    finally:
        root.removeHandler(ours)
        ours.close()
    with torch.inference_mode():  # a config's own device value too
        assert run_training(_RegressionTask(), _toy_config(tmp_path / "inference"),
                            "auto")["iteration"] == 6
    seen = []

    class Task(_RegressionTask):  # a scientific caller's float64 default: float32 weights
        def losses(self, model: torch.nn.Module, *args: Any) -> Mapping[str, torch.Tensor]:
            seen.append((torch.get_default_dtype(), next(model.parameters()).dtype))
            return super().losses(model, *args)
    torch.set_default_dtype(torch.float64)
    try:
        assert run_training(Task(), _toy_config(tmp_path / "float64"), "cpu")["iteration"] == 6
        assert torch.get_default_dtype() == torch.float64  # the caller's, after
    finally:
        torch.set_default_dtype(torch.float32)
    assert set(seen) == {(torch.float32, torch.float32)}
    with pytest.raises(TypeError, match="cfg must be the DictConfig of engine.tasks."
                                        "load_task_config .*got a dict"):
        run_training(_RegressionTask(), OmegaConf.to_container(_toy_config(tmp_path / "d")),
                     "cpu")


def test_a_detector_fine_tuned_from_weights_of_reordered_classes_is_warned_of(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Weights of the same categories in another order loaded without a word: each class's
    box predictor row trained as another's."""
    from resnet_detect.backbones.weights import save_checkpoint
    from resnet_detect.detection.training import DetectionTask, make_provenance
    from tests.tools.test_train_eval_demo import CONFIG, data_overrides

    _, cfg = load_task_config(str(CONFIG), [*data_overrides(data), "model.fpn.out_channels=16"])
    task = DetectionTask()
    task.prepare(cfg)
    provenance = make_provenance(cfg, task.mapping)
    names = list(task.mapping.names)
    provenance["class_names"] = names[::-1]
    weights = tmp_path / "w.pth"
    save_checkpoint(weights, task.build_model(cfg).state_dict(), provenance)
    cfg.model.weights = str(weights)
    with caplog.at_level(logging.WARNING):
        task.build_model(cfg)
    assert (f"w.pth was trained on the same {len(names)} classes in another order: class 0 "
            f"{names[-1]!r} -> {names[0]!r}") in caplog.text


def test_a_run_config_from_before_the_task_key_is_read_as_its_task(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every tool refused a run's config.yaml written before configs named their task
    ("inherit a base config", the wrong advice for a saved run config): tools/pretrain.py's
    is a classification config (its data.val_resize), a detector's or segmenter's is known by
    its model keys."""
    from resnet_detect.engine.config import save_config
    for base, overrides, expected in (
            (BASE_CONFIGS["detection"], [], "detection"),
            (BASE_CONFIGS["sem_seg"], [], "sem_seg"),
            (BASE_CONFIGS["classification"], ["data.root=x"], "classification")):
        _, cfg = load_task_config(ROOT / base, overrides)
        plain = OmegaConf.to_container(cfg)
        del plain["task"]
        old = tmp_path / f"{expected}.yaml"
        save_config(OmegaConf.create(plain), old)
        caplog.clear()
        # (a pretraining's, known by its data.val_resize: tools/eval.py and tools/export.py
        # refused it, "inherit a base config")
        with caplog.at_level(logging.WARNING):
            name, loaded = load_task_config(old)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            f"config {old} has no `task` key (a run's config.yaml written before it was "
            f"one): read as a {expected} config, by its model and data keys"]
        assert name == expected and loaded.task == expected
        if expected == "detection":  # given to tools/pretrain.py: named as another task's
            with pytest.raises(ConfigError, match=r"detection.yaml is for task 'detection', "
                                                  r"not 'classification'"):
                load_task_config(old, task="classification")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {name: resnet18}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"has no `task` key; inherit a base config"):
        config_task(unknown)
    # a model section that is no section: named by the config check, not a TypeError here
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"_base_: {ROOT / 'configs/synthetic/faster_rcnn_R_18_FPN.yaml'}\n"
                      f"model: 3\n", encoding="utf-8")
    assert config_task(broken) == "detection"
    with pytest.raises(ConfigError, match=r"model is a section of keys, got 3"):
        load_task_config(broken)


def test_a_detector_config_value_is_refused_before_the_weights_are_read(
        data: Path, tmp_path: Path) -> None:
    """A bad test.compile was named only after the weights and model were checked: seconds
    of ImageNet weights, or a missing-weights error that hid it."""
    from resnet_detect.detection.training import DetectionTask
    from tests.tools.test_train_eval_demo import CONFIG, data_overrides

    _, cfg = load_task_config(str(CONFIG), [*data_overrides(data), "test.compile=inductr",
                                            f"model.backbone.weights={tmp_path}/no.pth"])
    with pytest.raises(ConfigError, match="test.compile must be false, true"):
        DetectionTask().prepare(cfg)


def test_a_torchrun_restart_is_recorded_in_log_txt(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """torchrun's restart (--max-restarts) was said on the console alone: log.txt of a
    finished job showed the stop and then a resume, not that torchrun restarted it."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    run_training(_RegressionTask(), _toy_config(tmp_path / "toy"), torch.device("cpu"),
                 resume=True)
    log = (tmp_path / "toy/log.txt").read_text()
    assert "torchrun restarted the processes (restart 1 of 3): resuming" in log
    assert "torchrun restarted" not in capsys.readouterr().out  # (the console said it first)
