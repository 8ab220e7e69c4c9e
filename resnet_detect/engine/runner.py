"""One training run for any task: config in, OUTPUT_DIR/model_final.pth out.

The runner owns everything that is the same for every task: seeding, DDP, the optimizer and
learning-rate schedule from the shared `train` section (configs/base_train.yaml), AMP,
checkpointing and resume (the data position is the number of steps done), the guard for a
batch whose images were all unreadable, counting skipped images over every process, logging,
periodic evaluation, the final checkpoint, and a checkpoint before stopping on SIGTERM,
SIGINT or SIGHUP (engine.preemption).

A task supplies the rest through a small object (`engine.task_api.Task`): detection.training,
segmentation.training and backbones.pretraining each define one.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig
from torch import nn

from .amp import amp_for_device, float32_default
from .checkpoint import (POINTER, REPLACED, BestWeights, Checkpointer, CheckpointWriteError,
                         PeriodicCheckpointer, checkpoints_in, finish_replacing)
from .compilation import compile_model
from .custom_imports import KEY as CUSTOM_IMPORTS
from .custom_imports import (check_hook, config_hooks, import_custom_modules,
                             record_registering_modules)
from .curves import SCALARS_FILE, TENSORBOARD_DIR
from .config import ConfigError, config_yaml, flat_keys, to_plain
from .data import CountedLoader, build_test_loader, build_train_loader, worker_error_message
from .data.overlap import warn_of_val_in_training
from .distributed import (all_gather_object, broadcast_buffers, collective_timeout_s,
                          get_rank, get_world_size, init_distributed, is_main_process,
                          lost_process_hint,
                          refuse_syncbn_on_cpus, torchrun_restart_count, torchrun_restarts_left,
                          unsynced_batch_norm_warning, usable_device, wrap_ddp)
from .ema import WeightAverage
from .files import atomic_write_json, is_disk_full, nan_to_none
from .logging import (FILE_ONLY, SAYS_ITS_ERROR, ProgressLogger, ScalarWriter, logging_kept,
                      logs_evaluation, rank_log_name, setup_logging)
from .memory_format import place_model
from .model_check import warn_of_random_backbone, weights_keys
from .rng import rng_kept, seed_everything
from .run_lock import exclusive_output_dir
from .same_everywhere import (check_same_config_everywhere, check_same_data_everywhere,
                              check_same_start_everywhere, done_everywhere,
                              warn_of_an_unshared_output_dir)
from .preemption import (EvaluationInterrupted, StopRequest, TrainingInterrupted,
                         stop_on_signals)
from .resume_checks import check_resumable, resume_model_check
from .run_length import (build_scheduler_from_config, describe_schedule, lengths_of_run,
                         periods_in_iterations, warn_of_epoch_rounding, warn_of_long_warmup,
                         warn_of_periods_read_as_epochs, warn_of_unused_steps)
from .skipped_images import SkipCounter, first_readable_batch
from .task_api import LEFT_OUT, RESUME_HINT, TASK_METHODS, Metrics, Task
# imported from here before the split of this module
from .skipped_images import UnreadableDataError  # noqa: F401
from .task_api import TaskData  # noqa: F401
from .train_settings import (build_optimizer_from_config, check_training_config,
                             cudnn_benchmark_warning, drawn_batch_size,
                             warn_of_a_rate_far_above_the_recipes)
from .trainer import Hook, PeriodicEval, Trainer, eval_mode

# a checkpoint's extra: a stop signal or an error ended the evaluation at its iteration, which
# a resume runs first
EVALUATION_PENDING = "evaluation_pending"
METRICS_FILE = "metrics.json"  # the last evaluation's numbers
# what a finished run leaves besides checkpoints (every task's final weights and metrics)
EARLIER_RESULTS = ("model_final.pth", "backbone_final.pth", BestWeights.FILE, METRICS_FILE)
# those the end of a run writes (model_best.pth: each best evaluation, BestWeights' own)
FINAL_RESULTS = tuple(name for name in EARLIER_RESULTS if name != BestWeights.FILE)


def _save_steps_done(trainer: Trainer, checkpointer: Checkpointer, logger: logging.Logger,
                     failed: str, fix: str, resume_hint: str = RESUME_HINT, *,
                     evaluation: bool = False) -> None:
    """Before an error stops the run: save the steps done since the last checkpoint (one
    process only: saving is collective, and under DDP the others wait inside a step);
    `evaluation`: the error was the evaluation's, which the checkpoint says is to run again
    at the resume (written again where that iteration's was there already)."""
    if get_world_size() > 1 or trainer.iter <= trainer.start_iter:
        return
    if checkpointer.saved_iteration == trainer.iter and not evaluation:
        logger.error("%s (below); the %d steps done are in %s already: %s, then %s", failed,
                     trainer.iter, checkpointer.path_of(trainer.iter), fix, resume_hint)
        return
    try:
        path = (_save_evaluation_pending(checkpointer, trainer.iter) if evaluation
                else checkpointer.save(trainer.iter))
    except Exception as e:  # the first error is the one to report
        logger.error("%s (below); saving the %d steps done failed too: %s", failed,
                     trainer.iter, e)
        return
    logger.error("%s (below); saved the %d steps done in %s: %s, then %s", failed,
                 trainer.iter, path, fix, resume_hint)


def _save_evaluation_pending(checkpointer: Checkpointer, iteration: int) -> Path:
    """The checkpoint of `iteration`, saying that its evaluation is to run at the resume."""
    return checkpointer.save(iteration, {**checkpointer.extra_fn(iteration),
                                         EVALUATION_PENDING: True})


def _saved_on_error(batches: Iterator[Any], trainer: Trainer, checkpointer: Checkpointer,
                    logger: logging.Logger, resume_hint: str = RESUME_HINT) -> Iterator[Any]:
    """`batches`, but when one cannot be made (a mask with an undeclared class, a file gone)
    the steps done since the last checkpoint are saved first: fix the data, then --resume.
    (Batches are drawn between steps, all of an accumulated step's before its first
    forward, so the state saved is a whole step's. One process:
    saving is collective, and under DDP the other processes wait inside a step.)"""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception:
            _save_steps_done(trainer, checkpointer, logger,
                             f"the batch of iteration {trainer.iter + 1} could not be made",
                             "fix the data", resume_hint)
            raise
        yield batch


def _warn_of_earlier_results(output_dir: Path, keep: Sequence[str],
                             logger: logging.Logger) -> None:
    """A fresh run in a folder with another run's final files: say they are not this run's."""
    kept = {Path(p).resolve() for p in keep}
    earlier = [p.name for p in (output_dir / n for n in EARLIER_RESULTS)
               if p.is_file() and p.resolve() not in kept]
    if earlier:
        logger.warning("%s holds %s of an earlier run: not this run's until it replaces them "
                       "at its end", output_dir, ", ".join(earlier))


def _refuse_another_tasks_results(output_dir: Path, cfg: DictConfig) -> None:
    """A fresh run in a folder holding another task's results (a pretraining given a
    detector's run folder) would replace them at its end: refused, naming them. A run of the
    same task replacing its predecessor's is what a rerun does (warned of)."""
    try:
        recorded = yaml.safe_load((output_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # no earlier run's config (or none that can be read): nothing to tell
    earlier_task = recorded.get("task") if isinstance(recorded, dict) else None
    # (backbone_final.pth: pretraining's alone, which another task's run leaves in place)
    results = [name for name in (*EARLIER_RESULTS, POINTER)
               if (output_dir / name).is_file()
               and (name != "backbone_final.pth" or cfg.get("task") == "classification")]
    if earlier_task is None or earlier_task == cfg.get("task") or not results:
        return
    raise ConfigError(f"train.output_dir {output_dir} holds the results of a {earlier_task} "
                      f"run ({', '.join(results)}); this {cfg.get('task')} run would replace "
                      f"them: give another train.output_dir")


def _refuse_to_restart_a_finished_run(output_dir: Path) -> None:
    """--resume in a folder with a finished run's results but no checkpoint (removed to save
    space, say) would train from scratch and replace them."""
    finished = [name for name in FINAL_RESULTS if (output_dir / name).is_file()]
    if finished:
        raise ConfigError(f"--resume: {output_dir} holds {', '.join(finished)} of a finished run "
                          f"but no checkpoint to resume from: nothing to resume. To train "
                          f"again from scratch, give another train.output_dir (or leave out "
                          f"--resume: the new run replaces them at its end)")


def _log_metrics(logger: logging.Logger, metrics: Metrics, iteration: int) -> dict[str, float]:
    """One log line per group of `metrics`; returns their scalars ("group/key") to write."""
    written: dict[str, float] = {}
    for group, values in metrics.items():
        scalars = {k: v for k, v in values.items() if isinstance(v, float)}
        logger.info("eval @ iter %d, %s: %s", iteration, group,
                    "  ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
        # each class's too, as detectron2 logs them ("bbox/AP-person"), not in the line
        for key, name in PER_CLASS_SCALARS.items():
            per_class = values.get(key)
            if isinstance(per_class, Mapping):
                scalars.update({f"{name}-{c}": v for c, v in per_class.items()
                                if isinstance(v, float) and math.isfinite(v)})
        written.update({f"{group}/{k}": v for k, v in scalars.items()})
    return written


def _evaluation_to_run_again(state: Mapping[str, Any] | None, resume: bool | str | os.PathLike,
                             output_dir: Path, lengths: Mapping[str, int],
                             task: Task) -> str | None:
    """Why the evaluation at the iteration resumed from runs first, or None: a stop signal or
    an error ended it (its checkpoint says so), or a kill (kill -9, the out-of-memory killer)
    that left no word of it: that iteration's checkpoint, in this folder, was written before
    the evaluation started, and scalars.jsonl has no line of it. (Where the line alone was
    lost, a disk that filled, it runs twice: harmless.) A task whose `evaluate` keeps what it
    scores in its own state (`state_records_evaluations`) runs it again whenever it is due: the
    checkpoint holds the state from before it. The main process reads the file; every process
    gets its answer. Call it on every process."""
    if state is None:
        return None
    start_iter, period = state["iteration"], lengths["eval_period"]
    if state["extra"].get(EVALUATION_PENDING):
        return "which a stop signal or an error ended"
    here = resume is True or Path(resume).resolve().parent == output_dir.resolve()
    due = (here and bool(period) and start_iter % period == 0
           and 0 < start_iter < lengths["max_iter"])
    unlogged = due and is_main_process() and not logs_evaluation(
        output_dir / SCALARS_FILE, start_iter)
    if due and all_gather_object(unlogged)[0]:
        return (f"which {SCALARS_FILE} has no line of (a kill during it, or a run that did "
                f"not evaluate there)")
    if due and getattr(task, "state_records_evaluations", False):
        return "whose scores the task's state, saved before it, lacks"
    return None


# the metrics' per-class tables and the scalar name each class's value is logged under
PER_CLASS_SCALARS = {"per_category": "AP", "per_class_iou": "IoU"}


@contextlib.contextmanager
def cudnn_benchmark_kept() -> Iterator[None]:
    """train.cudnn_benchmark sets torch's global switch for the run only."""
    before = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def check_task_and_hooks(task: Task, hooks: Sequence[Hook]) -> None:
    """Before anything runs: a task lacking what the runner calls (a misspelt save_final
    failed after the whole training), and `hooks=` that are no hooks (a class, not an
    instance; mmdetection's after_train_iter alone: silently never called), are refused as
    `train.hooks` are."""
    missing = [name for name in TASK_METHODS if not callable(getattr(task, name, None))]
    missing += [name for name in ("name", "primary_metrics") if not hasattr(task, name)]
    if missing:
        raise TypeError(f"the task {type(task).__name__} has no {', '.join(missing)}: a task "
                        f"supplies what engine.task_api.Task lists (docs/extending.md)")
    for i, hook in enumerate(hooks):
        if isinstance(hook, type):
            raise TypeError(f"hooks[{i}] is the class {hook.__name__}: give an instance, "
                            f"{hook.__name__}(...)")
        check_hook(hook, f"hooks[{i}]: {type(hook).__name__}", TypeError)


def run_training(task: Task, cfg: DictConfig, device: torch.device | str, *,
                 resume: bool | str | os.PathLike = False,
                 hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Build everything from `cfg`, train (resuming if asked), evaluate, save model_final.pth.

    Args:
        task: what is trained (its data, model, losses, metrics and final files).
        cfg: the task's config (the shared `train` section included).
        device: this process's device (from `engine.init_distributed`).
        resume: continue from OUTPUT_DIR/last_checkpoint when there is one (True), or from
            the checkpoint at this path (`Checkpointer.resume_from`).
        hooks: your own (`engine.trainer.Hook`: any of before_train, after_step,
            after_train, given the `Trainer`), on every process, after the runner's and the
            config's (`train.hooks`): a step's `after_step` follows its checkpoint and
            evaluation. What they keep is not in the checkpoints: a resumed run's
            `before_train` sees `trainer.start_iter`.

    Returns:
        {"model": the trained model (unwrapped), "metrics": the task's primary metric group
        of the last evaluation ({} without a val split), "all_metrics": every group,
        "iteration": steps done, "skipped": unreadable images skipped in training,
        "late_stop": the name of a stop signal that came after the last step's check (the
        run finished; a caller that runs more, a study's next net, stops there), or ""}.
    """
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"cfg must be the DictConfig of engine.tasks.load_task_config (or "
                        f"OmegaConf.create of a mapping), got a {type(cfg).__name__}")
    if isinstance(device, str):  # a Python caller's "auto" (a config's), "cpu", "cuda:0"
        device = (init_distributed(device, collective_timeout_s(cfg))
                  if device in ("auto", "cpu", "cuda")
                  else usable_device(device))
    check_task_and_hooks(task, hooks)
    logger = logging.getLogger(f"{__name__}.{task.name}")
    check_same_config_everywhere(cfg, resume)
    # (a Python caller's config, not read by a tool: its modules before the model's checks)
    import_custom_modules(cfg.get(CUSTOM_IMPORTS), "the config")
    compile_backend, amp = check_training_config(task, cfg)
    hooks = [*config_hooks(cfg), *hooks]
    amp_for_device(amp, device.type, warn=False)  # fp16 off a GPU: before the data is read
    t = cfg.train
    if get_world_size() > 1 and device.type != "cuda":
        model_cfg = cfg.get("model")  # (a task of one's own may have none)
        synced = [k for k, v in flat_keys(to_plain(model_cfg) if isinstance(model_cfg, DictConfig)
                                          else {}, "model.").items()
                  if k.endswith("norm") and v == "syncbn"]
        if synced:  # before the data is read and the model built
            refuse_syncbn_on_cpus(", ".join(f"{k}=syncbn" for k in synced))
    output_dir = Path(t.output_dir)
    check_output_dir = getattr(task, "check_output_dir", None)  # (classification's)

    def check_the_folder() -> None:  # before anything is written there (lock, log)
        if check_output_dir is not None:
            check_output_dir(cfg, output_dir)
        if not resume:
            _refuse_another_tasks_results(output_dir, cfg)

    done_everywhere(check_the_folder, "start in its train.output_dir")
    if device.type == "cuda":  # (rng_kept keeps a GPU's stream from its first use on only)
        torch.cuda.init()
    # a Python caller's random streams, logging and cuDNN setting are as they were after the
    # run, and training works under its torch.no_grad() or torch.inference_mode() and its
    # default dtype
    with (exclusive_output_dir(output_dir), rng_kept(), logging_kept(), cudnn_benchmark_kept(),
          torch.inference_mode(False), torch.enable_grad(), float32_default()):
        setup_logging(output_dir)
        restarts = torchrun_restart_count()
        if restarts and is_main_process():  # (a tool's console said so as it began)
            logger.warning("torchrun restarted the processes (restart %d of %d): %s", restarts,
                           restarts + torchrun_restarts_left(),
                           "resuming" if resume else "starting as the command says",
                           extra={FILE_ONLY: True})
        warn_of_an_unshared_output_dir(output_dir)
        try:
            return _train(task, cfg, device, resume, logger, output_dir, compile_backend, amp,
                          hooks)
        except BaseException as e:
            if is_main_process():  # an earlier run this one had not replaced yet: back whole
                _put_back_an_earlier_run(output_dir, logger)
            if isinstance(e, Exception):  # why it stopped, in log.txt too (traceback: stderr)
                others = (f" (the other processes' warnings and errors, where they had "
                          f"some: {output_dir / rank_log_name('<N>')})"
                          if get_world_size() > 1 and is_main_process() else "")
                says_it = SAYS_ITS_ERROR.get()  # (not where the line names the other logs)
                logger.error("training stopped: %s: %s%s%s", type(e).__name__,
                             worker_error_message(e), lost_process_hint(e), others,
                             extra={FILE_ONLY: not others and says_it is not None
                                    and says_it(e)})
            raise


def _put_back_an_earlier_run(output_dir: Path, logger: logging.Logger) -> None:
    """After this run stopped before its first checkpoint (an error, Ctrl-C while it started):
    the earlier run of the folder, whose curves and best weights it set aside, back whole."""
    try:
        finish_replacing(output_dir)
    except OSError as e:  # the first error is the one to report
        logger.warning("cannot put the earlier run's files back from %s (%s): the next start "
                       "in the folder tries again", output_dir / REPLACED, e)


def _data_and_lengths(task: Task, cfg: DictConfig, resume: bool | str | os.PathLike,
                      output_dir: Path, logger: logging.Logger) -> tuple[TaskData, dict[str, int]]:
    """The task's data, read the same on every process, and the run's lengths in iterations,
    with the warnings about both."""
    t = cfg.train
    if not (resume and (resume is not True or checkpoints_in(output_dir))):
        warn_of_random_backbone(cfg)  # (a resumed run's weights are its checkpoint's)
    warn_of_val_in_training(cfg.get("data") or {})
    data = done_everywhere(lambda: task.prepare(cfg), "find its weights or read its data")
    check_same_data_everywhere(data.description, data.train, data.val)
    if len(data.train) == 0:
        raise ValueError(f"the training set is empty ({data.description}): nothing to train on")
    if data.val is None and t.best_metric is not None:
        raise ConfigError(f"train.best_metric={t.best_metric} keeps the weights of the best "
                          f"evaluation, and this run has no val split to evaluate on: set a "
                          f"val split, or train.best_metric=null")
    lengths = {**lengths_of_run(cfg, len(data.train)),
               **periods_in_iterations(t, len(data.train))}
    warn_of_epoch_rounding(t, lengths, len(data.train), logger)
    warn_of_periods_read_as_epochs(t, lengths, logger)
    warn_of_long_warmup(lengths, logger, getattr(task, "schedule_section", "train"))
    if is_main_process():
        warn_of_a_rate_far_above_the_recipes(task.name, t, logger)
    warn_of_unused_steps(t, logger)
    steps, batch_size, processes = t.accumulation_steps, drawn_batch_size(t), get_world_size()
    logger.info("%s, %d process%s x %d images per step%s", data.description, processes,
                "es" * (processes > 1), batch_size * steps,
                f" in {steps} batches of {batch_size}" if steps > 1 else "")
    return data, lengths


def _log_schedule(t: DictConfig, lengths: dict[str, int], start_iter: int, evaluates: bool,
                  logger: logging.Logger) -> None:
    per_epoch = f" ({lengths['per_epoch']} per epoch)" if "per_epoch" in lengths else ""
    schedule = describe_schedule(t, lengths, evaluates)
    schedule = f": {schedule}" if schedule else ""
    if start_iter:  # (resumed: "for 400 iterations from 120" read as 400 more)
        left = lengths["max_iter"] - start_iter
        logger.info("training to iteration %d%s from iteration %d (%d iteration%s)%s",
                    lengths["max_iter"], per_epoch, start_iter, left, "s" * (left != 1),
                    schedule)
    else:
        logger.info("training for %d iterations%s%s", lengths["max_iter"], per_epoch, schedule)


def _interrupted(stop: StopRequest, iteration: int, in_evaluation: bool, max_iter: int,
                 path: Path, resume_hint: str) -> TrainingInterrupted:
    """The error a stop signal ends the run with, naming the checkpoint `path` to resume."""
    where = (f"the evaluation at iteration {iteration}" if in_evaluation
             else f"training after iteration {iteration}")
    after = ("" if not in_evaluation else "; the evaluation after the last step runs "
             "again, then the final weights are written" if iteration == max_iter
             else f"; the evaluation at iteration {iteration} runs again first")
    return TrainingInterrupted(
        f"{stop.signal_name or 'a stop signal'} stopped {where} of {max_iter}; "
        f"checkpoint {path}: {resume_hint}{after}",
        signal_name=stop.signal_name, iteration=iteration, exit_code=128 + (stop.signum or 15))


def _write_final(task: Task, cfg: DictConfig, model: nn.Module, max_iter: int,
                 output_dir: Path, saved_iteration: int | None, metrics: Metrics,
                 val_images: dict[str, int], logger: logging.Logger) -> None:
    """The task's final weights and the last evaluation's metrics.json (main process)."""
    try:
        for path in task.save_final(cfg, model, max_iter):
            logger.info("wrote %s", path)
    except OSError as e:  # a full disk: the last checkpoint holds the trained weights
        fix = "free space there" if is_disk_full(e) else "make it writable"
        raise CheckpointWriteError(
            f"cannot write the final weights in {output_dir} ({type(e).__name__}: {e}); "
            f"the checkpoint of iteration {saved_iteration} is intact: {fix} "
            f"and run the same command with --resume, which writes them without training "
            f"again") from e
    if metrics:  # the last evaluation's, as tools/eval.py writes them
        try:
            atomic_write_json({**nan_to_none(metrics), "images": val_images},
                              output_dir / METRICS_FILE)
        except OSError as e:  # the weights are written: not a reason to fail the run
            logger.warning("cannot write %s (%s: %s): the final weights are written, the "
                           "last evaluation's numbers are in log.txt",
                           output_dir / METRICS_FILE, type(e).__name__, e.strerror or e)
    elif (output_dir / METRICS_FILE).is_file():  # a resumed run without a val split
        logger.warning("%s is an earlier evaluation's, of other weights: this run did not "
                       "evaluate its final weights (no val split); tools/eval.py scores "
                       "them", output_dir / METRICS_FILE)


def _train(task: Task, cfg: DictConfig, device: torch.device, resume: bool | str | os.PathLike,
           logger: logging.Logger, output_dir: Path, compile_backend: str | None,
           amp: str | None, hooks: Sequence[Hook]) -> dict[str, Any]:
    """run_training after its checks, with the logging set up."""
    record_registering_modules(cfg)  # (its words in log.txt) before config.yaml is written
    t = cfg.train
    resume_hint = getattr(task, "resume_hint", RESUME_HINT)
    steps = t.accumulation_steps
    batch_size = drawn_batch_size(t)
    data, lengths = _data_and_lengths(task, cfg, resume, output_dir, logger)

    torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
    benchmark_warning = cudnn_benchmark_warning(cfg, device)
    if benchmark_warning and is_main_process():
        logger.warning(benchmark_warning)
    seed_everything(t.seed)  # the same initial weights on every process
    model = place_model(done_everywhere(lambda: task.build_model(cfg), "build its model"),
                        device, bool((cfg.get("model") or {}).get("channels_last", False)))
    model = compile_model(model, compile_backend, device)
    seed_everything(t.seed + get_rank())  # distinct dropout / sampling per process
    ddp_model = wrap_ddp(model, device)
    norm_warning = unsynced_batch_norm_warning(model, batch_size, get_world_size(), device.type,
                                               t.accumulation_steps)
    if norm_warning and is_main_process():
        logger.warning(norm_warning)
    optimizer = build_optimizer_from_config(cfg, model)
    scheduler = build_scheduler_from_config(cfg, optimizer, lengths)
    average = WeightAverage(model, t.ema_decay) if t.ema_decay is not None else None
    # the weights evaluated, kept as the best and written at the end
    evaluated = average.applied if average is not None else nullcontext
    skipped = SkipCounter(steps, "data.root and the images" if "root" in cfg.data else
                           "the data.train paths (and the images against the annotations)")

    # under DDP: the first readable training image, read when a batch had none; the same
    # in a resumed run (this process's last batch, as it was, was not in the checkpoint: a
    # resume ahead of an unreadable batch ended with other weights)
    stand_in: list[Any] = []

    def step_fn(net: nn.Module, batch: list[dict[str, Any]]) -> Mapping[str, torch.Tensor]:
        skipped.add_batch(batch_size, len(batch), trainer.iter)
        if batch:
            return task.losses(net, batch, device)
        # every image of the batch unreadable
        if get_world_size() > 1:
            # DDP's forward and backward are collective: run the model as the other processes
            # do, on a readable image, with the same losses times zero (no gradient of its
            # own to average in)
            if not stand_in:
                stand_in.append(first_readable_batch(data))
            trainer.losses_count = False
            return {k: v * 0.0 for k, v in task.losses(net, stand_in[0], device).items()}
        if not trainer.scaler.is_enabled():  # no gradient: the optimizer skips every weight
            return {"loss_skipped_batch": torch.zeros((), device=device, requires_grad=True)}
        # fp16's GradScaler needs gradients to check: zero for every weight
        zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        return {"loss_skipped_batch": zero}

    trainer = Trainer(model=ddp_model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=lengths["max_iter"], amp=amp,
                      clip_grad_norm=t.clip_grad_norm or None, accumulation_steps=steps,
                      batch_is_empty=lambda batch: len(batch) == 0)
    if trainer.amp_dtype is not None:  # (config.yaml alone said so)
        logger.info("training under %s autocast (train.amp)", amp)
    provenance = (task.provenance(cfg) if hasattr(task, "provenance")
                  else {"config": to_plain(cfg)})  # what a resume compares its settings with
    # what a resume compares: a checkpoint records its data sets' sizes too
    recorded = (None if provenance is None  # (a study's task records none)
                else {**provenance, "train_images": len(data.train),
                      **({"val_images": len(data.val)} if data.val is not None else {})})
    checkpointer = Checkpointer(output_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=trainer.scaler,
                                max_to_keep=t.max_to_keep, provenance=recorded,
                                average=average,
                                extra_fn=lambda _: {"skipped_images": skipped.total(), **(
                                    {"task": task.checkpoint_state()}
                                    if hasattr(task, "checkpoint_state") else {})},
                                check=lambda path, saved, iteration: check_resumable(
                                    path, saved, iteration, cfg, lengths["max_iter"],
                                    logger, recorded or {}, resume_model_check(task, model)))
    if resume:
        # restores every process's RNG state (not where the number of processes changed)
        state = (checkpointer.resume() if resume is True
                 else checkpointer.resume_from(resume, results=FINAL_RESULTS))
        if state is None:
            _refuse_to_restart_a_finished_run(output_dir)
    else:
        state = None
        checkpointer.remove_partial_writes()
        if is_main_process():  # not the weights this run starts from (model.weights=its file)
            keep = [v for v in weights_keys(cfg.get("model")).values() if isinstance(v, str)]
            checkpointer.replace_earlier_run(keep=keep)
            _warn_of_earlier_results(output_dir, keep, logger)
    start_iter = state["iteration"] if state is not None else 0
    given = [f"{k} ({v})" for k, v in weights_keys(cfg.get("model")).items() if v]
    if state is not None and given:  # (a fine-tuning's "start from scratch" warnings, above)
        logger.info("the weights %s gave the model are replaced by the checkpoint's: what "
                    "their loading said above is not this run's state", ", ".join(given))
    if state is not None:  # (older checkpoints did not count them)
        skipped.before = int(state["extra"].get("skipped_images", 0))
        resumed = getattr(task, "resumed", None)
        if resumed is not None:
            resumed(start_iter, state["extra"].get("task"))
    if resume:
        check_same_start_everywhere(start_iter, output_dir)
    if is_main_process():  # once resuming is known to work: a refused resume keeps the old one
        checkpointer.write_run_file("config.yaml", config_yaml(cfg))

    # an evaluation that a stop signal, an error or a kill ended, runs again first
    # (model_best.pth, the logs and the metrics are then the uninterrupted run's)
    again = (_evaluation_to_run_again(state, resume, output_dir, lengths, task)
             if data.val is not None else None)
    writer = ScalarWriter(output_dir / TENSORBOARD_DIR, jsonl=output_dir / SCALARS_FILE,
                          start_iter=start_iter,  # (after the last step: the final evaluation)
                          evaluated_again=again is not None or start_iter == lengths["max_iter"])
    task_hint = getattr(task, "slow_data_hint", None)
    slow_data_hint = "; ".join(filter(None, [
        f"more loader processes may help (data.num_workers, now {cfg.data.num_workers})",
        task_hint(cfg) if task_hint is not None else None]))
    best = (BestWeights(output_dir, t.best_metric, model, provenance, resume=bool(resume),
                        start_iter=start_iter, mode=t.best_metric_mode)
            if data.val is not None and t.best_metric is not None else None)
    runner_hooks: list[Any] = [ProgressLogger(t.log_period, writer, logger,
                                              lengths.get("per_epoch"), slow_data_hint),
                               PeriodicCheckpointer(checkpointer, lengths["checkpoint_period"],
                                                    on_save=best.checkpointed if best else None)]
    if average is not None:  # first: a checkpoint holds the average of the step it follows
        runner_hooks.insert(0, average)
        logger.info("keeping a moving average of the weights (train.ema_decay %g): "
                    "evaluations, checkpoints' weights and the final weights are the average",
                    average.decay)
        span = 1 / (1 - average.decay)  # the steps the average mostly spans
        if span > lengths["max_iter"] / 2:  # (it starts from the random weights, no warmup)
            fitting = round(1 - 10 / lengths["max_iter"], 6)
            logger.warning(f"train.ema_decay {average.decay:g} averages over about {span:.0f} "
                           f"steps, against this run's {lengths['max_iter']}: the final weights "
                           f"(the average) stay near the start; a decay of 1 - 10 / steps or "
                           f"less follows the training"
                           + (f" ({fitting:g} here)" if fitting > 0 else ""))
    eval_hook = None
    val_images: dict[str, int] = {}  # the last evaluation's count, for metrics.json
    stop = StopRequest()  # set by a stop signal while training runs (stop_on_signals)
    if data.val is not None:
        val_loader = build_test_loader(data.val, batch_size=data.val_batch_size,
                                       num_workers=cfg.data.num_workers,
                                       pin_memory=device.type == "cuda",
                                       collate_fn=data.collate)

        def evaluate() -> Metrics:
            counted = CountedLoader(val_loader, stop)
            # rng_kept: the weights do not depend on eval_period
            try:
                with evaluated(), eval_mode(model), torch.no_grad(), rng_kept():
                    broadcast_buffers(model)  # every process scores rank 0's statistics
                    metrics = task.evaluate(model, counted, device)
            except EvaluationInterrupted:
                raise
            except Exception:
                _save_steps_done(trainer, checkpointer, logger,
                                 f"the evaluation at iteration {trainer.iter} failed",
                                 "fix what stopped it", resume_hint, evaluation=True)
                raise
            counted.raise_if_stopped()  # (a task that scored a part of the split)
            val_images.update(counted.report(logger, "val",
                                             getattr(task, "unreadable_val", LEFT_OUT)))
            return metrics

        def on_result(metrics: Metrics, iteration: int) -> None:
            scalars = _log_metrics(logger, metrics, iteration)
            if best is not None:
                with evaluated():
                    best.update(metrics, iteration)
            # last: scalars.jsonl's line is the record that the evaluation is done
            writer.add_scalars(scalars, iteration)

        eval_hook = PeriodicEval(lengths["eval_period"], evaluate, on_result=on_result)
        runner_hooks.append(eval_hook)
    trainer.register_hooks(*runner_hooks, *hooks)
    train_loader = build_train_loader(data.train, batch_size=batch_size, seed=t.seed,
                                      num_workers=cfg.data.num_workers,
                                      start_iter=start_iter * steps,
                                      group_ids=data.group_ids,
                                      pin_memory=device.type == "cuda",
                                      collate_fn=data.collate, batch_keys=data.batch_keys,
                                      repeat_factors=data.repeat_factors)
    _log_schedule(t, lengths, start_iter, data.val is not None, logger)
    # The objects that exist now stay out of garbage collection while loader workers live:
    # a collector pass (in a worker, or in this process) writes to every object it visits,
    # which copies each page of this heap shared with the forked workers (copy-on-write).
    gc.freeze()
    in_evaluation = False
    # the stop's checkpoint is saved with the signals still caught: a SIGTERM repeated within
    # the grace period (a launcher forwarding it) is the same request, not a kill under the save
    with stop_on_signals(stop):
        try:
            if again is not None and eval_hook is not None:
                logger.info("the evaluation at iteration %d, %s, runs now", start_iter, again)
                trainer.iter = trainer.start_iter = start_iter
                eval_hook.evaluate_now(trainer)
            finished = trainer.train(_saved_on_error(iter(train_loader), trainer, checkpointer,
                                                     logger, resume_hint),
                                     start_iter=start_iter, stop=stop)
        except EvaluationInterrupted:
            finished, in_evaluation = False, True
        except BaseException:
            writer.close()  # (before an earlier run's curves come back in its folder's place)
            raise
        finally:
            gc.unfreeze()  # (the training workers are gone with their iterator)
        writer.close()
        if not finished and in_evaluation and trainer.iter < lengths["max_iter"]:
            # (after the last step the final evaluation runs at a resume anyway)
            path = _save_evaluation_pending(checkpointer, trainer.iter)
        elif not finished:  # (a stop at a checkpoint's iteration: saved already)
            path = (checkpointer.path_of(trainer.iter)
                    if checkpointer.saved_iteration == trainer.iter
                    else checkpointer.save(trainer.iter))
    if not finished:
        raise _interrupted(stop, trainer.iter, in_evaluation, lengths["max_iter"], path,
                           resume_hint)
    if stop.requested:
        logger.info("%s came after the last step: the run finishes", stop.signal_name)
    total_skipped = skipped.report(logger, "train")
    if best is not None and is_main_process():
        best.report()
    if average is not None:
        average.copy_to_model()

    metrics: Metrics = dict(eval_hook.last_result) if eval_hook is not None else {}
    if is_main_process():
        _write_final(task, cfg, model, lengths["max_iter"], output_dir,
                     checkpointer.saved_iteration, metrics, val_images, logger)
    return {"model": model, "metrics": metrics.get(task.primary_metrics, {}),
            "all_metrics": metrics, "iteration": trainer.iter, "skipped": total_skipped,
            "late_stop": stop.signal_name}
