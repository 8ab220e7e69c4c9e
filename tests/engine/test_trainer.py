"""engine.trainer: the loop, the NaN guard, clipping, hooks, progress logging."""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_detect.engine import amp
from resnet_detect.engine.amp import parse_amp
from resnet_detect.engine.logging import ProgressLogger
from resnet_detect.engine.schedule import build_lr_scheduler
from resnet_detect.engine.trainer import NonFiniteLossError, PeriodicEval, Trainer, eval_mode


def regression_data() -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return itertools.cycle([(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)])


def mse_step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    x, y = batch
    return {"loss_mse": F.mse_loss(model(x), y)}


def test_training_lowers_the_loss_and_steps_the_scheduler() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=40, decay="step", steps=[30], gamma=0.1)
    data = regression_data()
    first = mse_step(model, next(regression_data()))["loss_mse"].item()
    trainer = Trainer(model=model, optimizer=opt, scheduler=sched, step_fn=mse_step,
                      max_iter=40)
    trainer.train(data)
    assert trainer.iter == 40
    assert sched.last_epoch == 40
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert trainer.loss_dict["loss_mse"].item() < 0.01 * first


def test_nan_guard_names_the_iteration_and_keeps_weights_finite() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        losses = mse_step(net, batch)
        if trainer.iter == 3:
            losses["loss_bad"] = torch.tensor(float("nan"))
        return losses

    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step_fn, max_iter=10)
    with pytest.raises(NonFiniteLossError,
                       match=r"loss is not finite at iteration 3 .*loss_bad=nan"):
        trainer.train(regression_data())
    assert trainer.iter == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_last_step_that_makes_the_weights_infinite_stops_the_run() -> None:
    """Its loss was finite and no later step saw the weights: a one-step run with a huge
    learning rate wrote model_final.pth of NaN weights and exited with 0."""
    for steps in (1, 3):
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            if trainer.iter == steps - 1:
                opt.param_groups[0]["lr"] = 1e38  # x a gradient of more than 3.4: inf
                return {"loss_big": 1000.0 * net(torch.ones(1, 3)).sum()}
            return mse_step(net, batch)

        trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step_fn,
                          max_iter=steps)
        with pytest.raises(NonFiniteLossError,
                           match=rf"the weights are not finite after the last step \(iteration "
                                 rf"{steps - 1}, 0-based step index\)"):
            trainer.train(regression_data())


def test_gradient_clipping_bounds_the_update() -> None:
    model = nn.Linear(3, 1)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def step_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return {"loss_big": 1000.0 * net(torch.ones(1, 3)).sum()}  # gradient norm 2000

    Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step_fn, max_iter=1,
            clip_grad_norm=0.5).train(iter([None]))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_parse_amp_reads_the_config_values_and_names_the_key() -> None:
    assert [parse_amp(v) for v in (False, None, "off", True, "bf16", "fp16")] == [
        None, None, None, "bf16", "bf16", "fp16"]
    with pytest.raises(ValueError, match="solver.amp must be false, true, bf16 or fp16"):
        parse_amp("fp8", key="solver.amp")


@pytest.mark.parametrize("bf16_kernels", [True, False])
def test_cpu_trains_under_bf16_autocast_only_where_it_has_bf16_kernels(
        monkeypatch: pytest.MonkeyPatch, bf16_kernels: bool) -> None:
    monkeypatch.setattr(amp, "cpu_supports_bf16", lambda: bf16_kernels)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dtypes = []

    def step_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        out = net(batch[0])
        dtypes.append(out.dtype)
        return {"loss_mse": F.mse_loss(out.float(), batch[1])}

    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step_fn,
                      max_iter=1, amp="bf16")
    trainer.train(regression_data())
    expected = torch.bfloat16 if bf16_kernels else torch.float32
    assert trainer.amp_dtype == (expected if bf16_kernels else None)
    assert dtypes == [expected] and model.weight.dtype == torch.float32
    assert not trainer.scaler.is_enabled()


