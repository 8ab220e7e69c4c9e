"""torch.distributed setup from torchrun's environment, and the few collectives we need.

Without torchrun (no WORLD_SIZE in the environment) everything runs as a single process:
rank 0 of world size 1, and every helper here is a cheap no-op.
"""
from __future__ import annotations

import datetime
import gc
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, is_number


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def per_process_batch_size(batch_size: int, key: str) -> int:
    """This process's share of a global batch; ValueError naming `key` if it does not split."""
    world_size = get_world_size()
    if batch_size % world_size:
        raise ConfigError(f"{key} {batch_size} is not divisible by the {world_size} processes")
    return batch_size // world_size


def is_main_process() -> bool:
    return get_rank() == 0


def training_device_type(device: str) -> str:
    """"cuda" or "cpu": train.device ("auto": a GPU where there is one) checked, named."""
    if device not in ("auto", "cpu", "cuda"):
        unsupported = (" (Apple's GPUs, mps, are not supported: training there is untested; "
                       "use cpu)" if str(device).startswith("mps") else "")
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {device!r}"
                          f"{unsupported}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device=cuda but torch {torch.__version__} sees no GPU "
                          f"(CUDA build: {torch.version.cuda or 'none, a CPU-only torch'}); "
                          f"set train.device=cpu (or auto)")
    return "cuda" if use_cuda else "cpu"


# minutes a process waits at a collective for the others (torch's default, detectron2's)
COLLECTIVE_TIMEOUT_MIN = 30


def collective_timeout_s(cfg: Any) -> float:
    """`train.collective_timeout_min` of a config, in seconds (COLLECTIVE_TIMEOUT_MIN where the
    config has no such key: a Python caller's)."""
    minutes = (cfg.get("train") or {}).get("collective_timeout_min", COLLECTIVE_TIMEOUT_MIN)
    if not is_number(minutes) or not 0 < minutes < float("inf"):
        raise ConfigError(f"train.collective_timeout_min must be a positive number of minutes, "
                          f"got {minutes!r}")
    return 60.0 * minutes


def init_distributed(device: str = "auto", timeout_s: float = 60.0 * COLLECTIVE_TIMEOUT_MIN
                     ) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Uses NCCL when the device is a GPU (one GPU per process, `cuda:LOCAL_RANK`) and gloo on
    CPU. Without torchrun's variables it starts nothing and returns the device.

    Args:
        device: "auto" (GPU when available), "cpu" or "cuda".
        timeout_s: collective timeout.

    Returns:
        The device this process should use.
    """
    use_cuda = training_device_type(device) == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process LOCAL_RANK={local_rank} has no GPU: this machine has "
                           f"{torch.cuda.device_count()}; start torchrun with "
                           f"--nproc_per_node={torch.cuda.device_count()} or fewer "
                           f"(one process per GPU)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    # (a group the program made itself: its variables are its own)
    if not is_distributed() and launched_world_size() > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return target


TORCHRUN_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _given_world_size() -> int | None:
    """WORLD_SIZE as the environment gives it (1 where unset; None where it is no number)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None


def environment_world_size() -> int:
    """WORLD_SIZE as torchrun sets it: 1 where unset, or no count (which `init_distributed`
    refuses)."""
    return max(_given_world_size() or 1, 1)


def launched_world_size() -> int:
    """The WORLD_SIZE torchrun set (1 where none is set).

    Raises:
        ConfigError: a WORLD_SIZE that is no count, or one without the other variables torchrun
            sets (a shell's stray export, another launcher's half): torch's env:// rendezvous
            failed with a traceback, or waited half an hour for a master that never came.
    """
    world_size = _given_world_size()
    if world_size is None or world_size < 1:
        raise ConfigError(f"the environment's WORLD_SIZE={os.environ['WORLD_SIZE']!r} is no "
                          f"number of processes: torchrun sets it; unset it to run one process")
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if world_size > 1 and missing:
        raise ConfigError(f"the environment sets WORLD_SIZE={world_size} but not "
                          f"{', '.join(missing)}: start the processes with torchrun "
                          f"(`torchrun --nproc_per_node=N tools/...` on each node), which sets "
                          f"them all, or have the launcher set them too; unset WORLD_SIZE to "
                          f"run one process")
    return world_size


