"""YAML configs: `_base_` inheritance, `key=value` overrides, a strict schema, saving.

A task (pretraining, detection, segmentation) owns a defaults tree that lists every valid key.
`load_config(path, overrides, defaults=...)` merges, in order, the defaults, the `_base_`
files of `path` (recursively, depth first), `path` itself and the command-line overrides.
The merged tree is in OmegaConf struct mode: a key that the defaults do not have is an error
naming the key and the file (or the override) it came from. Subtrees listed in `open_keys`
(e.g. `model.options`, passed through as keyword arguments) accept any key.
"""
from __future__ import annotations

import copy
import difflib
import functools
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from resnet_detect import CONFIGS

from .files import atomic_write_text, missing_path
from .foreign_options import key_hint, other_key_hint, section_hint

BASE_KEY = "_base_"
PACKAGE_PREFIX = "resnet_detect::"  # a _base_ of this package's configs/ folder
# switches that also take a name (checked where they are used: amp.py, compilation.py)
NAMED_SWITCHES = ("train.amp", "train.compile", "test.compile")
# sizes that take one number or a list (detection: drawn per image in training, the largest
# in testing)
NUMBER_OR_LIST = ("data.train.min_size", "data.val.min_size")
# keys whose default is a number or a list of numbers that take null too (its meaning is in
# the defaults' comments; momentum and gamma: unused by AdamW or by a cosine decay, checked
# where used); null anywhere else was a TypeError deep in training
NULLABLE = ("train.max_iter", "train.epochs", "train.max_to_keep", "train.momentum",
            "train.gamma", "model.backbone.output_stride", "model.backbone.multi_grid",
            "model.size_divisibility", "data.train.max_size", "data.val.max_size",
            "data.train.crop_size", "train.checkpoint_period_epochs",
            "train.eval_period_epochs")
# the kinds of NULLABLE keys some task's defaults leave null (pretraining's train.max_iter):
# train.max_iter=2e4 is 20000 there as where the default is a number
KINDS_OF_NULL_DEFAULTS = {"train.max_iter": "int", "train.max_to_keep": "int",
                          "model.backbone.output_stride": "int", "model.weights": "path",
                          "model.backbone.weights": "path"}
logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its source."""


@functools.lru_cache(maxsize=64)
def _parse_yaml(text: str, name: str, max_nodes: str | None) -> DictConfig | ListConfig:
    """`max_nodes`: OmegaConf's alias-expansion limit from the environment, in the cache key
    only (a lowered limit refuses what a higher one let through)."""
    stream = io.StringIO(text)
    stream.name = name  # (what YAML's messages call the file)
    return OmegaConf.load(stream)


def packaged_config_hint(path: Path) -> str:
    """For a config not found under a configs/ folder (the repository's paths, used where the
    project is installed with pip): the installed package's config of that name, if it has
    one; else ""."""
    parts = Path(path).parts
    if "configs" not in parts:
        return ""
    inner = parts[len(parts) - parts[::-1].index("configs"):]
    twin = CONFIGS.joinpath(*inner)
    return (f"; the installed package has it: {twin} (`{BASE_KEY}: "
            f"{PACKAGE_PREFIX}{Path(*inner).as_posix()}` wherever it is installed)"
            if inner and twin.is_file() else "")


# files that hold weights, given where a config is wanted
WEIGHTS_SUFFIXES = (".pth", ".pt", ".pkl", ".onnx", ".safetensors", ".bin", ".ckpt")
# a config is a few KB; a larger file given as one (a dataset, an archive) is not read whole
MAX_CONFIG_BYTES = 4 << 20


def _read_yaml(path: Path) -> DictConfig:
    """`path` parsed; a copy of the parse of the same text before (a tool reads each file of
    its config's chain several times, and OmegaConf's parse is the slow part)."""
    if not path.is_file():
        override = (" (a key=value override? the config file comes first, then the overrides)"
                    if "=" in path.name else "")
        raise ConfigError(f"config file not found: {missing_path(path)}{override}"
                          f"{packaged_config_hint(path)}")
    if path.suffix.lower() in WEIGHTS_SUFFIXES:  # Predictor("model_final.pth"): a decode error
        raise ConfigError(f"{path} is a weights file, not a config: pass it as the weights "
                          f"(Predictor(config, weights=...), --weights), with the config its "
                          f"run wrote (config.yaml), or None where the weights record theirs")
    if path.suffix.lower() == ".py":  # YAML reads mmdetection's `_base_ = [...]` as a key
        raise ConfigError(f"{path} is a Python config (mmdetection's, MMEngine's or "
                          f"detectron2's LazyConfig): the configs here are YAML files; start "
                          f"from one of configs/ (README, 'Coming from detectron2 or "
                          f"mmdetection': their keys and ours)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size / 2**20:.0f} MiB: not a config (a YAML file of a few "
                          f"KB; configs/ has them), not read")
    text = ""
    try:
        text = path.read_text(encoding="utf-8")
        if "\0" in text:
            raise ConfigError(f"{path} is not a text file (it holds NUL bytes): a config is a "
                              f"YAML file (configs/ has them)")
        cfg = _parse_yaml(text, str(path), os.environ.get("OMEGACONF_MAX_YAML_EXPANDED_NODES"))
    except ConfigError:
        raise
    except Exception as e:  # yaml.YAMLError and friends
        if str(e).startswith("Invalid loaded object type"):  # (OmegaConf's, of a scalar file)
            raise ConfigError(f"config file {path} must hold a mapping at the top level (it "
                              f"holds a single value)") from None
        tabs = "; the file holds tabs: YAML indents with spaces" if "\t" in text else ""
        raise ConfigError(f"cannot parse config file {path}: {e}{tabs}") from e
    if not isinstance(cfg, DictConfig):
        results = (" (a list: a detections/results file? those are read by tools/eval.py "
                   "--results)" if isinstance(cfg, ListConfig) else "")
        raise ConfigError(f"config file {path} must hold a mapping at the top level{results}")
    if {"images", "annotations"} <= set(cfg.keys()):  # (a COCO file's)
        raise ConfigError(f"{path} is a COCO-format annotation file (images, annotations), not a "
                          f"config: give it to a detection config as data.train.ann_file= or "
                          f"data.val.ann_file= (configs/detection, README 'Detection')")
    return copy.deepcopy(cfg)


def config_chain(path: str | os.PathLike) -> list[tuple[Path, DictConfig]]:
    """The files `path` inherits from, bases first, each without its `_base_` key, each once.

    `_base_` is a path (or a list of paths, the later ones winning) relative to the file that
    names it, or `resnet_detect::PATH`, a config of this package's configs/ folder wherever
    it is installed (mmdetection's `mmdet::`). A file reached again (two bases that inherit
    one file) is merged at its first place only: merged again, it would undo what the bases
    between set.
    """
    chain: list[tuple[Path, DictConfig]] = []

    def visit(file: Path, stack: tuple[Path, ...]) -> None:
        file = file.resolve()
        if file in stack:
            cycle = " -> ".join(str(p) for p in (*stack, file))
            raise ConfigError(f"_base_ cycle: {cycle}")
        first = next((i for i, (done, _) in enumerate(chain) if done == file), None)
        if first is not None:
            _warn_of_a_skipped_repeat(file, stack[-1], chain[first], chain[first + 1:])
            return
        if stack and not file.is_file():
            raise ConfigError(f"config file not found: {missing_path(file)} (a {BASE_KEY} of "
                              f"{stack[-1]}){packaged_config_hint(file)}")
        cfg = _read_yaml(file)
        bases = cfg.pop(BASE_KEY, None)
        if bases is not None:
            if isinstance(bases, str):
                bases = [bases]
            if not isinstance(bases, (list, ListConfig)) or not all(
                    isinstance(b, str) for b in bases):
                raise ConfigError(f"{BASE_KEY} in {file} must be a path or a list of paths")
            for base in bases:
                visit(_base_path(base, file), (*stack, file))
        chain.append((file, cfg))

    top = os.fspath(path)
    visit(_packaged(top, "the config") if top.startswith(PACKAGE_PREFIX) else Path(top), ())
    return chain


def _base_path(base: str, file: Path) -> Path:
    """The file a `_base_` entry of `file` names."""
    if not base.startswith(PACKAGE_PREFIX):
        if "::" in base:
            raise ConfigError(f"{BASE_KEY} {base!r} in {file}: {PACKAGE_PREFIX} is the one "
                              f"package prefix (this project's configs/)")
        return file.parent / base
    return _packaged(base, f"a {BASE_KEY} of {file}")


def _packaged(name: str, named_by: str) -> Path:
    """The file `resnet_detect::PATH` names: PATH under the package's configs/ folder."""
    path = (CONFIGS / name[len(PACKAGE_PREFIX):].strip()).resolve()
    if not path.is_relative_to(CONFIGS.resolve()):
        raise ConfigError(f"{name!r} ({named_by}) is outside the package's configs folder "
                          f"{CONFIGS}")
    return path


