"""tools/train.py under torchrun with 2 processes on CPU (gloo): one Faster R-CNN step each.

Both ranks must end with the same weights (DDP averaged the gradients) and rank 0 writes
them as model_final.pth; the log reports the split of train.batch_size over the processes.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detection.config import load_config
from detection.build import build_model
from tests.tools.test_train_eval_demo import ROOT, data, train_args  # noqa: F401 (fixture)

WRAPPER = """
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("train_tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
torch.set_num_threads(1)
result = tool.main(sys.argv[2:])
out = [a for a in sys.argv if a.startswith("train.output_dir=")][0].split("=", 1)[1]
torch.save(result["model"].state_dict(), out + "/rank%s.pth" % os.environ["RANK"])
"""


@pytest.mark.slow
def test_two_process_torchrun_step_ends_identical_on_both_ranks(data: Path,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = train_args(data, out, 2, "train.checkpoint_period=0", "train.seed=3")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(tmp_path / "wrapper.py"),
           str(ROOT / "tools/train.py"), *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "2 processes x 1 images per step" in log
    rank0 = torch.load(out / "rank0.pth", weights_only=True)
    rank1 = torch.load(out / "rank1.pth", weights_only=True)
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    cfg = load_config(args[0], args[1:])
    cfg.model.num_classes = 6
    torch.manual_seed(3)
    init = build_model(cfg).state_dict()
    assert rank0.keys() == rank1.keys() == final.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final[key]), key
    moved = {k for k in rank0 if not torch.equal(rank0[k], init[k])}
    assert "roi_heads.box_predictor.cls_score.weight" in moved  # the step did train
