"""How many matrix-product steps the RPN's padded NMS (RPN.padded_nms) takes to settle on a
trained detector's proposals: the steps are that lever's GPU cost, and rows past
padded_nms.MAX_CHECKS x STEPS_PER_CHECK steps go to torchvision's NMS.

Usage:
  python benchmarks/padded_nms_steps.py CONFIG --weights CKPT [--images 8] [--train-mode]
      [key=value ...]

Runs the detector on the config's first val images (test-time resize; --train-mode: the
RPN's training top-k, 2000 per level) and prints, over every image and FPN level, the
distribution of the steps each (image, level) row took, and the proposals kept.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.detection import Predictor, padded_nms, rpn  # noqa: E402
from resnet_detect.engine.data import read_image  # noqa: E402


def settle_steps(boxes: torch.Tensor, valid: torch.Tensor, threshold: float) -> list[int]:
    """Per row, the steps after which its kept set no longer changes."""
    matrix = padded_nms.suppression_matrix(boxes, threshold).float()
    keep, steps = valid, torch.zeros(boxes.shape[0], dtype=torch.int64)
    for step in range(1, boxes.shape[1] + 2):
        new = valid & ~(torch.bmm(keep.float()[:, None], matrix)[:, 0] > 0)
        changed = (new != keep).any(dim=1)
        steps[changed] = step + 1  # the step after the last change shows it settled
        if not changed.any():
            break
        keep = new
    return [max(int(s), 1) for s in steps]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--train-mode", action="store_true",
                        help="the RPN's training top-k (pre/post NMS) instead of the test's")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    predictor = Predictor(args.config, weights=args.weights, overrides=args.overrides, device="cpu")
    model = predictor.model
    model.rpn.padded_nms = True
    recorded: list[int] = []
    kept: list[int] = []
    original = rpn.padded_greedy_nms

    def recording(boxes: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
        recorded.extend(s for s, v in zip(settle_steps(boxes, valid, threshold), valid)
                        if v.any())
        keep = original(boxes, valid, threshold)
        kept.append(int(keep.sum()))
        return keep

    rpn.padded_greedy_nms = recording
    if args.train_mode:  # the training top-k, at test time otherwise
        model.rpn.pre_nms_topk = (model.rpn.pre_nms_topk[0],) * 2
        model.rpn.post_nms_topk = (model.rpn.post_nms_topk[0],) * 2
    cfg = predictor.cfg
    root = Path(cfg.data.val.img_dir)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for path in images[:args.images]:
        predictor(read_image(path))
    if not recorded:
        raise SystemExit(f"no proposals: no images under {root}, or none with a box")
    steps = torch.tensor(recorded, dtype=torch.float32)
    limit = padded_nms.MAX_CHECKS * padded_nms.STEPS_PER_CHECK
    print(f"{len(recorded)} (image, level) rows of {min(args.images, len(images))} images, "
          f"pre-NMS top-k {model.rpn.pre_nms_topk[1]}: steps to settle median "
          f"{steps.median():.0f}, 90th percentile {steps.quantile(0.9):.0f}, max "
          f"{steps.max():.0f}; rows past {limit} steps (to torchvision's NMS): "
          f"{int((steps > limit).sum())}; boxes kept per call: {kept}")


if __name__ == "__main__":
    main()