_SKIPS_SAID: set[tuple[Path, Path]] = set()


def _warn_of_a_skipped_repeat(file: Path, parent: Path, merged: tuple[Path, DictConfig],
                              since: list[tuple[Path, DictConfig]]) -> None:
    """A file reached again is not merged again; where merging it again would have set keys
    the files merged since its first place set (what an earlier version did), said."""
    own = set(flat_keys(OmegaConf.to_container(merged[1], resolve=False)))
    later = {key: path for path, part in since
             for key in flat_keys(OmegaConf.to_container(part, resolve=False))}
    kept = sorted(own & later.keys())
    if kept and (file, parent) not in _SKIPS_SAID:  # (a tool reads its config several times)
        _SKIPS_SAID.add((file, parent))
        logger.warning("%s is a %s of %s and was merged before it (its first place): not "
                       "merged again, so these keep the values %s set since: %s (list it "
                       "first, or set them in %s, to have its values)", file, BASE_KEY, parent,
                       ", ".join(sorted({later[k].name for k in kept})),
                       ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""), parent.name)


def as_override(value: Any) -> str:
    """`value` as a `key=value` override writes it (null, true / false, lists without spaces:
    one shell word)."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(as_override(item) for item in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def is_number(value: Any) -> bool:
    """An int or float (YAML's true is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _deferred(value: Any) -> bool:
    """A ${...} interpolation or the mandatory ???: a value known only once resolved."""
    return isinstance(value, str) and (value.startswith("${") or value == "???")


def _kinds(defaults: Mapping[str, Any] | DictConfig) -> dict[str, str]:
    """Dotted key -> "int", "float", "ints", "floats" (a list of numbers), "names" (a list of
    strings), "str", "bool", "section" or "path" (KINDS_OF_NULL_DEFAULTS), from its default
    (null defaults, lists of lists and the NAMED_SWITCHES take anything: `train.amp: false`
    also takes bf16)."""
    kinds: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                kinds[key] = "section"
                walk(v, f"{key}.")
            elif is_number(v):
                kinds[key] = "int" if isinstance(v, int) else "float"
            elif isinstance(v, str):
                kinds[key] = "str"
            elif isinstance(v, bool) and key not in NAMED_SWITCHES:
                kinds[key] = "bool"
            elif isinstance(v, list) and all(is_number(x) for x in v):
                kinds[key] = "ints" if v and all(isinstance(x, int) for x in v) else "floats"
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                kinds[key] = "names"  # feature maps: out_features, in_features
            elif v is None and key in KINDS_OF_NULL_DEFAULTS:
                kinds[key] = KINDS_OF_NULL_DEFAULTS[key]

    walk(OmegaConf.to_container(defaults) if isinstance(defaults, DictConfig) else defaults, "")
    return kinds


def _check_values(part: DictConfig, kinds: Mapping[str, str],
                  source_of: str | Callable[[str], str]) -> None:
    """Refuse, naming the key and its file or override, rather than fail deep in training: a
    section replaced by a value (an empty one in a file wiped its defaults), a value that is not
    a number where the default is a number, not a list of numbers where it is such a list (the
    NUMBER_OR_LIST keys take either), a fraction where it is a whole number, anything but true
    or false where the default is one (a quoted "false" is a string, which Python takes as
    true). A number where the default is a string becomes that string
    (`train.output_dir=2024`)."""
    def check(key: str, v: Any) -> None:
        kind = kinds.get(key)
        source = source_of(key) if callable(source_of) else source_of
        if kind == "section" and not isinstance(v, Mapping):
            empty = " (a section left empty in a file: give it keys or remove it)" \
                if v is None and not source.startswith("override") else ""
            raise ConfigError(f"{key} is a section of keys, got {v!r} in {source}{empty}")
        if kind == "bool" and not isinstance(v, bool) and not _deferred(v):
            raise ConfigError(f"{key} must be true or false, got {v!r} in {source}")
        if kind == "names" and v is not None and not _deferred(v) and (
                not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            # a string was read letter by letter: ['r', 'e', 's', '3', ',', ...]
            raise ConfigError(f"{key} must be a list of names, e.g. [res3, res4], got {v!r} in "
                              f"{source}")
        if kind == "path" and v is not None and not _deferred(v) and not isinstance(v, str):
            loss = (" (per-class weights of a segmenter's loss are model.class_weight)"
                    if isinstance(v, list) and key == "model.weights" else "")
            raise ConfigError(f"{key} is a weights file's path (or null), got {v!r} in "
                              f"{source}{loss}")
        # (a base file's null may be set below it: see _refuse_nulls)
        if kind not in ("int", "float", "ints", "floats") or v is None or _deferred(v):
            return
        values = v if isinstance(v, list) else [v]
        numbers = [x for x in values if not _deferred(x)]
        listed = kind in ("ints", "floats")
        either = key in NUMBER_OR_LIST
        if (isinstance(v, list) != listed and not either) or not all(
                is_number(x) for x in numbers) or (not values and (either or not listed)):
            # yacs' and Python's tuples, (640, 800): YAML reads them as text
            tuple_hint = (f" (a list is written [{v.strip()[1:-1].replace(' ', '')}] here)"
                          if isinstance(v, str) and v.strip().startswith("(")
                          and v.strip().endswith(")") and (listed or either) else "")
            yaml_hint = (" (YAML writes infinity .inf and not-a-number .nan)"
                         if isinstance(v, str) and v.strip().lstrip("+-").lower()
                         in ("inf", "infinity", "nan") else "")
            raise ConfigError(f"{key} must be {_wanted(key, kind)}, got {v!r} in "
                              f"{source}{tuple_hint}{yaml_hint}")
        if kind in ("int", "ints") and not key.endswith("epochs"):  # 2.5 epochs exist
            if not all(float(x).is_integer() for x in numbers):
                raise ConfigError(f"{key} must be a whole number, got {v!r} in {source}")
            if len(numbers) == len(values) and any(isinstance(x, float) for x in values):
                # 1e3: 1000, not 1000.0
                whole = [int(x) for x in values]
                OmegaConf.update(part, key, whole if isinstance(v, list) else whole[0])

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            check(key, v)
            if isinstance(v, Mapping):
                walk(v, f"{key}.")
            elif kinds.get(key) == "str" and is_number(v):
                OmegaConf.update(part, key, str(v))

    walk(OmegaConf.to_container(part), "")


def _refuse_nulls(resolved: Mapping[str, Any], kinds: Mapping[str, str], path: Any,
                  overrides: Sequence[str]) -> None:
    """A null left where the default is a number or a list of numbers (`train.base_lr=`: a
    script's unset variable), named with the override or file that left it, unless the key
    is NULLABLE; it was a TypeError deep in training."""
    for key, kind in kinds.items():
        if kind not in ("int", "float", "ints", "floats", "names") or key in NULLABLE:
            continue
        node: Any = resolved
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if node is None:
                raise ConfigError(f"{key} must be {_wanted(key, kind)}, got null in "
                                  f"{_source_of(key, path, overrides)}")


def _wanted(key: str, kind: str) -> str:
    """What a value of `key` (its default of `kind`) must be, as a message says it."""
    if key in NUMBER_OR_LIST:
        return "a number or a list of numbers"
    return {"ints": "a list of numbers", "floats": "a list of numbers",
            "names": "a list of names"}.get(kind, "a number")


def _suggestion(key: str, valid: Sequence[str]) -> str:
    lowered = {v.lower(): v for v in valid}  # (Base_LR for base_lr: case aside)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1].lower(), list(lowered), n=1,
                                      cutoff=0.6)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


def _marked_paths(node: DictConfig, prefix: str = "") -> tuple[list[str], list[str]]:
    """Dotted paths of the empty mappings (`{}`: a merge takes them for nothing to merge;
    written, they say "none") and of the ??? values in `node` (a merge keeps the value they
    were given for), its ${...} values left unresolved (they may name keys of the whole
    config)."""
    empty, mandatory = [], []
    for key in node.keys():
        value = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            mandatory.append(f"{prefix}{key}")
        elif isinstance(value, DictConfig):
            if len(value) == 0:
                empty.append(f"{prefix}{key}")
            else:
                inner = _marked_paths(value, f"{prefix}{key}.")
                empty, mandatory = empty + inner[0], mandatory + inner[1]
    return empty, mandatory


def _merge(cfg: DictConfig, other: DictConfig, source: str,
           kinds: Mapping[str, str] | None = None) -> DictConfig:
    """`other` merged into `cfg` in place (OmegaConf.merge copies the whole tree at each of a
    config's files and overrides); after a ConfigError `cfg` is half merged."""
    if kinds:
        _check_values(other, kinds, source)
    try:
        empty, mandatory = _marked_paths(other)
        sections = {path: OmegaConf.select(cfg, path, default=None) for path in empty}
        cleared = [path for path, node in sections.items()
                   if isinstance(node, DictConfig) and not OmegaConf.is_struct(node)]
        kept = [path for path, node in sections.items()
                if isinstance(node, DictConfig) and OmegaConf.is_struct(node) and len(node)]
        if kept:  # (mmdetection's _delete_ habit)
            logger.warning("%s: %s: {} leaves a section of set keys as it was (only a section "
                           "of free keys, such as train.lr_multipliers, is cleared by it); set "
                           "each key to change it", source, ", ".join(kept))
        cfg.merge_with(other)
        for path in cleared:  # `{}` given for an open section (lr_multipliers): none left
            node = OmegaConf.select(cfg, path)
            for key in list(node.keys()):
                del node[key]
        for path in mandatory:  # ??? given: a template's "set this" would be lost
            OmegaConf.update(cfg, path, "???")
        return cfg
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = getattr(e, "full_key", None) or str(e)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
        valid = ", ".join(keys) if keys else "?"
        where = f"under '{parent}'" if parent else "at the top level"
        given = OmegaConf.select(other, key, default=None)
        hint = other_key_hint(key, keys) or section_hint(
            list(flat_keys(to_plain(given), f"{key}.")) if isinstance(given, DictConfig)
            else [key])
        raise ConfigError(f"unknown config key '{key}' in {source}"
                          f"{'' if hint else _suggestion(key, keys)}; valid keys {where}: "
                          f"{valid}{hint}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid value in {source}: {e}") from None


ALWAYS_OPEN = "train.lr_multipliers"  # module names: a run's config.yaml, a checkpoint's record


def make_schema(defaults: Mapping[str, Any] | DictConfig, *,
                open_keys: Sequence[str] = ()) -> DictConfig:
    """A struct-mode copy of `defaults` where only the `open_keys` subtrees (and the shared
    train section's `train.lr_multipliers`, wherever a config is read) accept new keys."""
    schema = OmegaConf.create(OmegaConf.to_container(defaults) if isinstance(defaults, DictConfig)
                              else dict(defaults))
    OmegaConf.set_struct(schema, True)
    if isinstance(OmegaConf.select(schema, ALWAYS_OPEN, default=None), DictConfig):
        open_keys = (*open_keys, ALWAYS_OPEN)
    for key in open_keys:
        node = OmegaConf.select(schema, key)
        if not isinstance(node, DictConfig):
            raise ConfigError(f"open key '{key}' is not a mapping in the defaults")
        OmegaConf.set_struct(node, False)
    return schema


def load_defaults(path: str | os.PathLike) -> DictConfig:
    """A task's defaults file (configs/<task>/base_*.yaml) with its `_base_` files merged:
    every valid key of that task's configs with its default value."""
    cfg = OmegaConf.create({})
    for _, part in config_chain(path):
        cfg.merge_with(part)
    return cfg


_ABSENT = object()


def _rename(part: DictConfig, renamed: Mapping[str, str], source: str) -> DictConfig:
    """Move deprecated keys of `part` to their new names, with one warning naming them (once
    per file: a resumed run reads its config twice)."""
    moved = []
    for old, new in renamed.items():
        value = OmegaConf.select(part, old, default=_ABSENT)
        if value is _ABSENT:
            continue
        given = OmegaConf.select(part, new, default=_ABSENT)
        if given is not _ABSENT and given != value:  # one of the two would win without a word
            raise ConfigError(f"{source} sets both '{old}' ({as_override(value)}, the "
                              f"deprecated name) and '{new}' ({as_override(given)}): keep "
                              f"'{new}' alone")
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(part, parent) if parent else part
        node.pop(leaf)
        if parent and not node:
            grand, _, name = parent.rpartition(".")
            (OmegaConf.select(part, grand) if grand else part).pop(name)
        moved.append(f"{old} -> {new}")
        OmegaConf.update(part, new, value, force_add=True)
    if moved and (source, tuple(moved)) not in _SAID_RENAMED:
        _SAID_RENAMED.add((source, tuple(moved)))
        logger.warning("%s: deprecated config keys, read under their new names: %s", source,
                       ", ".join(moved))
    return part


_SAID_RENAMED: set[tuple[str, tuple[str, ...]]] = set()


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                defaults: Mapping[str, Any] | DictConfig | None = None,
                open_keys: Sequence[str] = (),
                renamed: Mapping[str, str] | None = None,
                allow_missing: bool = False) -> DictConfig:
    """Load a YAML config with its `_base_` files, then apply `key=value` overrides.

    Args:
        path: the YAML file.
        overrides: dotlist strings such as `train.base_lr=0.05` or `data.root=/data`.
        defaults: every valid key with its default value; None accepts any key.
        open_keys: dotted paths of subtrees of `defaults` that accept any key.
        renamed: deprecated dotted key -> its new name; old files and overrides keep loading,
            with a warning naming the new key.
        allow_missing: leave mandatory values (`???`) unset instead of refusing them (for
            printing a config; OmegaConf.missing_keys names them).

    Returns:
        The merged config, read-only keys-wise (struct mode) when `defaults` is given.

    Raises:
        ConfigError: a missing/unparsable file, a `_base_` cycle, an unknown key (named with
            the file or override that introduced it), a malformed override, or a mandatory
            value (`???`) left unset.
    """
    cfg = (make_schema(defaults, open_keys=open_keys) if defaults is not None
           else OmegaConf.create({}))
    kinds = _kinds(defaults) if defaults is not None else None
    renamed = renamed or {}
    for file, part in config_chain(path):
        cfg = _merge(cfg, _rename(part, renamed, str(file)), str(file), kinds)
    cfg = apply_overrides(cfg, overrides, renamed=renamed, kinds=kinds)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as e:  # a ${...} naming no key
        raise ConfigError(f"{_source_of(getattr(e, 'full_key', None), path, overrides)}: "
                          f"{' '.join(str(e).split())}") from None
    if kinds:  # the ${...} values, known now: ${oc.env:V} with V=false is the text 'false'
        _check_values(OmegaConf.create(resolved), kinds, lambda key: (
            f"{_source_of(key, path, overrides)} once its ${{...}} values are resolved (an "
            f"environment variable is text: ${{oc.decode:${{oc.env:NAME}}}} reads it as YAML)"))
        _refuse_nulls(resolved, kinds, path, overrides)
    if missing and not allow_missing:
        raise ConfigError(f"config {path} leaves mandatory keys unset: {', '.join(missing)} "
                          f"(set them in the file or as key=value overrides)")
    return cfg


