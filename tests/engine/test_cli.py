"""engine.cli.run_tool: a config error prints as one line naming the key and exits 2."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from resnet_detect.engine.checkpoint import CheckpointWriteError
from resnet_detect.engine.cli import run_tool
from resnet_detect.engine.data import DatasetError, UnreadableImageError
from resnet_detect.engine.skipped_images import UnreadableDataError

ROOT = Path(__file__).resolve().parents[2]
SEG_CONFIG = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"
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


def test_an_error_is_written_in_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every process says its error on one stderr: print wrote the text and
    its newline apart, and two processes' lines ran into one."""
    writes: list[str] = []

    class Recorded:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass
    monkeypatch.setattr(sys, "stderr", Recorded())
    monkeypatch.setattr(sys, "argv", ["tools/train.py"])

    def main(_: Any) -> None:
        raise DatasetError("train.json: broken")
    with pytest.raises(SystemExit):
        run_tool(main)
    assert writes == ["train.py: error: train.json: broken\n"]


def test_a_path_that_links_to_itself_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """pathlib's RuntimeError for a symlink loop given as an ann_file, a config or --output
    was a traceback; other RuntimeErrors keep theirs."""
    monkeypatch.setattr(sys, "argv", ["tools/train.py"])

    def looping(_: Any) -> None:  # (Path.resolve's on Python 3.11 and 3.12)
        raise RuntimeError(f"Symlink loop from '{tmp_path / 'loop1'}'")
    with pytest.raises(SystemExit) as stopped:
        run_tool(looping)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"train.py: error: Symlink loop from "
                                       f"'{tmp_path / 'loop1'}': a path given links back to "
                                       f"itself\n")

    loop = tmp_path / "loop2"
    loop.symlink_to(loop)

    def stat_looping(_: Any) -> None:  # os.stat's, as Path.resolve's on Python 3.13
        os.stat(loop)
    with pytest.raises(SystemExit) as stopped:
        run_tool(stat_looping)
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith("train.py: error: [Errno 40] Too many levels of symbolic links")
    assert said.endswith(f"'{loop}': a path given links back to itself\n")

    def other(_: Any) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")
    with pytest.raises(RuntimeError, match="CUDA error"):
        run_tool(other)

    def denied(_: Any) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path))
    with pytest.raises(PermissionError):
        run_tool(denied)


@pytest.mark.parametrize(("world", "error", "said"), [
    # gloo's error where the other process of `torchrun tools/eval.py` stopped (a data folder
    # only it lacked): a 40-line traceback after the other's one-line error
    ("2", "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
          "[127.0.0.1]:36547. This is typically caused by a remote worker crashing. Check the "
          "logs of the remote worker before reporting an error. GLHF!",
     "eval.py: error: another process of this run stopped (its own message says why) or was "
     "lost, and this one lost its connection to it: [../third_party/gloo/gloo/transport/tcp/"
     "pair.cc:534] Connection closed by peer [127.0.0.1]:36547\n"),
    # its read and write errors' words for the same
    ("2", "[/x/gloo/transport/tcp/pair.cc:598] Read error [127.0.0.1]:5531: Connection reset "
          "by peer", "eval.py: error: another process of this run stopped (its own message "
                     "says why) or was lost, and this one lost its connection to it: [/x/gloo/"
                     "transport/tcp/pair.cc:598] Read error [127.0.0.1]:5531: Connection reset "
                     "by peer\n"),
    ("2", "[/x/gloo/transport/tcp/pair.cc:446] writev [127.0.0.1]:5531: Broken pipe",
     "eval.py: error: another process of this run stopped (its own message says why) or was "
     "lost, and this one lost its connection to it: [/x/gloo/transport/tcp/pair.cc:446] writev "
     "[127.0.0.1]:5531: Broken pipe\n"),
    # a torchrun restart on gloo that could not connect
    ("2", "Gloo connectFullMesh failed with [../third_party/gloo/gloo/transport/tcp/pair.cc:"
          "144] no error\nmore", "eval.py: error: this process could not connect to the "
                                 "run's other processes (on gloo, a torchrun restart can fail "
                                 "so; run the command again, with --resume for a training): "
                                 "Gloo connectFullMesh failed with [../third_party/gloo/gloo/"
                                 "transport/tcp/pair.cc:144] no error\n"),
    ("1", "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer",
     None),  # (one process: not another's)
    ("2", "boom", None),
    # errors that name a socket and are no lost gloo peer keep their tracebacks: a hook's, the
    # rendezvous', NCCL's
    ("2", "metrics upload failed: <urlopen error [Errno 111] Connection refused>", None),
    ("2", "The server socket has failed to listen on any local network address. port: 29517, "
          "useIpv6: false, code: -98, name: EADDRINUSE", None),
    ("2", "NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error\nLast error:\n"
          "Error while creating shared memory segment /dev/shm/nccl-1", None),
    ("2", "ffmpeg writer: [Errno 32] Broken pipe", None),
])
def test_a_tool_whose_other_process_stopped_says_so_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, world: str, error: str,
        said: str | None) -> None:
    monkeypatch.setattr(sys, "argv", ["tools/eval.py"])
    monkeypatch.setenv("WORLD_SIZE", world)

    def main(_: Any) -> None:
        raise RuntimeError(error)
    if said is None:
        with pytest.raises(RuntimeError, match=re.escape(error)):
            run_tool(main)
        return
    with pytest.raises(SystemExit) as stopped:
        run_tool(main)
    assert stopped.value.code == 1 and capsys.readouterr().err == said


def test_a_batch_that_the_processes_cannot_share_is_refused_before_the_folder_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """It was refused after log.txt and log.txt.rank1 were written in train.output_dir."""
    from resnet_detect.engine import distributed
    monkeypatch.setattr(distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), "train.batch_size=3",
                                      "model.backbone.weights=null",
                                      f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        "train.py: error: train.batch_size 3 is not divisible by the 2 processes\n")
    assert not (tmp_path / "run").exists()


