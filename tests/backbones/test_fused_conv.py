"""The fused-convolution lever (backbones/fused_conv.py) on the CPU.

cuDNN's fused kernels exist on a GPU only; here a reference with their signature stands in
for them (a convolution, the addend, a ReLU, computed without a graph), so what is checked is
ours: which convolutions go through the fused call, its backward, autocast's dtype, and the
fallbacks. cuDNN's own kernels are compared with the plain path on a GPU by
benchmarks/gpu_suite.py's det_fusion phase.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnet_detect.backbones import FrozenBatchNorm2d, fused_conv
from resnet_detect.detection import build_model
from resnet_detect.detection.config import defaults as detection_defaults
from resnet_detect.engine.config import load_config
from tests.detection.test_rcnn import TINY, tiny_scene

CONFIG = Path(__file__).resolve().parents[2] / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml"
# fused calls per forward: every block's inner convolutions (one in a BasicBlock, two in a
# Bottleneck) without an addend, each block's last with its shortcut; the RPN head's
# convolution once per FPN level (5) without; not the stem (3 input channels)
EXPECTED_CALLS = {"resnet18": {"relu": 8 * 1 + 5, "add_relu": 8},
                  "resnet50": {"relu": 16 * 2 + 5, "add_relu": 16}}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return reference_kernels(monkeypatch)


def reference_kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The lever on for the CPU with reference kernels; counts their calls."""
    counts = {"relu": 0, "add_relu": 0}

    def relu(x, weight, bias, stride, padding, dilation, groups):  # noqa: ANN001, ANN202
        counts["relu"] += 1
        assert not torch.is_grad_enabled() or not x.requires_grad  # no graph of its own
        assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
        return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))

    def add_relu(x, weight, z, alpha, bias, stride, padding, dilation, groups):  # noqa: ANN001, ANN202
        counts["add_relu"] += 1
        assert weight.dtype == x.dtype == z.dtype and (bias is None or bias.dtype == x.dtype)
        return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups) + alpha * z)

    monkeypatch.setattr(fused_conv, "FUSE_ON_CUDA", True)
    monkeypatch.setattr(fused_conv, "DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(fused_conv, "refusals", {})
    monkeypatch.setattr(fused_conv, "cudnn_convolution_relu", relu)
    monkeypatch.setattr(fused_conv, "cudnn_convolution_add_relu", add_relu)
    return counts


def _detector(backbone: str, *overrides: str) -> torch.nn.Module:
    cfg = load_config(CONFIG, [*TINY, f"model.backbone.name={backbone}", *overrides],
                      defaults=detection_defaults())
    torch.manual_seed(0)
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # a fold that is not the identity
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _losses_and_grads(model: torch.nn.Module) -> tuple[dict, dict]:
    images, targets = tiny_scene(0)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the samplers' draws
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_training_losses_and_gradients_equal_the_plain_path(
        backbone: str, calls: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    model = _detector(backbone)
    fused_losses, fused_grads = _losses_and_grads(model)
    assert calls == EXPECTED_CALLS[backbone]
    monkeypatch.setattr(fused_conv, "FUSE_ON_CUDA", False)
    plain_losses, plain_grads = _losses_and_grads(model)
    assert calls == EXPECTED_CALLS[backbone]  # the plain path made no fused call
    assert fused_losses.keys() == plain_losses.keys()
    for name in plain_losses:
        torch.testing.assert_close(fused_losses[name], plain_losses[name], rtol=1e-5, atol=1e-6)
    # the trainable ones: res3 on (freeze_at 2), the FPN, the RPN and box heads
    assert fused_grads.keys() == plain_grads.keys()
    assert any(n.startswith("backbone.bottom_up.res3") for n in plain_grads)
    assert not any(n.startswith("backbone.bottom_up.res2") for n in plain_grads)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=name)


def test_the_fused_function_gradient_in_float64(calls: dict[str, int]) -> None:
    """Every input's gradient (a convolution bias too, and the addend) against finite
    differences: strided and grouped, dilated."""
    gen = torch.Generator().manual_seed(0)
    for conv, out_size in ((torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 5)),
                           (torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2), (7, 9))):
        x, addend = (torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
                     for shape in ((2, 4, 7, 9), (2, 6, *out_size)))
        weight = torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64,
                             requires_grad=True)
        bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda *t: fused_conv.fused(*t, conv), (x, weight, bias, addend))  # noqa: B023
        assert torch.autograd.gradcheck(
            lambda *t: fused_conv.fused(*t, None, conv), (x, weight, bias))  # noqa: B023
    assert calls["relu"] > 0 and calls["add_relu"] > 0


