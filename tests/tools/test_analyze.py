"""tools/analyze.py: every study runs on a tiny model and writes its picture and numbers."""
import csv
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from resnet_detect.backbones.studies import training
from resnet_detect.backbones import weights
from resnet_detect.engine import ConfigError
from resnet_detect.engine.cli import run_tool
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.files import atomic_save

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("analyze_tool", ROOT / "tools" / "analyze.py")
analyze = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["data.image_size=8", "solver.batch_size=4", "solver.iterations=2", "train.evaluations=2",
        "train.log_period=1", "train.device=cpu", "train.eval_batch_size=5",
        "degradation.max_train=0", *(f"{s}.iterations=0" for s in analyze.STUDIES)]
BLOCKS = 9  # cifar_resnet20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes of noisy 12x12 images whose mean colour gives the class."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label, name in enumerate(("a", "b", "c")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 80, size=(12, 12, 3), dtype=np.uint8)
                image[..., label] += 150
                cv2.imwrite(str(root / split / name / f"{i}.png"), image)
    return root


def run(study, output, root, *extra, weights=()):
    argv = [study, "--output", str(output), f"data.root={root}", *TINY, *extra]
    for w in weights:
        argv += ["--weights", str(w)]
    return analyze.main(argv)


def saved(output, arch):
    """The one net of `arch` a study saved under output/models (ARCH-<record>.pth)."""
    (path,) = (output / "models").glob(f"{arch}-*.pth")
    return path


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_files(written, study):
    assert set(written) == {"png", "csv", "json"}
    for key, path in written.items():
        assert path.name == f"{study}.{key}" and path.is_file()
    assert written["png"].read_bytes()[:8] == PNG_SIGNATURE
    return read_csv(written["csv"]), json.loads(written["json"].read_text())


def test_degradation_trains_four_twins_and_writes_curves(image_folder, tmp_path, capsys,
                                                         monkeypatch):
    trained = []  # the studies train through the runner every task uses
    real = training.run_training
    monkeypatch.setattr(training, "run_training",
                        lambda task, *a, **k: trained.append(task.label) or real(task, *a, **k))
    written = run("degradation", tmp_path, image_folder, "degradation.depths=[20,32]")
    rows, payload = check_files(written, "degradation")
    assert f"picture at {written['png']}" in capsys.readouterr().out
    archs = ["plain_cifar_resnet20", "cifar_resnet20", "plain_cifar_resnet32", "cifar_resnet32"]
    assert [r["arch"] for r in payload["runs"]] == archs
    assert [r["residual"] for r in payload["runs"]] == [False, True, False, True]
    assert len(rows) == 4 * 2  # 2 evaluations (iterations 1 and 2) per model
    assert [int(r["iteration"]) for r in rows[:2]] == [1, 2]
    assert all(0.0 <= float(r["val_error"]) <= 100.0 for r in rows)
    names = sorted(saved(tmp_path, a).stem for a in archs)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        name for n in names for name in (f"{n}.pth", f"{n}.pth.sha256"))
    assert trained == archs
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == names


