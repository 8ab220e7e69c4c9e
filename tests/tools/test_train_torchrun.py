"""tools/train.py under torchrun with 2 processes on CPU (gloo), one per node: Faster R-CNN steps.

Both ranks must end with the same weights (DDP averaged the gradients) and rank 0 writes
them as model_final.pth; the log reports the split of train.batch_size over the processes.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from resnet_detect.detection.build import build_model
from resnet_detect.detection.config import load_config
from tests.tools.test_train_eval_demo import data, load_tool, train_args  # noqa: F401 (fixture)
from tests.torchrun import run_two_nodes, run_two_processes


@pytest.mark.slow
def test_two_nodes_of_one_process_end_identical(data: Path, tmp_path: Path) -> None:  # noqa: F811
    """What users who outgrow one machine run: one torchrun per node (--nnodes=2). Both ranks
    end with the same weights (DDP averaged the gradients), which rank 0 wrote."""
    out = tmp_path / "out"
    args = train_args(data, out, 2, "train.checkpoint_period=1", "train.seed=5")
    log = run_two_nodes("train", args, tmp_path)
    assert "2 processes x 1 images per step" in log
    rank0 = torch.load(out / "rank0.pth", weights_only=True)
    rank1 = torch.load(out / "rank1.pth", weights_only=True)
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    cfg = load_config(args[0], args[1:])
    cfg.model.num_classes = 6
    torch.manual_seed(5)
    init = build_model(cfg).state_dict()
    assert rank0.keys() == rank1.keys() == final.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final[key]), key
    moved = {k for k in rank0 if not torch.equal(rank0[k], init[k])}
    assert "roi_heads.box_predictor.cls_score.weight" in moved  # the steps did train
    assert (out / "model_0000002.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.pth"


@pytest.mark.slow
def test_a_process_whose_batch_is_unreadable_keeps_step_with_the_other(
        data: Path, tmp_path: Path) -> None:  # noqa: F811
    """Two training images, one truncated, one per process and step: at every step, the first
    included, one process has no image. It still runs DDP's collective forward and backward
    (it used to wait in them for the other until the 30-minute timeout); both end equal. Each
    process's warnings are in the run's folder."""
    overrides = _last_image_unreadable(data, tmp_path, 2)
    truncated = Path(overrides[1].split("=", 1)[1]) / json.loads(
        (tmp_path / "train.json").read_text())["images"][1]["file_name"]
    out = tmp_path / "out"
    args = train_args(data, out, 3, *overrides, "train.seed=5")
    log = run_two_processes("train", args, tmp_path, timeout=90)
    assert "train: skipped 3 unreadable image reads" in log
    # the unreadable image named in the run's folder by each process that met it, once (the
    # reads are counted above), rank 1's in its own file (its console was all that named it:
    # another machine's, on a job of several nodes)
    named = {f.name: f.read_text().count(f"{truncated.name}") for f in out.glob("log.txt*")}
    assert named == {"log.txt": 1, "log.txt.rank1": 1}, named
    rank0 = torch.load(out / "rank0.pth", weights_only=True)
    rank1 = torch.load(out / "rank1.pth", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def _last_image_unreadable(data: Path, tmp_path: Path, count: int) -> list[str]:  # noqa: F811
    """Overrides training on the first `count` images, the last truncated."""
    coco = json.loads((data / "coco/train.json").read_text())
    coco["images"] = coco["images"][:count]
    kept = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    (tmp_path / "train.json").write_text(json.dumps(coco))
    images = tmp_path / "images"
    images.mkdir()
    for image in coco["images"]:
        shutil.copy(data / "images/train" / image["file_name"], images)
    truncated = images / coco["images"][-1]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:300])
    return [f"data.train.ann_file={tmp_path / 'train.json'}", f"data.train.img_dir={images}"]


@pytest.mark.slow
def test_a_resume_ahead_of_an_unreadable_batch_ends_as_the_run_that_never_stopped(
        data: Path, tmp_path: Path) -> None:  # noqa: F811
    """The process without an image runs the model on a stand-in batch (losses times zero):
    it was its last readable batch, which a resumed run had not read, so it took another
    image: other random draws, other weights after it. Three images, the third unreadable;
    with seed 0 process 0 gets images 0, 2, 1, 2, 1, 2 at steps 1-6: at step 4, the first
    after the resume, it has none, and its last readable image was image 1."""
    args = [*_last_image_unreadable(data, tmp_path, 3), "train.seed=0", "train.lr_decay=step",
            "train.checkpoint_period=3"]
    run_two_processes("train", train_args(data, tmp_path / "whole", 6, *args), tmp_path,
                      timeout=120)
    run_two_processes("train", [*train_args(data, tmp_path / "resumed", 6, *args),
                                f"--resume-from={tmp_path / 'whole/model_0000003.pth'}"],
                      tmp_path, timeout=120)
    whole = torch.load(tmp_path / "whole/model_final.pth", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed/model_final.pth", weights_only=True)["model"]
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


@pytest.mark.slow
def test_processes_that_find_different_checkpoints_refuse_to_resume(
        data: Path, tmp_path: Path) -> None:  # noqa: F811
    """Each process with its own train.output_dir (a node's own disk): the run trains, warned
    of at its start (nothing said before: a --resume found it out); then process 0 finds the
    checkpoint of step 2, process 1 none. They used to train apart and then wait for each
    other forever; now both stop before training, naming each one's step and folder."""
    apart = train_args(data, tmp_path / "out{RANK}", 2, "train.checkpoint_period=1")
    log = run_two_processes("train", apart, tmp_path, timeout=90)
    assert (f"processes 1 ({socket.gethostname()}) do not see {tmp_path / 'out0'} as process 0 "
            f"writes it (train.output_dir on each node's own disk?)") in log
    assert (tmp_path / "out0/model_0000002.pth").is_file()
    assert not (tmp_path / "out1/model_0000002.pth").exists()
    args = train_args(data, tmp_path / "out${oc.env:RANK}", 4, "--resume")
    log = run_two_processes("train", args, tmp_path, fails=True, timeout=90)
    assert (f"the processes resume at different steps (process 0 at iteration 2 from "
            f"{tmp_path / 'out0'}; process 1 at iteration 0 from {tmp_path / 'out1'})") in log
    assert not (tmp_path / "out0" / "model_0000003.pth").exists()
