"""tools/model_info.py: parameters and MACs per stage, options as key=value."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("model_info_tool", ROOT / "tools/model_info.py")
model_info = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_info)


def test_prints_torchvisions_parameter_count_and_refuses_a_bare_option(capsys) -> None:
    model_info.main(["resnet18", "--size", "64", "64"])
    out = capsys.readouterr().out
    assert "\ntotal       11,689,512 " in out  # torchvision resnet18
    with pytest.raises(SystemExit):  # was read as output_stride=None: the default, silently
        model_info.main(["resnet18", "output_stride"])
    assert "options must be key=value, got output_stride" in capsys.readouterr().err


def test_an_unknown_name_or_option_is_a_usage_error(capsys) -> None:
    """They were tracebacks (exit 1)."""
    for argv, message in ((["resnet51"], "unknown backbone 'resnet51'; valid: "),
                          (["resnet50", "foo=1"], "unknown backbone option foo; valid: "),
                          (["resnet50", "output_stride=7"],
                           "output_stride 7 is not valid for this net; valid: 8, 16, 32"),
                          (["resnet50", "groups=0"], "groups must be a positive integer, got 0"),
                          (["resnet50", "width=0"], "width must be a number > 0"),
                          (["resnet50", "shortcut=D"], "unknown shortcut 'D'; valid: A, B, C"),
                          # a string, taken as true (v1's counts under a typo)
                          (["resnet50", "stride_in_1x1=flase"],
                           "stride_in_1x1 must be true or false, got 'flase'"),
                          # a traceback, and 0 became 1000 classes
                          (["resnet50", "--num-classes", "-3"], "--num-classes must be a "
                           "positive number of classes, got -3"),
                          (["resnet50", "--num-classes", "0"], "--num-classes must be a "
                           "positive number of classes, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            model_info.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err



def test_any_input_size_is_counted_without_allocating_it(capsys) -> None:
    """--size 89600 89600 was the allocator's traceback (a 96 GB input). Each stage's MACs
    scale with the input's area where every stride divides the size: 400**2 times 224x224's."""
    from resnet_detect import backbones
    from resnet_detect.backbones.complexity import count_macs
    model = backbones.build_classifier("resnet50", 1000)
    small, large = count_macs(model, (224, 224)), count_macs(model, (89600, 89600))
    assert small["total"] == 4_089_184_256  # He et al.'s 4.1 GFLOPs (multiply-adds)
    for stage in ("stem", "res2", "res3", "res4", "res5"):
        assert large[stage] == small[stage] * 400 ** 2
    assert large["fc"] == small["fc"] == 2048 * 1000
    model_info.main(["resnet50", "--size", "89600", "89600"])
    total = capsys.readouterr().out.splitlines()[-1].split()
    assert total == ["total", "25,557,032", f"{large['total'] / 1e9:.3f}"]
