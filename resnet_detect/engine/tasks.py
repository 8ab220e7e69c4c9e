"""The tasks the tools dispatch to, chosen by a config's `task` key.

Each entry names the module that defines the task: its `TASK` (a `engine.task_api.Task`
class), `BASE_CONFIG` (configs/<task>/base_*.yaml: every valid key with its default) and,
where old key names still load, `RENAMED_KEYS`; where a key given on the command line must
replace conflicting keys of the file, `resolve_overrides(cfg, overrides)`. A new task of
this project needs one line here and its module; a user's, `register_task` in a module its
configs name in `custom_imports`.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnet_detect import CONFIGS
from .config import (ConfigError, apply_overrides, config_chain, flat_keys, load_config,
                     load_defaults, to_plain)
from .custom_imports import KEY as CUSTOM_IMPORTS, REGISTERED_BY, import_custom_modules

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS = CONFIGS / "base_train.yaml"
TASK_MODULES = {
    "detection": "resnet_detect.detection.training",
    "sem_seg": "resnet_detect.segmentation.training",
    "classification": "resnet_detect.backbones.pretraining",
}


BUILT_IN_TASKS = frozenset(TASK_MODULES)

# what reads each task's configs, for messages
READERS = {
    "detection": "tools/train.py, tools/eval.py and detection.Predictor",
    "sem_seg": "tools/train.py, tools/eval.py and segmentation.Predictor",
    "classification": "tools/pretrain.py",
    "analyze": "tools/analyze.py",
}


def register_task(name: str, module: str) -> None:
    """Make `task: NAME` a config's task: tools/train.py trains it with `module`'s `TASK`
    (an `engine.task_api.Task` class), its config checked against `module`'s `BASE_CONFIG` (a
    YAML file of every key with its default; configs/base_train.yaml's `train` section is
    added where its `_base_` chain does not inherit it). tools/eval.py, demo.py and export.py
    take it where the module defines `evaluate_checkpoint`, `build_renderer`, `export_model`
    as the built-in tasks' modules do. A config's `custom_imports` names the module that calls
    this (docs/extending.md)."""
    if not isinstance(name, str) or not name or name == "analyze":
        raise ConfigError(f"a task's name is a non-empty string other than 'analyze', got "
                          f"{name!r}")
    if TASK_MODULES.get(name, module) != module:
        raise ConfigError(f"task {name!r} is registered already, by {TASK_MODULES[name]}: give "
                          f"yours another name")
    if not _importable(module):  # (found at once, not when a config names the task)
        raise ConfigError(f"register_task({name!r}, {module!r}): no module {module!r} can be "
                          f"imported (the name `import` takes, e.g. __name__ in the module that "
                          f"defines TASK, its folder on sys.path / PYTHONPATH)")
    TASK_MODULES[name] = module
    REGISTERED_BY["task", name] = module
    READERS.setdefault(name, "tools/train.py")


def _importable(module: str) -> bool:
    if module in sys.modules:  # (a module registering itself while it is imported)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, a bad name
        return False


def task_module(name: str) -> ModuleType:
    """The module that defines task `name`."""
    if name == "analyze":  # configs/analyze/: a study trains many nets, by its own tool
        raise ConfigError("a study config (task: analyze) is run by tools/analyze.py STUDY "
                          "--config CONFIG")
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(TASK_MODULES)} (a task "
                          f"of your own: its module in the config's custom_imports)")
    return importlib.import_module(TASK_MODULES[name])


def task_defaults(name: str) -> DictConfig:
    """Every valid key of task `name`'s configs with its default: its module's BASE_CONFIG
    with its `_base_` files, over configs/base_train.yaml where those do not inherit it, and
    `task: NAME` and `data.num_workers: 0` (the runner's) where they do not say them."""
    base = task_module(name).BASE_CONFIG
    defaults = load_defaults(base)
    if TRAIN_DEFAULTS.resolve() not in {file for file, _ in config_chain(base)}:
        defaults = OmegaConf.merge(load_defaults(TRAIN_DEFAULTS), defaults)
    return OmegaConf.merge({"task": name, "data": {"num_workers": 0}}, defaults)


# keys of the model (and data) sections that only one task's configs have
TASK_OF_MODEL_KEY = {"roi_heads": "detection", "rpn": "detection", "aux_head": "sem_seg"}
TASK_OF_DATA_KEY = {"val_resize": "classification"}


class NoTaskKeyError(ConfigError):
    """A config that names no task, of which none can be told."""


def config_task(path: str | os.PathLike, overrides: Sequence[str] = (),
                expected: str | None = None) -> str:
    """The `task` a config file (with its `_base_` files, or a `task=` override) names; one
    without the key (a run's config.yaml from before it) is the task its model keys belong
    to, said once in a warning, else `expected` (the tool's own task)."""
    chain = config_chain(path)
    # before the task's name is looked up, and before any tool checks a backbone's name
    import_custom_modules(*_custom_imports(chain, overrides))
    task, named_in = None, None
    parts = [part for _, part in chain]
    for file, part in chain:  # (bases first)
        named = part.get("task")
        # (a task of one's own on a built-in task's module shares its keys)
        if named is not None and task is not None and {str(named), str(task)} <= set(
                TASK_MODULES) and TASK_MODULES[str(named)] != TASK_MODULES[str(task)]:
            raise ConfigError(f"{path} is made of configs of two tasks: {named_in} (task: "
                              f"{task}) and {file} (task: {named}); the tasks' keys differ: "
                              f"inherit configs of one task (configs/)")
        if named is not None:
            task, named_in = named, file
    for item in overrides:
        if item.startswith("task="):
            given = item.split("=", 1)[1]
            if task is not None and given != str(task) and given in TASK_MODULES:
                raise ConfigError(f"override '{item}': {path} is a config of the task {task} "
                                  f"(its `task` key); the tasks' keys differ: start from a "
                                  f"config of the task {given} (configs/)")
            task = given
    if task is not None:
        return str(task)
    def keys_of(section: str) -> set[str]:
        return {k for part in parts if isinstance(part.get(section), Mapping)
                for k in part.get(section)}
    guessed = ({TASK_OF_MODEL_KEY[k] for k in keys_of("model") if k in TASK_OF_MODEL_KEY}
               | {TASK_OF_DATA_KEY[k] for k in keys_of("data") if k in TASK_OF_DATA_KEY})
    if len(guessed) == 1:
        (task,) = guessed
        if str(path) not in _SAID_GUESSED:  # (a tool asks, then its config loader)
            _SAID_GUESSED.add(str(path))
            logger.warning("config %s has no `task` key (a run's config.yaml written before "
                           "it was one): read as a %s config, by its model and data keys", path,
                           task)
        return task
    if expected is None:
        raise NoTaskKeyError(f"config {path} has no `task` key; inherit a base config or set "
                             f"task: {' | '.join(TASK_MODULES)}")
    return expected


_SAID_GUESSED: set[str] = set()


def _custom_imports(chain: Sequence[tuple[Path, DictConfig]], overrides: Sequence[str]
                    ) -> tuple[Any, str]:
    """(the `custom_imports` of a config's files and overrides, where it was given)."""
    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) \
            else value

    names, source = None, ""
    given = [(str(file), part) for file, part in chain if CUSTOM_IMPORTS in part] + [
        ("the command line", apply_overrides(OmegaConf.create({CUSTOM_IMPORTS: None}), [item]))
        for item in overrides if item.strip().startswith(f"{CUSTOM_IMPORTS}=")]
    for source, part in given:
        try:
            names = plain(part[CUSTOM_IMPORTS])
        except OmegaConfBaseException as e:  # ${oc.env:NAME} of an unset variable
            raise ConfigError(f"{CUSTOM_IMPORTS} of {source}: {' '.join(str(e).split())}"
                              ) from None
    return names, source