def test_fp16_on_cpu_and_bad_amp_are_refused_naming_the_key() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"train.amp=fp16 runs on a GPU only; this run is on "
                                         r"the cpu: set train.amp=bf16 .* or train.amp=false"):
        Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step, max_iter=1,
                amp="fp16")
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step, max_iter=1,
                amp="fp8")


def test_periodic_eval_runs_at_period_and_end_in_eval_then_train_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls: list[tuple[int, bool]] = []
    results: list[int] = []

    def eval_fn() -> dict[str, float]:
        model.eval()
        calls.append((trainer.iter, model.training))
        return {"score": float(trainer.iter)}

    hook = PeriodicEval(4, eval_fn, on_result=lambda metrics, it: results.append(it))
    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step,
                      max_iter=10, hooks=[hook])
    trainer.train(regression_data())
    assert calls == [(4, False), (8, False), (10, False)]
    assert results == [4, 8, 10]
    assert hook.last_result == {"score": 10.0}
    assert model.training


def test_progress_line(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = logging.getLogger("test_progress")
    seen: list[float] = []

    class Record:
        def after_step(self, trainer: Trainer) -> None:
            seen.append(trainer.loss_dict["loss_mse"].item())

    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step,
                      max_iter=5, hooks=[Record(), ProgressLogger(2, logger=log)])
    with caplog.at_level(logging.INFO, logger="test_progress"):
        trainer.train(regression_data())
    lines = [r.getMessage() for r in caplog.records if r.name == "test_progress"]
    assert [line.split()[1] for line in lines[:3]] == ["2/5", "4/5", "5/5"]
    assert all(("loss_mse=" in line and "lr=0.05" in line and "it/s" in line and "eta" in line)
               for line in lines[:3])
    # Each line shows the mean over the iterations since the previous line.
    assert f"loss_mse={(seen[0] + seen[1]) / 2:.4f}" in lines[0]
    assert f"loss_mse={(seen[2] + seen[3]) / 2:.4f}" in lines[1]
    assert f"loss_mse={seen[4]:.4f}" in lines[2]
    assert lines[-1].startswith("trained 5 iterations in")


