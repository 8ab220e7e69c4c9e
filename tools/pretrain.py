"""Pretrain a ResNet classifier on an ImageFolder tree (root/train/<class>/*, root/val/<class>/*).

Usage:
  python tools/pretrain.py CONFIG [key=value ...] [--resume]

One machine, N processes (GPUs, or CPU processes with gloo):
  torchrun --nproc_per_node=N tools/pretrain.py CONFIG [key=value ...]

Several machines (the same command on each; the c10d rendezvous numbers the nodes; HOST:PORT
reachable from all of them):
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_id=JOB --rdzv_endpoint=HOST:PORT tools/pretrain.py CONFIG [key=value ...]
  With --resume, train.output_dir should be on storage shared by all nodes.

`train.batch_size` is the number of images per optimizer step over all processes; each
process loads batch_size / world_size. Lengths (train.epochs, lr_step_epochs, warmup_epochs)
are in epochs of the training split; log/eval/checkpoint periods are in iterations (every
key: configs/pretrain/base_classifier.yaml and configs/base_train.yaml; the `solver.*` keys
of older configs still load, with a warning naming the new key). At the end the tool
writes OUTPUT_DIR/model_final.pth (the classifier) and OUTPUT_DIR/backbone_final.pth (the
backbone alone, loadable with `resnet_detect.backbones.build(name, weights=PATH)`), both
with provenance, and prints `top1=..  top5=..` (percent) on the validation split.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine.cli import run_tool, train_main  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pretraining; returns {"model": the classifier, "metrics": final top1/top5, ...}."""
    return train_main(__doc__, argv, task="classification")


if __name__ == "__main__":
    run_tool(main)