def test_the_collective_timeout_reaches_the_process_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from resnet_detect.engine import distributed
    joined = {}

    def join(backend: str, timeout: object) -> None:
        joined["timeout"] = timeout
        raise RuntimeError("joined")

    monkeypatch.setattr(distributed.dist, "init_process_group", join)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    argv = ["tools/train.py", str(CONFIG), "model.backbone.weights=null", "train.device=cpu",
            f"train.output_dir={tmp_path / 'run'}"]
    for minutes, expected in (([], 1800), (["train.collective_timeout_min=90"], 5400)):
        monkeypatch.setattr(sys, "argv", argv + minutes)
        with pytest.raises(RuntimeError, match="joined"):
            tool_main("train")()
        assert joined.pop("timeout").total_seconds() == expected
    monkeypatch.setattr(sys, "argv", argv + ["train.collective_timeout_min=0"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2 and "train.collective_timeout_min must be a positive number " \
        "of minutes, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_schedule_in_epochs_under_iteration_keys_names_them_before_the_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """train.epochs=1 on the quickstart config, whose file sets warmup_iters: 50, was refused
    without the key's value or where it came from, after minutes of reading COCO's
    annotations."""
    monkeypatch.chdir(tmp_path)
    for overrides, said in (
            (["train.max_iter=null", "train.epochs=1"],
             "with train.epochs give train.lr_step_epochs and train.warmup_epochs, not "
             "train.lr_steps / train.warmup_iters: train.warmup_iters is 50 "
             "(train.warmup_iters=0 clears it)"),
            (["train.warmup_epochs=0.5", "train.lr_step_epochs=[1]"],
             "train.lr_step_epochs and train.warmup_epochs need train.epochs; with "
             "train.max_iter use train.lr_steps and train.warmup_iters: train.lr_step_epochs "
             "is [1] (train.lr_step_epochs=[] clears it); train.warmup_epochs is 0.5 "
             "(train.warmup_epochs=0 clears it)"),
            # shortening an epoch recipe: both ways, each whole (three tries before)
            (["train.epochs=2", "train.warmup_epochs=0.5"],
             "train.epochs (2) and train.max_iter (300) are both set; set one: "
             "train.max_iter=null for the epoch-based recipe, or `train.epochs=null "
             "train.warmup_epochs=0` to train 300 iterations (its warmup and lr drops then "
             "in train.warmup_iters, train.lr_steps)")):
        monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), *overrides,
                                          "data.train.ann_file=nowhere.json"])  # not reached
        with pytest.raises(SystemExit) as stopped:
            run_tool(tool_main("train"))
        assert stopped.value.code == 2
        assert capsys.readouterr().err == f"train.py: error: {said}\n"
    assert list(tmp_path.iterdir()) == []


def _train_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture) -> str:
    """tools/train.py on tmp_path/a.json and tmp_path/img: exit 2, one message, no traceback."""
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG),
                                      f"data.train.ann_file={tmp_path / 'a.json'}",
                                      f"data.train.img_dir={tmp_path / 'img'}",
                                      "model.backbone.weights=null",
                                      f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2
    said = capsys.readouterr()
    err = said.err
    assert err.startswith("train.py: error: ") and "Traceback" not in err
    # said once on the console (the log line why the training stopped repeated it), and in
    # log.txt where the run wrote one
    assert "training stopped" not in said.out
    log = tmp_path / "out/log.txt"
    if log.exists():
        first_line = err.removeprefix("train.py: error: ").splitlines()[0]
        stopped_lines = [line for line in log.read_text().splitlines()
                         if "training stopped: " in line]
        assert len(stopped_lines) == 1 and stopped_lines[0].endswith(first_line), stopped_lines
    return err


def test_a_data_error_is_its_message_alone_and_exit_code_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A missing image names itself in a message a 25-line traceback buried."""
    (tmp_path / "img").mkdir()
    (tmp_path / "a.json").write_text(
        '{"images": [{"id": 1, "file_name": "x.jpg", "height": 4, "width": 4}], '
        '"annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    err = _train_refused(tmp_path, monkeypatch, capsys)
    assert f"image file not found for images[0] (id=1): {tmp_path / 'img/x.jpg'}" in err
    monkeypatch.setattr(sys, "argv", ["tools/eval.py", str(CONFIG), "--weights", "nope.pth",
                                      "--output", str(tmp_path / "eval")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("eval"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"eval.py: error: weights file not found: nope.pth (in {tmp_path})\n")


def test_a_folder_given_for_a_file_and_a_file_for_a_folder_are_said_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each was "not found" (the config's folder, a checkpoint's folder, an annotation file as
    the image folder), though the path was there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [], '
                                     '"categories": [{"id": 1, "name": "a"}]}')
    for argv, said in (
            (["configs"], f"config file not found: {tmp_path / 'configs'}: that is a folder"),
            ([str(CONFIG), "--resume-from", "configs"],
             f"--resume-from: checkpoint not found: configs (in {tmp_path}): that is a folder"),
            ([str(CONFIG), "data.train.ann_file=a.json", "data.train.img_dir=a.json"],
             f"image folder not found: a.json (in {tmp_path}): that is a file (for a.json)")):
        monkeypatch.setattr(sys, "argv", ["tools/train.py", *argv, "model.backbone.weights=null",
                                          f"train.output_dir={tmp_path / 'out'}"])
        with pytest.raises(SystemExit) as stopped:
            run_tool(tool_main("train"))
        assert stopped.value.code == 2 and capsys.readouterr().err == (
            f"train.py: error: {said}\n")


def test_an_area_that_is_no_number_is_a_data_error_before_the_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """pycocotools compared it with its area ranges: a TypeError traceback at the first
    evaluation, after the training (or after tools/eval.py's whole inference)."""
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img/x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a.json").write_text(
        '{"images": [{"id": 1, "file_name": "x.png", "height": 8, "width": 8}], '
        '"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], '
        '"area": "big"}], "categories": [{"id": 1, "name": "a"}]}')
    err = _train_refused(tmp_path, monkeypatch, capsys)
    assert (f"{tmp_path / 'a.json'}: 1 problem(s):\n  annotations[0] (id=3): area must be a "
            f"number (or null or left out: the mask's or the box's is used), got 'big'") in err


def test_a_missing_resume_from_checkpoint_is_refused_before_the_data_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), "--resume-from",
                                      "out/model_0000500.pth",
                                      "data.train.ann_file=nowhere.json"])  # not reached
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"train.py: error: --resume-from: checkpoint not found: out/model_0000500.pth "
        f"(in {tmp_path})\n")
    assert list(tmp_path.iterdir()) == []
    # a truncated checkpoint (a copy cut short), or another file, the same
    torch.save({"model": {"w": torch.zeros(1000)}, "iteration": 500}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:-100])
    (tmp_path / "whole.pth").unlink()
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), "--resume-from", "cut.pth",
                                      "data.train.ann_file=nowhere.json"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        "train.py: error: --resume-from: cut.pth is not a checkpoint (not the zip archive "
        "torch.save writes: truncated, or another kind of file)\n")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.pth"]
    # weights alone (a run's model_final.pth, as the runner writes it), detectron2's,
    # mmdetection's or torchvision's references' checkpoint: said only after the data was read
    for name, state, said in (
            ("final.pth", {"model": {"w": torch.zeros(3)}, "provenance": {}, "iteration": 9},
             "final.pth is no training checkpoint (weights alone, as in model_final.pth"),
            ("d2.pth", {"model": {}, "optimizer": {}, "scheduler": {}, "iteration": 89999},
             "d2.pth is another program's training checkpoint (detectron2's"),
            ("mmdet.pth", {"state_dict": {}, "meta": {}, "optimizer": {}},
             "mmdet.pth is another program's checkpoint (mmdetection's or mmengine's"),
            ("tv.pth", {"model": {}, "optimizer": {}, "epoch": 25},
             "tv.pth is another program's training checkpoint (torchvision's references'")):
        torch.save(state, tmp_path / name)
        monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), "--resume-from", name,
                                          "data.train.ann_file=nowhere.json"])
        with pytest.raises(SystemExit) as stopped:
            run_tool(tool_main("train"))
        assert stopped.value.code == 2
        assert capsys.readouterr().err.startswith(f"train.py: error: {said}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.pth", "d2.pth", "final.pth", "mmdet.pth", "tv.pth"]


