"""train.cache_host_memory: freed tensors' memory is reused without page faults (glibc)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import engine.cli
from engine.host_memory import parse_cache_host_memory
from tests.tools.test_train_eval_demo import (ROOT, _drop_log_handlers, data, load_tool,
                                            train_args)

# fixtures imported to apply here too: the autouse log clean-up and the tiny synthetic set
__all__ = ["_drop_log_handlers", "data"]

# in a fresh interpreter: page faults of allocating and filling a 64 MiB tensor, 10 times
_FAULTS = """
import json, resource, sys
import torch
from engine.host_memory import cache_host_memory
applied = cache_host_memory() if sys.argv[1] == "cache" else None
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 << 20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""
PAGES = (64 << 20) // 4096


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    default, cached = _faults("default"), _faults("cache")
    # glibc by default: every 64 MiB allocation comes with fresh pages, faulted in one by one
    assert min(default["faults"]) >= PAGES * 0.9, default
    assert cached["applied"] is True
    # the first few grow the heap (each aligned request is a little larger than the block the
    # last one freed: BENCHMARKS.md); then the freed blocks are reused as they are
    assert max(cached["faults"][-4:]) < PAGES * 0.01, cached


def test_the_key_takes_true_or_false_and_names_itself_otherwise() -> None:
    assert parse_cache_host_memory(True) is True
    assert parse_cache_host_memory(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"train.cache_host_memory must be true or false"):
            parse_cache_host_memory(bad)


def test_a_bad_value_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train.cache_host_memory must be true or false, "
                                         r"got 'sometimes'"):
        load_tool("train").main([str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"),
                                 "train.cache_host_memory=sometimes",
                                 f"train.output_dir={out}"])
    assert not out.exists()


@pytest.mark.parametrize("value", [True, False])
def test_the_training_tool_applies_it_to_a_cpu_run_when_asked(
        value: bool, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(engine.cli, "cache_host_memory", lambda: calls.append(True) or True)
    load_tool("train").main(train_args(data, tmp_path / "out", 1, "train.device=cpu",
                                       f"train.cache_host_memory={str(value).lower()}"))
    assert calls == ([True] if value else [])