def refuse_other_task_config(path: str | os.PathLike, overrides: Sequence[str],
                             task: str) -> None:
    """A config whose `task` key names another task than `task` is refused, naming the
    package that reads it (its keys would otherwise be reported unknown one by one)."""
    try:
        name = config_task(path, overrides)
    except NoTaskKeyError:
        return  # checked key by key against `task`'s defaults
    _refuse_other_task(path, name, task)


def _refuse_other_task(path: str | os.PathLike, name: str, task: str) -> None:
    if name != task:
        raise ConfigError(f"config {path} is for task {name!r}, not {task!r}"
                          + (f": {READERS[name]} read it" if name in READERS else ""))


def load_task_config(path: str | os.PathLike, overrides: Sequence[str] = (),
                     task: str | None = None, *,
                     allow_missing: bool = False) -> tuple[str, DictConfig]:
    """(task name, config checked against that task's defaults file).

    Args:
        path: the YAML file.
        overrides: `key=value` strings.
        task: expected task (e.g. "classification" for tools/pretrain.py); a config that
            names another is refused.
        allow_missing: leave mandatory values (`???`) unset (`engine.config.load_config`).
    """
    name = config_task(path, overrides, expected=task)
    if task is not None:
        _refuse_other_task(path, name, task)
    module = task_module(name)
    cfg = load_config(path, overrides, defaults=task_defaults(name),
                      open_keys=("train.lr_multipliers", *getattr(module, "OPEN_KEYS", ())),
                      renamed=getattr(module, "RENAMED_KEYS", None),
                      allow_missing=allow_missing)
    _refuse_replaced_multipliers(cfg, overrides)
    resolve = getattr(module, "resolve_overrides", None)
    if resolve is not None:
        resolve(cfg, overrides)
    return name, cfg