def test_under_autocast_every_input_is_cast_to_its_dtype(calls: dict[str, int]) -> None:
    """The reference kernels assert one dtype for all inputs: float32 weight, bias and addend
    reach them in bf16."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x, addend = torch.randn(1, 8, 5, 5).bfloat16(), torch.randn(1, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_conv.fused(x, conv.weight, conv.bias, addend, conv)
    assert out.dtype == torch.bfloat16 and calls["add_relu"] == 1


def test_under_bf16_autocast_the_fused_call_runs_in_bf16(calls: dict[str, int]) -> None:
    model = _detector("resnet18")
    images, _ = tiny_scene(0)
    batch = torch.stack(images).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model.backbone(batch)
        fused_conv.FUSE_ON_CUDA = False
        plain = model.backbone(batch)
    assert calls == {"relu": 8, "add_relu": 8}  # the backbone alone: no RPN head
    for name in plain:
        assert fused[name].dtype == plain[name].dtype == torch.bfloat16
        scale = plain[name].float().abs().max().item()
        torch.testing.assert_close(fused[name].float(), plain[name].float(), rtol=0,
                                   atol=0.05 * scale, msg=name)


def test_a_refused_kind_of_call_runs_plain_from_then_on(
        calls: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    model = _detector("resnet18").eval()
    images, _ = tiny_scene(0)
    batch = torch.stack(images).float()
    monkeypatch.setattr(fused_conv, "FUSE_ON_CUDA", False)
    with torch.no_grad():
        expected = model.backbone(batch)
    monkeypatch.setattr(fused_conv, "FUSE_ON_CUDA", True)
    attempts = []

    def refuse(*args):  # noqa: ANN002, ANN202
        attempts.append(1)
        raise RuntimeError("cuDNN Frontend error: No valid execution plans built.")
    monkeypatch.setattr(fused_conv, "cudnn_convolution_relu", refuse)
    with torch.no_grad(), pytest.warns(UserWarning, match="cuDNN refused a fused") as warned:
        got = model.backbone(batch)
    # each kind of call without an addend (weight shape, stride, ...) refused once: res2's
    # two blocks share one, res3-res5's first and second blocks differ
    assert len(attempts) == len(warned) == len(fused_conv.refusals) == 7
    assert set(fused_conv.refusals.values()) == {
        "RuntimeError: cuDNN Frontend error: No valid execution plans built."}
    assert calls["add_relu"] == 8  # the other kinds still fused
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    with torch.no_grad():
        model.backbone(batch)
    assert len(attempts) == 7 and calls["add_relu"] == 16


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("Given groups=1, weight of size [64, 64, 3, 3], expected input to have 64 "
                 "channels, but got 32 channels instead")])
def test_other_errors_are_raised_not_taken_for_a_refusal(
        error: Exception, calls: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args):  # noqa: ANN002, ANN202
        raise error
    monkeypatch.setattr(fused_conv, "cudnn_convolution_relu", fail)
    model = _detector("resnet18").eval()
    with torch.no_grad(), pytest.raises(type(error), match=str(error)[:20]):
        model.backbone(torch.zeros(1, 3, 64, 64))
    assert fused_conv.refusals == {}


def test_where_the_plain_path_runs(calls: dict[str, int]) -> None:
    """Trainable BatchNorm cannot fold (res3 on; freeze_at 2 froze the stem's and res2's), nor
    can a traced or compiled model, a deterministic run, or a module with hooks (forward or
    backward, its own or global)."""
    images, targets = tiny_scene(0)
    model = _detector("resnet18", "model.backbone.norm=bn")
    model(images, targets)
    assert calls == {"relu": 2 + 5, "add_relu": 2}  # res2's 2 blocks, the RPN head
    frozen = _detector("resnet18").eval()
    batch = torch.stack(images).float()

    def fused_calls(run) -> dict[str, int]:  # noqa: ANN001
        calls.update(relu=0, add_relu=0)
        with torch.no_grad():
            run()
        return dict(calls)
    assert fused_calls(lambda: frozen.backbone(batch)) == {"relu": 8, "add_relu": 8}
    assert fused_calls(lambda: torch.jit.trace(frozen.backbone, batch, strict=False,
                                               check_trace=False)) == {"relu": 0, "add_relu": 0}
    torch._dynamo.reset()
    compiled = torch.compile(frozen.backbone, backend="eager")
    assert fused_calls(lambda: compiled(batch)) == {"relu": 0, "add_relu": 0}
    torch._dynamo.reset()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert fused_calls(lambda: frozen.backbone(batch)) == {"relu": 0, "add_relu": 0}
    finally:
        torch.use_deterministic_algorithms(deterministic)
    blocks = frozen.backbone.bottom_up.res3
    for module, register in ((blocks[0].norm1, "register_forward_hook"),
                             (blocks[0].conv2, "register_forward_pre_hook"),
                             (blocks[1].conv1, "register_full_backward_hook")):
        handle = getattr(module, register)(lambda *a: None)
        try:  # that convolution alone runs plain
            assert fused_calls(lambda: frozen.backbone(batch)) == (
                {"relu": 7, "add_relu": 8} if module is not blocks[0].conv2
                else {"relu": 8, "add_relu": 7})
        finally:
            handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert fused_calls(lambda: frozen.backbone(batch)) == {"relu": 0, "add_relu": 0}
    finally:
        handle.remove()
