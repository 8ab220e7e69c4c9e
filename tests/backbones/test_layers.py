"""A frozen BatchNorm folded into its convolution: the folded weights are kept between calls
and recomputed whenever a weight or statistic changes."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from resnet_detect.backbones.layers import ConvNorm, FrozenBatchNorm2d, conv3x3


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _conv_frozen_bn(seed: int = 0) -> ConvNorm:
    g = torch.Generator().manual_seed(seed)
    norm = FrozenBatchNorm2d(8)
    for buffer, (low, high) in zip(norm.buffers(), [(0.5, 1.5), (-1, 1), (-1, 1), (0.5, 2)]):
        buffer.copy_(torch.rand(8, generator=g) * (high - low) + low)
    block = ConvNorm(conv3x3(4, 8), norm)
    with torch.no_grad():
        block[0].weight.copy_(torch.randn(8, 4, 3, 3, generator=g))
    return block


def _unfolded(block: ConvNorm, x: torch.Tensor) -> torch.Tensor:
    conv, norm = block
    return norm(F.conv2d(x, conv.weight, None, conv.stride, conv.padding))


def test_second_inference_call_runs_only_the_convolution_and_gives_the_same_map():
    block, x = _conv_frozen_bn(), torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), _unfolded(block, x), rtol=1e-5, atol=1e-5)
        first = block(x)
        with _Ops() as ops:
            again = block(x)
    assert len(ops.names) == 1 and ops.names[0] in ("conv2d", "convolution")
    assert torch.equal(first, again)


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "statistics", "dtype"])
def test_every_change_of_weights_or_statistics_is_seen(change):
    block, x = _conv_frozen_bn(), torch.randn(2, 4, 9, 9)
    block.eval()
    with torch.no_grad():
        before = block(x)
        if change == "optimizer step":
            block[0].weight.add_(0.5)
        elif change == "load_state_dict":
            block.load_state_dict(_conv_frozen_bn(seed=1).state_dict())
        elif change == "statistics":
            block[1].running_var.mul_(4)
        else:
            block.double()
            x = x.double()
        after = block(x)
        assert after.dtype == x.dtype
        if change != "dtype":
            assert not torch.allclose(after, before, atol=1e-3)
        torch.testing.assert_close(after, _unfolded(block, x), rtol=1e-5, atol=1e-5)


def test_training_after_inference_gets_the_weight_gradient_of_conv_then_norm():
    block, x = _conv_frozen_bn(), torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        block(x)  # leaves inference tensors in the cache: training must not use them
    reference = _conv_frozen_bn()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (block, reference)]
    for _ in range(2):  # the second step sees the weight the first one changed
        losses = [block(x).square().mean(), _unfolded(reference, x).square().mean()]
        for loss, optimizer in zip(losses, optimizers):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block[0].weight, reference[0].weight, rtol=1e-5, atol=1e-5)


def test_under_autocast_the_kept_weight_is_already_bf16_and_the_output_is_autocasts():
    block, x = _conv_frozen_bn(), torch.randn(2, 4, 9, 9)
    conv, norm = block
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scale, shift = norm.scale_and_shift()
        expected = F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), shift, 1, 1)
        block(x)
        with _Ops() as ops:
            got = block(x)
    assert "_to_copy" not in ops.names[1:]  # only the input is cast
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)


def test_a_traced_graph_computes_the_folding_from_the_parameters():
    block, x = _conv_frozen_bn().eval(), torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        block(x)  # a kept folding must not become a constant of the graph
        traced = torch.jit.trace(block, x)
        block[1].running_var.mul_(4)
        torch.testing.assert_close(traced(x), _unfolded(block, x), rtol=1e-5, atol=1e-5)


def test_statistics_changed_between_training_steps_are_seen():
    block, x = _conv_frozen_bn(), torch.randn(2, 4, 9, 9)
    block(x).sum().backward()  # keeps the scale and shift of the weight that needs a gradient
    with torch.no_grad():
        block[1].running_var.mul_(4)
    torch.testing.assert_close(block(x), _unfolded(block, x), rtol=1e-5, atol=1e-5)


def test_a_new_buffer_at_the_old_address_and_version_is_not_taken_for_the_old_one():
    block, x = _conv_frozen_bn().eval(), torch.randn(2, 4, 9, 9)
    norm = block[1]
    with torch.no_grad():
        block(x)
        old = norm.running_var
        new = torch.empty(0).set_(old.untyped_storage(), 0, old.shape)  # same address
        new.data.mul_(4)  # new values, version still 0 (as a fresh tensor's)
        assert (new.data_ptr(), new._version) == (old.data_ptr(), old._version)
        norm.running_var = new
        torch.testing.assert_close(block(x), _unfolded(block, x), rtol=1e-5, atol=1e-5)


def test_a_float64_model_under_autocast_stays_float64():
    block, x = _conv_frozen_bn().double().eval(), torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = block(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _unfolded(block, x))


def test_a_module_that_kept_its_folding_pickles_and_copies():
    block, x = _conv_frozen_bn().eval(), torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        expected = block(x)
        buffer = io.BytesIO()
        torch.save(block, buffer)  # whole modules, as some users save them
        buffer.seek(0)
        for copied in (torch.load(buffer, weights_only=False), copy.deepcopy(block)):
            copied[1].running_var.mul_(4)  # the copy's own statistics, not the original's
            torch.testing.assert_close(copied(x), _unfolded(copied, x), rtol=1e-5, atol=1e-5)
        assert torch.equal(block(x), expected)