class _WrongMask(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> None:
        raise DatasetError("data.val: 000.png has class ids [9]:\nonly 0..6 are classes")


def test_a_data_error_in_a_loader_worker_is_its_message_alone(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """PyTorch re-raises a worker's error as "Caught DatasetError in DataLoader worker process
    0. Original Traceback ...": the tools printed the worker's traceback after "error:"."""
    def main(argv: list[str]) -> None:
        next(iter(torch.utils.data.DataLoader(_WrongMask(), num_workers=1)))

    monkeypatch.setattr(sys, "argv", ["eval.py"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(main)
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        "eval.py: error: data.val: 000.png has class ids [9]:\nonly 0..6 are classes\n")


def test_other_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(argv: list[str]) -> None:
        raise ValueError("a bug, or a data problem: its traceback says where")

    monkeypatch.setattr(sys, "argv", ["tool.py"])
    with pytest.raises(ValueError, match="a bug"):
        run_tool(main)


def test_running_out_of_memory_with_a_message_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """An exported graph's MemoryError names the image and test.max_size (tools/demo.py
    skipped that image; tools/eval.py printed it under a traceback); Python's bare one keeps
    its traceback."""
    said = "ONNX Runtime ran out of memory on a 8000x6000 image: set test.max_size=2048"

    def main(argv: list[str]) -> None:
        raise MemoryError(said)

    monkeypatch.setattr(sys, "argv", ["eval.py"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(main)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"eval.py: error: {said}\n"

    def bare(argv: list[str]) -> None:
        raise MemoryError

    with pytest.raises(MemoryError):
        run_tool(bare)


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    def main(argv: list[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["eval.py"])
    with pytest.raises(SystemExit) as stop:
        run_tool(main)
    assert stop.value.code == 130 and stop.value.__suppress_context__
    assert capsys.readouterr().err == "\neval.py: interrupted\n"


def test_output_piped_into_head_stops_quietly() -> None:
    """`tool | head -1`: no BrokenPipeError traceback, no flush error at exit; 141 as a
    command killed by SIGPIPE."""
    program = ("import sys; from resnet_detect.engine.cli import run_tool; "
               "sys.argv = ['tool.py']; "
               "run_tool(lambda argv: [print('a line of output') for _ in range(10**6)])")
    process = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"a line of output\n"
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""



@pytest.mark.parametrize("tool, extra", [("eval", []), ("demo", ["--input", "x.jpg"]),
                                         ("export", [])])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
        tool: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """eval found out after the whole inference (a raw FileExistsError or read-only OSError),
    demo and export with a raw traceback."""
    (tmp_path / "afile").write_text("mine")
    monkeypatch.chdir(tmp_path)
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", str(CONFIG), "--weights", "nope.pth",
                                      "--output", "afile/out", *extra])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main(tool))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"{tool}.py: error: cannot write to --output afile/out: Not a directory (afile); "
        f"name a folder you can write to\n")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("tool, args, expected", [
    ("eval", ["--weights", "nope.pth", "--output", ""], "--output is empty: name a folder"),
    ("export", ["--weights", "nope.pth", "--output", " "], "--output is empty: name a folder"),
    ("demo", ["--weights", "nope.pth", "--input", "", "--output", "out"],
     "--input: an empty path"),
    ("train", ["train.output_dir=''"], "train.output_dir must name a folder, got ''"),
    ("train", ["train.output_dir=null"], "train.output_dir must name a folder, got None")])
def test_an_empty_path_is_not_the_current_folder(
        tool: str, args: list[str], expected: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Path("") is ".": the results went among the current folder's files (a training's
    checkpoints into the repository), and demo drew every picture under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", str(CONFIG), *args])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main(tool))
    assert stopped.value.code == 2 and expected in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_demo_takes_the_configs_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """It ran on the CPU whatever train.device said (a GPU machine's demo too), unlike
    tools/eval.py."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(sys, "argv", ["tools/demo.py", str(CONFIG), "--weights", "nope.pth",
                                      "--input", "x.jpg", "--output", "out",
                                      "train.device=cuda"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("demo"))
    assert stopped.value.code == 2
    assert "train.device=cuda but torch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [
    UnreadableImageError("2 of 4 inputs could not be read (the others were drawn):\n  b.jpg"),
    CheckpointWriteError("cannot write the final weights in out (OSError: [Errno 28] No space "
                         "left on device); the checkpoint of iteration 9 is intact"),
    UnreadableDataError("40 of the 40 training images of iterations 1-20 could not be read")])
def test_unreadable_inputs_and_a_full_disk_are_one_line_and_exit_code_2(
        error: Exception, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """tools/demo.py's closing list of unreadable inputs, a training folder of unreadable
    images, and a full disk at a checkpoint or the final weights printed a traceback and
    exited 1."""
    monkeypatch.setattr(sys, "argv", ["tools/demo.py"])

    def main(argv: list[str]) -> None:
        raise error

    with pytest.raises(SystemExit) as stopped:
        run_tool(main)
    assert stopped.value.code == 2 and capsys.readouterr().err == f"demo.py: error: {error}\n"


def test_a_warning_is_a_line_of_the_runs_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """An evaluation's warning (an AP of 0 for want of detections) went to stderr alone: a
    run's log.txt, read after a long run, did not say why its AP was 0."""
    import warnings

    from resnet_detect.engine.logging import setup_logging

    def main(argv: list[str]) -> None:
        setup_logging(argv[0])
        warnings.warn("no detections to evaluate against val.json: bbox AP is 0", stacklevel=1)

    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(tmp_path / "run")])
    try:
        run_tool(main)
    finally:
        setup_logging(None)
    (line,) = (tmp_path / "run/log.txt").read_text(encoding="utf-8").splitlines()
    assert line[15:] == "UserWarning: no detections to evaluate against val.json: bbox AP is 0"
    out, err = capsys.readouterr()
    assert out.splitlines() == [line] and err == ""


