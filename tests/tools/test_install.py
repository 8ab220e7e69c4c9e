"""tools/install.py: pip's configured indexes, links and constraints become uv's options."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

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
    settings = install.pip_settings
    assert install.uv_options(settings(config)) == [
        "--find-links=/opt/wheels", "--constraint=/etc/xdg/pip/constraints.txt",
        "--extra-index-url=file:///opt/a/simple", "--extra-index-url=file:///opt/b/simple",
        "--index-url=https://other.example/simple"]
    assert install.uv_options(settings("")) == []
    assert install.uv_options(settings("global.no-index='true'\n:env:.no-index='1'")) == [
        "--no-index"]
    assert install.uv_options(settings("global.no-index='false'")) == []
    # pip's precedence: a PIP_* variable over [install] over [global]; [download] is not install's
    assert install.uv_options(settings("\n".join([
        ":env:.find-links='/env'", "download.index-url='https://d.example'",
        "global.find-links='/file'", "install.find-links='/install'"]))) == [
        "--find-links=/env"]
    cert = settings("global.cert='/etc/ssl/bundle.crt'")
    assert install.uv_environment(cert, {"A": "1"}) == {"A": "1",
                                                        "SSL_CERT_FILE": "/etc/ssl/bundle.crt"}
    assert install.uv_environment(cert, {"SSL_CERT_FILE": "/mine.crt"}) == {
        "SSL_CERT_FILE": "/mine.crt"}


def test_pip_installs_where_uv_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        if cmd[:2] == [str(tmp_path / "venv" / "bin" / "uv"), "pip"]:
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="global.find-links='/w'\n")

    monkeypatch.setattr(install.subprocess, "run", run)
    assert install.main([str(tmp_path / "venv")]) == 0
    assert "--find-links=/w" in calls[3]  # the uv install, with pip's configuration
    assert calls[-1][1:] == ["-m", "pip", "install", "-q", "--no-compile", "-e", ".[dev]"]
    assert "installing with pip" in capsys.readouterr().err


def test_help_and_options_are_not_taken_for_the_environment_folder(
        tmp_path, monkeypatch, capsys) -> None:
    """`tools/install.py --help` made a virtual environment named --help (6 GB)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("ran " + str(a)))
    assert install.main(["--help"]) == 0 and "Usage: python3 tools/install.py VENV" in \
        capsys.readouterr().out
    assert install.main(["-v"]) == 2 and install.main([]) == 2
    assert list(tmp_path.iterdir()) == []


def test_windows_programs_and_an_old_python(tmp_path, monkeypatch, capsys) -> None:
    """Windows keeps a venv's programs in Scripts\\ as .exe (bin/python was not found); a
    Python older than 3.11 (macOS's /usr/bin/python3 is 3.9) is refused before a venv and
    uv are made for nothing."""
    monkeypatch.setattr(install.os, "name", "nt")
    assert install.venv_program(tmp_path, "uv") == tmp_path / "Scripts" / "uv.exe"
    monkeypatch.setattr(install.os, "name", "posix")
    assert install.venv_program(tmp_path, "python") == tmp_path / "bin" / "python"
    monkeypatch.setattr(install.sys, "version_info", (3, 9, 6))
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("ran " + str(a)))
    assert install.main([str(tmp_path / "venv")]) == 2
    assert "needs Python 3.11 or newer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
