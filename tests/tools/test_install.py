"""tools/install.py: pip's configured indexes, links and constraints become uv's options."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("install_tool", ROOT / "tools/install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


def test_pip_configuration_becomes_uv_options() -> None:
    # `pip config list` as this project's machines print it: files and PIP_* variables
    config = "\n".join([
        ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",
        ":env:.find-links='/opt/wheels'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels'",
        "global.index-url='https://mirror.example/simple'",
        "install.index-url='https://other.example/simple'",
    ])
    assert install.uv_options(config) == [
        "--find-links=/opt/wheels", "--constraint=/etc/xdg/pip/constraints.txt",
        "--extra-index-url=file:///opt/a/simple", "--extra-index-url=file:///opt/b/simple",
        "--index-url=https://other.example/simple"]
    assert install.uv_options("") == []
