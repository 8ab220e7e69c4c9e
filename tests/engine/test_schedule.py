"""engine.schedule: warmup + cosine / poly / multi-step values at chosen iterations.

Expected numbers are worked out by hand: cos(9 deg) = 0.98768834, cos(18 deg) = 0.95105652,
(1 + cos(9 deg)) / 2 = 0.99384417, (1 + cos(18 deg)) / 2 = 0.97552826; 0.5 ** 0.9 =
0.53588673, 0.1 ** 0.9 = 0.12589254, (29 / 30) ** 0.9 = 0.96994938.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.schedule import WarmupDecay, build_lr_scheduler


def test_cosine_with_linear_warmup() -> None:
    f = WarmupDecay(max_iter=100, decay="cosine", warmup_iters=10, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55 * 0.99384417, abs=1e-8)   # warmup 0.55, cosine at 5 %
    assert f(10) == pytest.approx(0.97552826, abs=1e-8)         # warmup over
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_cosine_final_factor() -> None:
    f = WarmupDecay(max_iter=100, decay="cosine", final_factor=0.1)
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)


def test_poly_as_the_deeplab_recipes() -> None:
    f = WarmupDecay(max_iter=100, decay="poly", power=0.9)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.53588673, abs=1e-8)
    assert f(90) == pytest.approx(0.12589254, abs=1e-8)
    assert f(100) == 0.0
    # mmsegmentation's floor: (base_lr - min_lr) * (1 - i / max_iter) ** 0.9 + min_lr
    g = WarmupDecay(max_iter=100, decay="poly", power=0.9, final_factor=0.01)
    assert g(50) == pytest.approx(0.01 + 0.99 * 0.53588673, abs=1e-8)
    assert g(100) == pytest.approx(0.01)
    # torchvision's segmentation reference at step 1000 of 30000
    assert WarmupDecay(max_iter=30000, decay="poly")(1000) == pytest.approx(0.96994938, abs=1e-8)
    with pytest.raises(ValueError, match="lr_power must be positive, got 0"):
        WarmupDecay(max_iter=10, decay="poly", power=0)


def test_multistep_with_and_without_warmup() -> None:
    f = WarmupDecay(max_iter=90, decay="step", steps=[30, 60], gamma=0.1)
    assert [f(i) for i in (0, 29)] == [1.0, 1.0]
    assert f(30) == pytest.approx(0.1)
    assert f(59) == pytest.approx(0.1)
    assert f(60) == pytest.approx(0.01)
    assert f(89) == pytest.approx(0.01)
    g = WarmupDecay(max_iter=90, decay="step", steps=[30], warmup_iters=5, warmup_factor=0.001)
    assert g(0) == pytest.approx(0.001)
    assert g(4) == pytest.approx(0.8002)
    assert g(5) == 1.0


def test_lambda_lr_steps_per_iteration_and_state_roundtrip() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = build_lr_scheduler(opt, max_iter=100, decay="cosine", warmup_iters=10,
                               warmup_factor=0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.55 * 0.99384417, abs=1e-8)

    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched2 = build_lr_scheduler(opt2, max_iter=100, decay="cosine", warmup_iters=10,
                                warmup_factor=0.1)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    # iteration 6: warmup 0.1 * 0.4 + 0.6 = 0.64, cosine at 6 %: cos(10.8 deg) = 0.98228725
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.2 * 0.64 * 0.5 * (1 + 0.98228725),
                                                       abs=1e-8)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown lr decay 'linear'; valid: cosine, poly, step"):
        WarmupDecay(max_iter=10, decay="linear")
    with pytest.raises(ValueError, match="increasing iterations in 1..10"):
        WarmupDecay(max_iter=10, decay="step", steps=[8, 4])
    with pytest.raises(ValueError, match=r"lr steps must be whole iterations, got \[4.5\]"):
        WarmupDecay(max_iter=10, decay="step", steps=[4.5])  # was cut to 4
    assert WarmupDecay(max_iter=10, decay="step", steps=[4.0]).steps == [4]


def test_epochs_well_under_a_pass_and_a_warmup_rounded_to_none_are_warned_of(
        caplog: pytest.LogCaptureFixture) -> None:
    """15 images at batch 8 trained 1 iteration per epoch (6.4 passes for 12 epochs, where
    mmdetection runs 24 iterations) and warmup_epochs=0.5 rounded to no warmup, silently."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.run_length import lengths_of_run, warn_of_epoch_rounding
    logger = logging.getLogger("t")

    def warnings_for(images: int, **train: Any) -> list[str]:
        caplog.clear()
        cfg = OmegaConf.create({"train": {"max_iter": None, "lr_steps": [], "warmup_iters": 0,
                                          "lr_step_epochs": [], **train}})
        warn_of_epoch_rounding(cfg.train, lengths_of_run(cfg, images), images, logger)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings_for(15, epochs=12, batch_size=8, warmup_epochs=0.5) == [
        "an epoch is 15 // 8 = 1 iterations (train.batch_size 8): 8 of the 15 training images "
        "a pass, so train.epochs=12 draws 6.4 passes (as torchvision's references, which drop "
        "the short last batch; mmdetection's epochs end with it: 2 iterations each); raise "
        "train.epochs, or give a batch size that divides the set",
        "train.warmup_epochs=0.5 is 0 iterations at 1 per epoch: the run has no warmup"]
    assert warnings_for(1000, epochs=12, batch_size=16, warmup_epochs=0.5) == []  # 992 a pass
    assert warnings_for(15, epochs=12, batch_size=8, warmup_epochs=2) == warnings_for(
        15, epochs=12, batch_size=8, warmup_epochs=0.5)[:1]


