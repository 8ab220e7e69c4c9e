"""`python -m resnet_detect TOOL [args ...]` (or `resnet-detect TOOL [args ...]`): a tool of
the repository's tools/ folder, where the project is installed with pip (the wheel carries
them as resnet_detect.tools). `python -m resnet_detect train CONFIG ...` is
`python tools/train.py CONFIG ...`; torchrun takes it as `torchrun ... -m resnet_detect train`."""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from resnet_detect import CONFIGS

TOOLS = ("train", "pretrain", "eval", "demo", "export", "make_synthetic", "model_info",
         "analyze", "analyze_results", "browse_dataset", "plot_curves", "merge_coco",
         "labelme_to_coco", "voc_to_coco", "yolo_to_coco")


def usage(launcher: str) -> str:
    return (f"usage: {launcher} TOOL [args ...]  (TOOL --help: its options; --version)\n"
            f"tools: {', '.join(TOOLS)}\n"
            f"configs (the repository's configs/ folder): {CONFIGS}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    launcher = ("resnet-detect" if Path(sys.argv[0]).stem == "resnet-detect"
                else "python -m resnet_detect")
    if argv[:1] == ["--version"]:
        from resnet_detect import __version__
        print(f"resnet-detect {__version__}")
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(launcher), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    name = argv[0].removesuffix(".py").replace("-", "_")
    if name not in TOOLS:
        close = difflib.get_close_matches(name, TOOLS, n=1)
        if close and "-" in argv[0]:  # (browse-datset: as typed, browse-dataset)
            close = [close[0].replace("_", "-")]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"{launcher}: error: no tool {argv[0]!r}{hint}\n{usage(launcher)}",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        tool = importlib.import_module(f"resnet_detect.tools.{name}")
    except ModuleNotFoundError as e:  # a clone on PYTHONPATH, not installed: its tools/ folder
        if e.name not in ("resnet_detect.tools", f"resnet_detect.tools.{name}"):
            raise
        tool = _repository_tool(name)
    from resnet_detect.engine import cli
    sys.argv = [tool.__file__, *argv[1:]]
    # its usage line and messages, as typed (browse-dataset too): not "train.py"
    cli.PROGRAM = f"{launcher} {argv[0].removesuffix('.py')}"
    doc = tool.__doc__
    tool.__doc__ = cli.as_installed(doc or "")  # its --help's commands likewise
    try:
        cli.run_tool(tool.main)
    finally:
        cli.PROGRAM, tool.__doc__ = None, doc


def _repository_tool(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    if not path.is_file():
        print(f"resnet_detect: error: {path} not found: this resnet_detect is neither installed "
              f"(pip install) nor in its repository", file=sys.stderr)
        raise SystemExit(2)
    spec = importlib.util.spec_from_file_location(f"resnet_detect_tool_{name}", path)
    tool = importlib.util.module_from_spec(spec)
    # resnet_detect is imported already: the tool's guard puts no folder first on sys.path
    tool.__package__ = "resnet_detect"
    spec.loader.exec_module(tool)
    return tool


if __name__ == "__main__":
    main()