def test_progress_line_gives_the_gradient_norm_where_it_is_clipped(
        caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection logs grad_norm with clipping on: the mean over the steps since the last
    line of the norms clip_grad_norm_ measured (before clipping), the infinite ones of fp16
    overflows (their steps skipped) left out; no grad_norm without clipping."""
    for clip in (0.01, None):
        log = logging.getLogger(f"test_grad_norm_{clip}")
        model = nn.Linear(3, 1)
        norms: list[float] = []

        class Record:
            def after_step(self, trainer: Trainer) -> None:
                norms.append(trainer.grad_norm.item() if trainer.grad_norm is not None else 0)
                if trainer.iter == 3:  # as an fp16 overflow's
                    trainer.grad_norm = torch.tensor(float("inf"))
                    norms[-1] = None

        trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          scheduler=None, step_fn=mse_step, max_iter=4, clip_grad_norm=clip,
                          hooks=[Record(), ProgressLogger(2, logger=log)])
        with caplog.at_level(logging.INFO, logger=log.name):
            trainer.train(regression_data())
        lines = [r.getMessage() for r in caplog.records if r.name == log.name][:2]
        if clip is None:
            assert not any("grad_norm" in line for line in lines)
            continue
        assert norms[0] > clip  # (clipped: the norm logged is the one before)
        assert f"grad_norm={(norms[0] + norms[1]) / 2:.4g}" in lines[0]
        assert f"grad_norm={norms[3]:.4g}" in lines[1]  # step 3's infinite norm left out


def test_a_training_that_waits_for_its_batches_is_told_what_may_help(
        caplog: pytest.LogCaptureFixture) -> None:
    """Mask R-CNN's bitmask targets on large images of many objects made the loader take 6 s
    a step against 0.1 s with polygons: the progress line showed it, nothing said so. Said
    once, from the second line on (the first waits for the loader's start)."""
    def slow_data() -> Any:
        for batch in regression_data():
            time.sleep(0.02)
            yield batch

    for data, said in ((slow_data(), True), (regression_data(), False)):
        log = logging.getLogger(f"test_slow_data_{said}")
        model = nn.Linear(3, 1)
        trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          scheduler=None, step_fn=mse_step, max_iter=6, hooks=[ProgressLogger(
                              2, logger=log, slow_data_hint="try this")])
        with caplog.at_level(logging.INFO, logger=log.name):
            trainer.train(data)
        warned = [r.getMessage() for r in caplog.records
                  if r.name == log.name and r.levelno >= logging.WARNING]
        assert len(warned) == (1 if said else 0)
        if said:
            assert warned[0].startswith("the steps before iteration 4 waited for their batches ")
            assert warned[0].endswith("of their time: the data loading is the bottleneck; "
                                      "try this")
    # steps whose batch was unreadable wait for the failed reads: more loader workers were
    # advised before the run stopped naming the files (one process, or accumulated steps)
    for accumulation_steps in (1, 2):
        log = logging.getLogger(f"test_slow_unreadable_data_{accumulation_steps}")
        model = nn.Linear(3, 1)

        def unreadable_step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            return {"loss_skipped_batch": torch.zeros((), requires_grad=True)}

        trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          scheduler=None, step_fn=unreadable_step, max_iter=6,
                          accumulation_steps=accumulation_steps,
                          batch_is_empty=lambda batch: True, hooks=[
                              ProgressLogger(2, logger=log, slow_data_hint="try this")])
        with caplog.at_level(logging.INFO, logger=log.name):
            trainer.train(slow_data())
        assert [r.getMessage() for r in caplog.records
                if r.name == log.name and r.levelno >= logging.WARNING] == []


def test_progress_line_is_true_to_the_steps(caplog: pytest.LogCaptureFixture) -> None:
    """Each loss is averaged over the steps that gave it (a skipped batch gives only
    loss_skipped_batch: it halved the others), the lr shown is the one the step used (it was
    the next step's), and it/s counts the steps only (an evaluation's minutes slowed it and
    stretched the ETA)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = build_lr_scheduler(opt, max_iter=6, decay="step", steps=[3], gamma=0.1)
    log = logging.getLogger("test_progress_truth")
    seen: list[float] = []

    def step(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if len(seen) in (1, 4):  # a batch whose images were all unreadable
            seen.append(float("nan"))
            return {"loss_skipped_batch": torch.zeros((), requires_grad=True)}
        loss = mse_step(net, batch)
        seen.append(loss["loss_mse"].item())
        return loss

    class SlowEvaluation:
        def after_step(self, trainer: Trainer) -> None:
            if trainer.iter == 2:
                time.sleep(0.5)

    trainer = Trainer(model=model, optimizer=opt, scheduler=sched, step_fn=step, max_iter=6,
                      hooks=[SlowEvaluation(), ProgressLogger(3, logger=log)])
    with caplog.at_level(logging.INFO, logger="test_progress_truth"):
        trainer.train(regression_data())
    first, second = [r.getMessage() for r in caplog.records
                     if r.name == "test_progress_truth"][:2]
    assert f"loss_mse={(seen[0] + seen[2]) / 2:.4f}" in first
    assert f"loss_mse={(seen[3] + seen[5]) / 2:.4f}" in second
    assert "loss_skipped_batch=0.0000" in first
    # steps 0..2 at 0.05 (iteration 3 is step 2), 3..5 at 0.005
    assert "lr=0.05 " in first and "lr=0.005 " in second
    its = float(first.split(" it/s")[0].split()[-1])
    assert its > 20, first  # 3 tiny steps; the 0.5 s hook outside them
    assert "data " in first and " s  eta" in first


def test_a_batch_that_cannot_be_made_saves_the_steps_done_first(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A data error mid-run (a mask with an undeclared class, say) no longer loses the steps
    since the last periodic checkpoint: they are saved, and --resume continues from them."""
    from resnet_detect.engine.checkpoint import Checkpointer
    from resnet_detect.engine.data import DatasetError
    from resnet_detect.engine.runner import _saved_on_error

    def batches(n: int) -> Any:
        yield from itertools.islice(regression_data(), n)
        raise DatasetError("mask m.png has class ids [9]")

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step, max_iter=10)
    checkpointer = Checkpointer(tmp_path, model=model, optimizer=opt)
    log = logging.getLogger("test")
    with pytest.raises(DatasetError, match="class ids"):
        trainer.train(_saved_on_error(batches(3), trainer, checkpointer, log))
    assert "saved the 3 steps done in" in caplog.text
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    state = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert state["iteration"] == 3
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    resumed = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step, max_iter=10)
    with pytest.raises(DatasetError):  # nothing done since the resume: nothing to save
        resumed.train(_saved_on_error(batches(0), resumed, checkpointer, log), start_iter=3)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000003.pth"]


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_gives_the_model_back_in_its_mode_after_an_error_too(training: bool) -> None:
    """The studies' predictions left a model in evaluation mode when they failed."""
    model = nn.Sequential(nn.Dropout(0.5)).train(training)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training and not model[0].training
        raise RuntimeError("boom")
    assert model.training is training and model[0].training is training


