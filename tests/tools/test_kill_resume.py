"""`kill -9` at any moment: `--resume` continues from the newest checkpoint and ends with the
weights of a run that never stopped, bit for bit on CPU, for every task through the real tools
with the quickstart recipes (AdamW, cosine with warmup, clipping, augmentation, one loader
worker)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tools.test_segmentation_tools import CONFIG as SEG_CONFIG
from tests.tools.test_segmentation_tools import overrides as seg_overrides
from tests.tools.test_train_eval_demo import data, load_tool, train_args

__all__ = ["data"]
ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
# detection's steps cost most (~0.5 s each): 4 still resume from step 2 into the next epoch (6
# images, 2 per step: 3 steps an epoch), with a checkpoint left to write at the kill
DETECTION_STEPS = 4


def quickstart_args(task: str, data: Path) -> list[str]:
    periods = [f"train.max_iter={STEPS}", "train.checkpoint_period=2", "train.max_to_keep=null",
               "train.eval_period=0", "train.clip_grad_norm=1.0", "data.num_workers=1"]
    if task == "sem_seg":
        return [str(SEG_CONFIG), *seg_overrides(data), *periods]
    if task == "detection":
        return [*train_args(data, data / "unused", STEPS), *periods,
                f"train.max_iter={DETECTION_STEPS}", "data.train.hflip_prob=0.5",
                "data.train.min_size=[80,96]", "train.lr_steps=[]", "data.val.ann_file=null",
                "data.val.img_dir=null"]
    # tiny pretraining steps take milliseconds: enough of them that the run is still going
    # when the test sees its first checkpoint and kills it (36 steps after it: 0.8 s here);
    # the recipe on CIFAR's ResNet-20, whose checkpoints are 3 MB, not ResNet-18's 134 MB
    return [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"), "model.name=cifar_resnet20",
            f"data.root={data}/classification", "data.image_size=32", "data.val_resize=36",
            "train.epochs=null", "train.warmup_epochs=0", "train.warmup_iters=2",
            "train.batch_size=4", *periods, "train.max_iter=40", "train.checkpoint_period=4",
            "train.max_to_keep=2"]


def wait_for_a_checkpoint(process: subprocess.Popen, out: Path) -> None:
    """Until the run `process` writes into `out` has a checkpoint; fails with the end of
    its output where it ended (or took 5 minutes) first."""
    deadline = time.monotonic() + 300
    while not (out / "last_checkpoint").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            said = next(o for o in process.communicate() if o is not None)
            said = said.decode() if isinstance(said, bytes) else said
            raise AssertionError(f"no checkpoint before the run ended: {said[-2000:]}")
        time.sleep(0.02)


def kill_after_first_checkpoint(args: list[str], out: Path,
                                signum: int = signal.SIGKILL) -> str:
    """Run tools/train.py in its own process group and, once a checkpoint exists, send
    `signum` to every process of the group (as a scheduler does: the loader workers too).
    Returns what the run wrote to stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), *args,
                                f"train.output_dir={out}"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    wait_for_a_checkpoint(process, out)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=300)
    expected = -signum if signum == signal.SIGKILL else 128 + signum  # SIGKILL: no handler runs
    assert process.returncode == expected, stderr.decode()[-2000:]
    assert not (out / "model_final.pth").exists()
    return stderr.decode()


def assert_killed_run_resumes_bit_identical(args: list[str], out: Path, full: nn.Module,
                                            signum: int = signal.SIGKILL) -> None:
    """tools/train.py ARGS killed (`signum` to all its processes) after its first checkpoint,
    then `--resume`d in `out`, ends with `full`'s weights."""
    kill_after_first_checkpoint(args, out, signum)
    resumed = load_tool("train").main([*args, f"train.output_dir={out}", "--resume"])
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key


def restarted_by_torchrun(args: list[str], out: Path) -> str:
    """tools/train.py ARGS under `torchrun --max-restarts=1` (one process), its process killed
    once a checkpoint exists: torchrun runs the same command again, without --resume.
    Returns torchrun's output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--max-restarts=1",
         str(ROOT / "tools/train.py"), *args, f"train.output_dir={out}"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_a_checkpoint(launcher, out)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text(
        encoding="ascii").split()
    assert len(children) == 1, children  # the training process
    os.kill(int(children[0]), signal.SIGKILL)
    log, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_killed_pretraining_resumes_to_the_uninterrupted_weights(data: Path,
                                                                 tmp_path: Path) -> None:
    # (detection and segmentation: tests/tools/test_runner_tasks.py, with their resume tests)
    args = quickstart_args("classification", data)
    full = load_tool("train").main([*args, f"train.output_dir={tmp_path / 'a'}",
                                    "train.max_to_keep=null"])["model"]  # (every checkpoint)
    assert_killed_run_resumes_bit_identical(args, tmp_path / "b", full)
    # a scheduler preempting the job: SIGTERM to the main process and its loader worker at once
    assert_killed_run_resumes_bit_identical(args, tmp_path / "c", full, signal.SIGTERM)
    if not Path("/proc/self/task").is_dir():  # (the children's list: Linux)
        return
    # torchrun --max-restarts: its restart continues from the checkpoints (it trained from
    # scratch, replacing them), also those of a command given --resume-from (it went back to
    # that one)
    for out, more in ((tmp_path / "d", []),
                      (tmp_path / "e", ["--resume-from", str(tmp_path / "a/model_0000004.pth")])):
        log = restarted_by_torchrun([*args, *more], out)
        assert ("torchrun restarted the processes (restart 1 of 1): continuing from the newest "
                f"checkpoint of {out}, as --resume does") in log
        assert "resumed from " + str(tmp_path / "a") not in log.split("restarted the")[1]
        restarted = torch.load(out / "model_final.pth", weights_only=True)["model"]
        for key, value in full.state_dict().items():
            assert torch.equal(value, restarted[key]), key
