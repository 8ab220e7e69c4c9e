"""backbones.conv: its own CPU weight gradients (shifted matrix products or NCHW copies for
channels-last maps, one matrix product for maps smaller than the kernel) give nn.Conv2d's
values."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnet_detect.backbones import conv as conv_module
from resnet_detect.backbones.conv import (LARGE_MAP_PIXELS, SHIFTED_GEMM_PIXELS, Conv2d, conv2d,
                                          own_weight_grad, weight_grad_as_one_gemm,
                                          weight_grad_as_shifted_gemms, weight_grad_on_nchw_copies)

OWN = "ConvWithOwnWeightGrad"


@pytest.fixture
def avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the AVX2 paths whatever this machine's CPU is."""
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", True)


def twins(bias: bool, in_channels: int = 8, out_channels: int = 12,
          **kwargs: int) -> tuple[Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    ours = Conv2d(in_channels, out_channels, 3, bias=bias, **kwargs)
    reference = nn.Conv2d(in_channels, out_channels, 3, bias=bias, **kwargs)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def route(module: nn.Conv2d, x: torch.Tensor) -> object:
    return own_weight_grad(x, module.weight, module.stride, module.padding, module.dilation,
                           module.groups)


def assert_same_output_and_gradients(ours: Conv2d, reference: nn.Conv2d,
                                     x: torch.Tensor) -> None:
    """The same output as PyTorch's convolution, and the gradients of a float64 one to float32
    accuracy (a sum over many pixels: its order differs between CPUs' oneDNN kernels)."""
    exact = copy.deepcopy(reference).double()
    x_ours, x_exact = x.clone().requires_grad_(), x.double().requires_grad_()
    out = ours(x_ours)
    assert OWN in out.grad_fn.name()
    assert torch.equal(out, reference(x))
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (exact(x_exact) * upstream.double()).sum().backward()
    pairs = [(x_ours.grad, x_exact.grad), (ours.weight.grad, exact.weight.grad)]
    if ours.bias is not None:
        pairs.append((ours.bias.grad, exact.bias.grad))
    assert exact.weight.grad.abs().max() > 1.0
    for got, expected in pairs:
        scale = expected.abs().max().item()
        assert (got.double() - expected).abs().max().item() <= 2e-5 * scale


@pytest.mark.parametrize(("bias", "kwargs"), [(False, {"padding": 2, "dilation": 2}),
                                              (True, {"padding": 1, "stride": 2})])
def test_large_channels_last_maps_get_the_same_output_and_gradients(
        avx2_cpu: None, bias: bool, kwargs: dict[str, int]) -> None:
    ours, reference = twins(bias, **kwargs)
    x = torch.randn(2, 8, 230, 180).contiguous(memory_format=torch.channels_last)
    assert route(ours, x) is weight_grad_on_nchw_copies
    out_h, out_w = ours(x).shape[2:]
    assert out_h * out_w >= LARGE_MAP_PIXELS
    assert_same_output_and_gradients(ours, reference, x)


@pytest.mark.parametrize(("bias", "size"), [(True, (230, 180)), (False, (25, 41)),
                                            (True, (500, 3)), (False, (3, 400))])
def test_same_size_3x3_on_channels_last_maps_gets_the_same_output_and_gradients(
        avx2_cpu: None, bias: bool, size: tuple[int, int]) -> None:
    ours, reference = twins(bias, padding=1)
    x = torch.randn(3, 8, *size).contiguous(memory_format=torch.channels_last)
    assert size[0] * size[1] >= SHIFTED_GEMM_PIXELS
    assert route(ours, x) is weight_grad_as_shifted_gemms
    assert_same_output_and_gradients(ours, reference, x)


@pytest.mark.parametrize("size", [(2, 2), (2, 3), (3, 2), (4, 7), (7, 4)])
def test_shifted_products_at_every_border(size: tuple[int, int]) -> None:
    """Maps small enough that every pixel is at a border (the route itself starts at 1,000
    pixels): the weight gradient of a float64 convolution, an NCHW incoming gradient too."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, *size, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 6, *size, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    expected = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [False, True, False])[1]
    got = weight_grad_as_shifted_gemms(grad, x.contiguous(memory_format=torch.channels_last),
                                       weight, [1, 1], [1, 1], [1, 1], 1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("size", "kwargs"), [((2, 2), {"padding": 1}),
                                              ((1, 1), {"padding": 1}),
                                              ((4, 3), {"padding": 1, "stride": 2}),
                                              ((2, 5), {"padding": 2, "dilation": 2}),
                                              ((5, 1), {"padding": 1})])
@pytest.mark.parametrize("channels_last", [False, True])
def test_maps_smaller_than_the_kernel_get_the_same_output_and_gradients(
        avx2_cpu: None, size: tuple[int, int], kwargs: dict[str, int],
        channels_last: bool) -> None:
    ours, reference = twins(True, in_channels=40, out_channels=24, **kwargs)
    x = torch.randn(6, 40, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_h, out_w = ours(x).shape[2:]
    assert out_h < 3 or out_w < 3
    assert route(ours, x) is weight_grad_as_one_gemm
    assert_same_output_and_gradients(ours, reference, x)


@pytest.mark.parametrize(("size", "dilation"), [((10, 10), 2), ((10, 7), 4), ((9, 10), 2)])
def test_dilated_convolutions_on_small_maps_get_the_same_output_and_gradients(
        avx2_cpu: None, size: tuple[int, int], dilation: int) -> None:
    """DeepLab's dilated last stage on 10 x 10 maps: one matrix product too."""
    ours, reference = twins(False, in_channels=40, out_channels=24, padding=dilation,
                            dilation=dilation)
    x = torch.randn(6, 40, *size).contiguous(memory_format=torch.channels_last)
    assert route(ours, x) is weight_grad_as_one_gemm
    assert_same_output_and_gradients(ours, reference, x)
    larger = torch.randn(2, 40, 21, 21).contiguous(memory_format=torch.channels_last)
    assert route(ours, larger) is None  # beyond twice the dilated kernel's reach


def test_pytorch_convolution_everywhere_else(avx2_cpu: None) -> None:
    ours, _ = twins(True, padding=1)
    large = torch.randn(1, 8, 120, 100).contiguous(memory_format=torch.channels_last)
    small = torch.randn(1, 8, 30, 30).contiguous(memory_format=torch.channels_last)
    assert OWN in ours(large.requires_grad_()).grad_fn.name()
    assert OWN not in ours(small).grad_fn.name()  # 900 output pixels
    strided = Conv2d(8, 8, 3, padding=1, stride=2)  # 3,000 output pixels: no route
    assert OWN not in strided(large).grad_fn.name()
    assert OWN not in ours(large.contiguous()).grad_fn.name()  # NCHW map
    assert OWN not in ours(torch.randn(2, 8, 3, 3)).grad_fn.name()  # 3x3 out: the kernel's size
    grouped = Conv2d(8, 8, 3, padding=1, groups=2)
    assert OWN not in grouped(torch.randn(2, 8, 2, 2)).grad_fn.name()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert OWN not in ours(large).grad_fn.name()
        assert OWN not in ours(torch.randn(2, 8, 2, 2)).grad_fn.name()
    with torch.no_grad():
        assert ours(large).grad_fn is None
    ours.weight.requires_grad_(False)
    assert ours(large).grad_fn.name().startswith("Convolution")  # input gradient only
    assert ours(torch.randn(2, 8, 2, 2)).grad_fn.name().startswith("Convolution")


def test_other_cpus_take_pytorch_convolution_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", False)
    ours, _ = twins(True, padding=1)
    for x in (torch.randn(2, 8, 2, 2),
              torch.randn(1, 8, 120, 100).contiguous(memory_format=torch.channels_last)):
        assert OWN not in ours(x).grad_fn.name()


def test_the_function_takes_ints_as_f_conv2d_does(avx2_cpu: None) -> None:
    for x in (torch.randn(1, 4, 110, 100).contiguous(memory_format=torch.channels_last),
              torch.randn(3, 4, 2, 2)):
        weight = torch.randn(5, 4, 3, 3, requires_grad=True)
        out = conv2d(x, weight, None, 1, 1, 1, 1)
        assert OWN in out.grad_fn.name()
        assert torch.equal(out, nn.functional.conv2d(x, weight, None, 1, 1, 1, 1))
