"""Generate the built-in synthetic shapes dataset: detection, segmentation, classification.

Usage: python tools/make_synthetic.py [--output datasets/synthetic] [--seed 0] [--num-train 600]
           [--num-val 150] [--size H W] [--cls-train-per-class 400] [--cls-val-per-class 100]
           [--overwrite]

The layout and the annotation conventions are described in `resnet_detect/engine/data/synthetic.py`.
Running it again with the same arguments (and generator code) leaves a complete dataset
untouched; anything else in the folder is replaced only with --overwrite.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine.cli import program_name  # noqa: E402
from resnet_detect.engine.data.synthetic import generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "--out", dest="out", default="datasets/synthetic",
                        help="output folder (--out: its older name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=600, help="detection training images")
    parser.add_argument("--num-val", type=int, default=150, help="detection validation images")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="size of every scene (default: a mix of 320x320, 288x384, 384x288)")
    parser.add_argument("--cls-train-per-class", type=int, default=400,
                        help="classification training images per class")
    parser.add_argument("--cls-val-per-class", type=int, default=100,
                        help="classification validation images per class")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset written there with other arguments or code")
    args = parser.parse_args(argv)
    # (an empty split was written, exit 0, and refused by training later)
    for name, least in (("num_train", 1), ("num_val", 1), ("cls_train_per_class", 0),
                        ("cls_val_per_class", 0), ("seed", 0)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}")
    if (args.cls_train_per_class == 0) != (args.cls_val_per_class == 0):
        # one empty split: pretraining on the folder stops at it ("no images under .../val")
        parser.error("--cls-train-per-class and --cls-val-per-class: both 0 (no classification "
                     "set) or both at least 1")
    if args.size is not None and min(args.size) < 32:
        parser.error("--size: both sides must be at least 32 pixels")
    if not args.out.strip():  # the current folder, whose images/ --overwrite would delete
        parser.error("--output is empty: name a folder")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--output {args.out} is a file, not a folder")
    start = time.perf_counter()
    try:
        summary = generate(args.out, seed=args.seed, num_train=args.num_train,
                           num_val=args.num_val, size=tuple(args.size) if args.size else None,
                           cls_train_per_class=args.cls_train_per_class,
                           cls_val_per_class=args.cls_val_per_class, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be made or written (a full disk)
        print(f"error: cannot write the dataset to --output {args.out}: {err}", file=sys.stderr)
        return 2
    if summary["skipped"]:
        print(f"{args.out}: dataset with these arguments already complete, nothing to do")
        return 0
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s: "
          f"detection train {summary['train']['images']} images / "
          f"{summary['train']['annotations']} objects, val {summary['val']['images']} / "
          f"{summary['val']['annotations']}; classification train "
          f"{summary['classification_train']}, val {summary['classification_val']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
