"""backbones.conv: the CPU weight gradient on NCHW copies gives nn.Conv2d's values."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import conv as conv_module
from backbones.conv import LARGE_MAP_PIXELS, Conv2d, conv2d


@pytest.fixture
def avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the AVX2 path whatever this machine's CPU is."""
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", True)


def twins(bias: bool, **kwargs: int) -> tuple[Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ours = Conv2d(8, 12, 3, bias=bias, **kwargs)
    reference = nn.Conv2d(8, 12, 3, bias=bias, **kwargs)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@pytest.mark.parametrize(("bias", "kwargs"), [(True, {"padding": 1}),
                                              (False, {"padding": 2, "dilation": 2}),
                                              (True, {"padding": 1, "stride": 2})])
def test_large_channels_last_maps_get_the_same_output_and_gradients(
        avx2_cpu: None, bias: bool, kwargs: dict[str, int]) -> None:
    ours, reference = twins(bias, **kwargs)
    x = torch.randn(2, 8, 230, 180).contiguous(memory_format=torch.channels_last)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x_ours), reference(x_ref)
    assert out.shape[2] * out.shape[3] >= LARGE_MAP_PIXELS
    assert "WeightGradOnNCHW" in out.grad_fn.name()
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert reference.weight.grad.abs().max() > 1.0
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-3)
    if bias:
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-2)


def test_pytorch_convolution_everywhere_else(avx2_cpu: None) -> None:
    ours, _ = twins(True, padding=1)
    large = torch.randn(1, 8, 120, 100).contiguous(memory_format=torch.channels_last)
    small = torch.randn(1, 8, 90, 100).contiguous(memory_format=torch.channels_last)
    assert "WeightGradOnNCHW" in ours(large.requires_grad_()).grad_fn.name()
    assert "WeightGradOnNCHW" not in ours(small).grad_fn.name()  # 9,000 output pixels
    assert "WeightGradOnNCHW" not in ours(large.contiguous()).grad_fn.name()  # NCHW map
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "WeightGradOnNCHW" not in ours(large).grad_fn.name()
    with torch.no_grad():
        assert ours(large).grad_fn is None
    ours.weight.requires_grad_(False)
    assert ours(large).grad_fn.name().startswith("Convolution")  # input gradient only


def test_the_function_takes_ints_as_f_conv2d_does(avx2_cpu: None) -> None:
    x = torch.randn(1, 4, 110, 100).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 4, 3, 3, requires_grad=True)
    out = conv2d(x, weight, None, 1, 1, 1, 1)
    assert "WeightGradOnNCHW" in out.grad_fn.name()
    assert torch.equal(out, nn.functional.conv2d(x, weight, None, 1, 1, 1, 1))