def _source_of(key: str | None, path: str | os.PathLike, overrides: Sequence[str]) -> str:
    """The last override that set `key`, else the config file `path`."""
    for item in reversed(overrides):
        if key and item.split("=", 1)[0].strip() == key:
            return f"override '{item}'"
    return f"config {path}"


# the endings of keys that name files or folders, whatever their default
PATH_KEY_ENDINGS = ("_dir", "_file", ".root", "weights", "class_names")


def _refuse_a_list_element(cfg: DictConfig, key: str, item: str) -> None:
    """`key.0=x` or `key[0]=x` for a list `key`: OmegaConf made the list a mapping {"0": x},
    refused for its kind, not for the index."""
    if "[" in key:
        whole = key.split("[", 1)[0]
    else:
        parts = key.split(".")
        index = next((i for i, part in enumerate(parts) if i and part.isdigit()), None)
        if index is None:
            return
        whole = ".".join(parts[:index])
    listed = OmegaConf.select(cfg, whole, default=None)
    if isinstance(listed, ListConfig):
        raise ConfigError(f"override '{item}': an element of a list is not set alone; give "
                          f"the whole list: {whole}=[...] (now "
                          f"{as_override(OmegaConf.to_container(listed))})")


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], *,
                    renamed: Mapping[str, str] | None = None,
                    kinds: Mapping[str, str] | None = None) -> DictConfig:
    """`cfg` (not a read-only one) with `key=value` overrides merged into it in order, in
    place (the one override parser). `None` is null, as in detectron2's overrides.

    Raises:
        ConfigError: a malformed override, an unknown key, or a value of the wrong kind where
            `kinds` (dotted key -> kind of its default) says (named with the override).
    """
    if isinstance(overrides, str):  # (its characters would be read as overrides)
        raise ConfigError(f"overrides are a list of key=value strings, got the string "
                          f"{overrides!r}: write [{overrides!r}]")
    for item in overrides:
        key = item.split("=", 1)[0]
        # Hydra's add, force-add and delete (`~key` has no =); not a path's "~/"
        if re.fullmatch(r"(\+\+?|~)[A-Za-z_][\w.]*", key):
            raise ConfigError(f"override '{item}': Hydra's {key[:2] if key[1:2] == '+' else key[0]}"
                              f" prefix is not read here: every key exists in the defaults, "
                              f"set it as {key.lstrip('+~')}=VALUE (null unsets it)")
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value{key_hint(item)}" + (
                "; it is a file, and each option takes one (a shell pattern that matched "
                "several files?)" if Path(item).exists() else ""))
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override '{item}' has no key before its '=': write key=value")
        if key != key.strip():
            raise ConfigError(f"override '{item}' has a space in its key: write "
                              f"{key.strip()}={value.strip()} (one word)")
        if key_hint(key):  # this project's keys are lower-case
            raise ConfigError(f"unknown config key '{key}' in override '{item}'{key_hint(key)}")
        _refuse_a_list_element(cfg, key, item)
        try:
            dotlist = OmegaConf.from_dotlist([f"{key}=null" if value == "None" else item])
        except Exception as e:  # OmegaConf's, and yaml's for a malformed list
            # "[1," of [1, 2] unquoted: the shell cut it at its space
            cut = value[:1] in ("[", "{") and not value.endswith("]" if value[0] == "[" else "}")
            quotes = (f" (a list or mapping with spaces needs quotes: '{key}=[1, 2]')" if cut
                      else "")
            raise ConfigError(f"cannot parse override '{item}'{quotes}: "
                              f"{' '.join(str(e).split())}") from None
        parsed = OmegaConf.select(dotlist, key, throw_on_resolution_failure=False)
        kind = kinds.get(key) if kinds else None
        if value[:1] not in ("'", '"', "[", "{") and (
                # YAML reads "runs #2" as "runs" and a comment, "run: 2" as a mapping: a path
                re.search(r"(^|\s)#", value)
                or (isinstance(parsed, Mapping) and kind != "section")
                # 0755 is not 493, 1e3 not 1000.0 (a path's default may be null)
                or ((kind == "str" or key.endswith(PATH_KEY_ENDINGS)) and is_number(parsed))):
            OmegaConf.update(dotlist, key, value)  # the text as typed
        if key.endswith(PATH_KEY_ENDINGS) and value.startswith("~"):
            # the shell expands no ~ after "=": `train.output_dir=~/runs` made a folder "~"
            OmegaConf.update(dotlist, key, os.path.expanduser(value))
        source = f"override '{item}'"
        cfg = _merge(cfg, _rename(dotlist, renamed or {}, source), source, kinds)
    _clear_twins_of_overrides(cfg, [item.split("=", 1)[0].strip() for item in overrides])
    return cfg


