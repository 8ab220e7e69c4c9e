"""torchrun's restart of a command given without --resume continues from the checkpoints
that launch wrote, never from an earlier run's (tests/tools/test_kill_resume.py restarts a
real torchrun)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnet_detect.engine import restarts
from resnet_detect.engine.restarts import resume_after_restart

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(folder: Path, iteration: int, written: float) -> None:
    path = folder / f"model_{iteration:07d}.pth"
    path.write_bytes(b"")
    os.utime(path, (written, written))
    (folder / "last_checkpoint").write_text(f"{path.name}\n")


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="no /proc (not Linux)")
def test_the_launcher_start_time_is_the_parent_process_start() -> None:
    before = time.time()
    child = ("from resnet_detect.engine.restarts import launcher_start_time; "
             "print(launcher_start_time())")
    parent = (f"import subprocess, sys, time; time.sleep(3); "
              f"subprocess.run([sys.executable, '-c', {child!r}], check=True)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    started = float(out.stdout)
    # the parent, before its 3 s sleep: neither its child nor the test (btime is in whole
    # seconds)
    assert before - 1.0 <= started <= before + 1.0, (before, started)


@pytest.mark.parametrize("count,age_s,resumes", [
    ("0", -60, False),  # not a restart: the command as given
    ("1", -60, True),  # a checkpoint of this launch
    ("1", 3600, False),  # an earlier run's, written before torchrun started
    ("1", None, False),  # no checkpoint yet
    ("1", 1, False),  # copied into the folder a second before torchrun started
    ("1", "replacing", False),  # killed while its first one replaced an earlier run's
    # its first one committed, what it replaced left undeleted (a busy file on NFS)
    ("1", "replaced", True),
])
def test_a_restart_resumes_only_from_this_launchs_checkpoints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        count: str, age_s: float | str | None, resumes: bool) -> None:
    launched = time.time() - 600
    monkeypatch.setattr(restarts, "launcher_start_time", lambda: launched)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    if age_s is not None:
        _checkpoint(tmp_path, 10, launched - 3600)  # the earlier run's, always there
        _checkpoint(tmp_path, 20, launched + 60 if isinstance(age_s, str) else launched - age_s)
    if isinstance(age_s, str):  # replacing: the resume puts the earlier run back, finds it
        (tmp_path / ".replaced_run").mkdir()
    if age_s == "replaced":
        (tmp_path / ".replaced_run/saving").write_text("model_0000020.pth\n")
    assert resume_after_restart(tmp_path, "train.py") is resumes
    said = capsys.readouterr().err
    if count == "0":
        assert said == ""
    elif resumes:
        assert said == (f"train.py: torchrun restarted the processes (restart 1 of 3): "
                        f"continuing from the newest checkpoint of {tmp_path}, as --resume "
                        f"does\n")
    else:
        assert said == (f"train.py: torchrun restarted the processes (restart 1 of 3): "
                        f"{tmp_path} holds no checkpoint of this launch: starting from "
                        f"scratch, as the command says\n")


def test_without_the_launchers_start_a_restart_resumes_from_any_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restarts, "launcher_start_time", lambda: None)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    _checkpoint(tmp_path, 10, time.time() - 86400)
    assert resume_after_restart(tmp_path, "train.py")
