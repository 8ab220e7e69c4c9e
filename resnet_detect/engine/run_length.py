"""How long a run is, and when it evaluates and saves: train.max_iter or train.epochs, the
periods in iterations or in epochs, the learning-rate schedule built from them, and the
warnings of settings that do not do what they seem to."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from .config import PERIODS, ConfigError, as_override
from .schedule import build_lr_scheduler


def _check_length_keys(t: DictConfig) -> None:
    """A schedule in iterations (max_iter, lr_steps, warmup_iters) or in epochs (epochs,
    lr_step_epochs, warmup_epochs), not both; the keys of the other kind that are set named
    with their values (a config file's warmup_iters under an epochs override, say)."""
    if t.epochs is None and t.max_iter is None:
        raise ConfigError("set train.max_iter (iterations) or train.epochs")
    if t.epochs is not None and t.max_iter is not None:
        by_steps = " ".join(["train.epochs=null"] + [
            f"train.{key}={unset}" for key, unset in (("lr_step_epochs", "[]"),
                                                       ("warmup_epochs", "0")) if t[key]])
        raise ConfigError(f"train.epochs ({t.epochs}) and train.max_iter ({t.max_iter}) are "
                          f"both set; set one: train.max_iter=null for the epoch-based "
                          f"recipe, or `{by_steps}` to train {t.max_iter} iterations (its "
                          f"warmup and lr drops then in train.warmup_iters, train.lr_steps)")
    by_epochs = t.epochs is not None
    other = (("lr_steps", "[]"), ("warmup_iters", "0")) if by_epochs else (
        ("lr_step_epochs", "[]"), ("warmup_epochs", "0"))
    found = [f"train.{key} is {t[key]} (train.{key}={unset} clears it)"
             for key, unset in other if t[key]]
    if found:
        raise ConfigError(
            ("with train.epochs give train.lr_step_epochs and train.warmup_epochs, not "
             "train.lr_steps / train.warmup_iters" if by_epochs else
             "train.lr_step_epochs and train.warmup_epochs need train.epochs; with "
             "train.max_iter use train.lr_steps and train.warmup_iters") + ": " + "; ".join(found))


def lengths_of_run(cfg: DictConfig, train_size: int) -> dict[str, Any]:
    """max_iter, lr steps and warmup in iterations, from iteration or epoch keys."""
    t = cfg.train
    _check_length_keys(t)
    if t.epochs is None:
        return {"max_iter": int(t.max_iter), "steps": [int(s) for s in t.lr_steps],
                "warmup_iters": int(t.warmup_iters)}
    per_epoch = _iterations_per_epoch(t, train_size)
    return {"max_iter": max(round(t.epochs * per_epoch), 1),
            "steps": [round(e * per_epoch) for e in t.lr_step_epochs],
            "warmup_iters": round(t.warmup_epochs * per_epoch), "per_epoch": per_epoch}


def _iterations_per_epoch(t: DictConfig, train_size: int, counted_by: str = "") -> int:
    per_epoch = train_size // t.batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size {t.batch_size} exceeds the {train_size} training "
                          f"images{counted_by}")
    return per_epoch


def periods_in_iterations(t: DictConfig, train_size: int) -> dict[str, int]:
    """The checkpoint and evaluation periods in iterations, from train.<period> or
    train.<period>_epochs (in a run of either kind of length)."""
    return {period: t[period] if t[f"{period}_epochs"] is None else max(round(
        t[f"{period}_epochs"] * _iterations_per_epoch(
            t, train_size, f": no epoch for train.{period}_epochs to count")), 1)
        for period in PERIODS}