# one setting in two units, (in iterations, in epochs): an override of the period in
# iterations (0: only at the end) unsets the files' in epochs, and one of the period in epochs
# (a number) the files' in iterations (train.checkpoint_period_epochs=1 on a config of
# checkpoint_period: 100; train.eval_period=0 on a recipe evaluating every 5 epochs); the
# period in epochs overridden with null leaves the one in iterations; both set in the files,
# or both overridden, are refused where they are read (train_settings.check_train_choices)
PERIODS = ("checkpoint_period", "eval_period")  # train.<period> and train.<period>_epochs
UNIT_TWINS = tuple((f"train.{period}", f"train.{period}_epochs") for period in PERIODS)


def _clear_twins_of_overrides(cfg: DictConfig, overridden: Sequence[str]) -> None:
    for iterations, epochs in UNIT_TWINS:
        if OmegaConf.select(cfg, epochs, default=_ABSENT) is _ABSENT:
            continue  # (not a training config)
        if iterations in overridden and epochs not in overridden:
            OmegaConf.update(cfg, epochs, None)
        elif (epochs in overridden and iterations not in overridden
              and OmegaConf.select(cfg, epochs) is not None):
            OmegaConf.update(cfg, iterations, 0)


def config_from_mapping(config: Mapping[str, Any] | DictConfig, overrides: Sequence[str] = (),
                        *, defaults: Mapping[str, Any] | DictConfig,
                        renamed: Mapping[str, str] | None = None,
                        source: str = "the checkpoint's config") -> DictConfig:
    """A config from a loaded mapping (e.g. the one a checkpoint records), checked against
    `defaults` like a file, then `overrides`; `source` names the mapping in errors."""
    cfg = make_schema(defaults)
    part = OmegaConf.create(OmegaConf.to_container(config) if isinstance(config, DictConfig)
                            else dict(config))
    # what a checkpoint recorded is not checked again: it trained, and must load for inference
    cfg = _merge(cfg, _rename(part, renamed or {}, source), source)
    cfg = apply_overrides(cfg, overrides, renamed=renamed, kinds=_kinds(defaults))
    from .custom_imports import KEY, import_custom_modules  # (it imports this module)
    import_custom_modules(cfg.get(KEY), source)
    return cfg


