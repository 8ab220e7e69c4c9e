"""engine.cli.run_tool: a config error prints as one line naming the key and exits 2."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from engine.cli import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"


def tool_main(name: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("argv", [
    ["train", str(CONFIG), "train.max_iter=[100]"],
    ["eval", str(CONFIG), "--weights", "w.pth", "--output", "out", "train.max_iter=[100]"]])
def test_a_config_error_is_one_line_and_exit_code_2(argv: list[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"tools/{argv[0]}.py"] + argv[1:])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main(argv[0]))
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"{argv[0]}.py: error: train.max_iter must be a number, "
                                       f"got [100] in override 'train.max_iter=[100]'\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_other_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(argv: list[str]) -> None:
        raise ValueError("a bug, or a data problem: its traceback says where")

    monkeypatch.setattr(sys, "argv", ["tool.py"])
    with pytest.raises(ValueError, match="a bug"):
        run_tool(main)
