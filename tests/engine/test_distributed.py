"""engine.distributed: single-process defaults and 2-process gloo collectives."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from resnet_detect.engine import distributed as D
from resnet_detect.engine import runner
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.tasks import load_task_config, task_module
from resnet_detect.detection.evaluation import COCOEvaluator
from resnet_detect.engine.logging import ProgressLogger
from resnet_detect.engine.same_everywhere import done_by_the_main_process
from resnet_detect.engine.trainer import NonFiniteLossError, Trainer

ROOT = Path(__file__).resolve().parents[2]


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_distributed("cpu") == torch.device("cpu")
    assert not D.is_distributed()
    assert (D.get_rank(), D.get_world_size(), D.is_main_process()) == (0, 1, True)
    assert D.all_reduce_mean({"a": torch.tensor(2.5), "b": 1.0}) == {"a": 2.5, "b": 1.0}
    assert D.any_process(True) and not D.any_process(False)
    assert D.all_gather_object({"x": 1}) == [{"x": 1}]
    D.barrier()
    D.cleanup()
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        D.init_distributed("tpu")


@pytest.mark.parametrize(("world_size", "batch", "share"), [(1, 6, 6), (2, 6, 3), (3, 6, 2)])
def test_per_process_batch_size_splits_the_global_batch(monkeypatch: pytest.MonkeyPatch,
                                                        world_size: int, batch: int,
                                                        share: int) -> None:
    monkeypatch.setattr(D, "get_world_size", lambda: world_size)
    assert D.per_process_batch_size(batch, "train.batch_size") == share


def test_per_process_batch_size_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "get_world_size", lambda: 4)
    with pytest.raises(ValueError, match="solver.batch_size 6 is not divisible by the 4 processes"):
        D.per_process_batch_size(6, "solver.batch_size")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.init_distributed("cpu")
    try:
        out = {"rank": D.get_rank(), "world": D.get_world_size(),
               "mean": D.all_reduce_mean({"loss": torch.tensor(float(rank + 1)), "n": 2.0 * rank}),
               "sum": D.all_reduce_sum({"n": rank + 1}),
               "any": [D.any_process(rank == 1), D.any_process(False)],
               "gather": D.all_gather_object(f"r{rank}")}
        buffers = torch.nn.BatchNorm1d(2)
        buffers.running_mean.fill_(float(rank + 5))
        D.broadcast_buffers(buffers)
        out["buffer"] = buffers.running_mean.tolist()
        # NaN guard: only rank 1 sees a NaN, both ranks stop at the same iteration.
        model = torch.nn.Linear(1, 1)

        def step_fn(net: torch.nn.Module, batch: object) -> dict[str, torch.Tensor]:
            bad = rank == 1 and trainer.iter == 2
            return {"loss_x": net(torch.ones(1, 1)).sum() * (float("nan") if bad else 1.0)}

        trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          scheduler=None, step_fn=step_fn, max_iter=5)
        try:
            trainer.train(iter(range(5)))
        except NonFiniteLossError as e:
            out["nan"] = (trainer.iter, str(e))
        try:  # values under other names were summed with each other
            D.all_reduce_sum({"loss_a": 1.0, ("loss_b" if rank == 0 else "loss_aux"): 2.0})
        except RuntimeError as e:
            out["mismatch"] = str(e)
        # the progress line averages each loss over the steps of every process that gave
        # it: rank 1's first batch was unreadable, a stand-in's zeros are left out
        lines: list[str] = []
        log = logging.getLogger(f"progress_{rank}")
        log.addHandler(logging.Handler())
        log.handlers[-1].emit = lambda record: lines.append(record.getMessage())
        log.setLevel(logging.INFO)

        def steps(net: torch.nn.Module, batch: object) -> dict[str, torch.Tensor]:
            zero = net(torch.ones(1, 1)).sum() * 0.0
            if rank == 1 and progress.iter == 0:
                progress.losses_count = False
                return {"loss_x": zero}
            return {"loss_x": zero + rank + 1}

        progress = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           scheduler=None, step_fn=steps, max_iter=2,
                           hooks=[ProgressLogger(2, logger=log)])
        progress.train(iter(range(2)))
        out["progress"] = lines[0] if lines else ""
        # a step of the main process alone (scoring the gathered detections) that fails: the
        # other waited for its result until the connection timed out (30 minutes)
        out["main"] = done_by_the_main_process(lambda: f"rank {rank}'s", "score")
        evaluator = COCOEvaluator(Path("/nonexistent/instances_val.json"), category_ids=[1])
        evaluator._results = [{"image_id": rank, "category_id": 1, "bbox": [0, 0, 1, 1],
                               "score": 1.0}]
        try:
            evaluator.evaluate()
        except Exception as e:
            out["scoring"] = f"{type(e).__name__}: {e}"
        results[rank] = out
    finally:
        D.cleanup()


@pytest.mark.slow
def test_two_process_collectives_and_nan_guard() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        r = results[rank]
        assert (r["rank"], r["world"]) == (rank, 2)
        assert r["mean"] == {"loss": 1.5, "n": 1.0}
        assert r["sum"] == {"n": 3.0}
        assert r["any"] == [True, False]
        assert r["gather"] == ["r0", "r1"]
        assert r["buffer"] == [5.0, 5.0]
        assert r["nan"][0] == 2
        assert "at iteration 2" in r["nan"][1]
    assert "rank 1" in results[1]["nan"][1] and "another process" in results[0]["nan"][1]
    for rank in (0, 1):
        assert results[rank]["mismatch"] == ("the processes reduce different values: rank 0: "
                                             "loss_a, loss_b; rank 1: loss_a, loss_aux")
    assert "loss_x=1.3333" in results[0]["progress"]  # (1 + 1 + 2) / 3, not (1 + 1) / 2
    assert results[0]["main"] == results[1]["main"] == "rank 0's"
    assert "/nonexistent/instances_val.json" in results[0]["scoring"]
    assert results[1]["scoring"] == ("OtherProcessFailed: the main process could not score the "
                                     "detections: " + results[0]["scoring"])


def test_a_gpu_that_is_not_there_is_refused_naming_the_key_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train.device=cuda but torch .* sees no GPU .*set "
                                           r"train.device=cpu"):
        D.init_distributed("cuda")
    with pytest.raises(ValueError, match=r"train.device must be auto, cpu or cuda, got 'gpu'"):
        D.init_distributed("gpu")
    with pytest.raises(ValueError, match=r"got 'mps' \(Apple's GPUs, mps, are not supported"):
        D.init_distributed("mps")
    # torchrun with more processes than GPUs: the process without one says so
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "set_device", lambda _: pytest.fail("set_device reached"))
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=2 has no GPU: this machine has 2; start "
                                           r"torchrun with --nproc_per_node=2 or fewer"):
        D.init_distributed("auto")
    assert not D.is_distributed()


def test_a_stray_world_size_without_torchruns_other_variables_is_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`WORLD_SIZE=2 python tools/train.py ...` (a shell's stray export) ended in torch's
    env:// traceback ("environment variable RANK expected, but not set"); with RANK and no
    master it waited half an hour."""
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^the environment sets WORLD_SIZE=2 but not RANK, "
                                          r"MASTER_ADDR, MASTER_PORT: start the processes with "
                                          r"torchrun \(`torchrun --nproc_per_node=N tools/"):
        D.init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but not MASTER_PORT:"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE='two' is no number of processes"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to join
    assert D.init_distributed("cpu") == torch.device("cpu")
    # a program that joined a group of its own (tcp://) keeps it, whatever is exported
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert D.init_distributed("cpu") == torch.device("cpu")


