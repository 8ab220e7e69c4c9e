"""A detector training step on CPU in float32 and under bf16 autocast, in one run.

Usage: python benchmarks/cpu_amp_training.py [--config configs/synthetic/faster_rcnn_R_18_FPN.yaml]
           [--repeats 5] [--threads N] [--batches 3]

One step = forward of a batch of the config's training scenes (its augmentation, its batch
size) with the losses, and backward, as `train.amp` runs it (the optimizer step is the same
float32 update either way and is left out). The synthetic dataset must exist
(`python tools/make_synthetic.py --output datasets/synthetic`); the model starts from random
weights (`model.backbone.weights` is ignored). fp32 and bf16 take turns on the same batches,
repeat after repeat. Prints median seconds per step, the speed ratio, and the largest
relative difference between the two modes' losses on the first batch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from resnet_detect.detection.build import build_model  # noqa: E402
from resnet_detect.detection.config import load_config  # noqa: E402
from resnet_detect.engine.data import build_train_loader  # noqa: E402
from resnet_detect.detection.data import build_datasets  # noqa: E402
from resnet_detect.detection.training import resolve_num_classes  # noqa: E402
from resnet_detect.engine import cpu_supports_bf16  # noqa: E402
from timing import time_interleaved  # noqa: E402


def losses_fn(model: torch.nn.Module, batch: list[dict[str, Any]],
              bf16: bool) -> Callable[[], dict[str, torch.Tensor]]:
    images = [s["image"] for s in batch]
    keys = ("gt_boxes", "gt_classes", "gt_masks") if model.mask_on else ("gt_boxes", "gt_classes")
    targets = [{k: s[k] for k in keys} for s in batch]

    def losses() -> dict[str, torch.Tensor]:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            return model(images, targets)
    return losses


def step_fn(model: torch.nn.Module, batches: list[list[dict[str, Any]]],
            bf16: bool) -> Callable[[], None]:
    calls = [losses_fn(model, b, bf16) for b in batches]
    state = {"i": 0}

    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(calls[state["i"] % len(calls)]().values()).backward()
        state["i"] += 1
    return step


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic/faster_rcnn_R_18_FPN.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_supports_bf16():
        sys.exit("this CPU has no oneDNN bf16 kernels: nothing to compare")

    cfg = load_config(args.config, ["model.backbone.weights=null"])
    data = build_datasets(cfg)
    resolve_num_classes(cfg, data.mapping)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loader = iter(build_train_loader(data.train, batch_size=cfg.train.batch_size, seed=0,
                                     num_workers=0, group_ids=data.train.group_ids,
                                     batch_keys=data.train.batch_keys))
    batches = [next(loader) for _ in range(args.batches)]

    def first_losses(bf16: bool) -> dict[str, float]:
        torch.manual_seed(1)  # same RPN/RoI sampling in both modes
        with torch.no_grad():
            return {k: float(v) for k, v in losses_fn(model, batches[0], bf16)().items()}
    fp32_losses, bf16_losses = first_losses(False), first_losses(True)
    loss_rel_diff = max(abs(bf16_losses[k] - v) / max(abs(v), 1e-8)
                        for k, v in fp32_losses.items())

    times = time_interleaved({"fp32": step_fn(model, batches, False),
                              "bf16": step_fn(model, batches, True)},
                             args.repeats, inference=False)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "config": args.config, "batch_size": int(cfg.train.batch_size),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "repeats": args.repeats,
        "seconds_per_step": {k: round(v, 3) for k, v in median.items()},
        "bf16_speedup": round(median["fp32"] / median["bf16"], 2),
        "losses_fp32": fp32_losses, "losses_bf16": bf16_losses,
        "max_rel_loss_diff": round(loss_rel_diff, 4)}, indent=1))


if __name__ == "__main__":
    main()
