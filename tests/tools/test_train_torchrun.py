"""tools/train.py under torchrun with 2 processes on CPU (gloo), one per node: Faster R-CNN steps.

Both ranks must end with the same weights (DDP averaged the gradients) and rank 0 writes
them as model_final.pth; the log reports the split of train.batch_size over the processes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detection.build import build_model
from detection.config import load_config
from tests.tools.test_train_eval_demo import data, train_args  # noqa: F401 (fixture)
from tests.torchrun import run_two_nodes


@pytest.mark.slow
def test_two_nodes_of_one_process_end_identical(data: Path, tmp_path: Path) -> None:  # noqa: F811
    """What users who outgrow one machine run: one torchrun per node (--nnodes=2). Both ranks
    end with the same weights (DDP averaged the gradients), which rank 0 wrote."""
    out = tmp_path / "out"
    args = train_args(data, out, 2, "train.checkpoint_period=1", "train.seed=5")
    log = run_two_nodes("train", args, tmp_path)
    assert "2 processes x 1 images per step" in log
    rank0 = torch.load(out / "rank0.pth", weights_only=True)
    rank1 = torch.load(out / "rank1.pth", weights_only=True)
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    cfg = load_config(args[0], args[1:])
    cfg.model.num_classes = 6
    torch.manual_seed(5)
    init = build_model(cfg).state_dict()
    assert rank0.keys() == rank1.keys() == final.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final[key]), key
    moved = {k for k in rank0 if not torch.equal(rank0[k], init[k])}
    assert "roi_heads.box_predictor.cls_score.weight" in moved  # the steps did train
    assert (out / "model_0000002.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.pth"