def _halves(batches: Any) -> Any:
    for x, y in batches:
        yield x[:8], y[:8]
        yield x[8:], y[8:]


@pytest.mark.parametrize("clip", [None, 0.05])
def test_accumulated_halves_take_the_step_of_the_whole_batch(clip: float | None) -> None:
    """Two batches of 8 with accumulation_steps=2 against the 16 of each at once (mean losses
    over equal halves): the same weights, losses and learning rates at every step, with
    momentum, weight decay, a schedule and clipping."""
    runs = []
    for steps, data in ((1, regression_data()), (2, _halves(regression_data()))):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        sched = build_lr_scheduler(opt, max_iter=12, decay="step", steps=[8], gamma=0.1)
        trainer = Trainer(model=model, optimizer=opt, scheduler=sched, step_fn=mse_step,
                          max_iter=12, clip_grad_norm=clip, accumulation_steps=steps)
        seen = []
        trainer.register_hooks(type("Record", (), {"after_step": lambda self, t: seen.append(
            (t.loss_dict["loss_mse"].item(), t.step_lr,
             torch.cat([p.detach().flatten() for p in model.parameters()])))})())
        trainer.train(data)
        runs.append(seen)
    assert len(runs[0]) == len(runs[1]) == 12
    for (loss, lr, weights), (loss2, lr2, weights2) in zip(*runs):
        assert loss2 == pytest.approx(loss, rel=1e-5) and lr2 == lr
        torch.testing.assert_close(weights2, weights, rtol=1e-5, atol=1e-6)
    assert not torch.equal(runs[0][0][2], runs[0][-1][2])


def test_accumulation_steps_must_be_a_positive_int() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, 1.5, None, True):
        with pytest.raises(ValueError, match=r"accumulation_steps must be a positive int"):
            Trainer(model=model, optimizer=opt, scheduler=None, step_fn=mse_step, max_iter=1,
                    accumulation_steps=bad)