@pytest.mark.parametrize("tool", ["train", "pretrain"])
def test_print_config_shows_the_merged_config_and_trains_nothing(
        tool: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """mmdetection's print_config: the defaults, _base_ files, CONFIG and overrides as the run
    reads them; no output folder made, no data read (none is there)."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.config import ConfigError
    from resnet_detect.engine.tasks import load_task_config
    config = CONFIG if tool == "train" else ROOT / "configs/pretrain/synthetic_resnet18.yaml"
    out = tmp_path / "run"
    module = "backbone" if tool == "train" else "fc"  # (a module of the model: checked)
    overrides = ["train.base_lr=0.123", f"train.output_dir={out}",
                 f"train.lr_multipliers.{module}=10",
                 f"data.{'train.img_dir' if tool == 'train' else 'root'}={tmp_path / 'none'}"]
    tool_main(tool)([str(config), "--print-config", *overrides])
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed == load_task_config(config, overrides)[1]
    assert printed.train.base_lr == 0.123 and printed.train.lr_multipliers == {module: 10}
    assert not out.exists()
    # a value the run refuses is refused here too (it was printed, exit 0)
    with pytest.raises(ConfigError, match="unknown train.lr_decay 'multistep'; valid: cosine"):
        tool_main(tool)([str(config), "--print-config", *overrides, "train.lr_decay=multistep"])
    assert capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match=re.escape(
            "unknown train.lr_decay False (YAML reads on, off, yes and no as true and false); "
            "valid: cosine")):
        tool_main(tool)([str(config), "--print-config", *overrides, "train.lr_decay=off"])
    if tool == "train":  # the training split's keys, checked after its file was read
        for bad, said in [("data.train.repeat_threshold=abc", "data.train.repeat_threshold "
                                                             "must be a fraction"),
                          ("data.train.hflip_prob=2", "data.train.hflip_prob must be a "
                                                      "probability in [0, 1], got 2"),
                          ("data.train.mask_format=xyz", "data.train.mask_format must be one of "
                                                         "bitmask, polygon, got 'xyz'"),
                          ("data.train.jitter_size=abc", "data.train.jitter_size must be a "
                                                         "positive integer")]:
            with pytest.raises(ConfigError, match=re.escape(said)):
                tool_main(tool)([str(config), "--print-config", *overrides, bad])


def test_print_config_shows_mandatory_keys_not_given_yet(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ImageNet recipe's data.root is mandatory: --print-config refused the config for it
    (the config a user prints to learn what to set); it prints ??? there and names the key."""
    from omegaconf import OmegaConf
    config = ROOT / "configs/pretrain/resnet50_imagenet.yaml"
    tool_main("pretrain")([str(config), "--print-config", "train.base_lr=0.2"])
    out, err = capsys.readouterr()
    printed = OmegaConf.create(out)
    assert OmegaConf.missing_keys(printed) == {"data.root"}
    assert printed.train.base_lr == 0.2 and printed.model.name == "resnet50"
    assert err == ("data.root: ??? is a value to give before the run (in the file or as "
                   "key=value)\n")
    tool_main("pretrain")([str(config), "--print-config", "data.root=/imagenet"])
    out, err = capsys.readouterr()
    assert OmegaConf.create(out).data.root == "/imagenet" and err == ""
    # a train or model key made mandatory: a MissingMandatoryValue traceback, exit 1 (the
    # checks read it); checked at the task's default, printed as ???
    for tool, config, keys in (
            ("train", CONFIG, ["train.max_iter", "train.seed", "model.num_classes",
                               "model.roi_heads.score_thresh", "data.val.min_size"]),
            ("pretrain", ROOT / "configs/pretrain/synthetic_resnet18.yaml",
             ["train.base_lr", "model.weights"])):
        tool_main(tool)([str(config), "--print-config", *(f"{k}=???" for k in keys)])
        out, err = capsys.readouterr()
        assert OmegaConf.missing_keys(OmegaConf.create(out)) == set(keys)
        assert err.startswith(f"{', '.join(sorted(keys))}: ??? is a value to give before the "
                              f"run (in the file or as key=value)\n")
    # what the run refuses before its data, refused here too (printed, exit 0, before)
    from resnet_detect.engine.config import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (auto: the CPU)
    for override, said in (("train.amp=fp16", "train.amp=fp16 runs on a GPU only"),
                           ("train.device=mps", "train.device must be auto, cpu or cuda")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            tool_main("train")([str(CONFIG), "--print-config", override])


@pytest.mark.parametrize("config, override, error", [
    ("synthetic/faster_rcnn_R_18_FPN.yaml", "model.roi_heads.score_thresh=1.5",
     "model.roi_heads.score_thresh must be a score in [0, 1], got 1.5"),
    ("synthetic/deeplabv3_R_18_os16.yaml", "model.backbone.output_stride=12",
     "output_stride"),
    ("pretrain/synthetic_resnet18.yaml", "model.options.zero_init_residual=maybe",
     "zero_init_residual must be true or false"),
    # a module name mistyped: refused by the run after reading the data (minutes at COCO's)
    ("synthetic/faster_rcnn_R_18_FPN.yaml", "train.lr_multipliers.nosuch=0.1",
     "train.lr_multipliers names nosuch, which holds no parameter of this model; its modules "
     "include: backbone, backbone.bottom_up"),
    ("pretrain/synthetic_resnet18.yaml", "train.lr_multipliers.head=2",
     "train.lr_multipliers names head, which holds no parameter of this model")])
def test_print_config_refuses_what_the_model_build_refuses(
        config: str, override: str, error: str, capsys: pytest.CaptureFixture,
        tmp_path: Path) -> None:
    """A model key the run refuses in its first seconds (built on the meta device before
    the data) was printed by --print-config, exit 0."""
    from omegaconf import OmegaConf

    from resnet_detect.engine.checkpoint import UnreadableCheckpointError
    from resnet_detect.engine.config import ConfigError
    tool = "pretrain" if config.startswith("pretrain") else "train"
    argv = [str(ROOT / "configs" / config), "--print-config", "model.backbone.weights=null"
            if tool == "train" else "model.weights=null"]
    tool_main(tool)(argv)
    assert capsys.readouterr().out
    with pytest.raises(ConfigError, match=re.escape(error)):
        tool_main(tool)([*argv, override])
    assert capsys.readouterr().out == ""
    # a weights file not there yet (a quickstart's before `make demo`) is named, not refused
    key = "model.backbone.weights" if tool == "train" else "model.weights"
    tool_main(tool)([*argv, f"{key}=/nowhere/w.pth"])
    out, err = capsys.readouterr()
    assert OmegaConf.select(OmegaConf.create(out), key) == "/nowhere/w.pth"
    assert err == f"{key}: /nowhere/w.pth is not there (yet): the run needs it\n"
    # a folder is not taken for a file not there yet
    with pytest.raises(Exception, match="is a folder, not a weights file"):
        tool_main(tool)([*argv, f"{key}={tmp_path}"])
    assert capsys.readouterr().out == ""
    # one that is there is read, as the run reads it
    (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="w.pth"):
        tool_main(tool)([*argv, f"{key}={tmp_path / 'w.pth'}"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("tool", ["eval", "demo"])
def test_a_classification_config_for_eval_or_demo_is_one_line_and_exit_code_2(
        tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """It was a ValueError's traceback and exit code 1 (tools/eval.py scores classifiers now:
    its first error is the missing weights)."""
    (tmp_path / "a.jpg").touch()
    config = ROOT / "configs/pretrain/synthetic_resnet18.yaml"
    extra = ["--input", str(tmp_path / "a.jpg")] if tool == "demo" else []
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", str(config), "--weights", "w.pth",
                                      "--output", str(tmp_path / "out"), *extra])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main(tool))
    assert stopped.value.code == 2
    expected = ("eval.py: error: weights file not found: w.pth" if tool == "eval" else
                f"demo.py: error: tools/demo.py draws detection and sem_seg models; {config} is "
                f"a 'classification' config")
    assert capsys.readouterr().err.startswith(expected)


def test_lr_multipliers_of_a_module_and_one_inside_it_as_two_overrides_are_refused() -> None:
    """OmegaConf merges dotted keys: `backbone.bottom_up=0.01` made `backbone` a mapping and
    its factor of 0.1 was gone without a word (and in the other order, the 0.01)."""
    from resnet_detect.engine.config import ConfigError
    from resnet_detect.engine.tasks import load_task_config
    outer = "train.lr_multipliers.backbone=0.1"
    inner = "train.lr_multipliers.backbone.bottom_up=0.01"
    for overrides, lost in (([outer, inner], "backbone"), ([inner, outer], "backbone.bottom_up")):
        with pytest.raises(ConfigError, match=f"the overrides of {lost} were replaced by another "
                                              "naming a module inside or around it; give them "
                                              "in one mapping"):
            load_task_config(CONFIG, overrides)
    _, cfg = load_task_config(CONFIG, ["train.lr_multipliers={backbone: 0.1, "
                                       "backbone.bottom_up: 0.01}"])
    assert dict(cfg.train.lr_multipliers) == {"backbone": 0.1, "backbone.bottom_up": 0.01}


def test_export_option_mistakes_are_one_line_and_exit_code_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--mask-output for a segmenter was a ValueError's traceback and exit code 1."""
    config = ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml"
    monkeypatch.setattr(sys, "argv", ["tools/export.py", str(config), "--weights", "w.pth",
                                      "--output", str(tmp_path / "e"), "--mask-output", "box"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("export"))
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"export.py: error: --mask-output is for Mask R-CNN; "
                                       f"{config} is a 'sem_seg' config\n")


def test_a_segmentation_hint_is_not_given_for_a_detector(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(CONFIG), "test.mode=slide"])
    with pytest.raises(SystemExit):
        run_tool(tool_main("train"))
    err = capsys.readouterr().err
    assert "unknown config key 'test.mode'" in err and "mmsegmentation" not in err


@pytest.mark.parametrize("tool,argv,said", [
    ("train", ["--config-file", str(CONFIG)],
     ["unrecognized arguments: --config-file",
      "  --config-file: the config is the first argument: tools/train.py CONFIG ..."]),
    ("train", [str(CONFIG), "--num-gpus", "8", "--eval-only", "--work-dir=w", "--opts"],
     ["  --num-gpus: one process per GPU: torchrun --nproc_per_node=N tools/train.py ...",
      "  --eval-only: evaluate with tools/eval.py CONFIG --weights CKPT --output DIR",
      "  --work-dir: train.output_dir=DIR",
      "  --opts: overrides are key=value words after the config, e.g. train.max_iter=100"]),
    ("eval", [str(CONFIG), "--weights", "w.pth", "--output", "o", "--output-dir", "o"],
     ["  --output-dir: --output DIR"]),
    # mmdetection's test.py: --out was taken for --output (an abbreviation) and wrote the
    # results into a folder named results.pkl; --show-dir came after "--output is required"
    ("eval", [str(CONFIG), "--checkpoint", "w.pth", "--out", "results.pkl", "--show-dir", "s",
              "--eval", "bbox"],
     ["unrecognized arguments: --checkpoint --out --show-dir --eval",
      "  --checkpoint: --weights CKPT",
      "  --out: --output DIR (tools/eval.py writes the detections there",
      "  --show-dir: pictures of the predictions: tools/demo.py CONFIG --weights CKPT",
      "  --eval: tools/eval.py scores COCO's box (and mask) AP"]),
    ("eval", [str(CONFIG), "--weights", "w.pth", "--out", "results.pkl"],
     ["  --out: --output DIR (tools/eval.py writes the detections there"]),
    # mmdetection's / mmsegmentation's test.py CONFIG CHECKPOINT: a checkpoint positional
    ("eval", [str(CONFIG), "work/latest.pth", "--output", "o"],
     ["error: one of the arguments --weights --results is required",
      "  work/latest.pth: a checkpoint is given as --weights work/latest.pth"]),
    ("export", [str(CONFIG), "work/epoch_12.pth", "--output", "o"],
     ["  work/epoch_12.pth: a checkpoint is given as --weights work/epoch_12.pth"]),
    ("eval", [str(CONFIG), "--output", "o.pth", "model.weights=run/x.pth"],  # (o.pth: a value)
     ["error: one of the arguments --weights --results is required\n  model.weights=run/x.pth: "
      "a checkpoint is given as --weights run/x.pth\n"]),
    # a typo of one of ours was hidden behind "--weights or --results is required"
    ("eval", [str(CONFIG), "--weigh", "w.pth", "--outpt", "o"],
     ["unrecognized arguments: --weigh --outpt", "  --weigh: did you mean --weights?",
      "  --outpt: did you mean --output?"]),
    ("train", [str(CONFIG), "--checkpoint", "w.pth", "--out", "o"],
     ["  --checkpoint: model.weights=CKPT (fine-tuning), or --resume-from CKPT",
      "  --out: train.output_dir=DIR"]),
    ("train", [str(CONFIG), "MODEL.WEIGHTS", "w.pth"],
     ["error: override 'MODEL.WEIGHTS' must look like key=value; detectron2's MODEL.WEIGHTS is "
      "model.weights=VALUE here, one word key=value (README, 'Coming from detectron2 or "
      "mmdetection')"]),
    ("train", [str(CONFIG), "SOLVER.IMS_PER_BATCH=16"],
     ["error: unknown config key 'SOLVER.IMS_PER_BATCH' in override 'SOLVER.IMS_PER_BATCH=16'; "
      "detectron2's SOLVER.IMS_PER_BATCH is train.batch_size=VALUE here"]),
    ("train", [str(ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"), "test.mode=slide"],
     ["unknown config key 'test.mode' in override 'test.mode=slide'; valid keys", "; "
      "mmsegmentation's test_cfg mode='slide' is test.window=[h, w] with test.stride=[h, w] "
      "here"]),
    ("train", [str(CONFIG), "MODEL.RPN.NMS_THRESH=0.6"],
     ["the keys here are lower-case (detectron2's SOLVER.BASE_LR is train.base_lr=VALUE)"]),
    # the README table's rows, each named (a trial found half of them given the generic line)
    ("train", [str(CONFIG), "MODEL.ROI_HEADS.NMS_THRESH_TEST=0.3"],
     ["detectron2's MODEL.ROI_HEADS.NMS_THRESH_TEST is model.roi_heads.nms_thresh=VALUE"]),
    ("train", [str(CONFIG), "TEST.AUG.FLIP=True"],
     ["detectron2's TEST.AUG.FLIP is test.flip=VALUE here"]),
    ("demo", [str(CONFIG), "--weights", "w.pth", "--input", "a.jpg", "--output", "o",
              "--confidence-threshold", "0.3"],
     ["  --confidence-threshold: --min-score X (tools/demo.py)"]),
    # torchvision's references' train.py: bare "unrecognized arguments" (--model: "did you
    # mean --help?"); --resume CKPT: "'CKPT' must look like key=value"
    ("train", [str(CONFIG), "--model", "fasterrcnn_resnet50_fpn", "--lr-steps", "16", "22",
               "--aspect-ratio-group-factor", "3", "--weights-backbone", "r50.pth",
               "--trainable-backbone-layers", "3", "--test-only", "--data-augmentation",
               "lsj"],
     ["  --model: the config names the model: configs/detection/faster_rcnn_R_50_FPN_1x.yaml "
      "(fasterrcnn_resnet50_fpn)",
      "  --lr-steps: train.lr_step_epochs=[16,22] with train.epochs",
      "  --aspect-ratio-group-factor: training batches are always grouped by aspect ratio",
      "  --weights-backbone: model.backbone.weights=PATH",
      "  --trainable-backbone-layers: model.backbone.freeze_at=5-N",
      "  --test-only: tools/eval.py CONFIG --weights CKPT --output DIR",
      "lsj: data.train.jitter_size=1024; multiscale: data.train.min_size=[480,512,...,800]"]),
    # mmdetection's
    ("train", [str(CONFIG), "load_from=w.pth", "train.val_interval=1"],
     ["unknown config key 'load_from' in override 'load_from=w.pth'; valid keys at the top "
      "level: ", "; mmdetection's load_from is model.weights=PATH here"]),
    ("train", [str(CONFIG), "train.val_interval=1"],
     ["; mmdetection's val_interval is train.eval_period_epochs here (train.eval_period in "
      "iterations)"]),
    ("train", [str(CONFIG), "train_dataloader.batch_size=2"],
     ["; mmdetection's train_dataloader batch_size (per GPU) is train.batch_size (all "
      "processes) here"]),
    ("train", [str(CONFIG), "randomness.seed=3"], ["; mmdetection's randomness seed is "
                                                    "train.seed here"]),
    ("train", [str(CONFIG), "optim_wrapper.accumulative_counts=2"],
     ["its accumulative_counts train.accumulation_steps, clip_grad train.clip_grad_norm"]),
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"), "--model-ema-decay",
                  "0.999"], ["  --model-ema-decay: train.ema_decay=X"]),
    ("train", [str(CONFIG), "metainfo.classes=[a]"],
     ["; mmdetection's metainfo classes are data.classes=[name, ...] here"]),
    ("demo", [str(CONFIG), "--weights", "w.pth", "--input", "a.jpg", "--output", "o",
              "--show", "--pred-score-thr", "0.3", "--out-dir", "x"],
     ["  --show: the pictures go into --output DIR (no window opens)",
      "  --pred-score-thr: --min-score X (tools/demo.py)", "  --out-dir: --output DIR"]),
    ("eval", [str(CONFIG), "--weights", "w.pth", "--output", "o", "--tta", "--format-only"],
     ["  --tta: test-time augmentation is test.min_sizes=[...] test.max_size=N test.flip=true",
      "  --format-only: tools/eval.py writes the detections alone for a file without"]),
    # mmsegmentation's, with a segmentation config (detection's hints sent them to
    # test.min_sizes, COCO's AP, data.root and loss_weight; model.weights=[..] crashed)
    ("eval", [str(SEG_CONFIG), "--weights", "w.pth", "--output", "o", "--tta", "--aug-test",
              "--out", "x.pkl", "--eval", "mIoU", "--format-only"],
     ["  --tta: test-time augmentation is test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] "
      "test.flip=true", "  --aug-test: test-time augmentation is test.scales=",
      "  --out: --save-predictions (each image's class map as a PNG under --output DIR)",
      "  --eval: tools/eval.py scores mIoU, mAcc and aAcc (pixel_acc)",
      "  --format-only: --save-predictions"]),
    # the same config named by the package prefix (told detection's keys)
    ("eval", ["resnet_detect::synthetic/deeplabv3_R_18_os16.yaml", "--weights", "w.pth",
              "--output", "o", "--aug-test"],
     ["  --aug-test: test-time augmentation is test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] "
      "test.flip=true"]),
    ("demo", [str(SEG_CONFIG), "--weights", "w.pth", "--input", "a.jpg", "--output", "o",
              "--palette", "p.json", "--opacity", "0.3", "--out-file", "f.png"],
     ["  --palette: data.palette=[[r, g, b], ...]", "  --opacity: the overlay's opacity is 0.5",
      "  --out-file: --output DIR"]),
    ("train", [str(SEG_CONFIG), "--data-path", "/data", "--out", "o"],
     ["  --data-path: data.train.img_dir=DIR data.train.mask_dir=DIR",
      "  --out: train.output_dir=DIR"]),  # (--save-predictions is tools/eval.py's)
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"), "--data-path", "/d",
                  "--aug-test"],
     ["  --data-path: data.root=DIR (its train/ and val/ class folders)",
      "  --aug-test: a classifier is evaluated on one center crop here"]),
    # a classifier's keys in another section (a trial: the section's valid keys alone)
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"),
                  "model.drop_path_rate=0.1"],
     ["; a classifier's drop path rate is model.options={drop_path_rate: X} here"]),
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"),
                  "data.label_smoothing=0.1"],
     ["; the label smoothing is model.label_smoothing here"]),
    # torchvision's and timm's classification flags (a trial: none hinted, --sched "did you
    # mean --help?")
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"), "--sched", "cosine",
                  "--label-smoothing", "0.1", "--mixup-alpha", "0.2", "--norm-weight-decay", "0"],
     ["  --sched: train.lr_decay=cosine (or step, poly)\n",
      "  --label-smoothing: model.label_smoothing=X",
      "  --mixup-alpha: not offered here (the augmentation is a random resized crop and a flip",
      "  --norm-weight-decay: not offered here: norm weights and biases are never decayed"]),
    ("train", [str(SEG_CONFIG), "model.head.class_weight=[1,2]"],
     ["; the loss is the cross-entropy summed over the scored pixels over their count "
      "(mmsegmentation's avg_non_ignore=True); model.class_weight=[w_0, ...] weighs the classes "
      "in both heads"]),
    ("train", [str(SEG_CONFIG), "model.weights=[1,2]"],
     ["error: model.weights is a weights file's path (or null), got [1, 2] in override "
      "'model.weights=[1,2]' (per-class weights of a segmenter's loss are model.class_weight)"]),
    ("train", [str(SEG_CONFIG), "model.decode_head.num_classes=3"],
     ["; mmsegmentation's decode_head is model.head here"]),
    ("train", [str(SEG_CONFIG), "crop_size=[64,64]"],
     ["; mmsegmentation's crop_size is data.train.crop_size=[h, w] here"]),
    ("train", [str(SEG_CONFIG), "train_cfg.max_iters=10"],
     ["; mmsegmentation's and mmdetection's train_cfg max_iters is train.max_iter"]),
    ("train", [str(SEG_CONFIG), "model.backbone.weights=null", "train.best_metric=sem_seg/aAcc"],
     ["valid: sem_seg/mIoU, sem_seg/pixel_acc, sem_seg/mAcc (mmsegmentation's aAcc is "
      "pixel_acc here)"]),
    # where their users look first (a trial: rpn_head was told "did you mean 'roi_heads'?",
    # a segmentation key in a detector's config "'jitter_size'", and these nothing)
    ("train", [str(CONFIG), "model.rpn_head.nms_pre=1000"],
     ["; mmdetection's rpn_head is model.rpn here"]),
    ("train", [str(CONFIG), "model.roi_heads.num_classes=3"],
     ["; the number of classes is model.num_classes here, without the background"]),
    # the mask head's (a trial: the generic lower-case line, "did you mean 'mask_threshold'?"
    # for mask_head, 'cls_agnostic_bbox_reg' for class-agnostic masks)
    ("train", [str(CONFIG), "MODEL.ROI_MASK_HEAD.NUM_CONV=2"],
     ["detectron2's MODEL.ROI_MASK_HEAD.NUM_CONV is model.roi_heads.mask_conv_dims=VALUE here "
      "(a width per convolution: NUM_CONV 4 of CONV_DIM 256 is [256, 256, 256, 256])"]),
    ("train", [str(CONFIG), "MODEL.ROI_BOX_HEAD.POOLER_TYPE=ROIAlignV2"],
     ["is model.roi_heads.pooler_aligned=VALUE here (true for ROIAlignV2, false for ROIAlign"]),
    ("train", [str(CONFIG), "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK=True"],
     ["; detectron2's MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK: class-agnostic masks are not "
      "offered here"]),
    ("train", [str(CONFIG), "model.roi_head.mask_head.num_convs=2"],
     ["its mask_head num_convs and conv_out_channels are model.roi_heads.mask_conv_dims="]),
    ("train", [str(CONFIG), "model.roi_heads.mask_head.num_conv=2"],
     ["; mmdetection's mask_head has no section here: its mask_head num_convs"]),
    ("train", [str(CONFIG), "model.roi_heads.cls_agnostic_mask=true"],
     ["; class-agnostic masks are not offered here (one mask per class; cls_agnostic_bbox_reg "
      "is the box regression's)"]),
    ("train", [str(CONFIG), "model.test_cfg.rcnn.mask_thr_binary=0.3"],
     ["mask_thr_binary are model.roi_heads.score_thresh, nms_thresh, detections_per_image and "
      "mask_threshold here"]),
    ("train", [str(CONFIG), "model.backbone.depth=50"],
     ["; mmdetection's depth=50 is model.backbone.name=resnet50 here"]),
    ("train", [str(CONFIG), "model.backbone.frozen_stages=1"],
     ["; mmdetection's frozen_stages=N is model.backbone.freeze_at=N+1 here"]),
    ("train", [str(CONFIG), "train.lr=0.1"], ["; the learning rate is train.base_lr here"]),
    ("train", [str(CONFIG), "optimizer.lr=0.1"],
     ["; mmdetection 2.x's optimizer lr, momentum and weight_decay are train.base_lr"]),
    ("train", [str(CONFIG), "solver.base_lr=0.1"],
     ["; detectron2's SOLVER is the train section here (SOLVER.BASE_LR: train.base_lr"]),
    ("train", [str(CONFIG), "data.samples_per_gpu=2"],
     ["; mmdetection 2.x's samples_per_gpu (per GPU) is train.batch_size"]),
    ("train", [str(CONFIG), "data.train.crop_size=[256,256]"],
     ["; data.train.crop_size is a segmentation config's key (task sem_seg)"]),
    ("train", [str(CONFIG), "model.head.name=deeplabv3"],
     ["; model.head is a segmentation config's key (task sem_seg"]),
    ("train", [str(CONFIG), "model.rpn._delete_=true"],
     ["; mmdetection's _delete_ is not read here: lists are replaced whole"]),
    ("train", [str(CONFIG), "model.rpn.in_features.0=p2"],
     ["error: override 'model.rpn.in_features.0=p2': an element of a list is not set alone; "
      "give the whole list: model.rpn.in_features=[...] (now [p3,p4,p5,p6])"]),
    ("train", [str(CONFIG), "train.lr_steps[1]=5"],
     ["error: override 'train.lr_steps[1]=5': an element of a list is not set alone; give the "
      "whole list: train.lr_steps=[...] (now ["]),
    ("train", [], ["error: the following arguments are required: config\n"]),  # (not overrides)
    ("train", [str(CONFIG), "train.base_lr=inf"],
     ["error: train.base_lr must be a number, got 'inf' in override 'train.base_lr=inf' (YAML "
      "writes infinity .inf and not-a-number .nan)"]),
    ("train", [str(CONFIG), "train.base_lr =0.1"],
     ["error: override 'train.base_lr =0.1' has a space in its key: write train.base_lr=0.1"]),
    # detectron2's default CLIP_TYPE is value (each element clamped): the total-norm limit of
    # the same number cut the steps 10-300x, the hint said nothing of it
    ("train", [str(CONFIG), "SOLVER.CLIP_GRADIENTS.CLIP_VALUE=1"],
     ["is train.clip_grad_norm=VALUE here (a limit of the total norm, DETR's and "
      "Mask2Former's CLIP_TYPE full_model; detectron2's default CLIP_TYPE value clamps each "
      "gradient element, and norm each parameter's gradient alone, which have no key here"]),
    ("train", [str(CONFIG), "MODEL.PIXEL_MEAN=[1,2,3]"],
     ["(in RGB order: detectron2's is BGR, reverse it)"]),
    ("train", [str(CONFIG), "data_preprocessor.mean=[1,2,3]"],
     ["mmdetection's data_preprocessor mean and std are model.pixel_mean"]),
    ("pretrain", [str(ROOT / "configs/pretrain/synthetic_resnet18.yaml"),
                  "data_preprocessor.mean=[1,2,3]"],  # (a classifier's are data.*)
     ["mmpretrain's data_preprocessor mean and std are data.pixel_mean"]),
    ("train", [str(CONFIG), "custom_hooks=1"],  # (was "did you mean 'custom_imports'?")
     ["; mmdetection's custom_hooks are train.hooks=[{type: module.Class}] here\n"]),
    ("train", [str(CONFIG), "model.test_cfg.rcnn.score_thr=0.5"],
     ["; mmdetection's test_cfg rcnn score_thr, nms iou_threshold, max_per_img and "
      "mask_thr_binary are model.roi_heads.score_thresh"]),
    ("train", [str(SEG_CONFIG), "model.test_cfg.mode=slide"],
     ["; mmsegmentation's test_cfg mode='slide' crop_size stride is test.window"]),
    ("train", [str(CONFIG), "-b", "2", "-j", "4"],
     ["-b: train.batch_size=N (images per step over all processes: torchvision's -b is per "
      "GPU, times the GPUs)", "-j: data.num_workers=N"]),
    ("train", [str(CONFIG), "-j8"], ["-j: data.num_workers=N"]),  # (joined: no hint was given)
    # case apart, no suggestion was made (difflib's match is case-sensitive)
    ("train", [str(CONFIG), "train.Base_LR=0.1"], ["(did you mean 'base_lr'?)"]),
    ("train", [str(CONFIG), "model.backbone.name=ResNet50", "model.backbone.weights=null"],
     ["unknown backbone 'ResNet50' (did you mean 'resnet50'?); valid: "]),
    ("train", [str(CONFIG), "model.backbone.norm=FrozenBN", "model.backbone.weights=null"],
     ["(detectron2's and mmdetection's 'FrozenBN' is 'frozen_bn' here)"]),
    # Hydra's prefixes were "unknown config key '+train' ... (did you mean 'train'?)"
    ("train", [str(CONFIG), "++train.max_iter=3"],
     ["error: override '++train.max_iter=3': Hydra's ++ prefix is not read here: every key "
      "exists in the defaults, set it as train.max_iter=VALUE (null unsets it)\n"]),
    ("train", [str(CONFIG), "+train.foo=1"], ["error: override '+train.foo=1': Hydra's + prefix"]),
    # Hydra's delete has no "=": it was "must look like key=value"
    ("train", [str(CONFIG), "~train.hooks"],
     ["error: override '~train.hooks': Hydra's ~ prefix is not read here: every key exists in "
      "the defaults, set it as train.hooks=VALUE (null unsets it)\n"]),
    ("train", [str(CONFIG), "~/extra.yaml"],  # (a path the shell left unexpanded: no Hydra's)
     ["error: override '~/extra.yaml' must look like key=value\n"]),
    ("train", [str(CONFIG), "task=sem_seg"],
     [f"error: override 'task=sem_seg': {CONFIG} is a config of the task detection (its "
      f"`task` key); the tasks' keys differ: start from a config of the task sem_seg"]),
    ("train", [str(CONFIG), "--resume", "output/checkpoint.pth"],
     ["error: --resume takes no checkpoint here: it continues the last one of "
      "train.output_dir; to continue from output/checkpoint.pth: --resume-from "
      "output/checkpoint.pth\n"]),
    # a pattern --weights run/models/net-*.pth that matched two files
    ("eval", [str(CONFIG), "--output", "o", "--weights", str(CONFIG), str(ROOT / "README.md")],
     [f"error: override '{ROOT / 'README.md'}' must look like key=value; it is a file, and each "
      f"option takes one (a shell pattern that matched several files?)"]),
])
def test_detectron2_and_mmdetection_spellings_are_named_with_ours(
        tool: str, argv: list[str], said: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Their flags were argparse's bare "unrecognized arguments", their KEY VALUE pairs "must
    look like key=value" or an unknown key 'SOLVER' listing ours."""
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main(tool))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and all(line in err for line in said), err


