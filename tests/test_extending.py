"""docs/extending.md, run as written: a registered ResNet variant through the tools and the
Predictor, and a task of one's own through tools/train.py, each named by a config's
custom_imports."""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from resnet_detect import backbones
from resnet_detect.backbones import registry
from resnet_detect.detection import Predictor
from resnet_detect.engine import cli, tasks
from resnet_detect.engine.config import ArgumentError, ConfigError
from resnet_detect.engine.custom_imports import (REGISTERED_BY, import_custom_modules,
                                                 record_registering_modules)
from resnet_detect.engine.runner import run_training
from tests.torchrun import run_two_processes
from tests.tools.test_runner_tasks import _RegressionTask, _toy_config
from tests.tools.test_train_eval_demo import data, data_overrides, load_tool

__all__ = ["data"]
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/extending.md"
MODULES = ("my_backbones", "my_tasks")


def _doc_blocks() -> tuple[dict[str, str], list[list[str]]]:
    """({file name: text} of the page's named blocks, the tools/train.py arguments of its
    commands)."""
    text = DOC.read_text()
    files = {name: body for name, body in re.findall(r"```(?:python|yaml) (\S+)\n(.*?)```", text,
                                                     flags=re.S)}
    commands = [shlex.split(line) for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in body.splitlines()]
    return files, commands


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's files in a folder of their own, the working directory; the registries and
    modules put back afterwards."""
    files, _ = _doc_blocks()
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    with registries_kept():
        yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


REGISTRIES = (registry._REGISTRY, tasks.TASK_MODULES, tasks.READERS, REGISTERED_BY)


@contextlib.contextmanager
def registries_kept() -> Iterator[None]:
    """The registries as they were afterwards (changed in place: the tools' modules hold
    them by name)."""
    saved = [dict(names) for names in REGISTRIES]
    try:
        yield
    finally:
        for names, kept in zip(REGISTRIES, saved):
            names.clear()
            names.update(kept)


def _forget_the_modules() -> None:
    """As a new process: the modules not imported, their names not registered."""
    for name in MODULES:
        sys.modules.pop(name, None)
    registry._REGISTRY.pop("resnet26", None)
    tasks.TASK_MODULES.pop("line_fit", None)
    REGISTERED_BY.clear()


def test_the_pages_files_and_commands() -> None:
    files, commands = _doc_blocks()
    assert set(files) == {"my_backbones.py", "faster_rcnn_R_26_FPN.yaml", "my_tasks.py",
                          "line_fit_base.yaml", "line_fit.yaml", "my_hooks.py",
                          "line_fit_hooked.yaml"}
    assert commands == [
        ["python", "-m", "resnet_detect", "train", "faster_rcnn_R_26_FPN.yaml",
         "train.output_dir=output/r26"],
        ["python", "-m", "resnet_detect", "train", "line_fit.yaml"],
        ["python", "-m", "resnet_detect", "train", "line_fit_hooked.yaml"]]


@pytest.mark.slow
def test_a_registered_backbone_trains_a_detector_and_its_weights_load_in_a_new_process(
        project: Path, data: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    args = ["faster_rcnn_R_26_FPN.yaml", "train.output_dir=output/r26", *data_overrides(data),
            "train.max_iter=2"]
    # the module beside the config is not on Python's path (a tool run as a file): said how
    with pytest.raises(ConfigError, match=r"custom_imports of /\S+/faster_rcnn_R_26_FPN.yaml: no "
                       r"module 'my_backbones' can be imported .*\./my_backbones.py is in this "
                       r"folder.*PYTHONPATH=\."):
        load_tool("train").main(args)
    monkeypatch.syspath_prepend(str(project))  # PYTHONPATH=.
    result = load_tool("train").main(args)
    assert "resnet26" in backbones.list_models()
    # timm's resnet26 is the same network: its parameter count, and its features from its
    # weights
    ours = backbones.build("resnet26", out_features=["res5"])
    reference = timm.create_model("resnet26", pretrained=False, num_classes=0).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()) == 13_946_176
    ours = backbones.build("resnet26", weights=reference.state_dict(),
                           out_features=["res5"]).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(image)["res5"], reference.forward_features(image),
                                   rtol=0, atol=1e-5)
    trained = project / "output/r26/model_final.pth"
    assert torch.load(trained, weights_only=True)["provenance"]["config"]["custom_imports"] \
        == ["my_backbones"]
    # a new process given the weights alone imports the module their config names
    _forget_the_modules()
    assert "resnet26" not in backbones.list_models()
    predictor = Predictor(weights=trained)
    assert "resnet26" in backbones.list_models()
    state = result["model"].state_dict()
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    importlib.reload(sys.modules["my_backbones"])  # (a notebook's) registers it again
    # and so does the file under another module name (a package's and its folder's)
    spec = importlib.util.spec_from_file_location("myproject.my_backbones",
                                                  project / "my_backbones.py")
    again = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, again)
    spec.loader.exec_module(again)
    # a config naming it so is not given the other name too
    named = OmegaConf.create({"custom_imports": [spec.name],
                              "model": {"backbone": {"name": "resnet26"}}})
    record_registering_modules(named)
    assert named.custom_imports == [spec.name]
    # a run that names the backbone without its module (imported by the caller) records it
    load_tool("train").main([*args, "custom_imports=None", "train.output_dir=output/r26b"])
    assert torch.load(project / "output/r26b/model_final.pth", weights_only=True)[
        "provenance"]["config"]["custom_imports"] == ["my_backbones"]
    # tools/model_info.py counts it, told the module
    _forget_the_modules()
    load_tool("model_info").main(["resnet26", "custom_imports=[my_backbones]"])
    # timm's count and a 1000-class layer (2048 x 1000 + 1000)
    assert re.search(r"\ntotal +15,995,176 ", capsys.readouterr().out)
    # where it cannot be imported, the weights' config is named, and a config given too
    _forget_the_modules()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=r"custom_imports of the checkpoint's config: no module "
                                          r"'my_backbones'.*add its folder to PYTHONPATH"):
        Predictor(weights=trained)
    with pytest.raises(ConfigError, match=r"custom_imports of .*faster_rcnn_R_26_FPN.yaml: no "
                                          r"module 'my_backbones'"):
        Predictor(config=project / "faster_rcnn_R_26_FPN.yaml", weights=trained)
    # a config that names the backbone without its module
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet26'; valid: .* \(one of your "
                                          r"own: its module, which calls register_backbone, in "
                                          r"the config's custom_imports\)"):
        Predictor(config=ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml", weights=trained,
                  overrides=["model.backbone.name=resnet26"])


@pytest.mark.slow
def test_a_registered_task_trains_through_the_tool_and_keeps_its_lowest_error(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    # the page's command, as written: `python -m` finds my_tasks.py in the working folder
    _, commands = _doc_blocks()
    assert commands[1] == ["python", "-m", "resnet_detect", "train", "line_fit.yaml"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, *commands[1][1:]], cwd=project, capture_output=True,
                         text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    monkeypatch.syspath_prepend(str(project))
    with caplog.at_level(logging.WARNING):
        load_tool("train").main(["line_fit.yaml", "train.optimizer=sgd", "train.max_iter=2",
                                 "train.output_dir=output/sgd"])
    # (base_train.yaml's rate, 0.02 for 16 images with SGD, is no recipe of this task's)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    out = project / "output/line_fit"
    errors = [line["line_fit/mse"] for line in map(json.loads, (out / "scalars.jsonl")
                                                   .read_text().splitlines())
              if "line_fit/mse" in line]
    assert len(errors) == 4 and min(errors) < errors[0] / 4  # it learns the line
    # the lowest error is kept, that of an evaluation before the last (not the first's)
    lowest = errors.index(min(errors))
    assert 0 < lowest < 3
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["best"] == {"metric": "line_fit/mse", "value": pytest.approx(min(errors)),
                            "mode": "min"}
    assert best["iteration"] == 10 * (1 + lowest)
    assert run.stdout.strip().endswith(f"val mse = {errors[-1]:.4f}")
    # the keys of the shared train section are checked as for every task; its own too
    with pytest.raises(ConfigError, match=r"unknown train.best_metric_mode 'lowest'; valid: "
                                          r"max, min"):
        load_tool("train").main(["line_fit.yaml", "train.best_metric_mode=lowest"])
    with pytest.raises(ConfigError, match=r"data.val_point"):
        load_tool("train").main(["line_fit.yaml", "data.val_point=3"])
    # its checkpoints record its config: a resume with another length names it
    load_tool("train").main(["line_fit.yaml", "train.max_iter=50", "--resume"])
    log = (out / "log.txt").read_text()
    assert "with train settings other than the run that wrote it (they apply from iteration " \
           "40): train.max_iter: 40 -> 50" in log and "records no config" not in log
    # custom_imports as an override, and what cannot be read of it
    with pytest.raises(ConfigError, match=r"unknown task 'line_fit'; valid: detection, sem_seg, "
                                          r"classification \(a task of your own: its module in "
                                          r"the config's custom_imports\)"):
        _forget_the_modules()
        load_tool("train").main(["line_fit.yaml", "custom_imports=None"])
    with pytest.raises(ConfigError, match=r"cannot parse override 'custom_imports=\[my_tasks'"):
        load_tool("train").main(["line_fit.yaml", "custom_imports=[my_tasks"])
    monkeypatch.delenv("RD_UNSET_MODULE", raising=False)
    (project / "env.yaml").write_text("_base_: line_fit.yaml\n"
                                      "custom_imports: ['${oc.env:RD_UNSET_MODULE}']\n")
    with pytest.raises(ConfigError, match=r"custom_imports of .*env.yaml: .*RD_UNSET_MODULE"):
        load_tool("train").main(["env.yaml"])
    with pytest.raises(ConfigError, match=r"tools/model_info.py counts classification, "
                                          r"detection, sem_seg models; line_fit.yaml is a "
                                          r"'line_fit' config"):
        load_tool("model_info").main(["line_fit.yaml"])
    # the page's hook, named by its config, prints every 10 steps' loss
    capsys.readouterr()
    losses: list[float] = []

    class Recording:
        def after_step(self, trainer: Any) -> None:
            losses.append(float(sum(trainer.loss_dict.values())))
    monkeypatch.setattr(cli, "run_training", functools.partial(cli.run_training,
                                                                hooks=[Recording()]))
    load_tool("train").main(["line_fit_hooked.yaml"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert printed == [f"step {i}: loss {losses[i - 1]:.4f}" for i in (10, 20, 30, 40)]
    # what the config gives them is checked before training
    for hooks, message in (
            ("[{type: my_hooks.PrintLos}]", r"train.hooks\[0\]: module my_hooks has no class "
                                            r"'PrintLos'"),
            ("[{type: my_hook.PrintLoss}]", r"train.hooks\[0\] my_hook.PrintLoss: no module "
                                            r"'my_hook'"),
            ("[{type: my_hooks.PrintLoss, each: 3}]",
             r"train.hooks\[0\]: my_hooks.PrintLoss\(each=3\): .*unexpected keyword"),
            ("[PrintLoss]", r"train.hooks\[0\] must be a mapping with type: module.Class"),
            ("[{type: os.getcwd}]", r"train.hooks\[0\]: os.getcwd has none of before_train, "
                                    r"after_step, after_train")):
        with pytest.raises(ConfigError, match=message):
            load_tool("train").main(["line_fit_hooked.yaml", f"train.hooks={hooks}"])
    with pytest.raises(ConfigError, match=r"module my_hooks has no class 'PrintLos'"):
        load_tool("train").main(["line_fit_hooked.yaml", "train.hooks=[{type: "
                                 "my_hooks.PrintLos}]", "--print-config"])


@pytest.mark.slow
def test_the_task_in_two_processes_scores_the_whole_val_split(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(project), str(ROOT)]))
    log = run_two_processes("train", [str(project / "line_fit.yaml"), "train.device=cpu",
                                      f"train.output_dir={project / 'ddp'}"], project)
    weights = [torch.load(project / f"ddp/rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # its summed error is the final weights' over the 16 val points in one process
    monkeypatch.syspath_prepend(str(project))
    val = importlib.import_module("my_tasks").NoisyLine(16, seed=1)
    model = torch.nn.Linear(1, 1)
    model.load_state_dict(weights[0])
    with torch.no_grad():
        error = float(((model(val.x) - val.y) ** 2).mean())
    assert f"val mse = {error:.4f}" in log


@registries_kept()
def test_names_of_this_projects_backbones_and_tasks_are_not_taken() -> None:
    with pytest.raises(ArgumentError, match=r"backbone 'resnet50' is registered already \(one "
                                            r"of this project's\): give yours another name"):
        backbones.register_backbone("resnet50")(lambda **options: None)
    with pytest.raises(ConfigError, match=r"task 'detection' is registered already, by "
                                          r"resnet_detect.detection.training"):
        tasks.register_task("detection", "my_tasks")
    tasks.register_task("mine", __name__)
    tasks.register_task("mine", __name__)  # (a module imported again: the same)
    # a module that cannot be imported is named at once, not when a config names the task
    with pytest.raises(ConfigError, match=r"register_task\('mine2', 'my_taks'\): no module "
                                          r"'my_taks' can be imported"):
        tasks.register_task("mine2", "my_taks")
    with pytest.raises(ConfigError, match=r"custom_imports of x.yaml must be a list of module "
                                          r"names"):
        import_custom_modules("my_tasks", "x.yaml")


def test_a_python_callers_custom_imports_and_a_study_config_are_told(tmp_path: Path) -> None:
    cfg = _toy_config(tmp_path)
    cfg.custom_imports = "other_module"  # (a string: not read as its letters)
    with pytest.raises(ConfigError, match=r"custom_imports of the config must be a list of "
                                          r"module names, e.g. \[my_project.backbones\], got "
                                          r"'other_module'"):
        run_training(_RegressionTask(), cfg, "cpu")
    with pytest.raises(ConfigError, match=r"a study config \(task: analyze\) is run by "
                                          r"tools/analyze.py"):
        load_tool("model_info").main([str(ROOT / "configs/analyze/cifar10.yaml")])


@registries_kept()
def test_what_a_registration_needs_is_said(caplog: pytest.LogCaptureFixture, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def not_a_resnet(**options: object) -> torch.nn.Module:
        return torch.nn.Linear(1, 1)

    backbones.register_backbone("linear")(not_a_resnet)
    with pytest.raises(ArgumentError, match=r"backbone 'linear': .*not_a_resnet returned a "
                                            r"Linear, not a backbones.ResNet \(or a subclass"):
        backbones.build("linear")
    with pytest.raises(ConfigError, match=r"no module 'my_backbones.py' .*custom_imports names "
                                          r"modules as `import` does: my_backbones, not a file"):
        import_custom_modules(["my_backbones.py"], "x.yaml")
    # the resnet-detect command (a console script) does not search the working folder either:
    # it was "a tool run as a file" alone, where `python -m` found the module
    (tmp_path / "my_own_backbones.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"./my_own_backbones.py is in this folder, which "
                                          r"Python searches for `python -m resnet_detect` "
                                          r"alone, not for a tool run as a file nor the "
                                          r"resnet-detect command: run with PYTHONPATH=."):
        import_custom_modules(["my_own_backbones"], "x.yaml")
    # a backbone registered by an importable module's body is recorded in the run's config
    # (below); one registered by the script run is warned of (no tool can import a script)
    cfg = OmegaConf.create({"task": "detection", "custom_imports": None,
                            "model": {"backbone": {"name": "in_a_script"}}})
    # what registers it is the module calling register_backbone, not the one defining the
    # builder (a factory's, functools.partial's)
    script = {"__name__": "__main__", "register_backbone": backbones.register_backbone,
              "partial": functools.partial, "ResNet": backbones.ResNet}
    cell = ('register_backbone("in_a_script")(partial(ResNet, stage_blocks=(1, 1, 1, 1), '
            'stage_planes=(8, 16, 32, 64), block="basic"))')
    exec(cell, script)
    exec(cell, script)  # (a notebook's cell run again: the name registered again)
    with caplog.at_level(logging.WARNING):
        record_registering_modules(cfg)
    assert cfg.custom_imports is None
    assert "model.backbone.name 'in_a_script': the backbone is registered by the script run, " \
           "which the tools given this run's weights cannot import" in caplog.text
    # a factory that registers for its caller: the caller is what registered it
    (tmp_path / "rfactory.py").write_text(
        "from resnet_detect.backbones import ResNet, register_backbone\n\n\n"
        "def make_and_register(name, blocks):\n"
        "    @register_backbone(name)\n"
        "    def build(**options):\n"
        "        return ResNet(stage_blocks=blocks, stage_planes=(8, 16, 32, 64), "
        "block='basic', **options)\n")
    for user, blocks in (("ruser_a", (1, 1, 1, 1)), ("ruser_b", (2, 2, 2, 2))):
        (tmp_path / f"{user}.py").write_text(
            f"from rfactory import make_and_register\nmake_and_register('mine', {blocks})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("ruser_a")
    assert REGISTERED_BY["backbone", "mine"] == "ruser_a"
    cfg.model.backbone.name = "mine"
    record_registering_modules(cfg)
    assert cfg.custom_imports == ["ruser_a"]
    with pytest.raises(ArgumentError, match=r"backbone 'mine' is registered already \(by "
                                            r"ruser_a\)"):
        importlib.import_module("ruser_b")
    for name in ("rfactory", "ruser_a", "ruser_b"):
        sys.modules.pop(name, None)
    # another module may not take a name (a module's body of its own: called from here, the
    # nearest module body is pytest's own __main__ where pytest runs without xdist)
    with pytest.raises(ArgumentError, match=r"backbone 'in_a_script' is registered already "
                                            r"\(by __main__\): give yours another name"):
        exec(cell, {**script, "__name__": "another_module"})