def test_a_rerun_reuses_the_nets_trained_with_the_same_recipe(image_folder, tmp_path,
                                                             monkeypatch, caplog):
    """A stopped study run again trains only what it lacks: nets in models/ARCH.pth trained
    with the same recipe, options and data are reused with their curves; others retrain."""
    data = tmp_path / "data"  # rewritten below under the same path
    shutil.copytree(image_folder, data)
    output = tmp_path / "out"
    trained = []
    real = training.run_training
    monkeypatch.setattr(training, "run_training",
                        lambda task, *a, **k: trained.append(task.label) or real(task, *a, **k))
    first = run("degradation", output, data, "degradation.depths=[20]")
    rows = read_csv(first["csv"])
    assert trained == ["plain_cifar_resnet20", "cifar_resnet20"]
    weights = saved(output, "cifar_resnet20").read_bytes()
    # a folder of the earlier naming (models/ARCH.pth): its net is reused, under the new name
    named = saved(output, "cifar_resnet20")
    for suffix in (".pth", ".pth.sha256"):
        named.with_suffix(suffix).rename(output / "models" / f"cifar_resnet20{suffix}")
    trained.clear()
    run("degradation", output, data, "degradation.depths=[20]")
    assert trained == []
    assert named.read_bytes() == weights and named.with_suffix(".pth.sha256").is_file()
    assert not (output / "models" / "cifar_resnet20.pth").exists()

    trained.clear()
    saved(output, "plain_cifar_resnet20").write_bytes(b"damaged")
    again = run("degradation", output, data, "degradation.depths=[20]")
    assert trained == ["plain_cifar_resnet20"]  # the damaged one only
    assert "cannot be reused" in caplog.text and "cifar_resnet20: reusing" in caplog.text
    assert read_csv(again["csv"]) == rows  # the same curves: the same seed, and reused
    assert saved(output, "cifar_resnet20").read_bytes() == weights
    reused = run("responses", output, data, "degradation.depths=[20]")
    assert trained == ["plain_cifar_resnet20"]  # responses needs the same two nets
    assert json.loads(reused["json"].read_text())["models"][0]["source"].startswith(
        "trained by an earlier run")

    trained.clear()  # another recipe: both again, into files of their own
    first_net = saved(output, "cifar_resnet20")
    run("degradation", output, data, "degradation.depths=[20]", "solver.base_lr=0.05")
    assert trained == ["plain_cifar_resnet20", "cifar_resnet20"]
    assert len(list((output / "models").glob("*.pth"))) == 4
    # the first recipe's net kept (a lesion, then a degradation into one folder replaced it)
    assert first_net.read_bytes() == weights
    trained.clear()  # how often it logs changes nothing trained
    run("degradation", output, data, "degradation.depths=[20]", "solver.base_lr=0.05",
        "train.log_period=2")
    assert trained == []
    for split in ("train", "val"):  # the same path and class names, other images in them
        (data / split / "a").rename(data / split / "x")
        (data / split / "b").rename(data / split / "a")
        (data / split / "x").rename(data / split / "b")
    run("degradation", output, data, "degradation.depths=[20]", "solver.base_lr=0.05")
    assert trained == ["plain_cifar_resnet20", "cifar_resnet20"]


def test_responses_measure_every_3x3_layer_or_block_of_both_twins(image_folder, tmp_path):
    rows, payload = check_files(run("responses", tmp_path / "3x3", image_folder), "responses")
    assert [m["arch"] for m in payload["models"]] == ["cifar_resnet20", "plain_cifar_resnet20"]
    layers = 1 + 2 * BLOCKS  # the stem and both 3x3 layers of each block: 19 of the 20
    assert len(rows) == 2 * layers
    assert [r["layer_name"] for r in rows[:4]] == ["stem", "res2.0.norm1", "res2.0.norm2",
                                                   "res2.1.norm1"]
    assert [r["downsampling"] for r in rows[:layers]].count("True") == 2 * 2
    assert all(float(r["std"]) > 0 for r in rows)
    rows, _ = check_files(run("responses", tmp_path / "blocks", image_folder,
                              "responses.layers=blocks"), "responses")
    assert len(rows) == 2 * BLOCKS
    assert [r["layer_name"] for r in rows[:4]] == ["res2.0", "res2.1", "res2.2", "res3.0"]
    assert [r["downsampling"] for r in rows[:BLOCKS]].count("True") == 2


