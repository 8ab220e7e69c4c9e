"""`python -m resnet_detect TOOL [args ...]` (or `resnet-detect TOOL [args ...]`): a tool of
the repository's tools/ folder, where the project is installed with pip (the wheel carries
them as resnet_detect.tools). `python -m resnet_detect train CONFIG ...` is
`python tools/train.py CONFIG ...`; torchrun takes it as `torchrun ... -m resnet_detect train`."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from resnet_detect import CONFIGS

TOOLS = ("train", "pretrain", "eval", "demo", "export", "make_synthetic", "model_info",
         "analyze", "analyze_results", "browse_dataset", "plot_curves", "merge_coco",
         "labelme_to_coco", "voc_to_coco", "yolo_to_coco")
USAGE = (f"usage: python -m resnet_detect TOOL [args ...]  (TOOL --help: its options)\n"
         f"tools: {', '.join(TOOLS)}\n"
         f"configs (the repository's configs/ folder): {CONFIGS}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    name = argv[0].removesuffix(".py").replace("-", "_")
    if name not in TOOLS:
        print(f"resnet_detect: error: no tool {argv[0]!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    tool = importlib.import_module(f"resnet_detect.tools.{name}")
    from resnet_detect.engine.cli import run_tool
    sys.argv = [tool.__file__, *argv[1:]]  # (its messages and usage name it: "train.py")
    run_tool(tool.main)


if __name__ == "__main__":
    main()
