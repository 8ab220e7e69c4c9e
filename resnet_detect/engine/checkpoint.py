"""Training checkpoints: atomic writes, a `last_checkpoint` pointer, exact resume.

A checkpoint `model_{iteration:07d}.pth` holds

    {"model", "optimizer", "scheduler", "scaler": state dicts,
     "iteration": steps done, "world_size": int,
     "rng": [per-rank {"python", "numpy", "torch", "cuda"} states, as tensors],
     "extra": caller data (the runner's: images skipped, the task's state, an evaluation to
              run again first),
     "provenance": what the weights are (classes, settings, config), as in model_final.pth,
     "training_weights": with a moving average of the weights (engine.ema), the model's own
         state, while "model" holds the average (what evaluation and export read)}

in types `torch.load(weights_only=True)` accepts, and beside it
`model_{iteration:07d}.pth.sha256`, the file's checksum: a checkpoint whose bytes were damaged
after writing is unreadable, not loaded (torch.load would load most such damage into wrong
weights). `last_checkpoint` in the same folder names the newest one. Every process calls
`save` (RNG states are gathered from all ranks); only the main process writes. Resuming
restores every state, so a CPU run that is stopped and resumed ends with the same weights, bit
for bit, as one that never stopped; the optimizer's
hyperparameters and the learning-rate schedule are this run's (a longer schedule, another
learning rate), only the schedule's position comes from the checkpoint.
"""
from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import ConfigError
from .curves import SCALARS_FILE, TENSORBOARD_DIR
from .distributed import (all_gather_object, any_process, barrier, get_rank, get_world_size,
                          is_main_process)
from .distributed import unwrap_model
from .ema import WeightAverage
from .files import (PARTIAL_WRITE, atomic_save, atomic_write_text, checksum_file,
                    read_checked_bytes, remove_path, sha256_of, why_unloadable)
from .memory_format import contiguous
from .optim import fill_momentum_buffers, match_state_layouts
from .rng import get_rng_state, set_rng_state
from .schedule import restore_position
from .trainer import check_finite_weights

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)
POINTER = "last_checkpoint"
ABANDONED = "abandoned"  # checkpoints after the one --resume-from took
# an earlier run's checkpoints and pointer while a fresh run writes its first checkpoint: a
# kill leaves one run in the folder, the earlier (put back) or the new one
REPLACED = ".replaced_run"
# the files of a run folder that describe its checkpoints (`tools/train.py RUN/config.yaml
# --resume` continues the run): a run that replaces an earlier one writes its own with its
# first checkpoint (`Checkpointer.write_run_file`), the earlier run's set aside with its
# checkpoints
RUN_FILES = ("config.yaml",)
BEST_FILE = "model_best.pth"
# an earlier run's records beside its checkpoints: set aside when a fresh run starts (it logs
# and keeps its best from its first step), back where it stops before its first checkpoint
# (the fresh run's own removed), removed with the earlier checkpoints at that checkpoint
RUN_RECORDS = (SCALARS_FILE, TENSORBOARD_DIR, BEST_FILE, checksum_file(BEST_FILE).name)
_SAVING = "saving"  # in REPLACED: names the new checkpoint once the earlier files are moved
_STARTED = "started"  # in REPLACED: a fresh run set the earlier run's records there
CHECKPOINT_NAME = re.compile(r"model_(\d{7,})\.pth")  # 8 digits from iteration 10^7


def checkpoints_in(folder: Path) -> list[Path]:
    """The training checkpoints (model_NNNNNNN.pth) of a run's folder, in no order."""
    return [p for p in Path(folder).glob("model_*.pth") if CHECKPOINT_NAME.fullmatch(p.name)]