def test_lesion_rows_and_reuse_of_saved_weights(image_folder, tmp_path, caplog):
    first = run("lesion", tmp_path / "trained", image_folder, "lesion.draws=2")
    rows, payload = check_files(first, "lesion")
    random_rows = sum(min(2, math.comb(BLOCKS, k)) for k in range(1, BLOCKS + 1))
    assert len(rows) == 2 * (1 + BLOCKS + random_rows)
    model = payload["models"][0]
    assert len(model["single"]) == BLOCKS and model["downsampling"][3] and model["downsampling"][6]
    assert [len(model["random"][str(k)]) for k in (1, BLOCKS)] == [2, 1]

    nets = [saved(tmp_path / "trained", a) for a in ("cifar_resnet20", "plain_cifar_resnet20")]
    again = run("lesion", tmp_path / "reused", image_folder, "lesion.draws=2", weights=nets)
    reused_rows, reused = check_files(again, "lesion")
    assert not (tmp_path / "reused" / "models").exists()  # nothing trained
    assert [m["label"] for m in reused["models"]] == [
        f"cifar_resnet20 ({nets[0].name})", f"plain_cifar_resnet20 ({nets[1].name})"]
    # same weights, same data, same draws: the same accuracies
    assert [r["accuracy"] for r in reused_rows] == [r["accuracy"] for r in rows]
    # a max_k past the blocks was clamped without a word
    past = run("lesion", tmp_path / "past", image_folder, "lesion.draws=2",
               f"lesion.max_k={BLOCKS + 5}", weights=nets[:1])
    # (given nets: theirs, not the config's depth; a 56-layer net's 27 blocks were said 9)
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30
            and "lesion.max_k" in r.getMessage()] == [
        f"lesion.max_k={BLOCKS + 5} is above the {BLOCKS} blocks of cifar_resnet20 "
        f"({nets[0].name}): k runs from 1 to {BLOCKS} (as with lesion.max_k=0)"]

    assert [r["accuracy"] for r in read_csv(past["csv"])] == [
        r["accuracy"] for r in reused_rows[:len(reused_rows) // 2]]
    # given weights, lesion reads no training image (ImageNet's 1.28M were all read first, for
    # the class names alone): the same accuracies with every training image unreadable
    unread = tmp_path / "unread"
    shutil.copytree(image_folder, unread)
    for image in (unread / "train").rglob("*.png"):
        image.write_bytes(b"not read")
    caplog.clear()
    blind = run("lesion", tmp_path / "blind", unread, "lesion.draws=2", weights=nets)
    assert [r["accuracy"] for r in read_csv(blind["csv"])] == [r["accuracy"] for r in rows]
    assert not [r for r in caplog.records if r.levelno >= 30]
    described = json.loads(blind["json"].read_text())["data"]
    assert described.endswith("(3 classes, 8x8 px, 9 val images)")


def test_paths_writes_binomial_and_gradients(image_folder, tmp_path):
    written = run("paths", tmp_path, image_folder, "paths.samples_per_k=2", "paths.batches=1",
                  "paths.batch_size=4")
    rows, payload = check_files(written, "paths")
    assert [int(r["k"]) for r in rows] == list(range(BLOCKS + 1))
    assert [float(r["probability"]) for r in rows] == [math.comb(BLOCKS, k) / 2 ** BLOCKS
                                                       for k in range(BLOCKS + 1)]
    assert [int(r["samples"]) for r in rows] == [1] + [2] * (BLOCKS - 1) + [1]
    assert all(float(r["grad_magnitude"]) > 0 for r in rows)
    assert sum(float(r["effective_share"]) for r in rows) == pytest.approx(1.0, abs=1e-5)
    assert [m["arch"] for m in payload["models"]] == ["cifar_resnet20"]


def test_cifar_batches_as_data_root(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"x", b"y"]}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [0, 1, 0, 1]}, f)
    rows, payload = check_files(run("responses", tmp_path / "out", root,
                                    "responses.layers=blocks"), "responses")
    assert "cifar-10-batches-py (2 classes, 8x8 px, 20 train / 4 val images)" == payload["data"]
    assert len(rows) == 2 * BLOCKS


def test_ctrl_c_in_the_analysis_says_what_is_kept(image_folder, tmp_path, capsys,
                                                  monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze, "run_study", stopped)
    with pytest.raises(SystemExit) as exit_info:
        run("lesion", tmp_path, image_folder)
    assert exit_info.value.code == 130
    assert "lesion: Ctrl-C stopped the analysis before its results were written; nets trained " \
           f"so far are in {tmp_path / 'models'}: run the command again (it reuses them)" \
           in capsys.readouterr().err
    assert not (tmp_path / "lesion_config.yaml").exists()