def config_needed(weights: str | os.PathLike) -> ConfigError:
    """The refusal of `weights` that record no config, given none: the run's config.yaml
    beside them named where it is there."""
    beside = Path(weights).parent / "config.yaml"
    give = (f"give {beside} (its run's)" if beside.is_file() else
            "give the config they were trained with")
    return ConfigError(f"a config is needed: the weights {weights} record none (other "
                       f"projects' weights do not, nor this project's checkpoints before "
                       f"2026-12-02): {give}")


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, as a run's config.yaml holds it."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder + rename)."""
    atomic_write_text(config_yaml(cfg), path)


def parse_bool(value: Any, key: str) -> bool:
    """A config value that must be true or false (YAML booleans, not strings or numbers).

    Raises:
        ValueError: anything else, naming `key`.
    """
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be true or false, got {value!r}")


class ArgumentError(ValueError):
    """A model part's constructor argument that cannot be (its own check, naming the
    argument); `config_section` names the config section it came from."""


@contextmanager
def config_section(section: str) -> Iterator[None]:
    """ArgumentErrors raised while parts are built from `section` of the config become
    ConfigErrors naming the section too: "model.rpn: batch_size_per_image must be positive".
    (Other errors, a bug's included, keep their type and traceback.)"""
    try:
        yield
    except ArgumentError as e:
        raise ConfigError(f"{section}: {e}") from e


