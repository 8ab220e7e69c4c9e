"""train.ema_decay: the runner keeps a moving average of the weights, evaluates it, writes it
as the checkpoints' and the final weights, and resumes it exactly."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.ema import WeightAverage
from resnet_detect.engine.runner import run_training
from resnet_detect.engine.task_api import TaskData
from tests.tools.test_runner_tasks import (_Points, _RegressionTask, _toy_config,
                                           assert_resume_from_step_2_is_bit_identical)

CPU = torch.device("cpu")


class _RecordingTask(_RegressionTask):
    """Records the weights each step starts from (those after the step before), and scores
    the weights it is given: the sum of every parameter."""

    def __init__(self, with_val: bool = False) -> None:
        self.with_val = with_val
        self.starts: list[dict[str, torch.Tensor]] = []

    def prepare(self, cfg: Any) -> TaskData:
        return TaskData(train=_Points(), val=_Points() if self.with_val else None,
                        description="16 points")

    def losses(self, model: nn.Module, batch: list[dict[str, Any]],
               device: torch.device) -> Any:
        self.starts.append({k: v.detach().double().clone()
                            for k, v in model.state_dict().items()})
        return super().losses(model, batch, device)

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> dict:
        return {"regression": {"weight_sum": _weight_sum(model.state_dict())}}


def _weight_sum(state: dict[str, torch.Tensor]) -> float:
    return float(sum(v.double().sum() for v in state.values()))


def _config(out: Path, decay: float | None, **train: Any) -> Any:
    cfg = _toy_config(out)
    cfg.train.update(ema_decay=decay, checkpoint_period=1, **train)
    return cfg


def _checkpoint(out: Path, iteration: int) -> dict[str, Any]:
    return torch.load(out / f"model_{iteration:07d}.pth", weights_only=True)


def test_the_average_moves_by_one_minus_the_decay_after_each_step(tmp_path: Path) -> None:
    """average_k = decay * average_(k-1) + (1 - decay) * weights_k from the initial weights
    (timm's ModelEmaV2), computed here in float64 from the weights each step made."""
    task = _RecordingTask()
    result = run_training(task, _config(tmp_path / "a", 0.3), CPU)
    weights = [*task.starts, {k: v.double() for k, v in
                              _checkpoint(tmp_path / "a", 6)["training_weights"].items()}]
    assert len(weights) == 7
    average = dict(weights[0])
    for step in range(1, 7):
        average = {k: 0.3 * average[k] + 0.7 * weights[step][k] for k in average}
        saved = _checkpoint(tmp_path / "a", step)
        for key, value in average.items():  # the checkpoint: the average, and what trains
            torch.testing.assert_close(saved["model"][key].double(), value, rtol=0, atol=1e-6)
            assert torch.equal(saved["training_weights"][key].double(), weights[step][key])
        # the weights trained differ from the average (it is not the identity)
        assert not all(torch.equal(saved["model"][k].double(), weights[step][k])
                       for k in average)
    final = torch.load(tmp_path / "a/model_final.pth", weights_only=True)
    for key, value in average.items():
        torch.testing.assert_close(final[key].double(), value, rtol=0, atol=1e-6)
        assert torch.equal(result["model"].state_dict()[key], final[key])
    # the average changes nothing of the training itself
    plain = _RecordingTask()
    run_training(plain, _config(tmp_path / "plain", None), CPU)
    for averaged, unaveraged in zip(task.starts, plain.starts):
        for key, value in averaged.items():
            assert torch.equal(value, unaveraged[key]), key
    assert "training_weights" not in _checkpoint(tmp_path / "plain", 6)


def test_a_decay_that_averages_over_more_steps_than_the_run_is_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trial: --model-ema's hint's 0.9998 on a 60-step pretraining kept a backbone that
    moved 1% as far as the trained one (top-1 of an untrained model), without a word."""
    with caplog.at_level(logging.WARNING):
        run_training(_RecordingTask(), _config(tmp_path / "short", 0.3), CPU)
    assert "averages over about" not in caplog.text  # (about 1.4 steps of 6)
    with caplog.at_level(logging.WARNING):
        run_training(_RecordingTask(), _config(tmp_path / "long", 0.9), CPU)
    assert ("train.ema_decay 0.9 averages over about 10 steps, against this run's 6: the final "
            "weights (the average) stay near the start; a decay of 1 - 10 / steps or less") in \
        caplog.text


def test_evaluations_and_the_best_weights_are_the_averages(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(out, 0.5, eval_period=2, best_metric="regression/weight_sum")
    run_training(_RecordingTask(with_val=True), cfg, CPU)
    scores = {}
    for line in (out / "scalars.jsonl").read_text(encoding="utf-8").splitlines():
        record = __import__("json").loads(line)
        if "regression/weight_sum" in record:
            scores[record["iteration"]] = record["regression/weight_sum"]
    assert sorted(scores) == [2, 4, 6]
    for iteration, score in scores.items():
        saved = _checkpoint(out, iteration)
        assert score == pytest.approx(_weight_sum(saved["model"]), abs=1e-5)
        assert score != pytest.approx(_weight_sum(saved["training_weights"]), abs=1e-3)
    best = torch.load(out / "model_best.pth", weights_only=True)
    top = max(scores, key=scores.get)
    assert best["iteration"] == top
    for key, value in _checkpoint(out, top)["model"].items():
        assert torch.equal(best["model"][key], value), key
    # evaluating changed nothing of the training (the weights went back after each)
    unevaluated = _config(tmp_path / "plain", 0.5)
    run_training(_RecordingTask(), unevaluated, CPU)
    for name in ("model", "training_weights"):
        for key, value in _checkpoint(tmp_path / "plain", 6)[name].items():
            assert torch.equal(_checkpoint(out, 6)[name][key], value), (name, key)


def test_a_resumed_run_with_an_average_ends_bit_identical(tmp_path: Path) -> None:
    assert_resume_from_step_2_is_bit_identical(tmp_path, lambda out, resume: run_training(
        _RegressionTask(), _config(out, 0.6), CPU, resume=resume)["model"])
    for name in ("model", "training_weights"):
        for key, value in _checkpoint(tmp_path / "a", 6)[name].items():
            assert torch.equal(_checkpoint(tmp_path / "b", 6)[name][key], value), (name, key)


def _resume_at_2(source: Path, out: Path, decay: float | None) -> dict[str, Any]:
    out.mkdir()
    shutil.copy(source / "model_0000002.pth", out)
    (out / "last_checkpoint").write_text("model_0000002.pth\n", encoding="utf-8")
    return run_training(_RegressionTask(), _config(out, decay), CPU, resume=True)


def test_an_average_switched_on_or_off_at_a_resume_is_said_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_training(_RegressionTask(), _config(tmp_path / "plain", None), CPU)
    run_training(_RegressionTask(), _config(tmp_path / "averaged", 0.5), CPU)
    with caplog.at_level(logging.WARNING):
        on = _resume_at_2(tmp_path / "plain", tmp_path / "on", 0.5)
    assert "holds no moving average of the weights: the average (train.ema_decay) starts " \
           "from its weights at iteration 2" in caplog.text
    plain = [{k: v.double() for k, v in _checkpoint(tmp_path / "plain", i)["model"].items()}
             for i in range(1, 7)]  # the weights after steps 1..6
    average = plain[1]  # from the checkpoint's weights at step 2, then steps 3..6
    for step in range(3, 7):
        average = {k: 0.5 * average[k] + 0.5 * plain[step - 1][k] for k in average}
    on_end = _checkpoint(tmp_path / "on", 6)
    for key, value in average.items():  # the same training, now averaged
        assert torch.equal(on_end["training_weights"][key].double(), plain[5][key]), key
        torch.testing.assert_close(on["model"].state_dict()[key].double(), value, rtol=0,
                                   atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        off = _resume_at_2(tmp_path / "averaged", tmp_path / "off", None)
    assert "holds a moving average of the weights, which this run (train.ema_decay=null) " \
           "leaves: training continues from the weights being trained" in caplog.text
    averaged_end = _checkpoint(tmp_path / "averaged", 6)["training_weights"]
    for key, value in averaged_end.items():
        assert torch.equal(off["model"].state_dict()[key], value), key


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "0.9", True, [0.9]])
def test_an_ema_decay_outside_0_to_1_is_refused_before_anything_is_written(
        tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"train.ema_decay must be a number between 0 and 1 "):
        run_training(_RegressionTask(), _config(tmp_path / "run", value), CPU)
    assert not (tmp_path / "run").exists()


def test_normalisation_statistics_are_averaged_and_counters_copied() -> None:
    """timm's ModelEmaV2 / mmdetection's update_buffers=True: BatchNorm's running mean and
    variance follow the same recurrence as the weights; num_batches_tracked is the model's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, 0.75)
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        model(torch.randn(8, 3) * 5 + 2)  # moves the running statistics
        with torch.no_grad():
            model[0].weight.add_(1.0)
        average.update()
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = 0.75 * expected[key] + 0.25 * value.double()
    state = average.state_dict()
    for key in ("1.running_mean", "1.running_var", "0.weight", "1.weight"):
        torch.testing.assert_close(state[key].double(), expected[key], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(state["1.running_mean"], torch.zeros(4))
    assert state["1.num_batches_tracked"].item() == 3