def test_sigterm_in_the_analysis_says_what_is_kept(image_folder, tmp_path, capsys,
                                                   monkeypatch):
    """A scheduler's SIGTERM after the trainings ended the process silently; arriving while a
    saved net was read, it became that reader's "cannot read weights file" error and the
    study went on training."""
    def signalled(path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt the analysis")

    def reading_a_saved_net(*args, **kwargs):
        weights.read_checkpoint(tmp_path / "saved.pth")

    (tmp_path / "saved.pth").write_bytes(b"")
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(weights, "read_checked_bytes", signalled)
    monkeypatch.setattr(analyze, "run_study", reading_a_saved_net)
    with pytest.raises(SystemExit) as exit_info:
        run("lesion", tmp_path, image_folder)
    assert exit_info.value.code == 143
    assert "lesion: SIGTERM stopped the analysis before its results were written; nets " \
           f"trained so far are in {tmp_path / 'models'}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_bad_usage_gives_clear_errors(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="lesion.drawz"):
        run("lesion", tmp_path, image_folder, "lesion.drawz=3")
    with pytest.raises(ValueError, match="--weights is not used"):
        run("degradation", tmp_path, image_folder, weights=[tmp_path / "x.pth"])
    detector = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"  # blamed base_train.yaml
    with pytest.raises(ConfigError, match=r"faster_rcnn_R_18_FPN.yaml is for task 'detection', "
                                          r"not 'analyze': tools/train.py"):
        analyze.main(["degradation", "--config", str(detector), "--output", str(tmp_path / "d")])
    with pytest.raises(ValueError, match="model.options.residual would make both twins"):
        run("lesion", tmp_path / "twins", image_folder, "model.options.residual=true")
    with pytest.raises(ValueError, match=r"degradation.depths: model.family='cifar_resnet' "
                                          r"with depth 21"):
        run("degradation", tmp_path / "d", image_folder, "degradation.depths=[20,21]")
    run("responses", tmp_path / "r", image_folder)
    plain = saved(tmp_path / "r", "plain_cifar_resnet20")
    # an interrupted run's checkpoint: the plain net's own architecture, not its residual twin
    run_checkpoint = tmp_path / "r" / "runs" / plain.stem / "model_0000002.pth"
    for path in (plain, run_checkpoint):
        with pytest.raises(ValueError, match="plain"):
            run("paths", tmp_path / "p", image_folder, weights=[path])
    # the config is written with the results it describes, not before them
    assert (tmp_path / "r" / "responses_config.yaml").is_file()
    assert not (tmp_path / "p" / "paths_config.yaml").exists()
    for override, message in (("data.image_size=0", "data.image_size must be at least 1 pixel"),
                              ("data.pixel_mean=[1,2]", r"data.pixel_mean must be 3 values"),
                              ("data.pixel_std=[1,0,1]", r"pixel_std must be 3 values \(R, G, "
                                                         r"B\), each above 0, got \[1, 0, 1\]"),
                              ("solver.base_lr=-1", "solver.base_lr is -1")):
        with pytest.raises(ValueError, match=message):
            run("lesion", tmp_path / "bad", image_folder, override)
    # named by their solver.* keys before the data is read (a fraction past 1 or a negative
    # subset trained on without a word; gamma or momentum were named as train.* keys, after it)
    for override, message in (
            ("solver.lr_steps=[1.5]", r"solver.lr_steps must be increasing fractions of the "
                                      r"iterations, each in \(0, 1\), got \[1.5\]"),
            ("solver.lr_steps=[0.8,0.5]", r"solver.lr_steps must be increasing"),
            ("solver.gamma=0", r"solver.gamma must be in \(0, 1\] \(the factor of the lr at "
                               r"each of solver.lr_steps\), got 0"),
            ("solver.momentum=1.5", r"solver.momentum must be in \[0, 1\) \(SGD's\), got 1.5"),
            ("solver.weight_decay=-1", "solver.weight_decay must be a number >= 0, got -1"),
            ("solver.warmup_iters=-1", "solver.warmup_iters must be an integer >= 0, got -1"),
            ("solver.batch_size=0", "solver.batch_size must be a positive integer, got 0"),
            ("data.max_train=-1", r"data.max_train must be a number of images >= 0 \(0: all\)"),
            ("lesion.max_train=-2", r"lesion.max_train must be a number of images >= 0")):
        with pytest.raises(ConfigError, match=message):
            run("lesion", tmp_path / "bad", tmp_path / "missing", override)
    for study, override, message in (  # (were taken as "all")
            ("responses", "responses.max_images=-5",
             r"responses.max_images must be a number of images >= 0 \(0: all\), got -5"),
            ("lesion", "lesion.max_k=-3",
             r"lesion.max_k must be a number of blocks >= 0 \(0: all\), got -3")):
        with pytest.raises(ConfigError, match=message):
            run(study, tmp_path / "counts", image_folder, override)
    assert not (tmp_path / "counts" / "models").exists()  # refused before any training
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        run("lesion", tmp_path / "l", tmp_path / "missing")
    # degradation.depths' defaults (20, 56) are no resnet depths: checked for degradation only
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        run("lesion", tmp_path / "l", tmp_path / "missing", "model.family=resnet",
            "model.depth=18")
    other = tmp_path / "other"
    for split in ("train", "val"):
        for name in ("x", "y", "z"):
            (other / split / name).mkdir(parents=True)
            cv2.imwrite(str(other / split / name / "0.png"), np.zeros((8, 8, 3), np.uint8))
    # ValueErrors before: tracebacks at the command line
    with pytest.raises(ConfigError, match=r"trained on classes \['a', 'b', 'c'\]"):
        run("lesion", tmp_path / "o", other, "solver.batch_size=1", weights=[plain])
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}},
               tmp_path / "detector.pth")
    with pytest.raises(ConfigError, match=r"detector.pth has no classifier \(fc.weight\)"):
        run("lesion", tmp_path / "o", image_folder, weights=[tmp_path / "detector.pth"])


