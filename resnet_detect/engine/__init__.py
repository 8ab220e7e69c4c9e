"""What every task shares: config, distributed setup, the training loop, checkpoints, logging;
the runner (engine.runner), the task registry (engine.tasks) and the data layer (engine.data)
are imported from their modules."""
from .amp import AMP_DTYPES, amp_for_device, cpu_supports_bf16, parse_amp
from .checkpoint import Checkpointer, PeriodicCheckpointer
from .config import ConfigError, load_config, save_config, to_plain
from .files import atomic_save, atomic_write, atomic_write_json, atomic_write_text
from .distributed import (all_gather_object, all_reduce_mean, all_reduce_sum, any_process,
                          barrier, broadcast_buffers, cleanup, get_local_rank, get_rank,
                          get_world_size, init_distributed, is_main_process, per_process_batch_size,
                          unwrap_model, wrap_ddp)
from .logging import ProgressLogger, ScalarWriter, setup_logging
from .optim import OPTIMIZERS, build_optimizer
from .preemption import TrainingInterrupted
from .rng import seed_everything
from .schedule import WarmupDecay, build_lr_scheduler
from .trainer import NonFiniteLossError, PeriodicEval, Trainer

__all__ = ["AMP_DTYPES", "OPTIMIZERS", "Checkpointer", "ConfigError",
           "NonFiniteLossError", "PeriodicCheckpointer", "PeriodicEval", "ProgressLogger",
           "ScalarWriter", "Trainer", "TrainingInterrupted", "WarmupDecay", "all_gather_object",
           "all_reduce_mean", "all_reduce_sum", "amp_for_device", "any_process", "atomic_save",
           "atomic_write", "atomic_write_json", "atomic_write_text",
           "barrier", "broadcast_buffers", "build_lr_scheduler", "build_optimizer", "cleanup",
           "cpu_supports_bf16", "get_local_rank", "get_rank", "get_world_size", "init_distributed",
           "is_main_process", "load_config", "parse_amp", "per_process_batch_size",
           "save_config", "seed_everything",
           "setup_logging", "to_plain", "unwrap_model", "wrap_ddp"]