def test_a_config_made_of_two_tasks_configs_is_refused_naming_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A detection config on a segmentation base was told that a key of the shipped base file
    is unknown (the override task=sem_seg was explained, the file not)."""
    base = ROOT / "configs/segmentation/base_deeplab.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_base_: {base}\ntask: detection\n")
    monkeypatch.setattr(sys, "argv", ["tools/train.py", str(mine), "--print-config"])
    with pytest.raises(SystemExit) as stopped:
        run_tool(tool_main("train"))
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"train.py: error: {mine} is made of configs of two tasks: {base} (task: sem_seg) and "
        f"{mine} (task: detection); the tasks' keys differ: inherit configs of one task "
        f"(configs/)\n")
    # a task of one's own on the detection task's module (docs/extending.md's register_task)
    # inherits the shipped detection configs: the same keys
    from resnet_detect.engine import tasks
    monkeypatch.setitem(tasks.TASK_MODULES, "my_det", tasks.TASK_MODULES["detection"])
    mine.write_text(f"_base_: {CONFIG}\ntask: my_det\n")
    assert tasks.config_task(mine) == "my_det"


def test_a_tool_main_given_one_string_says_it_takes_a_list() -> None:
    """train.main("configs/x.yaml") from Python: "config file not found: .../c" (its
    letters read as the words)."""
    with pytest.raises(TypeError, match=r"the arguments are a list of words, e.g. \['c.yaml', "
                                        r"'train.max_iter=5'\], got the string"):
        tool_main("train")("c.yaml train.max_iter=5")


def test_every_detectron2_key_named_is_a_key_of_the_detection_configs() -> None:
    from omegaconf import OmegaConf

    from resnet_detect.engine.foreign_options import DETECTRON2_KEYS
    from resnet_detect.engine.tasks import load_task_config
    cfg = load_task_config(ROOT / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml")[1]
    for theirs, ours in DETECTRON2_KEYS.items():
        parent, leaf = ours.rsplit(".", 1)
        assert leaf in OmegaConf.select(cfg, parent), (theirs, ours)


def test_every_key_a_flag_hint_names_is_a_key_of_a_config() -> None:
    from omegaconf import OmegaConf

    from resnet_detect.engine.foreign_options import _flag_advice
    from resnet_detect.engine.tasks import load_task_config
    cfgs = [load_task_config(ROOT / f"configs/{name}.yaml")[1] for name in
            ("detection/mask_rcnn_R_50_FPN_1x", "segmentation/deeplabv3_R_50_os8",
             "pretrain/synthetic_resnet18")]
    named = {key for advice in _flag_advice(True).values()
             for key in re.findall(r"\b(?:model|train|data)\.[a-z_.]*[a-z_]", advice)}
    assert len(named) > 20
    for key in named:
        if not key.endswith("."):
            assert any(OmegaConf.select(cfg, key, default="absent") != "absent"
                       for cfg in cfgs), key


_TERMINATED_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from typing import Any
from resnet_detect.engine.cli import run_tool
from resnet_detect.engine.export import _written

def main(argv):
    partial = Path(argv[0])
    with _written(partial):  # an export writing model.onnx.partial
        partial.write_text("half a graph")
        if len(argv) > 1:  # Slurm's scancel, `kill -- -PGID`: the loader workers get it too
            from resnet_detect.engine.data.loaders import build_test_loader
            for _ in build_test_loader([0] * 50, batch_size=1, num_workers=1):
                os.killpg(os.getpgid(0), signal.SIGTERM)
                time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)  # timeout, docker stop, a CI's cancel
        time.sleep(30)

sys.argv = ["tools/export.py", *sys.argv[1:]]
run_tool(main)
"""