def _refuse_replaced_multipliers(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """`train.lr_multipliers.backbone=0.1 train.lr_multipliers.backbone.bottom_up=0.01`: the
    second makes `backbone` a mapping, the first factor is gone (and in the other order the
    second); said, with the form that keeps both."""
    prefix = "train.lr_multipliers."
    given = [o.split("=", 1)[0].strip()[len(prefix):] for o in overrides
             if o.strip().startswith(prefix)]
    kept = flat_keys(to_plain(cfg.train.lr_multipliers)) if cfg.train.get("lr_multipliers") \
        else {}
    lost = [g for g in given if g not in kept]
    if lost:
        raise ConfigError(f"train.lr_multipliers: the overrides of {', '.join(lost)} were "
                          f"replaced by another naming a module inside or around it; give them "
                          f"in one mapping: train.lr_multipliers='{{backbone: 0.1, "
                          f"backbone.bottom_up: 0.01}}'")


def config_of_run(checkpoint: Path, recorded: Any, cfg: Mapping[str, Any]
                  ) -> tuple[dict | None, str | None]:
    """(the config of the run that wrote `checkpoint`, with each key of this run's `cfg` it
    lacks at the task's default: the behaviour before the key; a note for the log or None).

    `recorded`: the checkpoint's own record; where it has none (checkpoints written before
    they recorded it), the run folder's config.yaml read as `task`'s config (old key names
    renamed); None where neither can be read."""
    task = cfg.get("task")
    if isinstance(recorded, Mapping) and task not in TASK_MODULES:
        return dict(recorded), None
    if isinstance(recorded, Mapping):
        defaults = to_plain(task_defaults(task))
        now = to_plain(cfg) if isinstance(cfg, DictConfig) else cfg
        return _with_defaults(recorded, defaults, now), None
    saved = checkpoint.parent / "config.yaml"
    try:
        _, saved_cfg = load_task_config(saved, task=task)
    except (ConfigError, OSError, ValueError) as err:
        return None, (f"checkpoint {checkpoint} records no config (written before checkpoints "
                      f"recorded it) and {saved} cannot be read as one ({err}): the settings "
                      f"it was trained with cannot be compared with this run's")
    return to_plain(saved_cfg), (f"checkpoint {checkpoint} records no config (written before "
                           f"checkpoints recorded it): this run's settings are compared with "
                           f"{saved}, and its continuation differs from what the version "
                           f"that wrote it would compute (other images may be drawn: a "
                           f"segmentation's mIoU may move by a point or more)")


def _with_defaults(recorded: Mapping[str, Any], defaults: Mapping[str, Any],
                   now: Mapping[str, Any]) -> dict:
    """`recorded` with each key of `now` it lacks at its value in `defaults`, at every
    depth."""
    merged = dict(recorded)
    for key, default in defaults.items():
        if key not in now:
            continue
        if key not in recorded:
            merged[key] = default
        elif all(isinstance(m[key], Mapping) for m in (defaults, recorded, now)):
            merged[key] = _with_defaults(recorded[key], default, now[key])
    return merged