def build_scheduler_from_config(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                                lengths: Mapping[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    t = cfg.train
    steps = lengths["steps"] if t.lr_decay == "step" else []
    try:
        return build_lr_scheduler(optimizer, max_iter=lengths["max_iter"], decay=t.lr_decay,
                                  steps=steps, gamma=t.gamma if steps else 1.0,
                                  final_factor=t.final_lr_factor,
                                  power=t.lr_power,
                                  warmup_iters=lengths["warmup_iters"],
                                  warmup_factor=t.warmup_factor)
    except ValueError as e:
        if "per_epoch" in lengths:  # the keys the user gave: epochs
            raise ConfigError(f"invalid train config (train.epochs={t.epochs}, "
                              f"train.lr_step_epochs={as_override(t.lr_step_epochs)}, "
                              f"train.warmup_epochs={t.warmup_epochs}; {lengths['per_epoch']} "
                              f"iterations per epoch): {e}"
                              + ("; train.lr_step_epochs must lie within train.epochs"
                                 if t.lr_decay == "step"
                                 and any(e > t.epochs for e in t.lr_step_epochs) else "")
                              ) from None
        max_iter = lengths["max_iter"]
        shorter = [round(max_iter * 2 / 3), round(max_iter * 8 / 9)]
        hint = (f"; a shorter run needs shorter steps: train.lr_steps={as_override(shorter)} "
                f"(the 1x recipe's proportions) or train.lr_steps=[]"
                if any(s > max_iter for s in steps) else "")
        raise ConfigError(f"invalid train config (max_iter={max_iter}, lr_steps={steps} in "
                          f"iterations): {e}{hint}") from None


def check_schedule(cfg: DictConfig) -> None:
    """The lr schedule of an iteration-based config, refused as build_scheduler_from_config
    would refuse it, before the data is read (epoch-based lengths need the data's size; their
    keys are checked now)."""
    if cfg.train.epochs is None:  # (lengths_of_run checks the keys)
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.base_lr)
        build_scheduler_from_config(cfg, probe, lengths_of_run(cfg, train_size=0))
    else:
        _check_length_keys(cfg.train)


def warn_of_unused_steps(t: DictConfig, logger: logging.Logger) -> None:
    """Step milestones under another decay than train.lr_decay=step do nothing (a recipe's
    steps given with the cosine quickstart: the lr followed its cosine without a word)."""
    if t.lr_decay == "step":
        return
    for key in ("lr_steps", "lr_step_epochs"):
        if t.get(key):
            logger.warning("train.%s=%s is not used: train.lr_decay is %s (steps apply with "
                           "train.lr_decay=step)", key, as_override(list(t[key])), t.lr_decay)


def warn_of_epoch_rounding(t: DictConfig, lengths: Mapping[str, Any], train_size: int,
                           logger: logging.Logger) -> None:
    """An epoch is train_size // batch_size steps (the sampler is endless: no short last
    batch, as torchvision's references drop it); on a small set at a large batch that is well
    under a pass (mmdetection's epochs end with the short batch), and a warmup of a fraction
    of an epoch can round to none."""
    if "per_epoch" not in lengths:
        return
    per_epoch = lengths["per_epoch"]
    drawn = per_epoch * t.batch_size
    if drawn < 0.9 * train_size:
        logger.warning("an epoch is %d // %d = %d iterations (train.batch_size %d): %d of the "
                       "%d training images a pass, so train.epochs=%s draws %.1f passes "
                       "(as torchvision's references, which drop the short last batch; "
                       "mmdetection's epochs end with it: %d iterations each); raise "
                       "train.epochs, or give a batch size that divides the set", train_size,
                       t.batch_size, per_epoch, t.batch_size, drawn, train_size, t.epochs,
                       lengths["max_iter"] * t.batch_size / train_size,
                       -(-train_size // t.batch_size))
    if t.warmup_epochs > 0 and lengths["warmup_iters"] == 0:
        logger.warning("train.warmup_epochs=%s is 0 iterations at %d per epoch: the run has no "
                       "warmup", t.warmup_epochs, per_epoch)


def warn_of_periods_read_as_epochs(t: DictConfig, lengths: Mapping[str, Any],
                                   logger: logging.Logger) -> None:
    """Periods count iterations under train.epochs too: mmdetection's `interval=1` (an epoch
    there) written as train.checkpoint_period=1 saved a checkpoint every step; and
    train.max_to_keep=1 keeps 2."""
    per_epoch = lengths.get("per_epoch")
    for key in PERIODS:
        period = t[key]
        if (per_epoch and 0 < period < per_epoch and period <= t.epochs
                and t[f"{key}_epochs"] is None):
            logger.warning("train.%s=%d counts iterations, also with train.epochs (an epoch is "
                           "%d iterations here); for every %s set train.%s_epochs=%d", key,
                           period, per_epoch, "epoch" if period == 1 else f"{period} epochs",
                           key, period)
    if t.max_to_keep == 1:
        logger.warning("train.max_to_keep=1 keeps 2 checkpoints: the one before the newest "
                       "stays, for a newest that a kill or a full disk damaged")


def warn_of_long_warmup(lengths: Mapping[str, Any], logger: logging.Logger,
                        section: str = "train") -> None:
    """A warmup as long as the run (a 1x recipe's 1000 steps kept in a 300-step fine-tuning)
    never reaches the base lr. `section`: the config section the user sets them in."""
    warmup, max_iter = lengths["warmup_iters"], lengths["max_iter"]
    if warmup >= max_iter:
        key = f"{section}.warmup_epochs" if "per_epoch" in lengths else f"{section}.warmup_iters"
        logger.warning("%s is %d iterations, the whole run is %d: the lr climbs for the "
                       "whole run and never reaches %s.base_lr; shorten it (e.g. %s of a "
                       "tenth of the run)", key, warmup, max_iter, section, key)


def describe_schedule(t: DictConfig, lengths: Mapping[str, Any], evaluated: bool) -> str:
    """The schedule in iterations, as the run applies it: warmup, lr steps, evaluations (an
    epoch-based run's are computed from its epochs; they were left to guess from the lr)."""
    parts = []
    if lengths["warmup_iters"]:
        parts.append(f"warmup {lengths['warmup_iters']} iterations")
    if t.lr_decay == "step" and lengths["steps"]:
        parts.append(f"lr x{t.gamma:g} at iteration{'s' * (len(lengths['steps']) > 1)} "
                     f"{', '.join(map(str, lengths['steps']))}")
    elif t.lr_decay != "step":
        parts.append(f"{t.lr_decay} decay")
    if evaluated and 0 < lengths["eval_period"] < lengths["max_iter"]:
        parts.append(f"evaluated every {lengths['eval_period']} iterations and at the end")
    elif evaluated:
        parts.append("evaluated at the end" + (
            " (to evaluate every epoch: train.eval_period_epochs=1)"
            if "per_epoch" in lengths else ""))
    return "; ".join(parts)