def test_periods_that_read_as_epochs_and_max_to_keep_1_are_warned_of(
        caplog: pytest.LogCaptureFixture) -> None:
    """mmdetection's checkpoint interval=1 (an epoch) written as train.checkpoint_period=1
    saved a 123 MB checkpoint every iteration; train.max_to_keep=1 kept 2 without a word."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.run_length import warn_of_periods_read_as_epochs

    def warnings_for(per_epoch: int | None, **train: Any) -> list[str]:
        caplog.clear()
        cfg = OmegaConf.create({"train": {"epochs": 12, "checkpoint_period": 5000,
                                          "eval_period": 0, "max_to_keep": 2,
                                          "checkpoint_period_epochs": None,
                                          "eval_period_epochs": None, **train}})
        lengths = {"per_epoch": per_epoch} if per_epoch else {}
        warn_of_periods_read_as_epochs(cfg.train, lengths, logging.getLogger("t"))
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings_for(4, checkpoint_period=1, eval_period=2, max_to_keep=1) == [
        "train.checkpoint_period=1 counts iterations, also with train.epochs (an epoch is 4 "
        "iterations here); for every epoch set train.checkpoint_period_epochs=1",
        "train.eval_period=2 counts iterations, also with train.epochs (an epoch is 4 "
        "iterations here); for every 2 epochs set train.eval_period_epochs=2",
        "train.max_to_keep=1 keeps 2 checkpoints: the one before the newest stays, for a "
        "newest that a kill or a full disk damaged"]
    assert warnings_for(5000, checkpoint_period=2500) == []  # half an ImageNet epoch
    # the period in epochs replaces the one in iterations
    assert warnings_for(4, checkpoint_period=1, checkpoint_period_epochs=1) == []
    assert warnings_for(None, checkpoint_period=1, epochs=None) == []  # iterations given


def test_the_imagenet_recipe_evaluates_every_5_epochs_at_any_batch_size() -> None:
    """Its periods were 25020 and 5004 iterations, 5 epochs and 1 at batch 256 only: at 1024
    over 8 GPUs they evaluated every 20 epochs."""
    from resnet_detect.engine.run_length import lengths_of_run, periods_in_iterations
    from resnet_detect.engine.tasks import load_task_config
    config = str(Path(__file__).resolve().parents[2] / "configs/pretrain/resnet50_imagenet.yaml")
    for batch, per_epoch in ((256, 5004), (1024, 1251)):
        _, cfg = load_task_config(config, ["data.root=/imagenet", f"train.batch_size={batch}"])
        lengths = lengths_of_run(cfg, train_size=1281167)
        assert (lengths["per_epoch"], lengths["max_iter"]) == (per_epoch, 90 * per_epoch)
        assert periods_in_iterations(cfg.train, train_size=1281167) == {
            "eval_period": 5 * per_epoch, "checkpoint_period": per_epoch}


def test_a_period_in_iterations_under_a_base_files_period_in_epochs_is_refused(
        tmp_path: Path) -> None:
    """A config file on the ImageNet recipe (checkpoints every epoch) that set
    checkpoint_period: 400 had it ignored: both set in the files is refused, naming how to
    give one; the shared default (5000) or 0 under a period in epochs is not a conflict."""
    from resnet_detect.engine.run_length import periods_in_iterations
    from resnet_detect.engine.train_settings import check_train_choices
    from resnet_detect.engine.tasks import load_task_config
    recipe = Path(__file__).resolve().parents[2] / "configs/pretrain/resnet50_imagenet.yaml"
    derived = tmp_path / "mine.yaml"
    derived.write_text(f"_base_: {recipe}\ntrain:\n  checkpoint_period: 400\n")
    _, cfg = load_task_config(str(derived), ["data.root=/imagenet"])
    with pytest.raises(ConfigError, match=r"^train.checkpoint_period \(400 iterations\) and "
                                          r"train.checkpoint_period_epochs \(1\) are both set; "
                                          r"give one as an override \(it unsets the other\): "
                                          r"train.checkpoint_period=400 or "
                                          r"train.checkpoint_period_epochs=1$"):
        check_train_choices(cfg.train)
    # each as the message gives it
    for given, period in (("train.checkpoint_period=400", 400),
                          ("train.checkpoint_period_epochs=1", 5004)):
        _, cfg = load_task_config(str(derived), ["data.root=/imagenet", given])
        check_train_choices(cfg.train)
        assert periods_in_iterations(cfg.train, train_size=1281167)["checkpoint_period"] == period
    _, cfg = load_task_config(str(recipe), ["data.root=/imagenet"])
    check_train_choices(cfg.train)


def test_an_override_of_a_period_in_one_unit_unsets_the_files_other(tmp_path: Path) -> None:
    """train.checkpoint_period_epochs=1 on a config of checkpoint_period: 100 was refused as
    both set; train.eval_period=0 (only at the end) on the ImageNet recipe's evaluation every 5
    epochs was ignored. The override's unit wins; both overridden are refused as above."""
    from resnet_detect.engine.run_length import periods_in_iterations
    from resnet_detect.engine.train_settings import check_train_choices
    from resnet_detect.engine.tasks import load_task_config
    root = Path(__file__).resolve().parents[2]
    recipe = str(root / "configs/pretrain/resnet50_imagenet.yaml")
    _, cfg = load_task_config(recipe, ["data.root=/imagenet", "train.eval_period=0",
                                       "train.checkpoint_period=400"])
    check_train_choices(cfg.train)
    assert periods_in_iterations(cfg.train, train_size=1281167) == {"eval_period": 0,
                                                       "checkpoint_period": 400}
    quickstart = str(root / "configs/synthetic/faster_rcnn_R_18_FPN.yaml")
    _, cfg = load_task_config(quickstart, ["train.checkpoint_period_epochs=1"])
    check_train_choices(cfg.train)
    assert periods_in_iterations(cfg.train, train_size=64) == {"eval_period": 0,
                                                               "checkpoint_period": 16}
    _, cfg = load_task_config(quickstart, ["train.checkpoint_period_epochs=1",
                                           "train.checkpoint_period=7"])
    with pytest.raises(ConfigError, match=r"train.checkpoint_period \(7 iterations\) and "):
        check_train_choices(cfg.train)
    # the period in epochs unset: the files' in iterations stays (it was turned to 0, no
    # checkpoint for a 90-epoch run until its end)
    _, cfg = load_task_config(recipe, ["data.root=/imagenet",
                                       "train.checkpoint_period_epochs=null"])
    assert periods_in_iterations(cfg.train, train_size=1281167)["checkpoint_period"] == 5000


def test_an_evaluation_period_past_the_run_is_described_as_the_end_only() -> None:
    """The ImageNet recipe's every 5 epochs in a 2-epoch trial: "evaluated every 15
    iterations and at the end" of a 6-iteration run."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.run_length import describe_schedule
    t = OmegaConf.create({"lr_decay": "cosine", "gamma": 0.1})
    for period, said in ((15, "evaluated at the end (to evaluate every epoch: "
                              "train.eval_period_epochs=1)"),
                         (3, "evaluated every 3 iterations and at the end")):
        lengths = {"max_iter": 6, "warmup_iters": 0, "steps": [], "per_epoch": 3,
                   "eval_period": period}
        assert describe_schedule(t, lengths, evaluated=True) == f"cosine decay; {said}"