def cleanup() -> None:
    """Leave the process group (safe to call when none was started)."""
    if is_distributed():
        # the training's DistributedDataParallel sits in reference cycles (its trainer and
        # hooks): freed only after the group is destroyed, at the interpreter's exit, it
        # aborts the process there about one time in four (gloo)
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def _reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """Sum scalar values over all processes (one collective for the whole dict).

    Raises:
        RuntimeError: on every process, when the processes give different keys (their
            values would be summed under each other's names).
    """
    keys = sorted(values)
    if get_world_size() > 1:
        everywhere = all_gather_object(keys)
        if any(other != keys for other in everywhere):
            raise RuntimeError("the processes reduce different values: " + "; ".join(
                f"rank {rank}: {', '.join(k) or 'none'}" for rank, k in enumerate(everywhere)))
    if not keys:
        return {}
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).detach().reshape(())
                           .to(_reduce_device()) for k in keys])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
    return dict(zip(keys, stacked.tolist()))


def all_reduce_mean(values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """Average scalar values over all processes (one collective for the whole dict)."""
    world_size = get_world_size()
    return {k: v / world_size for k, v in all_reduce_sum(values).items()}


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device ("auto": a GPU where there is one, as the tools' device
    keys read it), refused with what is there when it is a GPU this process cannot use
    (before a model is built and its weights read for it)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own message lists some twenty device types
        raise ValueError(f"device {device!r} is none of 'auto', 'cpu', 'cuda', 'cuda:N', "
                         f"'mps'") from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: torch {torch.__version__} sees no GPU "
                             f"(CUDA build: {torch.version.cuda or 'none, a CPU-only torch'}); "
                             f"use device='cpu'")
        if target.index is not None and target.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} GPU"
                             f"{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1})")
    elif target.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: this torch has no Apple GPU (MPS) to "
                             f"use; use device='cpu'")
    elif target.type != "cpu":  # 'meta' builds, then fails in the first call's autocast
        raise ValueError(f"device {str(device)!r} is none of 'auto', 'cpu', 'cuda', 'cuda:N', "
                         f"'mps'")
    return target


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on at least one."""
    if get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_processes(*values: float) -> list[float]:
    """Each of `values` summed over all processes, in one collective (every process passes
    as many, in the same order; no names checked, unlike `all_reduce_sum`)."""
    if get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj`, indexed by rank."""
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """The main process's `obj`, on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# gloo's words for a peer gone (its RuntimeError), NCCL's for a remote process lost
_PEER_LOST = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|"
                        r"network error")


# gloo's own errors (its transport's file named) where a peer is gone, and where the processes
# cannot reach each other (a torchrun restart on gloo, say); other errors that name a socket
# (a hook's, NCCL's, the rendezvous') keep their tracebacks
_GLOO_PEER_LOST = re.compile(r"gloo/transport/\S*\] ((Read error|writev) \S*: )?"
                             r"(Connection (reset|closed) by peer|Broken pipe)")
_GLOO_UNREACHABLE = re.compile(r"Gloo connectFullMesh failed")


def other_process_gone(error: BaseException) -> str | None:
    """For a tool under torchrun (WORLD_SIZE > 1) whose gloo collective failed because
    another process stopped (its own error names why: a file only it lacked) or could not be
    reached: a one-line message in place of the collective's traceback; else None."""
    if environment_world_size() < 2 or not isinstance(error, RuntimeError):
        return None
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    first = first.split(". This is typically")[0]  # (gloo's advice to read the other's logs)
    if _GLOO_PEER_LOST.search(first):
        return (f"another process of this run stopped (its own message says why) or was "
                f"lost, and this one lost its connection to it: {first}")
    if _GLOO_UNREACHABLE.search(first):
        return (f"this process could not connect to the run's other processes (on gloo, a "
                f"torchrun restart can fail so; run the command again, with --resume for a "
                f"training): {first}")
    return None


