"""tools/plot_curves.py: a run's scalars.jsonl as curves (mmdetection's plot_curve)."""
import importlib.util
import json
import logging
from pathlib import Path

import pytest

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.curves import default_keys, read_curves

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("plot_curves_tool", ROOT / "tools/plot_curves.py")
plot_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_curves)


def _run(folder: Path, lines: list[dict], tail: str = "") -> Path:
    folder.mkdir()
    (folder / "scalars.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + tail)
    return folder


def test_curves_are_read_as_logged_and_a_cut_line_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _run(tmp_path / "a", [
        {"iteration": 20, "train/total_loss": 2.5, "train/lr": 0.01},
        {"iteration": 40, "train/total_loss": 1.5, "train/lr": 0.02},
        {"iteration": 40, "segm/AP": 0.1, "bbox/AP": 0.2},
        {"iteration": 60, "train/total_loss": 1.0, "train/lr": 0.02}],
        tail='{"iteration": 80, "train/total_lo')  # killed while writing
    with caplog.at_level(logging.WARNING):
        curves = read_curves(run)
    assert curves["train/total_loss"] == ([20, 40, 60], [2.5, 1.5, 1.0])
    assert curves["bbox/AP"] == ([40], [0.2]) and set(curves) == {
        "train/total_loss", "train/lr", "segm/AP", "bbox/AP"}
    assert "scalars.jsonl line 5 is not a logged step: skipped" in caplog.text
    assert default_keys(curves) == ["train/total_loss", "bbox/AP"]  # box AP before mask AP
    # a line of undecodable bytes (a damaged disk) is skipped too, not a traceback
    with (run / "scalars.jsonl").open("ab") as f:
        f.write(b"\n\xff\xfe\x80garbage\n" + json.dumps({"iteration": 90, "train/lr": 0.5}
                                                         ).encode() + b"\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_curves(run)["train/lr"] == ([20, 40, 60, 90], [0.01, 0.02, 0.02, 0.5])
    assert "scalars.jsonl line 6 is not a logged step: skipped" in caplog.text


def test_steps_out_of_order_or_logged_twice_are_drawn_in_order_the_last_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files joined by hand (or another tool's) drew their curve backwards, zig-zagging like
    a loss spike that never happened, without a word; a study's run drew its loss alone."""
    run = _run(tmp_path / "a", [
        {"iteration": 1, "train/total_loss": 4.0}, {"iteration": 2, "train/total_loss": 3.0},
        {"iteration": 3, "train/total_loss": 2.0}, {"iteration": 2, "train/total_loss": 3.5},
        {"iteration": 5, "bbox/AP": 0.4}, {"iteration": 2, "bbox/AP": 0.1},
        {"iteration": 4, "errors/val_error": 30.0},
        # a later undefined value of an iteration: the earlier one was kept
        {"iteration": 2, "bbox/APl": 0.3}, {"iteration": 4, "bbox/APl": 0.5},
        {"iteration": 2, "bbox/APl": None}])
    with caplog.at_level(logging.WARNING):
        curves = read_curves(run)
    assert curves["train/total_loss"] == ([1, 2, 3], [4.0, 3.5, 2.0])  # the later line's
    assert curves["bbox/AP"] == ([2, 5], [0.1, 0.4])
    assert curves["bbox/APl"] == ([4], [0.5])
    assert "scalars.jsonl: logged steps out of iteration order or logged twice" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        curves = read_curves(_run(tmp_path / "study", [
            {"iteration": 10, "train/total_loss": 2.0, "errors/train_error": 50.0},
            {"iteration": 10, "errors/val_error": 60.0}]))
    assert caplog.text == ""  # (the same iteration in two lines, keys apart: in order)
    assert default_keys(curves) == ["train/total_loss", "errors/val_error"]


def test_the_tool_draws_each_key_of_each_run_and_names_unknown_keys(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [{"iteration": 10, "train/total_loss": 1.0},
                              {"iteration": 10, "sem_seg/mIoU": 0.3}])
    b = _run(tmp_path / "b", [{"iteration": 10, "train/total_loss": 0.8}])
    written = plot_curves.main([str(a), str(b / "scalars.jsonl")])
    assert written == a / "curves.png" and written.read_bytes()[:4] == b"\x89PNG"
    other = plot_curves.main([str(a), "--keys", "sem_seg/mIoU", "--output",
                              str(tmp_path / "out/miou.png")])
    assert other.is_file() and sorted(p.name for p in other.parent.iterdir()) == ["miou.png"]
    # mmdetection's analyze_logs.py --out losses.pdf: --out was taken for --output and the
    # PDF held PNG bytes
    pdf = plot_curves.main([str(a), "--output", str(tmp_path / "out/losses.pdf")])
    assert pdf.read_bytes()[:4] == b"%PDF"
    for argv in (["--out", str(tmp_path / "x.pdf")], ["--output", str(tmp_path / "x")]):
        with pytest.raises(SystemExit):
            plot_curves.main([str(a), *argv])
    with pytest.raises(ConfigError, match=r"no run logged bbox/AP; logged: sem_seg/mIoU, "
                                          r"train/total_loss"):
        plot_curves.main([str(a), str(b), "--keys", "bbox/AP"])
    with pytest.raises(ConfigError, match=r"no run logged sem_seg/IoU-sky \(a class's AP or IoU "
                                          r"is logged where it is defined: a class without val "
                                          r"objects or pixels has none\); logged: "):
        plot_curves.main([str(a), "--keys", "sem_seg/IoU-sky"])
    with pytest.raises(ConfigError, match=r"none not found: a run folder of tools/train.py or "
                                          r"tools/pretrain.py holds its scalars.jsonl"):
        plot_curves.main([str(tmp_path / "none")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty/scalars.jsonl not found"):
        plot_curves.main([str(tmp_path / "empty")])
    (tmp_path / "old/tensorboard").mkdir(parents=True)  # an older version's run
    with pytest.raises(ConfigError, match=r"old/scalars.jsonl not found: .*old is a run of a "
                                          r"version from before scalars.jsonl \(2026-12-02\): "
                                          r"its curves are in its tensorboard/"):
        plot_curves.main([str(tmp_path / "old")])


def test_a_run_that_logged_no_step_yet_is_said_so_and_the_others_are_drawn(
        tmp_path: Path) -> None:
    """A run that had not reached its first progress line was called a run of an older
    version (its scalars.jsonl not written yet), and failed the plot of the runs beside it:
    the runner now writes the file empty at the start."""
    from resnet_detect.engine.logging import ScalarWriter
    a = _run(tmp_path / "a", [{"iteration": 10, "train/total_loss": 1.0}])
    (tmp_path / "new").mkdir()
    ScalarWriter(tmp_path / "new/tensorboard", tmp_path / "new/scalars.jsonl").close()
    assert plot_curves.main([str(a), str(tmp_path / "new")]).is_file()
    with pytest.raises(ConfigError, match=r"nothing to plot; logged: nothing \(.*new: no step "
                                          r"logged yet; a run logs its first after "
                                          r"train.log_period iterations\)"):
        plot_curves.main([str(tmp_path / "new")])


def test_the_curves_set_aside_by_a_fresh_run_are_pointed_to(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fresh run killed in a finished run's folder: its few steps were drawn without a word
    of the finished run's curves waiting in .replaced_run/."""
    run = _run(tmp_path / "run", [{"iteration": 2, "train/total_loss": 1.0}])
    (run / ".replaced_run").mkdir()
    (run / ".replaced_run/scalars.jsonl").write_text('{"iteration": 90, "bbox/AP": 40.0}\n')
    with caplog.at_level(logging.WARNING):
        plot_curves.main([str(run)])
    assert (f"{run / '.replaced_run'} holds the curves of the run this one started afresh "
            f"over") in caplog.text


def test_a_key_logged_undefined_at_every_evaluation_is_said_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    """bbox/APl is null (NaN) where no val object is large: `--keys bbox/APl` said "no run
    logged bbox/APl" although every evaluation line has it."""
    run = _run(tmp_path / "run", [{"iteration": 2, "train/total_loss": 0.0},
                                  {"iteration": 2, "bbox/AP": 0.0, "bbox/APl": None},
                                  {"iteration": 4, "bbox/AP": 1.5, "bbox/APl": None}])
    assert read_curves(run)["bbox/APl"] == ([], [])
    assert plot_curves.main([str(run), "--keys", "bbox/AP", "train/total_loss"]).is_file()
    with pytest.raises(ConfigError, match=r"^bbox/APl: logged undefined \(null: NaN, e.g. an AP "
                                          r"of a size no val object has\) at every evaluation"):
        plot_curves.main([str(run), "--keys", "bbox/APl"])
    # beside keys with points: those drawn, it named (the plot failed for all of them)
    with caplog.at_level(logging.WARNING):
        plot_curves.main([str(run), "--keys", "bbox/APl", "bbox/AP", "--output",
                          str(tmp_path / "two.png")])
    assert "bbox/APl: logged undefined (null: NaN, e.g. an AP of a size no val object has) at " \
           "every evaluation: not drawn" in caplog.text
    assert "wrote " + str(tmp_path / "two.png") + ": bbox/AP\n" in capsys.readouterr().out