def test_a_sigterm_stops_a_tool_as_ctrl_c_does_leaving_no_partial_file(tmp_path: Path) -> None:
    """SIGTERM ended an export at once (exit -15), leaving model.onnx.partial (2-20 MB)
    beside the folder's export; it now runs the clean-ups Ctrl-C runs and exits 143."""
    partial = tmp_path / "model.onnx.partial"
    done = subprocess.run([sys.executable, "-c", _TERMINATED_SCRIPT, str(partial)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert (done.returncode, done.stderr.strip()) == (143, "export.py: terminated")
    assert not partial.exists()
    for _ in range(3):  # the workers' death was a traceback at exit, one run in three
        done = subprocess.run([sys.executable, "-c", _TERMINATED_SCRIPT, str(partial), "group"],
                              capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[2], start_new_session=True)
        assert (done.returncode, done.stderr.strip()) == (143, "export.py: terminated")
        assert not partial.exists()
    # under torchrun the signal keeps its default: it must end a process in a collective
    done = subprocess.run([sys.executable, "-c", _TERMINATED_SCRIPT, str(partial)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "WORLD_SIZE": "2"})
    assert done.returncode == -signal.SIGTERM and partial.exists()


@pytest.mark.parametrize("tool,argv,abbreviation", [
    ("analyze", ["paths", "--conf", "missing.yaml", "--output", "out"], "--conf"),
    ("labelme_to_coco", [".", "--output", "o.json", "--write-emb"], "--write-emb"),
    ("make_synthetic", ["--output", "syn", "--num-tr", "1", "--num-val", "1"], "--num-tr"),
    ("merge_coco", ["--input", "a.json", "images", "--output", "o.json", "--img", "images"],
     "--img"),
    ("model_info", ["resnet18", "--num-c", "3"], "--num-c"),
    ("voc_to_coco", [".", "--output", "o.json", "--keep"], "--keep"),
    ("yolo_to_coco", ["data.yaml", "--output-dir", "out", "--spl", "train"], "--spl"),
])
def test_an_abbreviated_option_is_refused_not_taken(tool: str, argv: list[str],
                                                    abbreviation: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """argparse took `--out` for `--output` (here `--num-c 3` for --num-classes ...) unsaid;
    the config tools and plot_curves.py already refused it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        tool_main(tool)(argv)
    assert stopped.value.code == 2
    assert f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_every_scripts_parser_refuses_abbreviations() -> None:
    """The benchmarks took `--out` for `--output` too: every ArgumentParser a script under
    tools/ or benchmarks/ builds says allow_abbrev=False (the config tools' ToolArgumentParser
    does it itself)."""
    import ast
    lenient = []
    for script in sorted([*ROOT.glob("tools/*.py"), *ROOT.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "ArgumentParser" and not any(
                        k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant)
                        and k.value.value is False for k in node.keywords)):
                lenient.append(f"{script.relative_to(ROOT)}:{node.lineno}")
    assert not lenient


def test_python_m_resnet_detect_runs_the_tools(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """A pip install carried no tools/ folder: none of the README's `python tools/X.py`
    commands could run. `python -m resnet_detect X` (resnet-detect X) runs them."""
    from resnet_detect import CONFIGS
    from resnet_detect.__main__ import TOOLS, main

    assert set(TOOLS) == {p.stem for p in (ROOT / "tools").glob("*.py")} - {"__init__",
                                                                               "install"}
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "tools: train, pretrain, eval" in out and str(CONFIGS) in out
    main(["--version"])
    assert capsys.readouterr().out == "resnet-detect 0.1.0\n"
    for argv, said in (([], "usage: python -m resnet_detect TOOL"),
                       (["trian"], "python -m resnet_detect: error: no tool 'trian' (did you "
                                   "mean 'train'?)\nusage: python -m resnet_detect TOOL"),
                       (["browse-datset"], "no tool 'browse-datset' (did you mean "
                                           "'browse-dataset'?)"),
                       (["zzz"], "python -m resnet_detect: error: no tool 'zzz'\nusage:")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["resnet-detect"])
    for argv, said in (([], "usage: resnet-detect TOOL"),  # (it said python -m resnet_detect)
                       (["evl"], "resnet-detect: error: no tool 'evl' (did you mean 'eval'?)\n"
                                 "usage: resnet-detect TOOL")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err
    path = list(sys.path)
    main(["model-info", "resnet18"])
    assert "total       11,689,512" in capsys.readouterr().out  # torchvision's resnet18
    assert sys.path == path  # imported as a package: no repository folder put first
    # a clone on PYTHONPATH, not installed (no resnet_detect.tools): the tools/ folder's file
    real_import = importlib.import_module

    def uninstalled(module: str, *args: Any) -> Any:
        if module.startswith("resnet_detect.tools"):
            raise ModuleNotFoundError(f"No module named {module!r}", name="resnet_detect.tools")
        return real_import(module, *args)
    monkeypatch.setattr(importlib, "import_module", uninstalled)
    main(["model_info", "resnet18"])
    assert "total       11,689,512" in capsys.readouterr().out
    monkeypatch.setattr(importlib, "import_module", real_import)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/resnet-detect"])
    with pytest.raises(SystemExit) as stop:
        main(["train", str(ROOT / "nope.yaml")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(
        "resnet-detect train: error: config file not found: ")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/resnet-detect"])
    with pytest.raises(SystemExit):
        main(["train", str(ROOT / "c.yaml"), "--config-file", "c.yaml", "--test-only"])
    err = capsys.readouterr().err  # the hints as typed too
    assert "the config is the first argument: resnet-detect train CONFIG" in err
    assert "--test-only: resnet-detect eval CONFIG" in err
    # their usage lines said train.py, demo.py...: the command the user typed
    monkeypatch.setattr(sys, "argv", ["/venv/site-packages/resnet_detect/__main__.py"])
    for tool in TOOLS:
        with pytest.raises(SystemExit) as stop:
            main([tool, "--help"])
        assert stop.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: python -m resnet_detect {tool} ")
        # (a pip install has no tools/ folder; mmdetection's tools/dataset_converters/ named)
        assert not re.search(r"(?<![\w/.])tools/\w+\.py", shown), tool
    with pytest.raises(SystemExit):
        main(["eval", "--config-file", "c.yaml"])
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m resnet_detect eval ")
    assert "python -m resnet_detect eval: error: unrecognized arguments: --config-file" in err
    assert "the config is the first argument: python -m resnet_detect eval CONFIG" in err
    with pytest.raises(SystemExit):
        main(["browse-dataset", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m resnet_detect browse-dataset ")
    from resnet_detect.engine import cli
    assert cli.PROGRAM is None  # the next tool run in this process names its own file


def test_a_pip_installed_tool_names_the_tools_as_it_runs_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a pip install the hints said tools/train.py, a file the user does not have."""
    from resnet_detect.engine.cli import as_installed
    text = ("one process per GPU: torchrun --nproc_per_node=N tools/train.py ...; evaluate "
            "with tools/eval.py CONFIG (`python tools/make_synthetic.py` makes it); "
            "datasets/tools/x.py")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools/train.py")])
    assert as_installed(text) == text  # the repository's tools
    monkeypatch.setattr(sys, "argv", ["/venv/site-packages/resnet_detect/tools/train.py"])
    assert as_installed(text) == (
        "one process per GPU: torchrun --nproc_per_node=N -m resnet_detect train ...; evaluate "
        "with python -m resnet_detect eval CONFIG (`python -m resnet_detect make_synthetic` "
        "makes it); datasets/tools/x.py")
    # and so do the log lines of a tool run so (log.txt's "training stopped: ... tools/eval.py"
    # named the file; the error line below it the command)
    from resnet_detect.engine.cli import run_tool

    def main(_: object) -> None:
        logging.getLogger("resnet_detect.engine.runner").warning("then %s CONFIG",
                                                                 "tools/eval.py")
        logging.getLogger("someone_else").warning("then tools/eval.py")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        run_tool(main)
        monkeypatch.setattr(sys, "argv", [str(ROOT / "tools/train.py")])
        run_tool(main)
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "then python -m resnet_detect eval CONFIG", "then tools/eval.py",  # (not ours)
        "then tools/eval.py CONFIG", "then tools/eval.py"]