def test_the_collective_timeout_is_a_key_in_minutes() -> None:
    """A frozen node left the others waiting torch's 30 minutes, a value no key changed."""
    from omegaconf import OmegaConf
    assert D.collective_timeout_s(OmegaConf.create({"train": {}})) == 1800.0
    assert D.collective_timeout_s(OmegaConf.create({"train": {"collective_timeout_min": 90}})
                                  ) == 5400.0
    assert D.collective_timeout_s({"train": {"collective_timeout_min": 0.5}}) == 30.0
    for bad in (0, -1, float("inf"), "1h", True, None):
        with pytest.raises(ConfigError, match=r"^train.collective_timeout_min must be a "
                                              r"positive number of minutes, got "):
            D.collective_timeout_s({"train": {"collective_timeout_min": bad}})


def test_syncbn_on_cpu_processes_is_refused_naming_the_keys(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(D, "get_world_size", lambda: 2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4))
    with pytest.raises(ConfigError, match=r"a norm: syncbn in the config \(model.backbone.norm, "
                       r"model.head.norm or model.options.norm\): syncbn synchronises BatchNorm "
                       "over GPUs only"):
        D.wrap_ddp(model, torch.device("cpu"))


def test_syncbn_on_cpu_processes_is_refused_before_the_data_is_read(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """(torch's SyncBatchNorm fails on CPU tensors, in the first step)"""
    monkeypatch.setattr(runner, "get_world_size", lambda: 2)
    name, cfg = load_task_config(ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml",
                                 ["model.backbone.norm=syncbn", "model.head.norm=syncbn",
                                  f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"^model.backbone.norm=syncbn, model.head.norm=syncbn: "
                                          r"syncbn synchronises BatchNorm over GPUs only"):
        runner.run_training(task_module(name).TASK(), cfg, torch.device("cpu"))
    assert not (tmp_path / "run").exists()


def test_a_gpu_the_process_cannot_use_is_refused_before_anything_is_built(tmp_path) -> None:
    """A Predictor on device="cuda" without a GPU failed in torch's driver check after the
    model was built and its weights read."""
    from resnet_detect.detection import Predictor as Detector
    from resnet_detect.segmentation import Predictor as Segmentor

    from resnet_detect.engine.distributed import usable_device

    assert usable_device("cpu") == torch.device("cpu")
    # as the tools' train.device=auto ("auto" was refused as no device)
    assert usable_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = tmp_path / "not_read.pth"  # the device is refused before the weights are read
    for predictor in (Detector, Segmentor):
        with pytest.raises(ValueError, match=r"device 'cuda:99': (torch .* sees no GPU .*use "
                                             r"device='cpu'|this machine has \d+ GPU)"):
            predictor(weights=missing, device="cuda:99")
        # (was torch's RuntimeError listing some twenty device types)
        with pytest.raises(ValueError, match=r"^device 'gpu' is none of 'auto', 'cpu', "
                                             r"'cuda', 'cuda:N', 'mps'$"):
            predictor(weights=missing, device="gpu")
        # a device type torch knows that cannot run a model ('meta': an autocast error at
        # the first call)
        with pytest.raises(ValueError, match=r"^device 'meta' is none of 'auto', 'cpu'"):
            predictor(weights=missing, device="meta")
        if not torch.backends.mps.is_available():
            with pytest.raises(ValueError, match=r"device 'mps': this torch has no Apple GPU"):
                predictor(weights=missing, device="mps")


def test_batch_norm_on_few_images_per_process_is_warned_of() -> None:
    from resnet_detect import backbones
    from resnet_detect.engine.distributed import unsynced_batch_norm_warning
    model = backbones.build("resnet18")  # 20 BatchNorm layers
    warning = unsynced_batch_norm_warning(model, 2, 8, "cuda")
    assert warning.startswith("20 BatchNorm layers train on 2 images per process, each of the "
                              "8 processes with its own statistics: norm: syncbn synchronises")
    assert "model.backbone.norm, model.head.norm" in warning
    assert "norm: gn needs no batch statistics" in unsynced_batch_norm_warning(model, 2, 2, "cpu")
    assert unsynced_batch_norm_warning(model, 2, 1, "cuda") is None      # one process
    # one image in one process: its statistics are that image's (it trained without a word)
    assert unsynced_batch_norm_warning(model, 1, 1, "cpu") == (
        "20 BatchNorm layers train on 1 image per forward pass: their statistics are one "
        "image's (the recipes train on 2 or more per GPU): a train.batch_size of 2 or more, or "
        "norm: gn, which needs no batch statistics (model.backbone.norm, model.head.norm; "
        "model.options.norm for pretraining)")
    # a batch of 8 drawn in 8 accumulation steps: the steps are what to change
    assert "1 image per forward pass: their statistics are one image's (the recipes train on " \
           "2 or more per GPU): fewer train.accumulation_steps (now 8), so that each pass " \
           "draws 2 or more images, or norm: gn" in unsynced_batch_norm_warning(model, 1, 1,
                                                                             "cpu", 8)
    assert unsynced_batch_norm_warning(model, 8, 8, "cuda") is None      # enough images
    assert unsynced_batch_norm_warning(backbones.build("resnet18", norm="frozen_bn"), 2, 8,
                                       "cuda") is None
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(backbones.build("resnet18"))
    assert unsynced_batch_norm_warning(synced, 2, 8, "cuda") is None


_STRIDES_SCRIPT = """
import os, sys, warnings
import torch, torch.distributed as dist
from torch import nn
from resnet_detect.engine import distributed as D
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
D.get_world_size = lambda: 2  # wrap as under torchrun; one process is enough for the reducer
model = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.Conv2d(16, 4, 3))  # a downsample's
warnings.simplefilter("always")
amp = None if sys.argv[3] == "fp32" else sys.argv[3]
ddp = D.wrap_ddp(model, torch.device("cpu")) if sys.argv[2] == "wrap" else \\
    nn.parallel.DistributedDataParallel(model)
x = torch.randn(2, 8, 20, 20).contiguous(memory_format=torch.channels_last)  # as batches are
with warnings.catch_warnings(record=True) as caught:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        loss = ddp(x).float().sum()
    loss.backward()
warned = sum("Grad strides" in str(w.message) for w in caught)
print("strides", model[0].weight.grad.stride(), warned, flush=True)
del ddp
dist.destroy_process_group()  # (gloo torn down at exit aborted a run now and then)
"""


@pytest.mark.parametrize("amp", ["bf16", "fp32"])
@pytest.mark.parametrize("wrapped", ["wrap", "plain"])
def test_cpu_processes_do_not_print_ddps_grad_strides_warning(wrapped: str, amp: str) -> None:
    """Every 2-process CPU run under bf16 printed torch's "Grad strides do not match bucket
    view strides" on each rank, and float32 ones too (a trial's R18-FPN: its downsampling 1x1
    convolutions): their gradients differ from their weights in the strides of size-1
    dimensions only (the same memory). In a process of its own: torch warns once per
    process."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _STRIDES_SCRIPT, str(_free_port()), wrapped,
                           amp],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    # the gradient that DDP compares strictly: channels_last strides, contiguous memory
    assert "strides (8, 1, 8, 8) " in done.stdout
    assert done.stdout.strip().endswith(" 0" if wrapped == "wrap" else " 1"), done.stdout


def _losing_worker(rank: int, port: int, results: dict) -> None:
    import datetime
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.distributed.all_reduce(torch.ones(1))
    if rank == 1:
        os._exit(3)  # a node killed: no goodbye to the others
    try:
        for _ in range(100):
            torch.distributed.all_reduce(torch.ones(1))
    except Exception as e:  # noqa: BLE001 (what gloo raises: a RuntimeError)
        results["error"] = f"{type(e).__name__}: {e}"
        results["hint"] = D.lost_process_hint(e)
    finally:
        D.cleanup()


@pytest.mark.slow
def test_a_process_lost_in_a_collective_is_named_with_how_to_continue() -> None:
    """gloo's "Connection closed by peer" (or reset) alone ended log.txt: no word of the lost
    process nor of --resume."""
    with mp.Manager() as manager:
        results = manager.dict()
        context = mp.spawn(_losing_worker, args=(_free_port(), results), nprocs=2, join=False)
        for process in context.processes:  # (spawn's join would end rank 0 at rank 1's exit)
            process.join(120)
        assert [p.exitcode for p in context.processes] == [0, 3]
        results = dict(results)
    assert "error" in results, "the collective did not fail"
    assert results["hint"] == (
        "; another process of the run stopped (an error of its own, which its console and "
        "log name, log.txt.rank<N> or rank 0's log.txt: mend that first) or was lost "
        "(killed, or its node or network gone), and the steps since the last checkpoint "
        "with it: run the same command with "
        "--resume on every node to continue from that checkpoint"), results["error"]
    assert D.lost_process_hint(RuntimeError("Connection reset by peer")) == ""  # one process


def test_a_lost_process_under_torchruns_restarts_says_torchrun_restarts_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --max-restarts left the hint said to run the command again by hand, moments
    before torchrun restarted the processes itself (a second job would meet the folder's
    lock)."""
    monkeypatch.setattr(D, "get_world_size", lambda: 2)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert D.lost_process_hint(RuntimeError("Connection reset by peer")) == (
        "; another process of the run stopped (an error of its own, which its console and "
        "log name, log.txt.rank<N> or rank 0's log.txt: mend that first) or was lost "
        "(killed, or its node or network gone), and the steps since the last checkpoint "
        "with it: torchrun restarts the "
        "processes (--max-restarts), which continue from that checkpoint; where it cannot, "
        "run the same command with --resume on every node")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the last one used
    assert D.lost_process_hint(RuntimeError("Connection reset by peer")).endswith(
        "run the same command with --resume on every node to continue from that checkpoint")
    # another launcher's value, no number: as without torchrun (a ValueError replaced the
    # error being reported)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2.0")
    assert D.lost_process_hint(RuntimeError("Connection reset by peer")).endswith(
        "run the same command with --resume on every node to continue from that checkpoint")


def test_each_node_may_name_its_own_files_but_not_other_settings() -> None:
    """A node's own folder for data.class_names' JSON file (a path, as data.root) was refused
    as another setting; the names it holds are compared with the data."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.same_everywhere import _shared_settings
    node = {"data": {"root": "/a", "class_names": "/a/classes.json", "palette": "voc",
                     "num_workers": 4}, "train": {"seed": 1, "device": "cuda"}}
    other = {"data": {"root": "/b", "class_names": "/b/classes.json", "palette": "voc",
                      "num_workers": 8}, "train": {"seed": 1, "device": "cpu"}}
    assert _shared_settings(OmegaConf.create(node)) == _shared_settings(OmegaConf.create(other))
    assert _shared_settings(OmegaConf.create(node)) == {"data.palette": "voc", "train.seed": 1}
