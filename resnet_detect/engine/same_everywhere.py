"""What every process of a multi-process (multi-node) run must agree on, checked with one
collective each before training: its config, its data, the step it resumes at. A process that
differs would train other weights, or wait in a collective the others never enter (30
minutes, then a lost connection that names nothing)."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from .config import ConfigError, flat_keys, to_plain
from .data import DatasetError
from .distributed import (all_gather_object, broadcast_object, get_world_size,
                          is_main_process)
from .run_lock import LOCK_FILE

T = TypeVar("T")
logger = logging.getLogger(__name__)
# keys each node may set its own way: its devices and what tunes its host
HOST_KEYS = frozenset({"train.device", "data.num_workers", "train.cudnn_benchmark",
                       "train.cache_host_memory"})
# and where it finds its files (the last part of a key: data.train.img_dir, model.weights...)
PATH_KEYS = frozenset({"root", "ann_file", "img_dir", "mask_dir", "split_file", "weights",
                       "output_dir", "class_names"})  # (the names themselves: compared as data)


def _shared_settings(cfg: DictConfig) -> dict[str, Any]:
    """The config's keys that must be equal on every node, flattened."""
    return {key: value for key, value in flat_keys(to_plain(cfg)).items()
            if key not in HOST_KEYS and key.rpartition(".")[2] not in PATH_KEYS}


def check_same_config_everywhere(cfg: DictConfig, resume: bool | str | os.PathLike) -> None:
    """Every process must train with the same settings (an override given on one node only,
    --resume on some): refused on every process, naming each key that differs."""
    if get_world_size() == 1:
        return
    # an interpolation (${oc.env:...}) may fail on one node only
    settings = done_everywhere(lambda: _shared_settings(cfg), "resolve its config")
    mine = (settings, "--resume-from" if isinstance(resume, (str, os.PathLike))
            else "--resume" if resume else "neither --resume nor --resume-from")
    seen = all_gather_object(mine)
    settings = [s for s, _ in seen]
    differ = sorted({k for s in settings for k in s if any(o.get(k) != s.get(k) for o in settings)})
    lines = [f"{key}: " + ", ".join(f"rank {r} {s.get(key)!r}" for r, s in enumerate(settings))
             for key in differ[:20]]
    if len({how for _, how in seen}) > 1:
        lines.append("resuming: " + ", ".join(f"rank {r} {how}" for r, (_, how) in
                                              enumerate(seen)))
    if lines:
        raise ConfigError("the processes were started with other settings; every node needs "
                          "the same command (only paths, train.device, data.num_workers, "
                          "train.cudnn_benchmark and train.cache_host_memory may differ):\n  "
                          + "\n  ".join(lines))


class OtherProcessFailed(RuntimeError):
    """Another process of the run stopped; the message names it and why."""


def done_everywhere(step: Callable[[], T], what: str) -> T:
    """`step()` (reading the data, building the model) on every process; when it fails on
    some (a node without the files), every process stops naming them, not only the one that
    failed (the others waited in their next collective, then reported a lost connection).
    `what`: the step, for the message ("read its data")."""
    if get_world_size() == 1:
        return step()
    try:
        result, error = step(), None
    except Exception as e:  # told to the others first, then raised here
        result, error = None, e
    errors = all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        raise OtherProcessFailed(f"another process could not {what}:" + "".join(
            f"\n  rank {rank}: {message}" for rank, message in failed))
    return result  # type: ignore[return-value]


def done_by_the_main_process(step: Callable[[], T], what: str) -> T:
    """`step()` on the main process alone (scoring the gathered detections, say), its result
    given to every process; where it fails, every process stops naming why (the others
    waited for its result, then reported a lost connection). `what`: the step, for the
    message ("score the detections")."""
    if get_world_size() == 1:
        return step()
    result, error = None, None
    if is_main_process():
        try:
            result = step()
        except Exception as e:  # told to the others first, then raised here
            error = e
    result, message = broadcast_object(
        (result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if message is not None:
        raise OtherProcessFailed(f"the main process could not {what}: {message}")
    return result


def check_same_data_everywhere(description: str, train: Any, val: Any) -> None:
    """Every process must have read the same data (each node may hold its own copy): other
    sizes give other schedules, whose collectives then wait for each other forever; other
    files or labels (a node's stale copy) train on a mixture, unseen. Compared: the sizes and
    classes, then the datasets' `contents_digest()` where they have one."""
    if get_world_size() == 1:
        return
    seen = all_gather_object((description, len(train), None if val is None else len(val),
                              getattr(train, "class_names", None)))
    if any(s != seen[0] for s in seen):
        raise DatasetError("the processes read different data; every one needs the same "
                           "files:" + "".join(f"\n  rank {r}: {s[0]}" for r, s in enumerate(seen)))
    digests = all_gather_object(done_everywhere(
        lambda: [_contents_digest(d) for d in (train, val)], "hash its data"))
    for split, name in enumerate(("training", "val")):
        other = [str(r) for r, d in enumerate(digests) if d[split] != digests[0][split]]
        if other:
            raise DatasetError(
                f"processes {', '.join(other)} read other {name} data than process 0: the "
                f"same counts and classes ({description}), but other file names or labels "
                f"(a node's copy of the data differs: every node needs the same files, in "
                f"folders of the same layout, and the same annotations)")


def _contents_digest(dataset: Any) -> str | None:
    digest = getattr(dataset, "contents_digest", None)
    return digest() if callable(digest) else None


def warn_of_an_unshared_output_dir(output_dir: Path) -> None:
    """The processes whose train.output_dir is not the folder the main process writes (each
    node's own disk): the run trains, but a --resume there finds no checkpoint. Called on
    every process once the main one has locked the folder (its lock file names it)."""
    if get_world_size() == 1:
        return
    try:
        lock = (output_dir / LOCK_FILE).read_text(encoding="utf-8")
    except OSError:
        lock = None
    seen = all_gather_object((lock, socket.gethostname()))
    if seen[0][0] is None or not is_main_process():  # (no lock: flock missing there)
        return
    apart = [f"{rank} ({host})" for rank, (text, host) in enumerate(seen) if text != seen[0][0]]
    if apart:
        logger.warning("processes %s do not see %s as process 0 writes it (train.output_dir "
                       "on each node's own disk?): process 0 alone writes the checkpoints and "
                       "logs, and a --resume needs every process to read them. Make "
                       "train.output_dir a folder every node shares, or before a --resume copy "
                       "last_checkpoint and the checkpoint it names (with its .sha256) into "
                       "the other nodes' folders", ", ".join(apart), output_dir)


def check_same_start_everywhere(start_iter: int, output_dir: Path) -> None:
    """Every process must resume at the same step: one that found another checkpoint, or
    none, in its train.output_dir (a node's own disk) would train other weights and end at
    another step while the others wait for it."""
    if get_world_size() == 1:
        return
    seen = all_gather_object((start_iter, str(output_dir)))
    if any(iteration != seen[0][0] for iteration, _ in seen):
        where = "; ".join(f"process {rank} at iteration {iteration} from {folder}"
                          for rank, (iteration, folder) in enumerate(seen))
        raise ConfigError(f"the processes resume at different steps ({where}): "
                          "train.output_dir must be one folder that every process (every node) "
                          "reads and writes (or copy last_checkpoint and the checkpoint it "
                          "names, with its .sha256, into each node's folder)")
