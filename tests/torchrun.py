"""Run a tool of tools/ under torchrun with 2 CPU processes (gloo), on one launcher or as two
nodes, and keep each rank's weights.

The wrapper calls the tool's `main(argv)` in every process, "{RANK}" in an argument replaced
by the process's rank (arguments that differ between nodes), and saves the returned model's
state dict as OUTPUT_DIR/rank<RANK>.pth (OUTPUT_DIR from the `train.output_dir=` argument),
and fails where a DistributedDataParallel wrapper outlived main().
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = """
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
torch.set_num_threads(1)
argv = [a.replace("{RANK}", os.environ["RANK"]) for a in sys.argv[2:]]
result = tool.main(argv)
# a DistributedDataParallel left for the interpreter's exit, after the process group is
# destroyed, aborts the process there about one time in four (gloo, torch 2.14)
import gc
if any(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects()):
    sys.exit("a DistributedDataParallel is still alive after the tool's main() returned")
out = [a for a in argv if a.startswith("train.output_dir=")][-1].split("=", 1)[1]
torch.save(result["model"].state_dict(), out + "/rank%s.pth" % os.environ["RANK"])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrapper(tmp_path: Path) -> Path:
    wrapper = tmp_path / "torchrun_wrapper.py"
    wrapper.write_text(WRAPPER)
    return wrapper


def run_two_nodes(tool: str, args: list[str], tmp_path: Path) -> str:
    """Run tools/<tool>.py as two torchrun launchers of one process each, as two machines
    would (`--nnodes=2 --node_rank=0/1`, c10d rendezvous on 127.0.0.1); returns both logs.

    Raises:
        AssertionError: a launcher failed (with the end of its log).
    """
    port, wrapper = _free_port(), _wrapper(tmp_path)
    launchers = []
    for node_rank in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               f"--node_rank={node_rank}", "--nproc_per_node=1", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two_nodes", str(wrapper),
               str(ROOT / "tools" / f"{tool}.py"), *args]
        launchers.append(subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"}))
    logs = []
    for launcher in launchers:
        try:
            out, _ = launcher.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in launchers:  # SIGTERM: torchrun ends its workers too (see below)
                other.terminate()
            raise
        logs.append(out)
        assert launcher.returncode == 0, out[-6000:]
    return "\n".join(logs)


def run_two_processes(tool: str, args: list[str], tmp_path: Path, *, fails: bool = False,
                      timeout: float = 300) -> str:
    """Run tools/<tool>.py with `args` on 2 processes; returns stdout + stderr.

    Raises:
        AssertionError: the run failed (with the end of its log), or, with `fails`, it
            did not.
    """
    port, wrapper = _free_port(), _wrapper(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(wrapper),
           str(ROOT / "tools" / f"{tool}.py"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # processes waiting for each other: torchrun ends its workers (their own sessions,
        # holding the output pipe) on SIGTERM, with SIGKILL after its 30 s of grace
        proc.terminate()
        log, _ = proc.communicate(timeout=120)
        raise AssertionError(f"still running after {timeout} s:\n{log[-6000:]}") from None
    assert (proc.returncode != 0) == fails, log[-6000:]
    return log
