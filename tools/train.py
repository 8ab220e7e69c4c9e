"""Train a detector (Faster R-CNN, Mask R-CNN) or a semantic segmenter from a config.

Usage:
  python tools/train.py CONFIG [key=value ...] [--resume]

The config's `task` key picks what is trained: `detection` (Faster / Mask R-CNN; every key in
configs/detection/base_faster_rcnn.yaml), `sem_seg` (configs/segmentation/base_deeplab.yaml)
or `classification` (pretraining, as tools/pretrain.py). The `train` section is the same for
every task (configs/base_train.yaml). Usual keys:
  data.train.ann_file=PATH data.train.img_dir=DIR data.val.ann_file=PATH data.val.img_dir=DIR
  train.max_iter=N train.batch_size=N (images per step over all processes)
  train.output_dir=DIR
The number of classes is read from the training JSON unless model.num_classes is set.

One machine, N processes (GPUs, or CPU processes with gloo):
  torchrun --nproc_per_node=N tools/train.py CONFIG [key=value ...]
Several machines (the same command on each; the c10d rendezvous numbers the nodes):
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_id=JOB --rdzv_endpoint=HOST:PORT tools/train.py CONFIG [key=value ...]
  With --resume, train.output_dir should be on storage shared by all nodes.

Ends with OUTPUT_DIR/model_final.pth (weights + provenance) and prints the final metrics on
the validation split: `box AP = xx.x` (detection; plus `mask AP = xx.x` with model.mask_on)
or `mIoU = xx.x` (segmentation). The training itself is
resnet_detect.engine.runner.run_training.
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
    """Run the training; returns run_training's result plus "task"."""
    return train_main(__doc__, argv)


if __name__ == "__main__":
    run_tool(main)
