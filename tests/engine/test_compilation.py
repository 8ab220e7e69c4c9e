"""engine.compilation: `train.compile` / `test.compile` values, what gets compiled, the eager
fallback."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_detect.engine import compilation
from resnet_detect.engine.compilation import compile_model, parse_compile, parse_compile_mode
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.runner import run_training
from resnet_detect.segmentation.model import SemanticSegmentor
from tests.tools.test_runner_tasks import _RegressionTask, _toy_config

CPU = torch.device("cpu")


def test_compile_values_and_bad_ones_name_the_key() -> None:
    assert parse_compile(False) is None and parse_compile(None) is None
    assert parse_compile(True) == "inductor" and parse_compile("eager") == "eager"
    for bad in ("inductr", 3, ["inductor"]):
        with pytest.raises(ValueError, match=r"train.compile must be false, true or a "
                                             r"torch.compile backend \(.*inductor.*\), got"):
            parse_compile(bad)


class _Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)


def test_the_backbone_alone_is_compiled_and_the_state_dict_keys_stay() -> None:
    model = _Detector()
    keys = list(model.state_dict())
    compile_model(model, "eager", CPU)
    assert model.backbone._compiled_call_impl is not None
    assert model.head._compiled_call_impl is None and model._compiled_call_impl is None
    assert list(model.state_dict()) == keys
    whole = compile_model(nn.Linear(2, 2), "eager", CPU)  # no backbone: the whole model
    assert whole._compiled_call_impl is not None


@pytest.mark.parametrize("aux", [False, True])
def test_a_segmentor_compiles_its_heads_too_and_skips_a_missing_one(
        aux: bool, caplog: pytest.LogCaptureFixture) -> None:
    class Segmentor(_Detector):
        compiled_parts = SemanticSegmentor.compiled_parts

    model = Segmentor()
    model.aux_head = nn.Linear(4, 2) if aux else None
    with caplog.at_level(logging.INFO):
        compile_model(model, "eager", CPU)
    assert model.backbone._compiled_call_impl is not None
    assert model.head._compiled_call_impl is not None and model._compiled_call_impl is None
    assert not aux or model.aux_head._compiled_call_impl is not None
    assert ("train.compile: the backbone, the head and the aux_head compiled" if aux
            else "train.compile: the backbone and the head compiled") in caplog.text


def test_without_a_compiler_training_goes_on_eager_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    model = _Detector()
    with caplog.at_level(logging.WARNING):
        compile_model(model, "inductor", CPU)
    assert model.backbone._compiled_call_impl is None
    assert "train.compile=inductor: inductor needs a C++ compiler on a CPU" in caplog.text


def test_a_compiled_run_ends_with_the_weights_of_the_eager_run(tmp_path: Path) -> None:
    runs = {}
    for backend in (False, "eager"):
        cfg = _toy_config(tmp_path / str(backend))
        cfg.train.compile = backend
        runs[backend] = run_training(_RegressionTask(), cfg, CPU)["model"]
    assert runs["eager"]._compiled_call_impl is not None  # the runner compiled it
    eager, compiled = runs[False].state_dict(), runs["eager"].state_dict()
    assert list(eager) == list(compiled)
    for key, value in eager.items():
        assert torch.equal(value, compiled[key]), key


def test_a_bad_compile_value_fails_before_anything_is_written(tmp_path: Path) -> None:
    cfg = _toy_config(tmp_path / "out")
    cfg.train.compile = "fastest"
    with pytest.raises(ValueError, match="train.compile must be"):
        run_training(_RegressionTask(), cfg, CPU)
    assert not (tmp_path / "out").exists()


def test_compile_modes_and_bad_ones_name_the_key() -> None:
    assert parse_compile_mode("default", None) is None and parse_compile_mode(None, "eager") is None
    assert parse_compile_mode("reduce-overhead", "inductor") == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"test.compile_mode must be one of default, "
                                          r"reduce-overhead, .*, got 'cudagraphs'"):
        parse_compile_mode("cudagraphs", "inductor")
    # without compilation the mode was ignored; the other backends take no mode
    with pytest.raises(ConfigError, match=r"test.compile_mode=reduce-overhead needs "
                                          r"test.compile: true \(inductor\), got test.compile: "
                                          r"false"):
        parse_compile_mode("reduce-overhead", None)
    with pytest.raises(ConfigError, match="got test.compile: aot_eager"):
        parse_compile_mode("max-autotune", "aot_eager")


def test_the_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = {}
    model = _Detector()
    monkeypatch.setattr(model.backbone, "compile", lambda **kwargs: asked.update(kwargs))
    compile_model(model, "inductor", CPU, key="test.compile", mode="reduce-overhead")
    assert asked == {"backend": "inductor", "mode": "reduce-overhead"}



def test_testing_backends_are_refused_and_missing_compilers_leave_the_model_eager(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """tvm and openxla passed the check and failed at the first call with a traceback (their
    packages are imported then); dynamo's testing backends were listed as choices."""
    with pytest.raises(ConfigError, match=r"got 'relu_compile_error_TESTING_ONLY'") as error:
        parse_compile("relu_compile_error_TESTING_ONLY", "test.compile")
    assert "TESTING_ONLY" not in str(error.value).split("(")[1].split(")")[0]
    assert parse_compile("tvm", "test.compile") == "tvm"  # a real backend, if installed
    monkeypatch.setattr(compilation.importlib.util, "find_spec", lambda name: None)
    model = _Detector()
    with caplog.at_level(logging.WARNING):
        compile_model(model, "tvm", CPU, key="test.compile")
        compile_model(model, "cudagraphs", CPU, key="test.compile")
    assert model.backbone._compiled_call_impl is None
    assert "test.compile=tvm: tvm needs the tvm package and it is not installed" in caplog.text
    assert "test.compile=cudagraphs: cudagraphs needs a GPU; running eager" in caplog.text


def test_cuda_graph_modes_on_a_cpu_say_they_compile_without_them(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model = _Detector()
    monkeypatch.setattr(model.backbone, "compile", lambda **kwargs: None)
    with caplog.at_level(logging.WARNING):
        compile_model(model, "inductor", CPU, key="test.compile", mode="reduce-overhead")
    assert ("test.compile_mode=reduce-overhead: its CUDA graphs need a GPU; compiled without "
            "them") in caplog.text
