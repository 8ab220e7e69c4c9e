"""What a resume compares: the settings of the run that wrote a checkpoint (its recorded config)
against this run's; changes its state cannot follow refused (the task, the classes, the
optimizer, a batch size under train.epochs, what the weights compute), the others named in
warnings."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from .config import ConfigError, as_override, flat_keys, to_plain
from .task_api import Task
from .tasks import config_of_run


def check_resumable(path: Path, provenance: Mapping[str, Any], iteration: int,
                    cfg: DictConfig, max_iter: int, logger: logging.Logger,
                    now: Mapping[str, Any],
                    check_model: Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]
                    | None = None) -> None:
    """Refuse a checkpoint this run cannot continue from, before anything is restored; say
    which `model`, `train` and `data` keys differ from the run that wrote it (the new
    values apply), and whether the training set changed size. `now`: what this run's
    checkpoints record (its classes, its number of training images). `check_model(source,
    recorded config, this one)`: the task's refusal of a change the weights cannot follow
    (anchors, strides, normalisation: what no tensor shape shows)."""
    new_run = ("start a new run from its weights (model.weights=PATH) in another "
               "train.output_dir" if "weights" in (cfg.get("model") or {}) else
               "start a new run in another train.output_dir")
    recorded_task = (provenance.get("config") or {}).get("task")
    if recorded_task is not None and recorded_task != cfg.get("task"):
        raise ConfigError(f"checkpoint {path} was written by a {recorded_task} run, this one "
                          f"trains {cfg.get('task')}: resume from a checkpoint of this task")
    recorded_config, note = config_of_run(path, provenance.get("config"), cfg)
    if note is not None:
        logger.warning(note)
    provenance = {**provenance, "config": recorded_config}
    images_before, images_now = provenance.get("train_images"), now.get("train_images")
    other_data = (f"; the run that wrote it had {images_before} training images, this one has "
                  f"{images_now}" if None not in (images_before, images_now)
                  and images_before != images_now else "")
    if iteration > max_iter:
        batch = ((recorded_config or {}).get("train") or {}).get("batch_size")
        other_batch = (f"; it was trained with train.batch_size {batch}, this run asks for "
                       f"{cfg.train.batch_size}, and train.epochs counts steps of the batch: "
                       f"resume with train.batch_size={batch}"
                       if cfg.train.get("epochs") is not None
                       and batch not in (None, cfg.train.batch_size) else "")
        raise ConfigError(f"checkpoint {path} is at iteration {iteration}, past this run's "
                          f"{max_iter} (train.max_iter or train.epochs){other_data}"
                          f"{other_batch or ': nothing to resume'}")
    if other_data:  # images removed after the warnings named them unreadable, or added
        logger.warning("resuming %s on another training set%s: the images are drawn in "
                       "another order (and train.epochs counts passes over this one)",
                       path, other_data)
    val_before, val_now = provenance.get("val_images"), now.get("val_images")
    if None not in (val_before, val_now) and val_before != val_now:
        logger.warning("resuming %s on another val split: the run that wrote it evaluated "
                       "%d images, this one has %d; the scores before and after this point "
                       "are not comparable, and the best weights (train.best_metric) are "
                       "chosen among both", path, val_before, val_now)
    def classes(config: Any) -> list[str] | None:  # data.classes (detection's)
        value = ((config or {}).get("data") or {}).get("classes")
        return None if value is None else list(value)
    was, chosen = classes(recorded_config), classes(cfg)
    changed = (f" (data.classes: {as_override(was)} -> {as_override(chosen)})"
               if was != chosen else "")
    for key in ("class_names", "category_ids"):  # label i must keep meaning the same class
        before, after = provenance.get(key), now.get(key)
        if before and after and list(before) != list(after):
            raise ConfigError(f"checkpoint {path} was trained with the {key} {list(before)[:20]}"
                              f", this run's data gives {list(after)[:20]}{changed}: its labels "
                              f"would mean other classes; resume on the data it was trained on, "
                              f"or {new_run}")
    try:
        _compare_settings(path, provenance, iteration, cfg, logger, check_model, new_run)
    except ConfigError as err:
        if note is None:
            raise
        # compared with a config.yaml beside the checkpoint, which may be another run's
        logger.warning("%s (not refused: the checkpoint records no config of its own)", err)


def _compare_settings(path: Path, provenance: Mapping[str, Any], iteration: int,
                      cfg: DictConfig, logger: logging.Logger,
                      check_model: Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]
                      | None, new_run: str) -> None:
    """The `model`, `train` and `data` keys of the run that wrote checkpoint `path` (its
    provenance's config) against this run's: changes its state cannot follow refused, the
    others named in warnings."""
    _check_model_settings(path, provenance, cfg, logger, check_model)
    recorded = (provenance.get("config") or {}).get("train")
    if not isinstance(recorded, Mapping):
        return  # no config of the run to compare with (said above)
    now = to_plain(cfg.train)
    # a key the checkpoint predates, empty here ({} of lr_multipliers), is no change
    changed = {k: (recorded.get(k), now.get(k)) for k in sorted(set(recorded) | set(now))
               if recorded.get(k) != now.get(k) and k not in ("output_dir", "device")
               and (k in recorded or now.get(k) not in ({}, []))}
    if "optimizer" in changed:
        raise ConfigError(f"checkpoint {path} was trained with train.optimizer="
                          f"{changed['optimizer'][0]}, this run asks for "
                          f"{changed['optimizer'][1]}: its state cannot continue another "
                          f"optimizer; {new_run}")
    grouped_by = [sorted(flat_keys(m or {})) for m in (recorded.get("lr_multipliers"),
                                                       now.get("lr_multipliers"))]
    if grouped_by[0] != grouped_by[1]:  # (their factors may change)
        raise ConfigError(f"checkpoint {path} was trained with train.lr_multipliers for "
                          f"{grouped_by[0] or 'no module'}, this run names "
                          f"{grouped_by[1] or 'none'}: the optimizer's state is grouped by "
                          f"them; name the same modules (their factors may change), or "
                          f"{new_run}")
    if "batch_size" in changed and cfg.train.get("epochs") is not None:
        before, after = changed["batch_size"]
        raise ConfigError(f"checkpoint {path} was trained with train.batch_size {before}, this "
                          f"run asks for {after}: with train.epochs its iteration {iteration} "
                          f"would be another epoch ({iteration} steps of {before} images), so "
                          f"the schedule and the images drawn would jump; resume with "
                          f"train.batch_size={before}, or {new_run}")
    if changed:
        logger.warning("resuming %s with train settings other than the run that wrote it "
                       "(they apply from iteration %d%s): %s", path, iteration,
                       "; another batch size also draws other images"
                       if "batch_size" in changed else "",
                       ", ".join(f"train.{k}: {a} -> {b}" for k, (a, b) in changed.items()))
    # the data's own paths may move (another disk), its loader workers change nothing; other
    # keys change what is drawn, how it is augmented or how it is evaluated from here on
    data_before = (provenance.get("config") or {}).get("data")
    if isinstance(data_before, Mapping) and isinstance(cfg.get("data"), Mapping):
        was, is_now = flat_keys(data_before, "data."), flat_keys(to_plain(cfg.data), "data.")
        moved = {k: (was.get(k), is_now.get(k)) for k in sorted(set(was) | set(is_now))
                 if was.get(k) != is_now.get(k)
                 and not k.endswith(("_file", "_dir", ".root", ".num_workers"))
                 and k != "data.palette"  # the overlays' colours: nothing trained or scored
                 # a classes.json moved with the data (the names are compared above)
                 and not (k == "data.class_names" and isinstance(was.get(k), str)
                          and isinstance(is_now.get(k), str))
                 # the same categories in another order: the labels follow the file's ids
                 and not (k == "data.classes" and isinstance(was.get(k), list)
                          and isinstance(is_now.get(k), list)
                          and sorted(map(str, was[k])) == sorted(map(str, is_now[k])))}
        if moved:
            logger.warning("resuming %s with data settings other than the run that wrote it: "
                           "the images are drawn, augmented or evaluated otherwise from "
                           "iteration %d: %s", path, iteration,
                           ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in moved.items()))


def _check_model_settings(path: Path, provenance: Mapping[str, Any], cfg: DictConfig,
                          logger: logging.Logger,
                          check_model: Callable[[str, Mapping[str, Any], Mapping[str, Any]], None]
                          | None) -> None:
    """Model settings the checkpoint's weights were trained with: those no tensor shape
    shows refused where changed (the weights would compute something else, silently), the
    others named in a warning (test-time thresholds, say; a shape's change fails the load)."""
    recorded = provenance.get("config") or {}
    before = recorded.get("model")
    if not isinstance(before, Mapping) or "model" not in cfg:
        return
    configured = to_plain(cfg)
    if check_model is not None:
        check_model(f"checkpoint {path}", recorded, configured)
    was, now = flat_keys(before, "model."), flat_keys(configured["model"], "model.")
    # a key the checkpoint predates (a registered task's: built-in ones' are at their
    # defaults), empty here, is no change
    changed = {k: (was.get(k), now.get(k)) for k in sorted(set(was) | set(now))
               if was.get(k) != now.get(k) and not k.endswith(".weights")
               and (k in was or now.get(k) not in ({}, [], None))
               and not (k == "model.num_classes" and None in (was.get(k), now.get(k)))}
    if changed:
        logger.warning("resuming %s with model settings other than the run that wrote it "
                       "(they apply from here on): %s", path,
                       ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))


def resume_model_check(task: Task, model: nn.Module
                       ) -> Callable[[str, Mapping[str, Any], Mapping[str, Any]], None] | None:
    """The task's `check_resumed_model(source, recorded config, this config, model)`, if it
    has one, for `model`."""
    check = getattr(task, "check_resumed_model", None)
    if check is None:
        return None
    return lambda source, recorded, configured: check(source, recorded, configured, model)