@pytest.mark.parametrize("override, message", [
    ("responses.layers=3x4", "responses.layers must be one of 3x3, blocks, got '3x4'"),
    ("train.eval_batch_size=0", r"train.eval_batch_size must be a positive integer \(images per "
                                r"evaluation forward pass\), got 0")])
def test_a_study_setting_out_of_range_is_one_line_before_the_data_is_read(
        override, message, tmp_path, monkeypatch, capsys):
    """Both were ValueError tracebacks, and responses.layers only after the nets trained."""
    monkeypatch.setattr(sys, "argv", ["tools/analyze.py", "responses", "--output",
                                      str(tmp_path / "out"), f"data.root={tmp_path / 'missing'}",
                                      *TINY, override])
    with pytest.raises(SystemExit) as stopped:
        run_tool(analyze.main)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"analyze.py: error: {message}\n", err), err


def test_unusable_data_is_a_data_error(tmp_path):
    """ValueError tracebacks before."""
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("batches.meta", "test_batch"):
        (cifar / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"cannot read CIFAR batch file .*batches.meta"):
        run("lesion", tmp_path / "c", cifar)
    for split in ("train", "val"):
        (tmp_path / "broken" / split / "a").mkdir(parents=True)
        (tmp_path / "broken" / split / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"no readable images under .*broken.train"):
        run("lesion", tmp_path / "b", tmp_path / "broken")
    # a class whose only image is unreadable trained as a class of no images
    for split in ("train", "val"):
        (tmp_path / "broken" / split / "b").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "broken" / split / "b" / "0.png"), np.zeros((8, 8, 3),
                                                                                np.uint8))
    with pytest.raises(DatasetError, match=r"broken.train: no readable image of class a \(the "
                                           r"warnings above name its unreadable files\)"):
        run("lesion", tmp_path / "b", tmp_path / "broken")
    # a seeded subset may leave a class out: not refused (every subset was, at first)
    (tmp_path / "broken" / "train" / "a" / "0.png").unlink()
    cv2.imwrite(str(tmp_path / "broken" / "train" / "a" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    for i in range(1, 4):
        cv2.imwrite(str(tmp_path / "broken" / "train" / "b" / f"{i}.png"),
                    np.zeros((8, 8, 3), np.uint8))
    run("lesion", tmp_path / "s", tmp_path / "broken", "data.max_train=1", "solver.batch_size=1",
        "lesion.draws=1")


def test_path_sampling_values_are_refused_before_any_net_trains(image_folder, tmp_path,
                                                                 monkeypatch, caplog):
    """They were refused only when the residual net's training began: after its plain twin's
    (hours with configs/analyze/cifar10.yaml)."""
    monkeypatch.setattr(training, "run_training", lambda *a, **k: pytest.fail("trained"))
    for overrides, message in (
            (["model.path_sampling.mode=k_of_n", "model.path_sampling.k=20"],
             r"model.path_sampling.k must be in 1..9 \(the number of blocks\), got 20 "
             r"\(cifar_resnet20\)"),
            (["model.path_sampling.mode=drop_path", "model.path_sampling.rate=1.5"],
             r"model.path_sampling.rate \(drop probability\) must be in \[0, 1\), got 1.5"),
            (["model.path_sampling.mode=drop_path", "model.path_sampling.schedule=cosine"],
             "unknown model.path_sampling.schedule 'cosine'"),
            (["model.path_sampling.mode=bogus"], "unknown model.path_sampling.mode 'bogus'")):
        with pytest.raises(ConfigError, match=message):
            run("degradation", tmp_path / "out", tmp_path / "missing",
                "degradation.depths=[20,56]", *overrides)
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        run("degradation", tmp_path / "out", tmp_path / "missing",
            "model.path_sampling.mode=drop_path")
    assert ("model.path_sampling.mode=drop_path with rate 0 drops no block: the nets train as "
            "with mode=none (set model.path_sampling.rate)") in [
        r.getMessage() for r in caplog.records if r.levelno >= 30]
    # analysing given weights trains nothing: the values go unused, as before
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        run("lesion", tmp_path / "out", tmp_path / "missing", "model.path_sampling.mode=k_of_n",
            "model.path_sampling.k=20", weights=[tmp_path / "net.pth"])
    # k=20 fits ResNet-56's 27 blocks, not ResNet-20's 9: each depth is checked
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        run("degradation", tmp_path / "out", tmp_path / "missing", "degradation.depths=[56]",
            "model.path_sampling.mode=k_of_n", "model.path_sampling.k=20")


def test_a_stopped_training_continues_from_its_checkpoint(image_folder, tmp_path, capsys,
                                                          monkeypatch):
    """Run again, a study resumes the net a stop interrupted (the runner's hint said
    --resume, which tools/analyze.py refuses, and the rerun started that net over): its
    weights and curves end as an uninterrupted run's, for a stop between steps and one in the
    final evaluation (whose rerun had scored no training batch: 0 %)."""
    longer = ["solver.iterations=6", "train.evaluations=3"]
    whole = run("lesion", tmp_path / "whole", image_folder, *longer)
    losses, evaluate = training.StudyTask.losses, training.StudyTask.evaluate

    def signal_once(task):
        if not hasattr(task, "signalled"):
            task.signalled = True
            os.kill(os.getpid(), signal.SIGINT)

    stops = {"step 3": ("losses", lambda self, *a: (self.steps == 2 and signal_once(self))
                        or losses(self, *a)),
             # (a step an evaluation follows: its checkpoint, and that of the stop)
             "step 2": ("losses", lambda self, *a: (self.steps == 1 and signal_once(self))
                        or losses(self, *a)),
             "final evaluation": ("evaluate", lambda self, *a: (self.steps == 6 and
                                                                signal_once(self))
                                  or evaluate(self, *a)),
             # (after its last batch: the net finished, the study went on to the next)
             "after the final evaluation": ("evaluate", lambda self, *a: (
                 evaluate(self, *a), self.steps == 6 and signal_once(self))[0])}
    for name, (method, stopping) in stops.items():
        output = tmp_path / name.replace(" ", "_")
        with monkeypatch.context() as patch:
            patch.setattr(training.StudyTask, method, stopping)
            with pytest.raises(SystemExit) as exit_info:
                run("lesion", output, image_folder, *longer)
        assert exit_info.value.code == 130
        err = capsys.readouterr().err
        assert "continues the stopped one from its checkpoint" in err and "--resume" not in err
        # (the evaluation's checkpoint at iteration 2, and the stop's)
        stopped_at = max((output / "runs").glob("cifar_resnet20-*/model_*.pth"))
        # its checkpoint as --weights keeps the study's record: its image size is checked
        with pytest.raises(ConfigError, match=r"was trained on 8x8 px images, this run's are "
                                              r"12x12"):
            run("lesion", tmp_path / "w", image_folder, "data.image_size=12",
                weights=[stopped_at])
        again = run("lesion", output, image_folder, *longer)
        assert read_csv(again["csv"]) == read_csv(whole["csv"])
        for arch in ("cifar_resnet20", "plain_cifar_resnet20"):
            a = torch.load(saved(tmp_path / "whole", arch), weights_only=True)
            b = torch.load(saved(output, arch), weights_only=True)
            assert a["model"].keys() == b["model"].keys()
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
            assert a["history"] == b["history"] and a["history"]["iterations"] == [2, 4, 6]
    (log,) = (tmp_path / "final_evaluation/runs").glob("cifar_resnet20-*/log.txt")
    assert "resumed from" in log.read_text()  # (not trained anew: it was at its end)
    # a finished net deleted is trained again (its final checkpoint precedes the final
    # evaluation: it was taken for a stopped one and written back untrained)
    saved(tmp_path / "whole", "cifar_resnet20").unlink()
    run("lesion", tmp_path / "whole", image_folder, *longer)
    (log,) = (tmp_path / "whole/runs").glob("cifar_resnet20-*/log.txt")
    assert "resumed from" not in log.read_text()
    assert log.read_text().count("training for 6 iterations") == 2  # (the log is appended to)
    # a run stopped before its checkpoints recorded the study's state (an earlier version's)
    # trains anew; it was refused ("trained with train.optimizer=None")
    with monkeypatch.context() as patch:
        patch.setattr(training.StudyTask, "losses", stops["step 3"][1])
        with pytest.raises(SystemExit):
            run("lesion", tmp_path / "old", image_folder, *longer)
    stopped_at = max((tmp_path / "old/runs").glob("cifar_resnet20-*/model_*.pth"))
    checkpoint = torch.load(stopped_at, weights_only=True)
    checkpoint["provenance"]["config"] = checkpoint["provenance"].pop("study_config")
    del checkpoint["extra"]["task"]
    atomic_save(checkpoint, stopped_at, checksum=True)
    again = run("lesion", tmp_path / "old", image_folder, *longer)
    assert read_csv(again["csv"]) == read_csv(whole["csv"])
    # a run that ends without saving (killed, out of memory) continues from the checkpoint of
    # its last evaluation: none was written, and the rerun trained the net from its start
    def crash(self, *args):
        if self.steps == 3:
            raise RuntimeError("killed")
        return losses(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(training.StudyTask, "losses", crash)
        with pytest.raises(RuntimeError, match="killed"):
            run("lesion", tmp_path / "killed", image_folder, *longer)
    (written,) = (tmp_path / "killed/runs").glob("cifar_resnet20-*/model_*.pth")
    assert written.name == "model_0000002.pth"
    again = run("lesion", tmp_path / "killed", image_folder, *longer)
    assert read_csv(again["csv"]) == read_csv(whole["csv"])
    b = torch.load(saved(tmp_path / "killed", "cifar_resnet20"), weights_only=True)
    a = torch.load(saved(tmp_path / "whole", "cifar_resnet20"), weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the curves too: the checkpoint precedes its iteration's evaluation, which the log had
    # (so it was not run again: its point was lost, the next one's training error wrong)
    assert b["history"] == a["history"]


def test_weights_trained_at_another_image_size_are_refused(image_folder, tmp_path, caplog):
    """A net trained at 8 px analysed at 12 scored near chance without a word."""
    run("responses", tmp_path / "r", image_folder)
    plain = saved(tmp_path / "r", "plain_cifar_resnet20")
    with pytest.raises(ConfigError, match=r"plain_cifar_resnet20-\w+.pth was trained on 8x8 px "
                                          r"images, this run's are 12x12 \(data.image_size\): "
                                          r"set data.image_size=8"):
        run("lesion", tmp_path / "l", image_folder, "data.image_size=12", weights=[plain])
    # pretraining's classifier at another crop size: a 32 px one scored chance at 16, warned
    pretrained = torch.load(plain, weights_only=True)
    assert pretrained["provenance"]["config"]["task"] == "analyze"
    pretrained["provenance"]["config"]["task"] = "classification"
    torch.save(pretrained, tmp_path / "pretrained.pth")
    with pytest.raises(ConfigError, match=r"pretrained.pth was trained on 8x8 px crops "
                                          r"\(pretraining's\), this run's are 12x12 "
                                          r"\(data.image_size\): set data.image_size=8"):
        run("lesion", tmp_path / "p", image_folder, "data.image_size=12",
            weights=[tmp_path / "pretrained.pth"])
    # a bare state dict (no record) of a plain net: the warning says how to analyse it as one
    torch.save(torch.load(plain, weights_only=True)["model"], tmp_path / "bare.pth")
    run("lesion", tmp_path / "b", image_folder, weights=[tmp_path / "bare.pth"])
    assert any(r.getMessage().endswith("a plain net's weights load into a residual one too: "
                                       "for one, set model.family=plain_cifar_resnet")
               for r in caplog.records if r.levelno >= 30)


def test_two_weights_files_of_one_name_are_told_apart(image_folder, tmp_path):
    """Two runs' model_final.pth were both 'cifar_resnet20 (model_final.pth)' in every row."""
    run("responses", tmp_path / "r", image_folder)
    net = saved(tmp_path / "r", "cifar_resnet20")
    for run_dir in ("run_a", "run_b"):
        (tmp_path / run_dir).mkdir()
        shutil.copy(net, tmp_path / run_dir / "model_final.pth")
    written = run("responses", tmp_path / "two", image_folder,
                  weights=[tmp_path / "run_a/model_final.pth", tmp_path / "run_b/model_final.pth"])
    assert sorted({r["model"] for r in read_csv(written["csv"])}) == [
        "cifar_resnet20 (run_a/model_final.pth)", "cifar_resnet20 (run_b/model_final.pth)"]
    for parent in ("x", "y"):  # folders of one name too: the paths as given
        (tmp_path / parent / "run").mkdir(parents=True)
        shutil.copy(net, tmp_path / parent / "run/model_final.pth")
    given = [tmp_path / "x/run/model_final.pth", tmp_path / "y/run/model_final.pth"]
    written = run("responses", tmp_path / "three", image_folder, weights=given)
    assert sorted({r["model"] for r in read_csv(written["csv"])}) == [
        f"cifar_resnet20 ({path})" for path in given]


def test_solver_iterations_under_a_study_length_is_warned_of(image_folder, tmp_path, caplog):
    """The default config's degradation.iterations (250) won over solver.iterations=10
    without a word."""
    config = tmp_path / "study.yaml"
    config.write_text(f"_base_: {ROOT / 'configs/analyze/cifar_synthetic.yaml'}\n"
                      f"degradation:\n  iterations: 2\n", encoding="utf-8")
    tiny = [o for o in TINY if not o.startswith("degradation.iterations=")]
    analyze.main(["degradation", "--config", str(config), "--output", str(tmp_path / "d"),
                  f"data.root={image_folder}", *tiny, "degradation.depths=[20]",
                  "solver.iterations=3", "solver.warmup_iters=5"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert ("solver.iterations=3 is not used: degradation.iterations=2 (the config's) sets the "
            "length of this study's nets; set degradation.iterations=3") in warnings
    # named as the study's keys (train.warmup_iters is no key of tools/analyze.py)
    assert ("solver.warmup_iters is 5 iterations, the whole run is 2: the lr climbs for the "
            "whole run and never reaches solver.base_lr; shorten it (e.g. solver.warmup_iters "
            "of a tenth of the run)") in warnings


def test_cifar_batches_of_floats_or_unknown_labels_are_named(tmp_path):
    """Floats were cast to uint8 (300.7 became 44, 0..1 black); a label past the classes
    was 'labels in ROOT must lie in 0..9', naming neither the file nor the label."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"x", b"y"]}, f)
    rng = np.random.default_rng(0)

    def write(data, labels):
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(root / name, "wb") as f:
                pickle.dump({b"data": data, b"labels": labels}, f)

    write(rng.random((4, 3072)), [0, 1, 0, 1])
    with pytest.raises(DatasetError, match=r"data_batch_1: data must be pixel values 0..255 "
                                           r"\(uint8, as CIFAR's batches hold them\), got "
                                           r"float64 0\.0"):
        run("lesion", tmp_path / "c", root)
    write(np.full((4, 3072), 300), [0, 1, 0, 1])
    with pytest.raises(DatasetError, match=r"got int64 300..300"):
        run("lesion", tmp_path / "c", root)
    write(rng.integers(0, 256, (4, 3072)).tolist(), [0, 1, 0, 1])  # lists of ints: read
    run("lesion", tmp_path / "c", root, "lesion.draws=1")
    write(rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 12, 1])
    with pytest.raises(DatasetError, match=r"data_batch_1: label 12 is not a class of .*"
                                           r"batches.meta \(labels lie in 0..1: 2 label_names\)"):
        run("lesion", tmp_path / "c", root)


def test_the_degradation_title_says_how_the_residual_nets_were_sampled(image_folder, tmp_path):
    """Only the JSON's config said the residual twins trained with stochastic depth or k of n."""
    for overrides, said in ((["model.path_sampling.mode=k_of_n", "model.path_sampling.k=5"],
                             "(residual: 5 of n branches)"),
                            (["model.path_sampling.mode=drop_path",
                              "model.path_sampling.rate=0.5"],
                             "(residual: drop_path 0.5 linear)"),
                            ([], "")):
        written = run("degradation", tmp_path / str(len(said)), image_folder,
                      "degradation.depths=[20]", *overrides)
        title = json.loads(written["json"].read_text())["title"]
        assert title.split("\n")[0] == ("Degradation: plain (dashed) vs residual (solid) "
                                        f"cifar_resnet depths 20, 2 iterations{' ' * bool(said)}"
                                        f"{said}")


def test_a_failed_evaluation_says_how_a_study_continues(image_folder, tmp_path, monkeypatch,
                                                        caplog):
    """The runner's save before the error said "run the same command with --resume", which
    tools/analyze.py refuses."""
    evaluate = training.StudyTask.evaluate

    def failing(self, *args):
        if self.steps == 4:
            raise RuntimeError("a broken evaluation")
        return evaluate(self, *args)

    monkeypatch.setattr(training.StudyTask, "evaluate", failing)
    with pytest.raises(RuntimeError, match="a broken evaluation"):
        run("lesion", tmp_path, image_folder, "solver.iterations=6", "train.evaluations=3")
    said = [r.getMessage() for r in caplog.records if "steps done" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(
        "model_0000004.pth: fix what stopped it, then the same command continues from it")
