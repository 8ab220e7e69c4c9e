"""Print parameters and GMACs (multiply-adds) per stage of a registered backbone.

Usage: python tools/model_info.py resnet50 [--size 224 224] [--num-classes 1000] [key=value ...]
Options after the name are backbone options, e.g. stride_in_1x1=true output_stride=16.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from resnet_detect import backbones  # noqa: E402
from resnet_detect.backbones.complexity import count_macs, count_parameters  # noqa: E402
from resnet_detect.engine.cli import run_tool  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"one of: {', '.join(backbones.list_models())}")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size (default 224x224, 32x32 for CIFAR nets)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default 1000, 10 for CIFAR nets)")
    parser.add_argument("options", nargs="*", help="backbone options as key=value")
    args = parser.parse_args(argv)
    bare = [o for o in args.options if "=" not in o]
    if bare:  # from_dotlist makes `output_stride` a None, which means the default
        parser.error(f"options must be key=value, got {', '.join(bare)}")
    if args.size and min(args.size) < 1:
        parser.error(f"--size must be two positive numbers of pixels, got {args.size}")
    options = OmegaConf.to_container(OmegaConf.from_dotlist(args.options))
    cifar = "cifar" in args.name
    size = tuple(args.size or ((32, 32) if cifar else (224, 224)))
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f"--num-classes must be a positive number of classes, got "
                     f"{args.num_classes}")
    num_classes = args.num_classes or (10 if cifar else 1000)
    try:
        model = backbones.build_classifier(args.name, num_classes, **options)
    except ValueError as e:  # an unknown name or option, or a value it refuses
        parser.error(str(e))
    macs = count_macs(model, size)
    print(f"{args.name} {options or ''} input {size[0]}x{size[1]}, {num_classes} classes")
    print(f"{'stage':<8}{'params':>14} {'GMACs':>10}")
    parts = dict(model.backbone.named_children()) | {"fc": model.fc}
    for name, module in parts.items():
        print(f"{name:<8}{count_parameters(module):>14,} {macs.get(name, 0) / 1e9:>10.3f}")
    print(f"{'total':<8}{count_parameters(model):>14,} {macs['total'] / 1e9:>10.3f}")


if __name__ == "__main__":
    run_tool(main)