def pointer_target(folder: Path) -> Path | str | None:
    """The checkpoint a run folder's `last_checkpoint` names (None without one); for a
    pointer that names none (empty, garbled, unreadable), what it holds instead, so that
    resuming falls back to the files."""
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as e:  # (permissions)
        return f"(unreadable: {e.strerror or e})"
    if not CHECKPOINT_NAME.fullmatch(name):  # (garbage: a few of its characters)
        return f"{name[:24]!r}{'...' if len(name) > 24 else ''} (not a checkpoint name)"
    return folder / name


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state of the training checkpoint `path` (a run's model_NNNNNNN.pth), read and
    checked to be one; `Checkpointer.load` restores it.

    Raises:
        UnreadableCheckpointError: `path` is missing, cannot be read, or is no training
            checkpoint of this project (weights alone, another program's), naming what to do.
    """
    path = Path(path)
    try:
        data = read_checked_bytes(path)
    except (OSError, ValueError) as e:  # missing, a folder, its .sha256 differs
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    try:  # (torchvision's and timm's training checkpoints keep their args: refused below)
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {path}: {why_unloadable(data, e)}") from e
    if isinstance(state, dict) and "epoch" in state and "iteration" not in state:
        raise UnreadableCheckpointError(
            f"{path} is another program's training checkpoint (torchvision's references' "
            f"or timm's: it counts epochs): its optimizer and position are not resumed "
            f"here; start a run from its weights with model.weights={path}")
    if isinstance(state, dict) and {"state_dict", "meta"} <= state.keys():
        raise UnreadableCheckpointError(
            f"{path} is another program's checkpoint (mmdetection's or mmengine's: state_dict "
            f"and meta): its optimizer and position are not resumed here; start a run from "
            f"its weights with model.weights={path}")
    if isinstance(state, dict) and {"model", "optimizer", "iteration"} <= state.keys() \
            and "rng" not in state:
        raise UnreadableCheckpointError(
            f"{path} is another program's training checkpoint (detectron2's: model, "
            f"optimizer, iteration, without this project's random states): its optimizer and "
            f"position are not resumed here; start a run from its weights with "
            f"model.weights={path}")
    # a run's final weights (model_final.pth) record their iteration, and no random states
    if not isinstance(state, dict) or not {"model", "iteration", "rng"} <= state.keys():
        raise UnreadableCheckpointError(
            f"{path} is no training checkpoint (weights alone, as in model_final.pth and "
            f"backbone_final.pth: no optimizer or random states): resume from a "
            f"model_NNNNNNN.pth of a run, or start a new run from these weights "
            f"(model.weights=PATH, or model.backbone.weights=PATH for a backbone)")
    return state


class Checkpointer:
    """Saves and restores everything a training run needs to continue exactly.

    Args:
        output_dir: folder of the checkpoints and of the `last_checkpoint` pointer.
        model: the model (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler: optional; saved and restored when given.
        max_to_keep: keep only this many newest periodic checkpoints (None keeps all; at
            least 2 are kept, so that a damaged newest one has an older one to fall back on).
        provenance: stored in every checkpoint (see `backbones.make_provenance`).
        average: the run's moving average of the weights (engine.ema.WeightAverage), saved
            as "model" with the model's own state as "training_weights".
        extra_fn: iteration -> the "extra" of a save not given one, called on every process
            (it may be collective).
        check: called as check(path, its provenance or {}, its iteration) before a checkpoint
            is restored; raises to refuse it (e.g. another run's config).
    """

    def __init__(self, output_dir: str | os.PathLike, *, model: nn.Module,
                 optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, scaler: Any = None,
                 max_to_keep: int | None = None, provenance: Mapping[str, Any] | None = None,
                 average: WeightAverage | None = None,
                 extra_fn: Callable[[int], Mapping[str, Any]] | None = None,
                 check: Callable[[Path, Mapping[str, Any], int], None] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.model = model
        self.average = average
        self.extra_fn = extra_fn
        self.components = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        self.max_to_keep = None if max_to_keep is None else max(int(max_to_keep), 2)
        self.provenance = dict(provenance) if provenance is not None else None
        self.check = check
        self._earlier: list[Path] = []  # another run's checkpoints, replaced at the first save
        self._run_files: dict[str, str] = {}  # RUN_FILES' texts written with the first save
        self._kept: set[Path] = set()  # neither replaced nor pruned
        self.saved_iteration: int | None = None  # of this object's last save

    def replace_earlier_run(self, keep: Sequence[str | os.PathLike] = ()) -> None:
        """This run starts afresh in a folder holding another run's checkpoints: they are
        removed once this run's first checkpoint is written (kept if it fails before), so
        that neither pruning (by iteration) nor a later --resume mixes the two runs. `keep`:
        files not to remove (the weights this run started from)."""
        self._kept = {Path(p).resolve() for p in keep}
        self._earlier = [p for p in self._checkpoints() if p.resolve() not in self._kept]
        if self._earlier:
            logger.warning("%s holds the checkpoints of an earlier run (%s): starting from "
                           "scratch (without --resume), this run's first checkpoint replaces "
                           "them, its curves and its %s", self.output_dir, ", ".join(
                               p.name for p in sorted(self._earlier, key=_iteration_of)),
                           BEST_FILE)
            aside = self.output_dir / REPLACED
            if aside.exists():  # what a committed replacement left, undeletable: not reused
                logger.warning("%s is still there (a file there cannot be deleted): the "
                               "earlier run's curves and %s are not set aside, this run's "
                               "replace them", aside, BEST_FILE)
                return
            aside.mkdir()
            for name in RUN_RECORDS:
                if (self.output_dir / name).exists():
                    os.replace(self.output_dir / name, aside / name)
            (aside / _STARTED).touch()  # (after them: what the folder holds now is this run's)

    def write_run_file(self, name: str, text: str) -> None:
        """Write the run file `name` (one of RUN_FILES) now, or, in a folder whose earlier
        run this run replaces, with its first checkpoint: until then the folder's files are
        the earlier run's (a kill or an error before that checkpoint leaves that run whole,
        and `RUN/config.yaml --resume` continues it)."""
        if self._earlier:
            self._run_files[name] = text
        else:
            atomic_write_text(text, self.output_dir / name)

    def save(self, iteration: int, extra: Mapping[str, Any] | None = None) -> Path:
        """Write `model_{iteration:07d}.pth` and point `last_checkpoint` at it.

        Must be called on every process (the RNG states of all ranks are gathered).

        Raises:
            CheckpointWriteError: on every process, when the file could not be written (a
                full disk, say); the previous checkpoint and the pointer are left as they were.
        """
        check_finite_weights(list(unwrap_model(self.model).parameters()),
                             f"after iteration {iteration}: its checkpoint is not written")
        rng_states = all_gather_object(get_rng_state())
        if extra is None and self.extra_fn is not None:
            extra = self.extra_fn(iteration)
        path = self.path_of(iteration)
        error = None
        if is_main_process():
            state = {"model": contiguous(unwrap_model(self.model).state_dict()),
                     "iteration": int(iteration),
                     "world_size": get_world_size(), "rng": rng_states,
                     "extra": dict(extra or {})}
            if self.average is not None:
                state["training_weights"] = state["model"]
                state["model"] = contiguous(self.average.state_dict())
            if self.provenance is not None:
                state["provenance"] = self.provenance
            for name, component in self.components.items():
                if component is not None:
                    state[name] = component.state_dict()
            try:
                if self._earlier:
                    self._set_earlier_run_aside(path)
                atomic_save(state, path, checksum=True)
                for name, text in self._run_files.items():  # (an undo puts the earlier back)
                    atomic_write_text(text, self.output_dir / name)
                atomic_write_text(path.name + "\n", self.output_dir / POINTER)
            except OSError as e:
                error = e
                try:
                    finish_replacing(self.output_dir)  # the earlier run's files back
                except OSError as undo:
                    logger.error("cannot put the earlier run's checkpoints back from %s (%s): "
                                 "the next start in the folder tries again",
                                 self.output_dir / REPLACED, undo)
            else:
                if self._earlier:
                    _remove_aside(self.output_dir / REPLACED)
                self._earlier, self._run_files = [], {}
                self._prune(keep=path)
                logger.info("saved checkpoint %s", path)
        if error is None:
            self.saved_iteration = int(iteration)
        if any_process(error is not None):  # every process stops, none waits forever
            previous = pointer_target(self.output_dir)
            kept = (f"the previous checkpoint {previous} and {self.output_dir / POINTER} are "
                    "intact" if isinstance(previous, Path) else "no earlier checkpoint exists")
            reason = f"{type(error).__name__}: {error}" if error is not None else "see rank 0"
            # (torch's own error of a full disk is a RuntimeError naming neither; another
            # rank knows none)
            fix = ("Make it writable" if isinstance(error, PermissionError)
                   or getattr(error, "errno", None) == errno.EROFS
                   else "Free space there" if error is not None
                   else "Free space there, or make it writable (rank 0's message says which)")
            raise CheckpointWriteError(
                f"cannot write checkpoint {path.name} in {self.output_dir} ({reason}); {kept}. "
                f"{fix} (or set train.output_dir) and resume with --resume")
        barrier()
        return path

    def path_of(self, iteration: int) -> Path:
        """The checkpoint file of `iteration`."""
        return self.output_dir / f"model_{iteration:07d}.pth"

    def _prune(self, keep: Path) -> None:
        if self.max_to_keep is None:
            return
        old = sorted((p for p in self._checkpoints() if p != keep and p.resolve() not in
                      self._kept), key=_iteration_of)
        for path in old[: max(len(old) - self.max_to_keep + 1, 0)]:
            path.unlink()
            checksum_file(path).unlink(missing_ok=True)

    def _checkpoints(self) -> list[Path]:
        return checkpoints_in(self.output_dir)

    def _set_earlier_run_aside(self, first: Path) -> None:
        """Move the earlier run's pointer and checkpoints into OUTPUT_DIR/REPLACED (and a kept
        file of `first`'s name: the weights this run started from), copy its RUN_FILES there
        (the folder's stay the earlier run's until this run's replace them, just before its
        pointer), then name this run's `first` checkpoint there: `last_checkpoint` reappears
        in the folder only when it names `first`, which commits the replacement
        (`finish_replacing`)."""
        aside = self.output_dir / REPLACED
        aside.mkdir(exist_ok=True)
        for p in [self.output_dir / POINTER, *self._earlier, first]:
            for f in (p, checksum_file(p)):
                if f.is_file():
                    os.replace(f, aside / f.name)
        for name in RUN_FILES:
            if (self.output_dir / name).is_file():
                atomic_write_text((self.output_dir / name).read_text(encoding="utf-8"),
                                  aside / name)
        atomic_write_text(first.name + "\n", aside / _SAVING)

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of writes that a kill interrupted (checkpoints,
        config.yaml, metrics.json...), and complete or undo a replacement of an earlier run's
        checkpoints that it interrupted."""
        error = None
        if is_main_process():
            try:
                if finish_replacing(self.output_dir):
                    logger.warning("%s: a run was stopped while its first checkpoint replaced "
                                   "an earlier run's; the earlier run's checkpoints are back",
                                   self.output_dir)
                for tmp in self.output_dir.glob(".*.tmp"):  # (checkpoints, config.yaml, ...)
                    if PARTIAL_WRITE.fullmatch(tmp.name) and tmp.is_file():
                        tmp.unlink(missing_ok=True)
            except OSError as e:
                error = e
        if any_process(error is not None):  # every process stops, none waits forever
            raise CheckpointWriteError(
                f"cannot put {self.output_dir} in order after an interrupted run ("
                + (f"{type(error).__name__}: {error}" if error is not None else "see rank 0")
                + f"; the earlier run's checkpoints may be in {self.output_dir / REPLACED})")

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler, the weights' average and this rank's
        RNG state from `path`. (A checkpoint without an average gives a run with one its
        weights as the average's start; one with an average gives a run without one its
        training weights: both said in a warning.)

        Returns:
            {"iteration": steps done, "extra": what `save` was given}.

        Raises:
            UnreadableCheckpointError: the file is missing or cannot be read (nothing restored).
            ValueError: it lacks a state this run needs.
        """
        path = Path(path)
        state = read_training_checkpoint(path)
        if self.check is not None:
            self.check(path, state.get("provenance") or {}, int(state["iteration"]))
        training = state.get("training_weights")
        try:
            unwrap_model(self.model).load_state_dict(state["model"] if training is None
                                                     else training)
            if self.average is not None and training is not None:
                self.average.load_state_dict(state["model"])
        except RuntimeError as e:
            differences = key_differences(unwrap_model(self.model).state_dict(),
                                          state["model"] if training is None else training)
            raise ConfigError(f"checkpoint {path} does not fit this model (a model key changed "
                              f"since it was written, or {self.output_dir} holds another "
                              f"model's run: set the key back, or another train.output_dir):"
                              + (differences or f" {e}")) from None
        optimizer, scheduler = self.components["optimizer"], self.components["scheduler"]
        # this run's hyperparameters (its config) win over the checkpoint's; the learning
        # rate is the scheduler's at the resumed position
        hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")}
                 for g in optimizer.param_groups] if optimizer is not None else []
        for name, component in self.components.items():
            if component is None:
                continue
            if name not in state:  # final weights (model_final.pth) keep no optimizer
                raise UnreadableCheckpointError(
                    f"checkpoint {path} has no {name} state to resume from: resume from a "
                    f"model_NNNNNNN.pth of a run, or start a new run from these weights "
                    f"(model.weights=PATH)")
            if name != "scheduler":
                component.load_state_dict(state[name])
        for group, values in zip(optimizer.param_groups if optimizer else [], hyper):
            group.update(values)
        if optimizer is not None:  # a checkpoint of older code may lack some buffers
            fill_momentum_buffers(optimizer)
            match_state_layouts(optimizer)
        if scheduler is not None:
            restore_position(scheduler, state["scheduler"])  # and the lr at that position
        if self.average is not None and training is None:
            self.average.restart()
            logger.warning("checkpoint %s holds no moving average of the weights: the average "
                           "(train.ema_decay) starts from its weights at iteration %d", path,
                           state["iteration"])
        elif self.average is None and training is not None:
            logger.warning("checkpoint %s holds a moving average of the weights, which this "
                           "run (train.ema_decay=null) leaves: training continues from the "
                           "weights being trained", path)
        if state["world_size"] == get_world_size():
            set_rng_state(state["rng"][get_rank()])
        else:
            logger.warning("checkpoint %s was written by %d process%s, this run has %d: RNG "
                           "states are not restored, so the run will not repeat exactly",
                           path, state["world_size"], "es" * (state["world_size"] != 1),
                           get_world_size())
        logger.info("resumed from %s at iteration %d", path, state["iteration"])
        return {"iteration": int(state["iteration"]), "extra": dict(state.get("extra", {}))}

    def resume_from(self, path: str | os.PathLike,
                    results: Sequence[str] = ()) -> dict[str, Any]:
        """Load the checkpoint `path` (an earlier one of this run, say, from before its loss
        diverged, or another folder's) and make it the folder's newest: its checkpoints from
        that iteration on, the abandoned course, move to OUTPUT_DIR/abandoned/ (kept, out of
        pruning and of a later --resume), with the files named in `results` (a finished
        course's final weights, written after its checkpoints); a checkpoint from elsewhere is
        copied in; and `last_checkpoint` names it.

        Raises:
            UnreadableCheckpointError: `path` is missing or cannot be read (nothing changed).
        """
        self.remove_partial_writes()
        state = self.load(path)
        chosen = Path(path).resolve()
        later = sorted((p for p in self._checkpoints() if p.resolve() != chosen
                        and _iteration_of(p) >= state["iteration"]), key=_iteration_of)
        finals = [self.output_dir / name for name in results
                  if later and (self.output_dir / name).is_file()
                  and (self.output_dir / name).resolve() != chosen]
        if is_main_process():
            aside = self.output_dir / ABANDONED
            if later:
                aside.mkdir(exist_ok=True)
                logger.warning("%s holds %s from iteration %d on (%s): this run continues from "
                               "%s instead; they move to %s", self.output_dir,
                               "checkpoints and results" if finals else "checkpoints",
                               state["iteration"], ", ".join(p.name for p in later + finals),
                               path, aside)
            for p in later + finals:  # (an earlier abandoned course's files kept too)
                target = _free_name(aside / p.name)
                os.replace(p, target)
                if checksum_file(p).is_file():
                    os.replace(checksum_file(p), checksum_file(target))
            if chosen.parent != self.output_dir.resolve() \
                    or not CHECKPOINT_NAME.fullmatch(chosen.name):
                copy = self.path_of(state["iteration"])
                shutil.copyfile(chosen, copy)
                atomic_write_text(sha256_of(copy) + "\n", checksum_file(copy))
                chosen = copy
            atomic_write_text(chosen.name + "\n", self.output_dir / POINTER)
        barrier()
        return state

    def resume(self) -> dict[str, Any] | None:
        """Load the checkpoint `last_checkpoint` names; None (and nothing loaded) if the folder
        holds no checkpoint. When that file is missing or unreadable, say so and load the
        newest older checkpoint of the folder that reads; without a pointer (a kill before the
        run's first one was written, checkpoints copied without it), the newest that reads.

        Raises:
            UnreadableCheckpointError: no checkpoint of the folder could be read.
        """
        self.remove_partial_writes()
        newest = pointer_target(self.output_dir)
        found = sorted(self._checkpoints(), key=_iteration_of, reverse=True)
        if not isinstance(newest, Path) and not found:
            # absolute: a relative train.output_dir is taken from the current folder
            logger.warning("nothing to resume: no checkpoint in %s; starting from scratch",
                           os.path.abspath(self.output_dir))
            return None
        if not isinstance(newest, Path):
            why = (f"has no {POINTER} (a kill before it was written, or checkpoints copied "
                   "without it)" if newest is None
                   else f"has a {POINTER} that names no checkpoint: {newest}")
            logger.warning("%s %s: resuming from its newest checkpoint that reads",
                           self.output_dir, why)
            newest, candidates = None, found
        else:
            bound = _iteration_of(newest)
            candidates = [newest, *(p for p in found if _iteration_of(p) < bound)]
        failures = []
        for path in candidates:
            try:
                state = self.load(path)
            except UnreadableCheckpointError as e:
                failures.append(str(e))
                logger.warning("%s; trying the next older checkpoint", e)
                continue
            if newest is not None and path != newest:
                logger.warning("resumed from the older checkpoint %s: %s named %s, which could "
                               "not be read", path, self.output_dir / POINTER, newest.name)
            return state
        raise UnreadableCheckpointError(
            f"no checkpoint in {self.output_dir} can be read: " + "; ".join(failures))


def best_metric_parts(metric: Any) -> tuple[str, str]:
    """("bbox", "AP") of train.best_metric "bbox/AP"."""
    group, _, key = str(metric).partition("/")
    if not isinstance(metric, str) or not group or not key:
        raise ConfigError(f"train.best_metric must be group/key as the evaluations log it "
                          f"(bbox/AP, sem_seg/mIoU, classification/top1) or null, got {metric!r}")
    return group, key


BEST_MODES = ("max", "min")


class BestWeights:
    """`model_best.pth` in the output folder: the weights of the evaluation that scored
    best so far on `metric` ("group/key" as the evaluations log it, e.g. "bbox/AP"),
    written like model_final.pth ({"model", "provenance", "iteration"}) plus
    {"best": {"metric", "value", "mode"}}, so eval, demo and export take it alike.

    Args:
        output_dir: the run's folder.
        metric: "group/key".
        mode: "max" (higher is better: AP, mIoU, accuracy) or "min" (an error, a loss).
        model: the trained model (a DDP wrapper is unwrapped).
        provenance: what the weights record.
        resume: a resumed run competes with the best its folder already holds, unless that
            was scored after `start_iter`, the iteration resumed from: then it belongs to
            steps trained again or abandoned (--resume-from), and moves to
            OUTPUT_DIR/abandoned/, and the best as of the last training checkpoint (kept
            as SNAPSHOT, a hard link while it is the same file) takes its place where it was
            scored by `start_iter`.
        start_iter: the iteration the run resumed from.
    """

    FILE = BEST_FILE
    SNAPSHOT = ".model_best.checkpointed.pth"  # the file as of the last training checkpoint

    def __init__(self, output_dir: str | os.PathLike, metric: str, model: nn.Module,
                 provenance: Mapping[str, Any] | None, *, resume: bool,
                 start_iter: int = 0, mode: str = "max") -> None:
        self.group, self.key = best_metric_parts(metric)
        if mode not in BEST_MODES:
            raise ConfigError(f"unknown train.best_metric_mode {mode!r}; valid: "
                              f"{', '.join(BEST_MODES)}")
        self.metric, self.mode = metric, mode
        self.path = Path(output_dir) / self.FILE
        self.model = model
        self.provenance = dict(provenance or {})
        self.best: float | None = None
        self.best_iteration: int | None = None
        self._disabled = False
        self._warned_of_nan = False
        self.snapshot = self.path.with_name(self.SNAPSHOT)
        # (an evaluation at the checkpoint resumed from, run again, is part of its best)
        self._checkpointed_at: int | None = start_iter if resume else None
        if not resume and is_main_process():  # (another run's, which this one replaces)
            for path in (self.snapshot, checksum_file(self.snapshot)):
                path.unlink(missing_ok=True)
        if resume and self.path.is_file():
            try:
                saved = torch.load(io.BytesIO(read_checked_bytes(self.path)),
                                   map_location="cpu", weights_only=True)
                recorded, iteration = saved.get("best", {}), int(saved.get("iteration", 0))
            except Exception as e:  # a damaged file: the next evaluation replaces it
                logger.warning("cannot read %s (%s): the next evaluation replaces it",
                               self.path, e)
            else:
                if iteration > start_iter:
                    self._move_aside(iteration, start_iter)
                    self._take_snapshot(start_iter)
                elif (recorded.get("metric"), recorded.get("mode", "max")) == (metric, mode):
                    self.best, self.best_iteration = float(recorded["value"]), iteration
                else:
                    logger.warning("%s holds the best %s (train.best_metric_mode %s) of the "
                                   "run so far; this run keeps the best %s (%s): its next "
                                   "evaluation replaces the file", self.path,
                                   recorded.get("metric"), recorded.get("mode", "max"), metric,
                                   mode)

    def _take_snapshot(self, start_iter: int) -> None:
        """After the file scored past `start_iter` moved aside: the best as of the last
        checkpoint in its place, where it was scored by `start_iter` (the best of the
        evaluations up to it then, whichever checkpoint the run resumed from)."""
        try:
            saved = torch.load(io.BytesIO(read_checked_bytes(self.snapshot)),
                               map_location="cpu", weights_only=True)
            recorded, iteration = saved["best"], int(saved["iteration"])
        except FileNotFoundError:
            return
        except Exception as e:  # (damaged: as if there were none)
            logger.warning("cannot read %s (%s): the best before iteration %d is not known",
                           self.snapshot, e, start_iter)
            return
        if iteration > start_iter:  # (--resume-from a checkpoint before the last one)
            logger.warning("the best %s before iteration %d is not known (%s was scored at "
                           "iteration %d): the evaluations from here on choose the best anew",
                           self.metric, start_iter, self.snapshot.name, iteration)
            return
        if (recorded.get("metric"), recorded.get("mode", "max")) != (self.metric, self.mode):
            return
        if is_main_process():
            for source, target in ((checksum_file(self.snapshot), checksum_file(self.path)),
                                   (self.snapshot, self.path)):
                if source.is_file():
                    os.replace(source, target)
        self.best, self.best_iteration = float(recorded["value"]), iteration
        logger.info("%s: the best %s before it, %.4f at iteration %d, back in its place",
                    self.path, self.metric, self.best, iteration)

    def checkpointed(self, iteration: int) -> None:
        """A training checkpoint of `iteration` was written: the file as it is now is the
        best as of it (a hard link: no copy while the file stays; an evaluation at the
        checkpoint's iteration, which follows it, links its best again)."""
        self._checkpointed_at = iteration
        if is_main_process():
            self._link_snapshot()

    def _link_snapshot(self) -> None:
        for source, target in ((self.path, self.snapshot),
                               (checksum_file(self.path), checksum_file(self.snapshot))):
            try:
                target.unlink(missing_ok=True)
                if source.is_file():
                    os.link(source, target)
            except OSError:  # (a file system without hard links: no snapshot, as before)
                target.unlink(missing_ok=True)

    def _move_aside(self, iteration: int, start_iter: int) -> None:
        if is_main_process():
            aside = self.path.parent / ABANDONED
            aside.mkdir(exist_ok=True)
            logger.warning("%s was scored at iteration %d, after the checkpoint this run "
                           "resumed from (iteration %d): those steps are trained again or "
                           "abandoned, so it moves to %s", self.path, iteration, start_iter,
                           aside)
            target = _free_name(aside / self.path.name)  # (an earlier abandoned best kept)
            for source, to in ((self.path, target),
                               (checksum_file(self.path), checksum_file(target))):
                if source.is_file():
                    os.replace(source, to)

    def update(self, metrics: Mapping[str, Mapping[str, Any]], iteration: int) -> None:
        """After an evaluation (on every process; the main one writes)."""
        if self._disabled:
            return
        value = metrics.get(self.group, {}).get(self.key)
        if not isinstance(value, (int, float)):
            available = [f"{g}/{k}" for g, values in metrics.items() for k, v in values.items()
                         if isinstance(v, (int, float))]
            logger.warning("train.best_metric %s is not a number the evaluation gives (%s): "
                           "no %s is kept", self.metric, ", ".join(available), self.FILE)
            self._disabled = True
            return
        if value != value:  # NaN: undefined (no object of the kind in the val split)
            if not self._warned_of_nan:
                self._warned_of_nan = True
                logger.warning("train.best_metric %s is undefined (NaN) at iteration %d, as "
                               "the val split has nothing it measures: not compared", self.metric,
                               iteration)
            return
        if self.best is not None and (value <= self.best if self.mode == "max"
                                      else value >= self.best):
            logger.info("%s %.4f at iteration %d is not %s the best, %.4f at iteration %d "
                        "(%s)", self.metric, value, iteration,
                        "above" if self.mode == "max" else "below", self.best,
                        self.best_iteration, self.path.name)
            return
        written = True  # (the other processes write nothing: their best is not used)
        if is_main_process():
            try:
                atomic_save({"model": {k: v.detach().cpu().contiguous() for k, v in
                                       unwrap_model(self.model).state_dict().items()},
                             "provenance": self.provenance, "iteration": int(iteration),
                             "best": {"metric": self.metric, "value": float(value),
                                      "mode": self.mode}}, self.path,
                            checksum=True)
            except OSError as e:  # (a full disk: the next checkpoint's save says what to do)
                written = False  # a later result above the file's may still replace it
                logger.warning("cannot write %s (%s: %s): the best %s so far, %.4f at iteration "
                               "%d, is not kept; the file keeps the earlier best, if any; "
                               "training goes on", self.path, type(e).__name__,
                               e.strerror or e, self.metric, value, iteration)
            else:
                logger.info("best %s so far: %.4f at iteration %d, weights in %s", self.metric,
                            value, iteration, self.path)
        if written:
            self.best, self.best_iteration = float(value), int(iteration)
            if iteration == self._checkpointed_at and is_main_process():
                self._link_snapshot()

    def report(self) -> None:
        """At the end of the run: which evaluation's weights the file holds, or why none."""
        if self.best is not None:
            logger.info("%s holds the weights of the best %s, %.4f at iteration %d", self.path,
                        self.metric, self.best, self.best_iteration)
        elif self._warned_of_nan:
            logger.warning("train.best_metric %s was undefined (NaN) at every evaluation: no "
                           "%s is kept", self.metric, self.FILE)


def replacement_pending(output_dir: Path) -> bool:
    """Whether a fresh run's replacement of an earlier run in `output_dir` is not committed
    (the next start puts the earlier run back): a leftover of a committed one does not count."""
    aside = output_dir / REPLACED
    return aside.is_dir() and not ((aside / _SAVING).is_file()
                                   and (output_dir / POINTER).is_file())


def finish_replacing(output_dir: Path) -> bool:
    """Complete or undo a fresh run's replacement of an earlier run in `output_dir` that a
    kill, an error or a failed write interrupted: with the new run's pointer in the folder,
    the earlier files go; without it, the new run's first checkpoint and records go and the
    earlier files come back (True where checkpoints came back). For the main process alone,
    holding the folder."""
    aside = output_dir / REPLACED
    if not aside.is_dir():
        return False
    saving, started = aside / _SAVING, aside / _STARTED
    if not replacement_pending(output_dir):
        _remove_aside(aside)
        return False
    if saving.is_file():  # every earlier file is aside: the name in the folder is this run's
        name = saving.read_text(encoding="utf-8", errors="replace").strip()
        if CHECKPOINT_NAME.fullmatch(name):
            (output_dir / name).unlink(missing_ok=True)
            checksum_file(output_dir / name).unlink(missing_ok=True)
        for run_file in RUN_FILES:  # this run's, where the earlier run had none
            if not (aside / run_file).is_file():
                (output_dir / run_file).unlink(missing_ok=True)
    if started.is_file():  # the earlier run's records are aside: the folder's are this run's
        for name in RUN_RECORDS:
            remove_path(output_dir / name)  # (tensorboard/ a folder)
        started.unlink()
    saving.unlink(missing_ok=True)
    back = [f for f in aside.iterdir() if f.name in (POINTER, *RUN_FILES, *RUN_RECORDS)
            or CHECKPOINT_NAME.fullmatch(f.name.removesuffix(".sha256"))]
    for f in back:
        os.replace(f, output_dir / f.name)
    _remove_aside(aside)  # (a temporary file of the name's write)
    return any(f.name not in RUN_RECORDS for f in back)


def _remove_aside(aside: Path) -> None:
    """Delete OUTPUT_DIR/REPLACED, the new checkpoint's name last: a kill on the way leaves
    it naming the checkpoint that the folder's pointer names, or an empty folder. Best effort
    once the replacement is decided (a file held open on NFS stays as .nfs*): what is left,
    the next start removes."""
    try:
        for f in aside.iterdir():
            if f.name != _SAVING:
                remove_path(f)
        (aside / _SAVING).unlink(missing_ok=True)
        aside.rmdir()
    except OSError as e:
        logger.warning("cannot remove %s (%s): the next start in the folder tries again",
                       aside, e)


def _free_name(path: Path) -> Path:
    """`path`, or NAME.N.SUFFIX beside it where it is taken (a second abandoned course)."""
    number = 1
    while path.exists():
        path = path.with_name(f"{path.name.split('.')[0]}.{number}{''.join(path.suffixes[-1:])}")
        number += 1
    return path


def _iteration_of(checkpoint: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))  # type: ignore[union-attr]


def key_listing(title: str, keys: Sequence[str], shown: int = 10) -> str:
    """'\n  TITLE (N): the first `shown` keys ... and M more', or '' for no keys (a
    state dict's hundreds of keys in one message)."""
    if not keys:
        return ""
    more = f" ... and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"\n  {title} ({len(keys)}): {', '.join(keys[:shown])}{more}"


def key_mismatches(expected: Mapping[str, Any], given: Mapping[str, Any],
                   ignored: Callable[[str], bool] = lambda key: False
                   ) -> tuple[list[str], list[str], list[str]]:
    """(the keys `given` lacks, those it has in excess, "KEY: checkpoint SHAPE vs model SHAPE"
    for those of another shape); `ignored` keys are neither missing nor in excess."""
    shape = lambda v: tuple(getattr(v, "shape", ()))  # noqa: E731
    return ([k for k in expected if k not in given and not ignored(k)],
            [k for k in given if k not in expected and not ignored(k)],
            [f"{k}: checkpoint {shape(given[k])} vs model {shape(v)}"
             for k, v in expected.items() if k in given and shape(given[k]) != shape(v)])


def key_differences(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """The keys `given` lacks, those it has in excess, and those of another shape."""
    missing, unexpected, mis_shaped = key_mismatches(expected, given)
    return (key_listing("missing", missing) + key_listing("unexpected", unexpected)
            + key_listing("mis-shaped", mis_shaped))


class UnreadableCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


class PeriodicCheckpointer:
    """Hook: `checkpointer.save` every `period` iterations and after the last one.

    Args:
        checkpointer: what saves.
        period: iterations between saves (0: only at the end).
        extra_fn: iteration -> extra data stored with the checkpoint (the Checkpointer's
            own extra_fn otherwise).
        on_save: called with the iteration after each save (BestWeights.checkpointed).
    """

    def __init__(self, checkpointer: Checkpointer, period: int,
                 extra_fn: Callable[[int], Mapping[str, Any]] | None = None,
                 on_save: Callable[[int], None] | None = None) -> None:
        if period < 0:
            raise ValueError(f"checkpoint period must be >= 0, got {period}")
        self.checkpointer = checkpointer
        self.period = period
        self.extra_fn = extra_fn
        self.on_save = on_save

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.iter
        if it == trainer.max_iter or (self.period and it % self.period == 0):
            self.checkpointer.save(it, self.extra_fn(it) if self.extra_fn else None)
            if self.on_save is not None:
                self.on_save(it)