def check_probability(value: Any, key: str, kind: str = "a probability") -> float:
    """A config value in [0, 1] (a flip probability; `kind` says what else: "an overlap"),
    else a ConfigError naming `key`."""
    if isinstance(value, bool) or not is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{key} must be {kind} in [0, 1], got {value!r}")
    return float(value)


def is_positive_int(value: Any) -> bool:
    """An int >= 1 (YAML's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_sizes(values: Any, key: str, count: int | None = None) -> list[int]:
    """Positive integer pixel sizes (one number or a list; `count` of them when given), else a
    ConfigError naming `key`."""
    listed = isinstance(values, (list, tuple, ListConfig))
    sizes = list(values) if listed else [values]
    if (not sizes or (count is not None and len(sizes) != count)
            or not all(is_positive_int(s) for s in sizes)):
        what = f"{count} positive integers" if count else "positive integers"
        raise ConfigError(f"{key} must be {what} (pixels), got {sizes if listed else values!r}")
    return sizes


def check_non_negative(section: Mapping[str, Any], keys: Sequence[str], prefix: str) -> None:
    """Each of `keys` in `section` a finite number >= 0 (loss weights, a smooth L1 beta: a
    negative loss weight trained on by gradient ascent), else a ConfigError naming it."""
    for key in keys:
        value = section[key]
        if not (is_number(value) and 0 <= value < math.inf):
            raise ConfigError(f"{prefix}{key} must be a number >= 0, got {value!r}")


def check_counts(section: Mapping[str, Any], keys: Sequence[str], prefix: str) -> None:
    """Each of `keys` in `section` a positive integer (how many boxes, detections...), else a
    ConfigError naming `prefix` + key."""
    for key in keys:
        if not is_positive_int(section[key]):
            raise ConfigError(f"{prefix}{key} must be a positive integer, got {section[key]!r}")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts/lists (storable in a weights_only checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flat_keys(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config section (plain dicts) as {dotted key: value}, `prefix` before each."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