def lost_process_hint(error: BaseException) -> str:
    """What to do after `error` of a multi-process run where a collective lost a process (a
    node killed, or its network gone: gloo's and NCCL's errors name a socket); "" otherwise."""
    if get_world_size() == 1 or not (isinstance(error, getattr(dist, "DistError", ()))
                                     or _PEER_LOST.search(str(error))):
        return ""
    # (gloo's error is the same where the other process ended on an error of its own, which a
    # resume meets again)
    lost = ("; another process of the run stopped (an error of its own, which its console and "
            "log name, log.txt.rank<N> or rank 0's log.txt: mend that first) or was lost "
            "(killed, or its node or network gone), and the steps since the last checkpoint "
            "with it: ")
    if torchrun_restarts_left():
        return lost + ("torchrun restarts the processes (--max-restarts), which continue from "
                       "that checkpoint; where it cannot, run the same command with --resume "
                       "on every node")
    return lost + "run the same command with --resume on every node to continue from that " \
                  "checkpoint"


def torchrun_restart_count() -> int:
    """How many times torchrun has restarted this process's command (0: its first start, or
    no torchrun)."""
    return _torchrun_number("TORCHELASTIC_RESTART_COUNT")


def torchrun_restarts_left() -> int:
    """How many more times torchrun restarts this process's command (--max-restarts less the
    restarts so far; 0 without torchrun)."""
    return max(_torchrun_number("TORCHELASTIC_MAX_RESTARTS") - torchrun_restart_count(), 0)


def _torchrun_number(name: str) -> int:
    try:
        return int(os.environ.get(name) or 0)
    except ValueError:  # (torchrun sets integers; another launcher's value is none of ours)
        return 0


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when there are several processes, else itself."""
    if get_world_size() == 1:
        return model
    if device.type != "cuda" and any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        refuse_syncbn_on_cpus("a norm: syncbn in the config (model.backbone.norm, "
                              "model.head.norm or model.options.norm)")
    if device.type != "cuda":
        # oneDNN on a CPU (bf16 autocast, and float32's strided 1x1 convolutions) gives weight
        # gradients channels_last strides: the weights' own memory layout (only size-1
        # dimensions differ), which autograd keeps and DDP's stride check warns of, on every
        # rank, for a copy of a few kB
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view "
                                                  "strides", category=UserWarning)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[get_local_rank()] if device.type == "cuda" else None)


# images per process under which BatchNorm's batch statistics are too noisy to train on alone
# (torchvision's segmentation reference and mmsegmentation synchronise them at 2-4 per GPU)
SMALL_NORM_BATCH = 8


def unsynced_batch_norm_warning(model: nn.Module, images: int, world_size: int,
                                device_type: str, accumulation_steps: int = 1) -> str | None:
    """The warning for BatchNorm layers that train on `images` images per forward in each of
    `world_size` processes, each with its own statistics (or on one image in one process);
    None where that is not so small."""
    own = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and not isinstance(m, nn.SyncBatchNorm) and m.track_running_stats]
    if not own or images >= (SMALL_NORM_BATCH if world_size > 1 else 2):
        return None
    keys = "model.backbone.norm, model.head.norm; model.options.norm for pretraining"
    if world_size == 1:
        more = (f"fewer train.accumulation_steps (now {accumulation_steps}), so that each pass "
                f"draws 2 or more images" if accumulation_steps > 1
                else "a train.batch_size of 2 or more")
        return (f"{len(own)} BatchNorm layers train on 1 image per forward pass: their "
                f"statistics are one image's (the recipes train on 2 or more per GPU): {more}, "
                f"or norm: gn, which needs no batch statistics ({keys})")
    fix = ("norm: syncbn synchronises them over the GPUs, as torchvision's segmentation "
           "reference and mmsegmentation do" if device_type == "cuda" else
           "norm: gn needs no batch statistics (syncbn is for GPUs)")
    return (f"{len(own)} BatchNorm layers train on {images} images per process, each of the "
            f"{world_size} processes with its own statistics: {fix} ({keys})")


def refuse_syncbn_on_cpus(where: str) -> None:
    """`where` (config keys) says norm: syncbn, and the processes run on CPUs (gloo)."""
    raise ConfigError(f"{where}: syncbn synchronises BatchNorm over GPUs only; "
                      f"processes on CPUs (gloo) train with bn (each process's own "
                      f"statistics) or gn")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy `src`'s buffers (e.g. BatchNorm running statistics) to every process.

    DDP keeps parameters equal but each rank's last forward updates its own BN statistics;
    call this before a sharded evaluation or before comparing/saving models across ranks.
    """
    if get_world_size() == 1:
        return
    for buffer in unwrap_model(model).buffers():
        dist.broadcast(buffer.data, src=src)