def _noisy_step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """A loss that draws random numbers, as the detectors' samplers do."""
    x, y = batch
    keep = torch.randperm(len(x))[: len(x) // 2]
    return {"loss_mse": F.mse_loss(model(x[keep]), y[keep])}


def test_a_batch_that_cannot_be_made_mid_step_resumes_exactly(tmp_path: Any) -> None:
    """accumulation_steps=2, the second batch of step 3 unreadable: the checkpoint saved
    then holds the random state of the step's start (the first batch's forward had drawn
    from it), so the resumed run ends with the uninterrupted run's weights."""
    from resnet_detect.engine.checkpoint import Checkpointer
    from resnet_detect.engine.data import DatasetError
    from resnet_detect.engine.runner import _saved_on_error

    def run(data: Any, start: int = 0, checkpointer: Any = None) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=_noisy_step,
                          max_iter=5, accumulation_steps=2)
        if checkpointer is not None:
            checkpointer = Checkpointer(tmp_path, model=model, optimizer=opt)
            if start:
                assert checkpointer.resume()["iteration"] == start
            data = _saved_on_error(data, trainer, checkpointer, logging.getLogger("test"))
        trainer.train(data, start_iter=start)
        return model

    def failing(count: int) -> Any:
        yield from itertools.islice(_halves(regression_data()), count)
        raise DatasetError("image 7.jpg is gone")

    expected = run(_halves(regression_data())).weight.detach().clone()
    with pytest.raises(DatasetError):
        run(failing(7), checkpointer=True)  # steps 0-2 done, step 3's second batch fails
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    resumed = run(itertools.islice(_halves(regression_data()), 6, None), start=3,
                  checkpointer=True)
    assert torch.equal(resumed.weight.detach(), expected)


def test_an_empty_accumulated_batch_counts_for_nothing() -> None:
    """One of two accumulated batches with nothing readable: the step is the other batch's
    own (its loss and gradient at full size), as a whole batch averages over what it read."""
    x, y = next(regression_data())

    def step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if not len(batch[0]):
            trainer.losses_count = False  # as the runner's stand-in under DDP
            return {"loss_skipped_batch": torch.zeros((), requires_grad=True)}
        return mse_step(model, batch)

    weights, losses = [], []
    for data in ([(x, y)], [(x, y), (x[:0], y[:0])]):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step,
                          max_iter=1, accumulation_steps=len(data),
                          batch_is_empty=lambda batch: len(batch[0]) == 0)
        trainer.train(iter(data))
        weights.append(model.weight.detach().clone())
        losses.append(trainer.loss_dict["loss_mse"].item())
        assert trainer.losses_count  # the step's average is the readable batch's
    assert losses[1] == losses[0] and torch.equal(weights[1], weights[0])
    trainer = Trainer(model=model, optimizer=opt, scheduler=None, step_fn=step, max_iter=1,
                      accumulation_steps=2, batch_is_empty=lambda batch: len(batch[0]) == 0)
    trainer.train(iter([(x[:0], y[:0])] * 2))
    assert not trainer.losses_count  # nothing read: out of the progress line's averages


def test_the_eta_is_the_median_step_time_of_the_recent_steps(
        caplog: pytest.LogCaptureFixture) -> None:
    """The ETA was the last log window's mean rate: the slow first step after a start (or a
    resume) made it several times the run's real length."""
    from types import SimpleNamespace
    log = logging.getLogger("test_eta")
    progress = ProgressLogger(4, logger=log)
    trainer = SimpleNamespace(losses_count=1, empty_batches=0,
                              loss_dict={"loss": torch.tensor(1.0)}, grad_norm=None,
                              data_seconds=0.0, max_iter=104, step_lr=0.1, device_type="cpu")
    with caplog.at_level(logging.INFO, logger="test_eta"):
        for iteration, seconds in enumerate([30.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0], 1):
            trainer.iter, trainer.step_seconds = iteration, seconds
            progress.after_step(trainer)
    first, second = [r.getMessage() for r in caplog.records]
    assert "0.12 it/s" in first and first.endswith("eta 0:01:40")  # 100 steps of 1 s
    assert second.endswith("eta 0:02:24")  # 96 steps at the median 1.5 s of the 8
