"""engine.checkpoint: atomic writes, pointer, RNG states, bit-identical resume."""
from __future__ import annotations

import argparse
import errno
import io
import logging
import math
import os
import random
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from omegaconf import OmegaConf

from resnet_detect.engine.checkpoint import (CheckpointWriteError, Checkpointer,
                                             PeriodicCheckpointer, UnreadableCheckpointError)
from resnet_detect.backbones.weights import read_checkpoint, save_checkpoint
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.resume_checks import check_resumable
from resnet_detect.engine.rng import get_rng_state, set_rng_state
from resnet_detect.engine.files import atomic_save, atomic_write_json, read_checked_bytes
from resnet_detect.engine.data.samplers import TrainingSampler
from resnet_detect.engine.schedule import build_lr_scheduler
from resnet_detect.engine.trainer import Trainer

BATCH = 4


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


def test_atomic_save_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.arange(3)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"a": torch.arange(5), "b": Unpicklable()}, path)
    # The failed write left the previous file intact and no temporary file behind.
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_atomic_json_write_creates_the_folder_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new/metrics.json"
    atomic_write_json({"AP": 1.5}, path)
    atomic_write_json({"AP": 2.5, "name": "ü"}, path)
    assert path.read_text() == '{\n  "AP": 2.5,\n  "name": "\\u00fc"\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json({"AP": 1.0}, tmp_path / "metrics.json")
        atomic_save({}, tmp_path / "model.pth")
    finally:
        os.umask(old)
    for name in ("metrics.json", "model.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_rng_state_roundtrip_through_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in the numpy state
    atomic_save(get_rng_state(), tmp_path / "rng.pth")
    first = (random.random(), np.random.normal(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    second = (random.random(), np.random.normal(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_pointer_pruning_and_missing_checkpoint(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model, max_to_keep=2)
    assert ckpt.resume() is None
    for it in (5, 10, 15):
        ckpt.save(it, extra={"samples_per_process": it * 4})
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000010.pth", "model_0000015.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000015.pth"
    with torch.no_grad():
        model.weight.zero_()
    state = ckpt.resume()
    assert state == {"iteration": 15, "extra": {"samples_per_process": 60}}
    assert model.weight.abs().sum() > 0



def _save_filled(ckpt: Checkpointer, model: nn.Module, iterations: tuple[int, ...]) -> None:
    """A checkpoint at each iteration, the weights filled with its number."""
    for it in iterations:
        with torch.no_grad():
            model.weight.fill_(it)
        ckpt.save(it)


def test_an_unreadable_newest_checkpoint_falls_back_to_an_older_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model, max_to_keep=1)  # at least 2 are kept
    _save_filled(ckpt, model, (5, 10, 15))
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000010.pth", "model_0000015.pth"]
    newest = tmp_path / "model_0000015.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # a truncated copy
    assert ckpt.resume()["iteration"] == 10
    assert model.weight.unique().tolist() == [10.0]
    assert "cannot read checkpoint" in caplog.text and "model_0000015.pth" in caplog.text
    assert "resumed from the older checkpoint" in caplog.text
    newest.unlink()  # the pointer names a missing file
    assert ckpt.resume()["iteration"] == 10
    (tmp_path / "model_0000010.pth").write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError,
                       match="no checkpoint in .* can be read.*model_0000015.*model_0000010"):
        ckpt.resume()


def test_a_pointer_naming_no_checkpoint_falls_back_and_partial_writes_go(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An empty or garbled `last_checkpoint` (it used to stop --resume although good
    checkpoints were there; 500 bytes of garbage were printed twice, with "File name too
    long"), and the temporary files a kill left behind."""
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model)
    for it in (5, 10):
        ckpt.save(it)
    (tmp_path / ".model_0000015.pth.0123456789abcdef.tmp").write_bytes(b"half")
    (tmp_path / ".last_checkpoint.0123456789abcdef.tmp").write_text("model_0000015.pth")
    for name in ("config.yaml", "metrics.json", "scalars.jsonl"):
        (tmp_path / f".{name}.0123456789abcdef.tmp").write_text("half")
    (tmp_path / ".mine.tmp").write_text("not ours")  # (no write of ours names files so)
    for garbled in ("", "  \n", "\x00\x00", "../elsewhere.pth", "%s" + "x" * 500):
        (tmp_path / "last_checkpoint").write_text(garbled)
        caplog.clear()
        assert ckpt.resume()["iteration"] == 10
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            f"{tmp_path} has a last_checkpoint that names no checkpoint: "
            f"{garbled.strip()[:24]!r}{'...' if len(garbled) > 24 else ''} (not a checkpoint "
            "name): resuming from its newest checkpoint that reads"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".mine.tmp", "last_checkpoint", "model_0000005.pth", "model_0000005.pth.sha256",
        "model_0000010.pth", "model_0000010.pth.sha256"]


def test_a_checkpoint_of_garbage_is_said_in_one_line_without_torchs_advice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each unreadable checkpoint repeated torch.load's five lines advising weights_only=False
    (which runs a file's code) where eval and export said what the file is."""
    model = nn.Linear(2, 2)
    _save_filled(Checkpointer(tmp_path, model=model), model, (5, 10))
    (tmp_path / "model_0000010.pth").write_bytes(b"garbage" * 40)
    (tmp_path / "model_0000010.pth.sha256").unlink()
    assert Checkpointer(tmp_path, model=model).resume()["iteration"] == 5
    assert (f"cannot read checkpoint {tmp_path / 'model_0000010.pth'}: no PyTorch file (it "
            "starts with b'garbagegarbagega': text, or another format;") in caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "weights_only" not in caplog.text and len(warned) == 2  # the file; the fall back
    assert all("\n" not in w for w in warned)


def test_checkpoints_without_a_pointer_resume_from_the_newest_that_reads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A kill before a run's first `last_checkpoint` was written, or checkpoints copied
    without it: --resume said "no checkpoint" and trained from scratch over them."""
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model)
    _save_filled(ckpt, model, (5, 10, 15))
    (tmp_path / "last_checkpoint").unlink()
    newest = tmp_path / "model_0000015.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # cut short too: the next one
    assert ckpt.resume()["iteration"] == 10
    assert model.weight.unique().tolist() == [10.0]
    assert (f"{tmp_path} has no last_checkpoint (a kill before it was written, or checkpoints "
            f"copied without it): resuming from its newest checkpoint that reads") in caplog.text
    (tmp_path / "last_checkpoint").mkdir()  # not a file: no pointer either
    assert ckpt.resume()["iteration"] == 10


def test_nothing_to_resume_is_a_warning_naming_the_folder_whole(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """--resume from another folder than the run's, with a relative train.output_dir, said
    "no checkpoint in out: starting from scratch" as an info line, and trained anew."""
    monkeypatch.chdir(tmp_path)
    assert Checkpointer("out", model=nn.Linear(2, 2)).resume() is None
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [f"nothing to resume: no checkpoint in {tmp_path / 'out'}; starting from "
                      f"scratch"]


def test_a_checksum_file_that_cannot_be_read_makes_its_checkpoint_unreadable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It was taken for "no checksum written": a damaged checkpoint then loaded unchecked
    (and the run stopped on a NaN loss, blaming the learning rate)."""
    model = nn.Linear(64, 64)
    ckpt = Checkpointer(tmp_path, model=model)
    _save_filled(ckpt, model, (5, 10))
    newest = tmp_path / "model_0000010.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))
    checksum = tmp_path / "model_0000010.pth.sha256"
    checksum.unlink()
    checksum.mkdir()  # unreadable (as root, a file's permissions would not stop the read)
    assert ckpt.resume()["iteration"] == 5
    assert "its checksum file model_0000010.pth.sha256 cannot be read (IsADirectoryError" \
        in caplog.text


def test_a_failed_atomic_save_keeps_the_earlier_file_and_its_checksum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum was removed before the new bytes were written: a full disk left the
    earlier model_best.pth unchecked."""
    path = tmp_path / "model_best.pth"
    atomic_save({"v": torch.ones(3)}, path, checksum=True)
    before = (path.read_bytes(), (tmp_path / "model_best.pth.sha256").read_text())

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"v": torch.zeros(3)}, path, checksum=True)
    assert (path.read_bytes(), (tmp_path / "model_best.pth.sha256").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_best.pth",
                                                          "model_best.pth.sha256"]
    monkeypatch.undo()
    atomic_save({"v": torch.zeros(3)}, path, checksum=True)
    assert torch.load(io.BytesIO(read_checked_bytes(path)), weights_only=True)["v"].sum() == 0


def test_resume_takes_this_runs_schedule_and_hyperparameters(tmp_path: Path) -> None:
    """Extending a run (a longer schedule, another learning rate or weight decay): only the
    position comes from the checkpoint. Before, the checkpoint's schedule came back with it,
    so a run extended from 10 to 20 steps trained its last 10 at lr 0."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = build_lr_scheduler(opt, max_iter=10, decay="cosine", warmup_iters=0)
    for _ in range(6):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
    Checkpointer(tmp_path, model=model, optimizer=opt, scheduler=sched).save(6)
    longer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    longer_sched = build_lr_scheduler(longer, max_iter=20, decay="cosine", warmup_iters=0)
    Checkpointer(tmp_path, model=model, optimizer=longer, scheduler=longer_sched).resume()
    cosine = [0.2 * (1 + math.cos(math.pi * i / 20)) / 2 for i in (6, 7)]
    assert longer_sched.last_epoch == 6
    assert longer.param_groups[0]["lr"] == pytest.approx(cosine[0], rel=1e-12)
    assert longer.param_groups[0]["weight_decay"] == 5e-4
    assert "momentum_buffer" in longer.state[model.weight]  # the optimizer's state is kept
    longer.step()
    longer_sched.step()
    assert longer.param_groups[0]["lr"] == pytest.approx(cosine[1], rel=1e-12)
    same = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    same_sched = build_lr_scheduler(same, max_iter=10, decay="cosine", warmup_iters=0)
    Checkpointer(tmp_path, model=model, optimizer=same, scheduler=same_sched).resume()
    assert same.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # bit for bit


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_checkpoint_of_nhwc_weights_resumes_bit_identically_on_nchw_ones(
        tmp_path: Path, optimizer: str) -> None:
    """A GPU run with model.channels_last saves NHWC momentum buffers (and Adam moments);
    resumed beside NCHW weights (on a CPU, or with channels_last changed), the fused step read
    them as flat arrays: other elements' momentum in every update (max weight difference 0.28
    after one step in a reviewer's run). Written weights are NCHW whatever the layout."""
    def build(layout: torch.memory_format) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        model.to(memory_format=layout)  # what place_model does on a GPU
        params = model.parameters()
        return model, (torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
                       if optimizer == "sgd" else torch.optim.AdamW(params, lr=0.1, fused=True))

    def steps(model: nn.Module, opt: torch.optim.Optimizer, seeds: range) -> None:
        for seed in seeds:
            x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()

    nhwc, opt = build(torch.channels_last)
    steps(nhwc, opt, range(3))
    state = next(v for v in opt.state[nhwc[0].weight].values() if v.dim() == 4)
    assert state.is_contiguous(memory_format=torch.channels_last)
    Checkpointer(tmp_path / "nhwc", model=nhwc, optimizer=opt).save(3)
    assert all(v.is_contiguous() for v in torch.load(
        tmp_path / "nhwc/model_0000003.pth", weights_only=True)["model"].values())
    # the same values with NCHW optimizer state: the checkpoint of an NCHW run
    for per_param in opt.state.values():
        for key, value in per_param.items():
            per_param[key] = value.contiguous()
    Checkpointer(tmp_path / "nchw", model=nhwc, optimizer=opt).save(3)
    resumed = {}
    for name in ("nhwc", "nchw"):
        model, opt = build(torch.contiguous_format)
        Checkpointer(tmp_path / name, model=model, optimizer=opt).resume()
        steps(model, opt, range(3, 5))
        resumed[name] = model.state_dict()
    for key, value in resumed["nchw"].items():
        assert torch.equal(resumed["nhwc"][key], value), key


def test_the_fp16_loss_scale_resumes_where_it_was(tmp_path: Path) -> None:
    """fp16's GradScaler state (its scale, its count of steps since the last overflow) comes
    back: at the default scale of 65536 a resumed run would repeat its first overflows, each a
    skipped step."""
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    scaler.update(new_scale=96.0)
    Checkpointer(tmp_path, model=model, optimizer=opt, scaler=scaler).save(2)
    resumed = torch.amp.GradScaler("cpu")
    Checkpointer(tmp_path, model=model, optimizer=opt, scaler=resumed).resume()
    assert resumed.state_dict() == {"scale": 96.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                    "growth_interval": 3, "_growth_tracker": 2}


def test_iterations_of_eight_digits_order_by_number(tmp_path: Path) -> None:
    """model_10000000.pth sorts before model_9999999.pth by name."""
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model, max_to_keep=2)
    for it in (9_999_998, 9_999_999, 10_000_000):
        ckpt.save(it)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_10000000.pth", "model_9999999.pth"]
    assert ckpt.resume()["iteration"] == 10_000_000
    (tmp_path / "model_10000000.pth").write_bytes(b"")
    assert ckpt.resume()["iteration"] == 9_999_999


def test_another_scheduler_resumes_at_its_saved_learning_rate(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    for _ in range(7):
        opt.step()
        sched.step()
    Checkpointer(tmp_path, model=model, optimizer=opt, scheduler=sched).save(7)
    again = torch.optim.SGD(model.parameters(), lr=0.1)
    again_sched = torch.optim.lr_scheduler.StepLR(again, step_size=3, gamma=0.1)
    Checkpointer(tmp_path, model=model, optimizer=again, scheduler=again_sched).resume()
    assert again.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_a_checkpoint_of_another_model_is_named(tmp_path: Path) -> None:
    Checkpointer(tmp_path, model=nn.Linear(2, 3)).save(4)
    with pytest.raises(ConfigError, match=r"checkpoint .*model_0000004.pth does not fit this "
                                          r"model \(a model key changed since it was written, "
                                          r"or .* holds another model's run: set the key back, "
                                          r"or another train.output_dir\)"):
        Checkpointer(tmp_path, model=nn.Linear(2, 2)).resume()


def test_a_checkpoint_damaged_after_writing_is_unreadable_not_loaded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bytes changed inside a checkpoint (a bad disk, a copy gone wrong) loaded without
    complaint into wrong weights; its checksum now marks it unreadable, and resuming takes the
    older one. Pruning removes the checksums with their checkpoints."""
    model = nn.Linear(64, 64)
    ckpt = Checkpointer(tmp_path, model=model, max_to_keep=2)
    _save_filled(ckpt, model, (5, 10, 15))
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == [
        "model_0000010.pth.sha256", "model_0000015.pth.sha256"]
    newest = tmp_path / "model_0000015.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit, inside the weight's bytes
    newest.write_bytes(bytes(data))
    assert torch.load(newest, weights_only=True)["iteration"] == 15  # torch.load takes it
    assert ckpt.resume()["iteration"] == 10
    assert model.weight.unique().tolist() == [10.0]
    assert "do not match model_0000015.pth.sha256" in caplog.text
    # the weights reader of Predictor, tools/eval.py and tools/export.py checks it too
    with pytest.raises(ValueError, match=r"cannot read weights file .*model_0000015.pth: "
                                         r"its bytes do not match "
                                         r"model_0000015.pth.sha256: the file was damaged"):
        read_checkpoint(newest)
    assert read_checkpoint(tmp_path / "model_0000010.pth")["iteration"] == 10
    # a sidecar as `sha256sum FILE > FILE.sha256` writes it, in capitals: the same check
    older = tmp_path / "model_0000010.pth"
    checksum = (tmp_path / "model_0000010.pth.sha256").read_text().strip()
    (tmp_path / "model_0000010.pth.sha256").write_text(f"{checksum.upper()}  {older.name}\n")
    assert read_checkpoint(older)["iteration"] == 10
    # saved again whole (torch.save of the loaded checkpoint, another torch version's): it was
    # "damaged" too, with nothing wrong in it but its stale .sha256
    resaved = torch.load(older, weights_only=True)
    resaved["note"] = "mine"
    torch.save(resaved, older)
    caplog.clear()
    assert read_checkpoint(older).keys() == resaved.keys()
    assert ("model_0000010.pth does not match model_0000010.pth.sha256, written with it, yet "
            "every part of it matches the CRC-32 checksums the file keeps, and it loads: "
            "written again since (saved again with torch.save, or another file copied over "
            "it), read as it is") in caplog.text
    # whole by its records' CRC-32s, yet torch's reader refuses it (the zip64 end record's disk
    # number, which Python's zipfile passes over): damaged, as before, not "written again"
    data = bytearray(older.read_bytes())
    data[data.rfind(b"PK\x06\x06") + 16] ^= 1
    older.write_bytes(bytes(data))
    caplog.clear()
    with pytest.raises(ValueError, match=r"its bytes do not match model_0000010.pth.sha256: "
                                         r"the file was damaged after it was written$"):
        read_checkpoint(older)
    assert "written again since" not in caplog.text


def test_final_weights_damaged_after_writing_are_unreadable(tmp_path: Path) -> None:
    """model_final.pth (backbone_final.pth, model_best.pth) had no checksum: eight bytes
    overwritten made one weight 9.5e14, and eval, demo and export ran on it. Written again,
    a stale checksum of the earlier file is not taken for the new one's."""
    path = tmp_path / "model_final.pth"
    (tmp_path / "model_final.pth.sha256").write_text("0" * 64 + "\n")  # an earlier file's
    save_checkpoint(path, nn.Linear(64, 64).state_dict(), {"arch": "linear"}, iteration=3)
    assert read_checkpoint(path)["iteration"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model_final.pth: its bytes do not "
                                         r"match model_final.pth.sha256"):
        read_checkpoint(path)


def test_damaged_weights_without_a_checksum_file_are_unreadable(tmp_path: Path) -> None:
    """A .pth copied without its .sha256 (another tool's, a download) loaded damaged bytes
    into wrong weights: the CRC-32s of torch.save's zip records are checked then."""
    path = tmp_path / "copy.pth"
    weights = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3)}
    torch.save(weights, path)
    data = bytearray(path.read_bytes())
    start = data.index(weights["w"][1000:1002].numpy().tobytes())
    data[start:start + 8] = bytes(8)  # two weights zeroed inside the archive
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"][1000] == 0  # torch.load takes it
    with pytest.raises(ValueError, match=r"cannot read weights file .*copy.pth: its bytes are "
                                         r"damaged: its record copy/data/0 does not match the "
                                         r"CRC-32 checksum the file keeps of it"):
        read_checkpoint(path)
    # one written without CRCs (torch.serialization.set_crc32_options(False)): read as before
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(weights, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(read_checkpoint(path)["w"], weights["w"])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="Linux's /dev/full")
def test_a_full_disk_keeps_the_previous_checkpoint_and_pointer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, model=model)
    ckpt.save(5)

    real_open, real_save = os.open, torch.save

    def onto_a_full_disk(path: Any, flags: int, *args: Any) -> int:
        real_open(path, flags, *args)  # (removed after the failure, as a real one)
        return real_open("/dev/full", os.O_WRONLY)  # where every write fails with ENOSPC

    def zip_writer(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        """torch.save as it failed writing to a file on a full disk: a RuntimeError naming
        neither the disk nor the file (memory is not full)."""
        if not isinstance(f, io.BytesIO):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "25901184 vs 25901072")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(os, "open", onto_a_full_disk)
    monkeypatch.setattr(torch, "save", zip_writer)
    with pytest.raises(CheckpointWriteError, match=rf"model_0000010.pth in {tmp_path} .*No "
                       r"space left.*previous checkpoint .*model_0000005.pth.*Free space there"):
        ckpt.save(10)
    monkeypatch.undo()

    def read_only(obj: object, f: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", read_only)  # a folder made read-only during the run
    with pytest.raises(CheckpointWriteError, match="Permission denied.*Make it writable"):
        ckpt.save(10)

    def read_only_mount(obj: object, f: object) -> None:  # (an OSError, no PermissionError)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(torch, "save", read_only_mount)
    with pytest.raises(CheckpointWriteError, match="Read-only file system.*Make it writable"):
        ckpt.save(10)
    monkeypatch.undo()
    # another process, told that rank 0 failed: it does not know why (it said "Free space
    # there" of a read-only folder)
    from resnet_detect.engine import checkpoint
    monkeypatch.setattr(checkpoint, "is_main_process", lambda: False)
    monkeypatch.setattr(checkpoint, "any_process", lambda failed: True)
    with pytest.raises(CheckpointWriteError, match=r"\(see rank 0\); .*Free space there, or make "
                                                   r"it writable \(rank 0's message says which\)"):
        ckpt.save(10)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0000005.pth", "model_0000005.pth.sha256"]
    assert ckpt.resume()["iteration"] == 5


def test_resume_from_makes_the_chosen_checkpoint_the_newest_at_once(tmp_path: Path) -> None:
    """The abandoned course moves aside before a step runs: a crash right after, then a plain
    --resume, continues from the chosen checkpoint, and pruning cannot keep the abandoned ones
    over it. A checkpoint from another folder is copied in."""
    model = nn.Linear(2, 2)
    run = Checkpointer(tmp_path / "run", model=model)
    for iteration in (2, 4, 6):
        torch.nn.init.constant_(model.weight, float(iteration))
        run.save(iteration)
    again = Checkpointer(tmp_path / "run", model=model, max_to_keep=2)
    assert again.resume_from(tmp_path / "run/model_0000002.pth")["iteration"] == 2
    assert (tmp_path / "run/last_checkpoint").read_text() == "model_0000002.pth\n"
    assert sorted(p.name for p in (tmp_path / "run").glob("model_*")) == [
        "model_0000002.pth", "model_0000002.pth.sha256"]
    assert sorted(p.name for p in (tmp_path / "run/abandoned").iterdir()) == [
        "model_0000004.pth", "model_0000004.pth.sha256", "model_0000006.pth",
        "model_0000006.pth.sha256"]
    assert Checkpointer(tmp_path / "run", model=model).resume()["iteration"] == 2
    assert model.weight.eq(2.0).all()

    fresh = Checkpointer(tmp_path / "other", model=model)
    (tmp_path / "other").mkdir()
    assert fresh.resume_from(tmp_path / "run/abandoned/model_0000006.pth")["iteration"] == 6
    assert (tmp_path / "other/last_checkpoint").read_text() == "model_0000006.pth\n"
    assert Checkpointer(tmp_path / "other", model=model).resume()["iteration"] == 6
    with pytest.raises(UnreadableCheckpointError, match="model_0000009.pth"):
        fresh.resume_from(tmp_path / "run/model_0000009.pth")
    assert (tmp_path / "other/last_checkpoint").read_text() == "model_0000006.pth\n"


class NoisyPoints(Dataset):
    """32 points of 2 classes; each sample gets noise seeded by its stream seed."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 6, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        noise = torch.randn(6, generator=torch.Generator().manual_seed(seed)) * 0.1
        return self.x[index] + noise, self.y[index]


class Crash:
    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter == self.at:
            raise KeyboardInterrupt


def run(output_dir: Path, *, init_seed: int, resume: bool, crash_at: int | None = None,
        max_iter: int = 12) -> nn.Module:
    torch.manual_seed(init_seed)
    # BatchNorm buffers, dropout (torch RNG) and momentum make every state matter.
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = build_lr_scheduler(optimizer, max_iter=max_iter, decay="cosine",
                                   warmup_iters=3)

    def step_fn(net: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss_cls": F.cross_entropy(net(x), y),
                "loss_aux": 1e-3 * torch.rand(()) * net[0].weight.pow(2).sum()}

    trainer = Trainer(model=model, optimizer=optimizer, scheduler=scheduler, step_fn=step_fn,
                      max_iter=max_iter)
    checkpointer = Checkpointer(output_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=trainer.scaler)
    start_iter, consumed = 0, 0
    state = checkpointer.resume() if resume else None
    if state is not None:
        start_iter, consumed = state["iteration"], state["extra"]["samples_per_process"]
    trainer.register_hooks(PeriodicCheckpointer(
        checkpointer, 4, extra_fn=lambda it: {"samples_per_process": it * BATCH}))
    if crash_at is not None:
        trainer.register_hooks(Crash(crash_at))
    loader = DataLoader(NoisyPoints(), batch_size=BATCH, drop_last=True,
                        sampler=TrainingSampler(32, seed=7, start=consumed),
                        generator=torch.Generator().manual_seed(7))
    data: Iterator[Any] = iter(loader)
    trainer.train(data, start_iter=start_iter)
    return model


def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path: Path) -> None:
    reference = run(tmp_path / "a", init_seed=0, resume=False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", init_seed=0, resume=False, crash_at=6)
    assert (tmp_path / "b/last_checkpoint").read_text().strip() == "model_0000004.pth"
    # A different init seed: everything must come from the checkpoint.
    resumed = run(tmp_path / "b", init_seed=123, resume=True)
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert list(ref_state) == list(res_state)
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key
    final = torch.load(tmp_path / "b/model_0000012.pth", weights_only=True)
    assert final["iteration"] == 12
    for key in ref_state:
        assert torch.equal(final["model"][key], ref_state[key]), key


def test_resume_without_rng_restore_would_differ(tmp_path: Path) -> None:
    """Guards the test above: the RNG state really matters for this toy run."""
    reference = run(tmp_path / "a", init_seed=0, resume=False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", init_seed=0, resume=False, crash_at=6)
    state = torch.load(tmp_path / "b/model_0000004.pth", weights_only=True)
    state["world_size"] = 99  # the checkpointer then skips restoring RNG states
    atomic_save(state, tmp_path / "b/model_0000004.pth")
    (tmp_path / "b/model_0000004.pth.sha256").unlink()  # as a checkpoint without a checksum
    resumed = run(tmp_path / "b", init_seed=0, resume=True)
    assert not torch.equal(reference[0].weight, resumed[0].weight)


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints_at_its_first_save(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second run in the same folder without --resume: pruning by iteration deleted the new
    run's checkpoints and kept the earlier run's later ones, a mixed folder a --resume would
    read. The earlier ones now go once the new run's first checkpoint is written."""
    model = nn.Linear(4, 4)
    earlier = Checkpointer(tmp_path, model=model, max_to_keep=2)
    _save_filled(earlier, model, (3, 6))
    again = Checkpointer(tmp_path, model=model, max_to_keep=2)
    with caplog.at_level("WARNING"):
        again.replace_earlier_run()
    assert "holds the checkpoints of an earlier run (model_0000003.pth, model_0000006.pth)" \
        in caplog.text
    assert len(list(tmp_path.glob("model_*.pth"))) == 2  # kept until the new run has one
    _save_filled(again, model, (2, 4))
    assert sorted(p.name for p in tmp_path.glob("model_*")) == [
        "model_0000002.pth", "model_0000002.pth.sha256", "model_0000004.pth",
        "model_0000004.pth.sha256"]
    assert Checkpointer(tmp_path, model=model).resume()["iteration"] == 4
    # a run started from a checkpoint of the folder (model.weights=model_0000004.pth) keeps it
    third = Checkpointer(tmp_path, model=model, max_to_keep=2)
    third.replace_earlier_run(keep=[str(tmp_path / "model_0000004.pth")])
    _save_filled(third, model, (1, 2, 3))
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000002.pth", "model_0000003.pth", "model_0000004.pth"]


class _Killed(BaseException):
    """A kill -9 in the middle of a save: nothing of the save runs after it."""


def _files(folder: Path) -> dict[str, bytes]:
    assert not (folder / ".replaced_run").exists()
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _write_records(folder: Path, iteration: int, best: bool = True) -> None:
    """A run's scalars.jsonl and tensorboard event file, logged up to `iteration`, and its
    model_best.pth (with its checksum) of that iteration."""
    (folder / "scalars.jsonl").write_text(f'{{"iteration": {iteration}}}\n')
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard/events.out").write_bytes(b"%d" % iteration)
    if best:
        for name in ("model_best.pth", "model_best.pth.sha256"):
            (folder / name).write_bytes(b"%d" % iteration)


# the first checkpoint with a name of the earlier run's, a name of its own, the name of the
# checkpoint the run started from (model.weights=OUTPUT_DIR/model_0000003.pth: kept)
@pytest.mark.parametrize("first, kept", [(1, None), (2, None), (3, 3)])
def test_a_kill_during_a_fresh_runs_first_save_leaves_one_run_in_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int, kept: int | None) -> None:
    """A kill between a fresh run's first checkpoint and the removal of the earlier run's left
    both: pruning by iteration then deleted the new run's files and kept the earlier run's
    later ones, and a pointer still on the earlier run had --resume continue it under the new
    config. Killed before each file operation of that save in turn, the folder, once the next
    run has looked at it, holds the earlier run as it was, or the new run alone; with its
    config.yaml (the new run's was written at its start: `RUN/config.yaml --resume` after a
    kill, or an error, before its first checkpoint took the new run's settings to the
    earlier run's checkpoints), its curves (the new run's emptied scalars.jsonl and hid
    tensorboard's steps at its start: a run stopped before its first checkpoint erased the
    earlier run's record) and its model_best.pth (the new run's replaced it at an evaluation
    before its first checkpoint, or kept it: a --resume of the new run took the earlier
    run's best as its own)."""
    model = nn.Linear(4, 4)
    earlier = tmp_path / "earlier"
    _save_filled(Checkpointer(earlier, model=model, max_to_keep=3), model, (1, 3, 6))
    (earlier / "config.yaml").write_text("train: {max_iter: 6}\n")
    _write_records(earlier, 6)
    earlier_files = _files(earlier)

    def killed_at(n: int, operation: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append((operation, args))
            if len(calls) == n:
                raise _Killed
            return operation(*args, **kwargs)
        return run

    outcomes = []
    for n in range(0, 100):  # (0: killed before its first save)
        folder = tmp_path / f"killed_at_{n}"
        shutil.copytree(earlier, folder)
        fresh = Checkpointer(folder, model=model, max_to_keep=2)
        fresh.replace_earlier_run(keep=[folder / f"model_{kept:07d}.pth"] if kept else [])
        fresh.write_run_file("config.yaml", "train: {max_iter: 2}\n")  # (the runner's)
        assert not [name for name in ("scalars.jsonl", "tensorboard", "model_best.pth")
                    if (folder / name).exists()]
        _write_records(folder, 1)  # (the new run's, from its first step)
        if n == 0:  # killed, or an error, before the first save: the earlier curves come back
            Checkpointer(folder, model=model).remove_partial_writes()
            assert _files(folder) == earlier_files
            continue
        with torch.no_grad():
            model.weight.fill_(-1)
        calls: list[Any] = []
        try:
            with monkeypatch.context() as patch:
                for name in ("replace", "unlink", "rmdir", "mkdir"):
                    patch.setattr(os, name, killed_at(n, getattr(os, name)))
                fresh.save(first)
        except _Killed:
            pass
        # before anything is put back (RUN/config.yaml --resume reads it first): the earlier
        # run's while the new checkpoint is written (seconds), the new run's once its pointer
        # commits it (between the two: the two small writes of config.yaml and the pointer)
        committed = (folder / "last_checkpoint").is_file() and (
            folder / "last_checkpoint").read_text() == f"model_{first:07d}.pth\n"
        new_checkpoint = folder / f"model_{first:07d}.pth"
        checkpoint_written = any(op is os.replace and Path(a[1]) == new_checkpoint
                                 for op, a in calls[:n - 1])
        config = (folder / "config.yaml").read_text()
        if committed:
            assert config == "train: {max_iter: 2}\n", n
        if not checkpoint_written:
            assert config == "train: {max_iter: 6}\n", n
        Checkpointer(folder, model=model).remove_partial_writes()
        if _files(folder) == earlier_files:
            outcomes.append("earlier")
        else:
            name = f"model_{first:07d}.pth"
            assert sorted(_files(folder)) == ["config.yaml", "last_checkpoint", name,
                                              f"{name}.sha256", "model_best.pth",
                                              "model_best.pth.sha256", "scalars.jsonl",
                                              "tensorboard/events.out"], n
            assert (folder / "model_best.pth").read_bytes() == b"1"
            assert (folder / "scalars.jsonl").read_text() == '{"iteration": 1}\n'
            assert (folder / "last_checkpoint").read_text() == f"{name}\n"
            assert (folder / "config.yaml").read_text() == "train: {max_iter: 2}\n"
            assert torch.equal(read_checkpoint(folder / name)["model"]["weight"],
                               torch.full((4, 4), -1.0))
            outcomes.append("new")
        if len(calls) < n:  # the save ran to its end
            break
    # (each kill before the new pointer put the earlier run back; each after it, the new one)
    assert outcomes == ["earlier"] * outcomes.index("new") + ["new"] * (
        len(outcomes) - outcomes.index("new"))
    assert outcomes.count("earlier") >= 8 and outcomes.count("new") >= 4


def test_a_fresh_run_stopped_before_its_first_checkpoint_leaves_no_record_of_its_own(
        tmp_path: Path) -> None:
    """Where the earlier run had no model_best.pth (or curves), the stopped fresh run's stayed
    beside the earlier run's checkpoints: a --resume of the earlier run took it as its best."""
    from resnet_detect.engine.checkpoint import finish_replacing
    model = nn.Linear(4, 4)
    _save_filled(Checkpointer(tmp_path, model=model, max_to_keep=3), model, (1, 3))
    earlier = _files(tmp_path)
    fresh = Checkpointer(tmp_path, model=model, max_to_keep=2)
    fresh.replace_earlier_run()
    _write_records(tmp_path, 1)
    assert finish_replacing(tmp_path) is False  # (no checkpoint was put back)
    assert _files(tmp_path) == earlier and not (tmp_path / "tensorboard").exists()


def test_a_kill_while_a_fresh_run_sets_the_earlier_records_aside_leaves_them_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the moves of the earlier run's records at a fresh start, the next start
    puts back those moved and leaves those not moved yet (they are no new run's)."""
    from resnet_detect.engine.checkpoint import finish_replacing
    model = nn.Linear(4, 4)
    earlier = tmp_path / "earlier"
    _save_filled(Checkpointer(earlier, model=model, max_to_keep=3), model, (1, 3))
    _write_records(earlier, 3)
    earlier_files = _files(earlier)
    real_replace = os.replace
    for n in range(1, 5):
        folder = tmp_path / f"killed_at_{n}"
        shutil.copytree(earlier, folder)
        calls: list[Any] = []

        def replace(*args: Any) -> None:
            calls.append(args)
            if len(calls) == n:
                raise _Killed
            real_replace(*args)
        try:
            with monkeypatch.context() as patch:
                patch.setattr(os, "replace", replace)
                Checkpointer(folder, model=model).replace_earlier_run()
        except _Killed:
            pass
        assert (folder / ".replaced_run").is_dir() and len(calls) == n
        finish_replacing(folder)
        assert _files(folder) == earlier_files, n


def test_a_leftover_of_a_committed_replacement_is_not_reused_by_the_next_fresh_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file of the replaced run that could not be deleted (busy on NFS) left .replaced_run
    with its commit's marker; the next fresh start moved the committed run's records into it,
    where that marker had them deleted with it."""
    from resnet_detect.engine.checkpoint import finish_replacing
    model = nn.Linear(4, 4)
    _save_filled(Checkpointer(tmp_path, model=model, max_to_keep=3), model, (2, 4))
    _write_records(tmp_path, 4)
    committed = _files(tmp_path)
    (tmp_path / ".replaced_run").mkdir()  # the leftover: its commit marker and a busy file
    (tmp_path / ".replaced_run/saving").write_text("model_0000002.pth\n")
    (tmp_path / ".replaced_run/model_0000003.pth").write_bytes(b"busy")
    with caplog.at_level("WARNING"):
        Checkpointer(tmp_path, model=model).replace_earlier_run()
    assert "are not set aside, this run's replace them" in caplog.text
    finish_replacing(tmp_path)  # (the next start: the leftover goes, the records stay)
    assert _files(tmp_path) == committed


def test_an_older_versions_interrupted_first_save_is_undone_keeping_the_earlier_records(
        tmp_path: Path) -> None:
    """Versions before the records were set aside left .replaced_run with its `saving` name
    alone: the undo failed once (no `started` marker) and deleted the earlier run's
    model_best.pth, which had stayed in the folder."""
    from resnet_detect.engine.checkpoint import finish_replacing
    model = nn.Linear(4, 4)
    _save_filled(Checkpointer(tmp_path, model=model, max_to_keep=3), model, (3,))
    _write_records(tmp_path, 3)
    earlier = _files(tmp_path)
    aside = tmp_path / ".replaced_run"
    aside.mkdir()
    for name in ("last_checkpoint", "model_0000003.pth", "model_0000003.pth.sha256"):
        os.replace(tmp_path / name, aside / name)
    (aside / "saving").write_text("model_0000001.pth\n")
    (tmp_path / "model_0000001.pth").write_bytes(b"the new run's, not committed")
    assert finish_replacing(tmp_path) is True
    assert _files(tmp_path) == earlier


def test_an_earlier_file_that_cannot_be_deleted_after_the_first_save_waits_for_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file held open on NFS (renamed .nfs*, busy): the saved run went on, the earlier files
    stayed hidden until a later start removed them."""
    model = nn.Linear(4, 4)
    _save_filled(Checkpointer(tmp_path, model=model, max_to_keep=3), model, (1, 3, 6))
    fresh = Checkpointer(tmp_path, model=model, max_to_keep=2)
    fresh.replace_earlier_run()
    real_unlink = os.unlink

    def busy(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "model_0000003.pth":
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_unlink(path, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", busy)
        _save_filled(fresh, model, (2, 4))
    assert "cannot remove" in caplog.text and (tmp_path / ".replaced_run").is_dir()
    assert fresh.resume()["iteration"] == 4  # its start removed what was left
    assert sorted(_files(tmp_path)) == ["last_checkpoint", "model_0000002.pth",
                                        "model_0000002.pth.sha256", "model_0000004.pth",
                                        "model_0000004.pth.sha256"]


@pytest.mark.parametrize("kept", [None, 3])
def test_a_failed_first_save_of_a_fresh_run_leaves_the_earlier_run_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int | None) -> None:
    """(With the checkpoint the run started from at the name of its first: deleted.)"""
    model = nn.Linear(4, 4)
    _save_filled(Checkpointer(tmp_path, model=model, max_to_keep=3), model, (1, 3, 6))
    earlier_files = _files(tmp_path)
    fresh = Checkpointer(tmp_path, model=model, max_to_keep=2)
    fresh.replace_earlier_run(keep=[tmp_path / "model_0000003.pth"] if kept else [])

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("resnet_detect.engine.checkpoint.atomic_save", full_disk)
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint model_0000003.pth"
                                                   ".* the previous checkpoint .*model_0000006"):
        fresh.save(3)
    assert _files(tmp_path) == earlier_files
    # an earlier run without a config.yaml: the new run's is not left beside its checkpoints
    fresh = Checkpointer(tmp_path, model=model, max_to_keep=2)
    fresh.replace_earlier_run(keep=[tmp_path / "model_0000003.pth"] if kept else [])
    fresh.write_run_file("config.yaml", "train: {max_iter: 3}\n")
    from resnet_detect.engine import checkpoint, files

    def pointer_fails(text: str, path: Any) -> None:
        if Path(path).name == "last_checkpoint":
            raise OSError(errno.ENOSPC, "No space left on device")
        files.atomic_write_text(text, path)
    monkeypatch.setattr(checkpoint, "atomic_save", files.atomic_save)
    monkeypatch.setattr(checkpoint, "atomic_write_text", pointer_fails)
    with pytest.raises(CheckpointWriteError):
        fresh.save(3)
    assert _files(tmp_path) == earlier_files


def test_weights_alone_or_another_tasks_checkpoint_are_refused_as_such(tmp_path: Path) -> None:
    """--resume-from backbone_final.pth stopped with a raw KeyError 'iteration'; a pretraining
    run's checkpoint given to a detection run was refused for its class names, with advice
    that would be refused too."""
    model = nn.Linear(2, 2)
    torch.save({"model": model.state_dict(), "provenance": {}}, tmp_path / "backbone_final.pth")
    with pytest.raises(UnreadableCheckpointError, match="backbone_final.pth is no training "
                                                        "checkpoint .*model.weights=PATH"):
        Checkpointer(tmp_path / "run", model=model).resume_from(tmp_path / "backbone_final.pth")
    # torchvision's references' checkpoint: "it holds more than tensors, or is no PyTorch file
    # (Unsupported global: argparse.Namespace)", a damaged download as it read
    torch.save({"model": model.state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 25,
                "args": argparse.Namespace(lr=0.02)}, tmp_path / "checkpoint.pth")
    with pytest.raises(UnreadableCheckpointError, match=re.escape(
            f"{tmp_path / 'checkpoint.pth'} is another program's training checkpoint "
            f"(torchvision's references' or timm's: it counts epochs): its optimizer and "
            f"position are not resumed here; start a run from its weights with "
            f"model.weights={tmp_path / 'checkpoint.pth'}")):
        Checkpointer(tmp_path / "run", model=model).resume_from(tmp_path / "checkpoint.pth")
    Checkpointer(tmp_path / "pre", model=model, provenance={
        "class_names": ["cat", "dog"], "config": {"task": "classification"}}).save(4)
    cfg = OmegaConf.create({"task": "detection", "train": {}})
    with pytest.raises(ConfigError, match="model_0000004.pth was written by a classification "
                                          "run, this one trains detection"):
        Checkpointer(tmp_path / "pre", model=model, check=lambda path, saved, it: (
            check_resumable(path, saved, it, cfg, 10, logging.getLogger("t"),
                            {"class_names": ["a", "b", "c"]}))).resume()


def test_resuming_with_other_data_train_settings_names_them(
        caplog: pytest.LogCaptureFixture) -> None:
    """data.train.repeat_threshold (or the augmentation) changed at a resume changes every key
    drawn from there on; the paths of the data may move without a word."""
    recorded = {"config": {"task": "detection", "train": {"batch_size": 4},
                           "data": {"train": {"ann_file": "/a/train.json", "img_dir": "/a/img",
                                              "repeat_threshold": None, "hflip_prob": 0.5},
                                    "class_names": "/a/classes.json"}}}
    # (a segmentation's classes.json moves with its data: the names are compared apart)
    cfg = OmegaConf.create({"task": "detection", "train": {"batch_size": 4},
                            "data": {"train": {"ann_file": "/b/train.json", "img_dir": "/b/img",
                                               "repeat_threshold": 0.01, "hflip_prob": 0.5},
                                     "class_names": "/b/classes.json"}})

    def resume() -> None:  # the checks of a resume from model_0000004.pth, logged afresh
        caplog.clear()
        with caplog.at_level("WARNING"):
            check_resumable(Path("model_0000004.pth"), recorded, 4, cfg, 10,
                            logging.getLogger("t"), {})

    resume()
    assert ("resuming model_0000004.pth with data settings other than the run that wrote "
            "it: the images are drawn, augmented or evaluated otherwise from iteration 4: "
            "data.train.repeat_threshold: None -> 0.01") in caplog.text
    assert "ann_file" not in caplog.text and "classes.json" not in caplog.text
    assert "train settings other than" not in \
        caplog.text.replace("data settings other than", "")
    assert "model settings" not in caplog.text
    cfg.data.train.repeat_threshold = None
    cfg.data.palette = [[0, 0, 0], [255, 0, 0]]  # the overlays' colours: nothing drawn otherwise
    # data.classes in another order: the same labels (they follow the file's ids)
    recorded["config"]["data"]["classes"] = ["car", "Traffic Light"]
    cfg.data.classes = ["Traffic Light", "car"]
    resume()
    assert caplog.text == ""
    cfg.data.classes = ["Traffic Light", "bus"]
    resume()
    assert "data.classes: ['car', 'Traffic Light'] -> ['Traffic Light', 'bus']" in caplog.text
    cfg.data.classes = ["car", "Traffic Light"]
    # a model key changed: named (the weights' refusal, if they do not fit, lists tensors)
    recorded["config"]["model"] = {"name": "resnet18", "weights": "/a/r18.pth"}
    cfg.model = {"name": "resnet34", "weights": "/b/r18.pth"}
    resume()
    assert ("resuming model_0000004.pth with model settings other than the run that wrote it "
            "(they apply from here on): model.name: resnet18 -> resnet34\n") in caplog.text
    # a model key the checkpoint predates (a registered task's config: no defaults to fill
    # it), set here, was not compared; one empty here is no change
    cfg.model = {"name": "resnet18", "weights": "/b/r18.pth", "depth": 3, "options": {}}
    resume()
    assert ("resuming model_0000004.pth with model settings other than the run that wrote it "
            "(they apply from here on): model.depth: None -> 3\n") in caplog.text


QUICKSTART = Path(__file__).resolve().parents[2] / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"


def test_a_key_the_checkpoint_predates_is_compared_at_its_default(
        caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint of a version before train.accumulation_steps and data.train.mask_format
    were keys had its resume warned of as "train.accumulation_steps: None -> 1" and
    "data.train.mask_format: None -> bitmask": the behaviour it had, under a new name. A key
    set otherwise than its default is still a change."""
    from resnet_detect.engine.config import to_plain
    from resnet_detect.engine.tasks import load_task_config
    _, cfg = load_task_config(QUICKSTART, ["model.backbone.weights=null"])
    recorded = to_plain(cfg)
    del recorded["train"]["accumulation_steps"], recorded["data"]["train"]["mask_format"]
    with caplog.at_level("WARNING"):
        check_resumable(Path("model_0000004.pth"), {"config": recorded}, 4, cfg, 300,
                        logging.getLogger("t"), {})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cfg.train.accumulation_steps = 2
    with caplog.at_level("WARNING"):
        check_resumable(Path("model_0000004.pth"), {"config": recorded}, 4, cfg, 300,
                        logging.getLogger("t"), {})
    assert "train.accumulation_steps: 1 -> 2" in caplog.text


def test_a_checkpoint_without_its_config_is_compared_with_its_folder_s_config_yaml(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Checkpoints written before they recorded their config resumed under another learning
    rate (the quickstart's, changed since) without a word: the run's config.yaml beside them
    was there to compare with."""
    from resnet_detect.engine.config import save_config
    from resnet_detect.engine.tasks import load_task_config
    _, cfg = load_task_config(QUICKSTART, ["model.backbone.weights=null"])
    _, before = load_task_config(QUICKSTART, ["model.backbone.weights=null",
                                              "train.base_lr=0.0004"])
    save_config(before, tmp_path / "config.yaml")
    path = tmp_path / "model_0000003.pth"
    with caplog.at_level("WARNING"):
        check_resumable(path, {}, 3, cfg, 300, logging.getLogger("t"), {})
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned[0] == (f"checkpoint {path} records no config (written before checkpoints "
                         f"recorded it): this run's settings are compared with "
                         f"{tmp_path / 'config.yaml'}, and its continuation differs from "
                         f"what the version that wrote it would compute (other images may be "
                         f"drawn: a segmentation's mIoU may move by a point or more)")
    assert "train.base_lr: 0.0004 -> 0.001" in warned[1] and len(warned) == 2
    # a change the checkpoint's state cannot follow: said, not refused on a file that may be
    # another run's (a checkpoint copied into another folder for --resume-from)
    caplog.clear()
    _, sgd = load_task_config(QUICKSTART, ["model.backbone.weights=null", "train.optimizer=sgd"])
    with caplog.at_level("WARNING"):
        check_resumable(path, {}, 3, sgd, 300, logging.getLogger("t"), {})
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned[1].startswith(f"checkpoint {path} was trained with train.optimizer=adamw, "
                                f"this run asks for sgd") and warned[1].endswith(
        "(not refused: the checkpoint records no config of its own)")
    caplog.clear()
    (tmp_path / "config.yaml").unlink()
    with caplog.at_level("WARNING"):
        check_resumable(path, {}, 3, cfg, 300, logging.getLogger("t"), {})
    (warned,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned.startswith(f"checkpoint {path} records no config (written before "
                             f"checkpoints recorded it) and {tmp_path / 'config.yaml'} cannot "
                             f"be read as one (") and warned.endswith(
        "): the settings it was trained with cannot be compared with this run's")


def test_a_file_rewritten_between_its_reads_is_read_again_not_called_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model_best.pth read (tools/eval.py) while the run writes a better one: the earlier
    bytes, read before the rename, against the new file's checksum were called damaged."""
    path = tmp_path / "model_best.pth"
    atomic_save({"v": torch.zeros(3)}, path, checksum=True)
    earlier = path.read_bytes()
    atomic_save({"v": torch.ones(3)}, path, checksum=True)
    real = Path.read_bytes
    reads: list[Path] = []

    def before_the_rename(self: Path) -> bytes:
        reads.append(self)
        return earlier if self == path and reads.count(path) == 1 else real(self)

    monkeypatch.setattr(Path, "read_bytes", before_the_rename)
    monkeypatch.setattr("resnet_detect.engine.files.time.sleep", lambda seconds: None)
    assert read_checked_bytes(path) == real(path) and reads.count(path) == 2


@pytest.mark.parametrize("mode,scores", [("max", [40.0, 50.0, 50.0, 45.0]),
                                         ("min", [40.0, 30.0, 30.0, 35.0])])
def test_model_best_keeps_the_first_of_equal_scores(tmp_path: Path, mode: str,
                                                    scores: list[float],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """As detectron2's BestCheckpointer (a strictly better score replaces the best; its mode
    max or min): of two evaluations scoring the same, the earlier's weights stay."""
    from resnet_detect.engine.checkpoint import BestWeights
    model = nn.Linear(2, 1)
    best = BestWeights(tmp_path, "bbox/AP", model, {}, resume=False, mode=mode)
    for iteration, ap in enumerate(scores, start=1):
        with torch.no_grad():
            model.weight.fill_(iteration)
        best.update({"bbox": {"AP": ap}}, iteration)
    saved = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert saved["iteration"] == 2 and saved["best"] == {"metric": "bbox/AP",
                                                         "value": scores[1], "mode": mode}
    assert bool((saved["model"]["weight"] == 2).all())
    # resumed in the other mode, the file's best is no bar: the next result replaces it,
    # though worse than the file's in the new mode
    other = "min" if mode == "max" else "max"
    with caplog.at_level(logging.WARNING):
        again = BestWeights(tmp_path, "bbox/AP", model, {}, resume=True, start_iter=4,
                            mode=other)
    assert (f"model_best.pth holds the best bbox/AP (train.best_metric_mode {mode}) of the run "
            f"so far; this run keeps the best bbox/AP ({other}): its next evaluation replaces "
            f"the file") in caplog.text
    again.update({"bbox": {"AP": scores[1] + (10 if mode == "max" else -10)}}, 5)
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 5


def test_model_best_is_named_at_each_evaluation_and_at_the_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only a better score was logged: an evaluation below the best said nothing, and the end
    of the run (also one resumed after the best) did not say which evaluation's weights the
    file holds, nor that a metric undefined at every evaluation left no file (detectron2's
    BestCheckpointer logs each comparison)."""
    from resnet_detect.engine.checkpoint import BestWeights
    model = nn.Linear(2, 1)
    best = BestWeights(tmp_path, "bbox/AP", model, {}, resume=False)
    with caplog.at_level(logging.INFO):
        for iteration, ap in [(2, 30.0), (4, 45.5), (6, 41.25)]:
            best.update({"bbox": {"AP": ap}}, iteration)
        best.report()
    assert ("bbox/AP 41.2500 at iteration 6 is not above the best, 45.5000 at iteration 4 "
            "(model_best.pth)") in caplog.text
    assert caplog.text.count("is not above") == 1
    assert caplog.records[-1].getMessage() == (f"{tmp_path / 'model_best.pth'} holds the weights "
                                               f"of the best bbox/AP, 45.5000 at iteration 4")
    caplog.clear()
    with caplog.at_level(logging.INFO):  # resumed after the best: its iteration from the file
        again = BestWeights(tmp_path, "bbox/AP", model, {}, resume=True, start_iter=6)
        again.update({"bbox": {"AP": 40.0}}, 8)
        again.report()
    assert "40.0000 at iteration 8 is not above the best, 45.5000 at iteration 4" in caplog.text
    assert caplog.records[-1].getMessage().endswith("bbox/AP, 45.5000 at iteration 4")
    caplog.clear()
    undefined = BestWeights(tmp_path / "b", "bbox/APl", model, {}, resume=False)
    with caplog.at_level(logging.INFO):
        for iteration in (2, 4):
            undefined.update({"bbox": {"APl": math.nan}}, iteration)
        undefined.report()
    assert caplog.records[-1].getMessage() == ("train.best_metric bbox/APl was undefined (NaN) "
                                               "at every evaluation: no model_best.pth is kept")


def test_model_best_after_a_failed_write_takes_a_result_above_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that failed (a full disk, freed since) counted as the best: a later result
    above the file's but below the lost one was never written."""
    from resnet_detect.engine import checkpoint
    from resnet_detect.engine.checkpoint import BestWeights
    model = nn.Linear(2, 1)
    best = BestWeights(tmp_path, "bbox/AP", model, {}, resume=False)
    real = checkpoint.atomic_save
    fail_at = {2}

    def disk_full_at_2(obj: Any, path: Any, **kwargs: Any) -> None:
        if obj["iteration"] in fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_save", disk_full_at_2)
    for iteration, ap in [(1, 30.0), (2, 50.0), (3, 45.0)]:
        best.update({"bbox": {"AP": ap}}, iteration)
    saved = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert saved["iteration"] == 3 and saved["best"]["value"] == 45.0


def test_resuming_a_classifier_with_other_data_settings_names_them(
        caplog: pytest.LogCaptureFixture) -> None:
    """A classifier's data keys are not under data.train: its crop size, augmentation and
    evaluation resize changed at a resume without a word."""
    recorded = {"config": {"task": "classification", "train": {"batch_size": 4, "epochs": 2},
                           "data": {"root": "/a", "num_workers": 4, "image_size": 32,
                                    "hflip": True, "val_interpolation": "area"}}}
    cfg = OmegaConf.create({"task": "classification", "train": {"batch_size": 4, "epochs": 2},
                            "data": {"root": "/b", "num_workers": 0, "image_size": 24,
                                     "hflip": True, "val_interpolation": "bicubic"}})
    with caplog.at_level("WARNING"):
        check_resumable(Path("model_0000004.pth"), recorded, 4, cfg, 10,
                        logging.getLogger("t"), {})
    assert caplog.text.rstrip().endswith(
        "resuming model_0000004.pth with data settings other than the run that wrote it: the "
        "images are drawn, augmented or evaluated otherwise from iteration 4: "
        "data.image_size: 32 -> 24, data.val_interpolation: area -> bicubic")


def test_an_epoch_recipe_resumed_with_another_batch_size_is_refused() -> None:
    """Iteration 6 of 8-image steps is epoch 1.2 of 40 images; resumed at 4 images a step it
    was read as epoch 0.6: back into the warmup, images drawn twice, more images trained."""
    recorded = {"config": {"task": "classification", "train": {"batch_size": 8, "epochs": 4}}}
    cfg = OmegaConf.create({"task": "classification", "train": {"batch_size": 4, "epochs": 4}})
    with pytest.raises(ConfigError, match=r"model_0000006.pth was trained with train.batch_size "
                                          r"8, this run asks for 4: with train.epochs its "
                                          r"iteration 6 would be another epoch .*resume with "
                                          r"train.batch_size=8"):
        check_resumable(Path("model_0000006.pth"), recorded, 6, cfg, 40,
                        logging.getLogger("t"), {})
    # twice the batch halves the steps of the epochs: the iteration past the end was all it
    # said ("nothing to resume"), where the batch size is what to change
    with pytest.raises(ConfigError, match=r"model_0000006.pth is at iteration 6, past this "
                                          r"run's 5 \(train.max_iter or train.epochs\); it was "
                                          r"trained with train.batch_size 8, this run asks for "
                                          r"4, and train.epochs counts steps of the batch: "
                                          r"resume with train.batch_size=8$"):
        check_resumable(Path("model_0000006.pth"), recorded, 6, cfg, 5,
                        logging.getLogger("t"), {})
    cfg = OmegaConf.create({"task": "detection", "train": {"batch_size": 4, "epochs": None}})
    check_resumable(Path("model_0000006.pth"), recorded | {"config": {
        "task": "detection", "train": {"batch_size": 8, "epochs": None}}}, 6, cfg, 40,
        logging.getLogger("t"), {})  # iterations: the schedule stays where it was


def test_cuda_generators_of_a_machine_with_more_gpus_restore_those_there_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """set_rng_state_all raised an IndexError resuming 2 GPUs' states where 1 is visible
    (same world size, another machine)."""
    state = get_rng_state()
    state["cuda"] = [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_all(states: list[torch.Tensor]) -> None:  # torch's, with one GPU
        if len(states) > 1:
            raise IndexError("tuple index out of range")
        restored.extend(enumerate(states))

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    set_rng_state(state)
    assert [(i, s.tolist()) for i, s in restored] == [(0, [0, 0, 0, 0])]


def test_weights_made_non_finite_are_not_checkpointed(tmp_path: Path) -> None:
    """A step whose loss was finite can leave inf or NaN weights: its checkpoint became
    last_checkpoint, and every --resume (every torchrun restart) failed at its next loss."""
    from resnet_detect.engine.trainer import NonFiniteLossError

    model = nn.Linear(3, 2)
    ckpt = Checkpointer(tmp_path, model=model)
    ckpt.save(1)
    with torch.no_grad():
        model.bias[1] = math.inf
    with pytest.raises(NonFiniteLossError, match=r"^the weights are not finite after iteration 2: "
                                                 r"its checkpoint is not written; training "
                                                 r"stopped on every process"):
        ckpt.save(2)
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth\n"


def test_a_resume_keeps_the_best_scored_up_to_its_checkpoint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """model_best.pth scored after the checkpoint a run resumes from moves aside (its steps
    are trained again); the best before it was forgotten: the resumed run kept a worse later
    evaluation's weights (mIoU 8.60 at 12 for 8.92 at 4). The best as of the last checkpoint
    is kept (a hard link while the same file) and takes its place."""
    from resnet_detect.engine.checkpoint import BestWeights

    model = nn.Linear(2, 1)

    def evaluate(best: BestWeights, iteration: int, score: float) -> None:
        with torch.no_grad():
            model.weight.fill_(iteration)
        best.update({"sem_seg": {"mIoU": score}}, iteration)

    def saved() -> tuple[int, float, float]:
        state = torch.load(tmp_path / "model_best.pth", weights_only=True)
        assert read_checkpoint(tmp_path / "model_best.pth")["iteration"] == state["iteration"]
        return state["iteration"], state["best"]["value"], float(state["model"]["weight"][0, 0])

    best = BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=False)
    evaluate(best, 2, 1.78)
    best.checkpointed(4)  # checkpoint 4, then the evaluation at 4: the best so far
    evaluate(best, 4, 8.92)
    evaluate(best, 6, 9.50)  # after the checkpoint; then a crash at 7
    snapshot = tmp_path / BestWeights.SNAPSHOT
    assert torch.load(snapshot, weights_only=True)["iteration"] == 4
    with caplog.at_level(logging.INFO):
        resumed = BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=True, start_iter=4)
    assert saved() == (4, pytest.approx(8.92), 4.0)  # (was no best: 8.60 at 12 then kept)
    assert torch.load(tmp_path / "abandoned/model_best.pth", weights_only=True)["iteration"] == 6
    assert "model_best.pth: the best sem_seg/mIoU before it, 8.9200 at iteration 4, back in " \
           "its place" in caplog.text
    evaluate(resumed, 8, 8.60)
    assert saved()[0] == 4
    # while the file stays the best, the snapshot is the same file (no copy)
    resumed.checkpointed(8)
    assert os.path.samefile(snapshot, tmp_path / "model_best.pth")
    # --resume-from an earlier checkpoint than the best's: no best before it is known
    evaluate(resumed, 10, 9.9)
    resumed.checkpointed(12)
    caplog.clear()
    BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=True, start_iter=2)
    assert not (tmp_path / "model_best.pth").exists()
    assert ("the best sem_seg/mIoU before iteration 2 is not known (.model_best.checkpointed.pth "
            "was scored at iteration 10): the evaluations from here on choose the best anew"
            in caplog.text)
    # the first abandoned best is kept beside the second (it was overwritten)
    assert torch.load(tmp_path / "abandoned/model_best.pth", weights_only=True)["iteration"] == 6
    assert torch.load(tmp_path / "abandoned/model_best.1.pth",
                      weights_only=True)["iteration"] == 10
    assert read_checkpoint(tmp_path / "abandoned/model_best.1.pth")["iteration"] == 10
    # a fresh run in the folder drops another run's snapshot
    BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=False)
    assert not snapshot.exists()


def test_a_resume_does_not_keep_a_damaged_best(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """model_best.pth damaged after it was written (a bad copy) still loads: the resumed run
    kept its score, and a worse later evaluation never replaced the damaged weights. Its
    .sha256 is checked, as every other checkpoint's is."""
    from resnet_detect.engine.checkpoint import BestWeights

    model = nn.Linear(2, 1)
    BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=False).update(
        {"sem_seg": {"mIoU": 5.0}}, 4)
    path = tmp_path / "model_best.pth"
    data = bytearray(path.read_bytes())
    weight = data.find(model.weight.detach().numpy().tobytes())
    data[weight] ^= 0x40  # a flipped bit in the weights: torch.load does not notice
    path.write_bytes(bytes(data))
    resumed = BestWeights(tmp_path, "sem_seg/mIoU", model, {}, resume=True, start_iter=4)
    assert resumed.best is None
    assert (f"cannot read {path} (its bytes do not match model_best.pth.sha256: the file was "
            f"damaged after it was written): the next evaluation replaces it") in caplog.text
    resumed.update({"sem_seg": {"mIoU": 1.0}}, 6)
    assert read_checkpoint(path)["iteration"] == 6
