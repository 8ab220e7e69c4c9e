"""Code of one's own that a config names (docs/extending.md).

`custom_imports: [my_project.backbones]`: modules imported when the config is read, so that
what they register (`backbones.register_backbone`, `engine.tasks.register_task`) is known to
every tool that reads it (mmdetection's key of this name); a checkpoint's recorded config
imports them again where the weights are used, and a run records the modules that registered
what it names. `train.hooks: [{type: module.Class, ...}]`: hooks built from the config."""
from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import ConfigError

KEY = "custom_imports"
# (kind, name) -> the module that registered it: "backbone" (backbones.register_backbone),
# "task" (engine.tasks.register_task)
REGISTERED_BY: dict[tuple[str, str], str] = {}
# where a config names what was registered
NAMED_AT = (("task", "task"), ("backbone", "model.backbone.name"), ("backbone", "model.name"))

HOOK_STAGES = ("before_train", "after_step", "after_train")

logger = logging.getLogger(__name__)


def import_custom_modules(names: Any, source: str) -> None:
    """Import each module of `names` (a config's `custom_imports`) not imported yet.

    Args:
        names: module names (dotted, as `import` takes them); None or [] imports nothing.
        source: where the names were given (a config file, a checkpoint), for messages.

    Raises:
        ConfigError: not a list of names, or a module that cannot be found (how to make it
            importable said); an error inside a module is raised as it is, with its traceback.
    """
    if names is None:
        return
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(
            isinstance(name, str) and name.strip() for name in names):
        raise ConfigError(f"{KEY} of {source} must be a list of module names, e.g. "
                          f"[my_project.backbones], got {names!r}")
    for name in names:
        if name not in sys.modules:
            _import(name, f"{KEY} of {source}")
            logger.info("imported %s (%s of %s)", name, KEY, source)


def _import(name: str, named_by: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise  # the module is there; something it imports is not
        raise ConfigError(f"{named_by}: no module {name!r} can be imported "
                          f"({err}){_how_to_make_importable(name)}") from None


def config_hooks(cfg: DictConfig) -> list[Any]:
    """The hooks of `cfg`'s `train.hooks: [{type: my_project.hooks.PrintLoss, every: 10},
    ...]` (mmdetection's custom_hooks): each class imported and built with the item's other
    keys.

    Raises:
        ConfigError: not such a list, a class that cannot be found, or arguments it refuses,
            named by the item.
    """
    value = OmegaConf.select(cfg, "train.hooks", default=None)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return []
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"train.hooks must be a list of {{type: module.Class, ...}}, got "
                          f"{value!r}")
    hooks = []
    for i, item in enumerate(value):
        where = f"train.hooks[{i}]"
        path = item.get("type") if isinstance(item, Mapping) else None
        if not isinstance(path, str) or "." not in path.strip("."):
            raise ConfigError(f"{where} must be a mapping with type: module.Class (and the "
                              f"class's keyword arguments), got {item!r}")
        module_name, _, name = path.rpartition(".")
        cls = getattr(_import(module_name, f"{where} {path}"), name, None)
        if not callable(cls):
            raise ConfigError(f"{where}: module {module_name} has no class {name!r}")
        options = {k: v for k, v in item.items() if k != "type"}
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as e:  # an argument it does not take, or lacks
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise ConfigError(f"{where}: {path}({given}): {e}") from None
        except ValueError:  # (no signature to read: a builtin)
            pass
        hook = cls(**options)
        check_hook(hook, f"{where}: {path}")
        hooks.append(hook)
    return hooks


def check_hook(hook: Any, name: str, error: type[Exception] = ConfigError) -> None:
    """Refuse (`error`, naming the hook `name`) an object the trainer would never call: one
    with none of HOOK_STAGES (mmdetection's after_train_iter alone, say)."""
    if not any(callable(getattr(hook, stage, None)) for stage in HOOK_STAGES):
        raise error(f"{name} has none of {', '.join(HOOK_STAGES)} (the stages the trainer "
                    f"calls)")


def _how_to_make_importable(name: str) -> str:
    if name.endswith(".py"):
        return f"; {KEY} names modules as `import` does: {name[:-3]}, not a file"
    here = Path(*name.split("."))
    found = next((p for p in (here.with_suffix(".py"), here / "__init__.py") if p.is_file()),
                 None)
    if found is not None:  # `python tools/x.py` puts tools/ on the path, not this folder
        return (f"; ./{found.as_posix()} is in this folder, which Python searches for "
                f"`python -m resnet_detect` alone, not for a tool run as a file nor the "
                f"resnet-detect command: run with PYTHONPATH=. (or install your project)")
    return "; install the project that has it (pip install -e PATH), or add its folder to " \
           "PYTHONPATH"


def module_file(name: str | None) -> str | None:
    """The file of an imported module (None: not imported, or none)."""
    return getattr(sys.modules.get(name or ""), "__file__", None)


def record_registering_modules(cfg: DictConfig) -> None:
    """Add to `cfg`'s custom_imports (imported already: a list) the modules that registered
    the task or backbone it names (registered by a caller's own import, not by the config):
    the run's config.yaml and its weights then name them for the tools that load the
    weights; one registered by the script run (`__main__`), which no tool can import, is
    warned of."""
    given = list(cfg.get(KEY) or [])
    for kind, key in NAMED_AT:
        name = OmegaConf.select(cfg, key, default=None)
        module = REGISTERED_BY.get((kind, name)) if isinstance(name, str) else None
        if module == "__main__":
            logger.warning("%s %r: the %s is registered by the script run, which the tools "
                           "given this run's weights cannot import: to use them there, "
                           "register it in a module of its own, named in the config's %s",
                           key, name, kind, KEY)
        elif module is not None and module not in given and module_file(module) not in {
                module_file(m) for m in given} - {None}:  # (its file under another name)
            given.append(module)
            logger.info("%s: %s added, the module that registers %s %r, so that the tools "
                        "given this run's weights import it", KEY, module, kind, name)
    if given != list(cfg.get(KEY) or []):
        OmegaConf.update(cfg, KEY, given, force_add=True)
