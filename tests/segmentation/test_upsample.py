"""segmentation/upsample.py: the GPU's backward of bilinear upsampling as matrix products gives
F.interpolate's logits and PyTorch's own gradient (checked here on the CPU, where the product
keeps PyTorch's backward)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_detect.segmentation.upsample import (
    _BilinearMatmulBackward, interpolation_matrix, upsample_bilinear)

SIZES = [((8, 8), (64, 64)),      # the logits at stride 8 to the crop
         ((7, 5), (50, 33)),      # sides that are not multiples: scale in/out, not a factor
         ((1, 1), (17, 9)),       # ASPP's image pooling: a broadcast
         ((33, 20), (129, 80)),   # DeepLabV3+'s ASPP to the stride-4 map, odd sides
         ((64, 40), (20, 13)),    # smaller: two taps, as F.interpolate without antialias
         ((5, 6), (5, 6))]        # same size: the identity


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_matches_interpolate_and_its_gradient(in_size: tuple[int, int],
                                              out_size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *in_size, requires_grad=True)
    grad = torch.randn(2, 3, *out_size)
    expected = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    out = _BilinearMatmulBackward.apply(x, out_size)
    (got_grad,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(out, expected)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_matrix_is_interpolate_of_the_identity() -> None:
    for in_size, out_size in [(8, 64), (7, 50), (1, 17), (64, 20)]:
        eye = torch.eye(in_size, dtype=torch.float64)[None, None]  # columns: unit impulses
        expected = F.interpolate(eye, size=(out_size, in_size), mode="bilinear",
                                 align_corners=False)[0, 0]
        torch.testing.assert_close(interpolation_matrix(out_size, in_size, torch.device("cpu")),
                                   expected.float(), rtol=0, atol=1e-6)


def test_bf16_gradient_is_summed_in_float32() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8).bfloat16().requires_grad_()
    grad = torch.randn(2, 4, 64, 64).bfloat16()
    (got,) = torch.autograd.grad(_BilinearMatmulBackward.apply(x, (64, 64)), x, grad)
    x64 = x.detach().double().requires_grad_()
    exact = F.interpolate(x64, size=(64, 64), mode="bilinear", align_corners=False)
    (expected,) = torch.autograd.grad(exact, x64, grad.double())
    assert got.dtype == torch.bfloat16
    # one rounding to bf16 of the float32 sum (relative 2**-8), not 64 roundings of a bf16 sum
    torch.testing.assert_close(got.double(), expected, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("amp", [False, True])
def test_traces_whole_under_torch_compile(amp: bool) -> None:
    """train.compile compiles the segmentation heads: the function and its backward trace
    into one graph (aot_eager: the tracing inductor does, without its code generation); under
    bf16 autocast the backward, traced inside it, still sums in float32."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    compiled = torch.compile(lambda t: _BilinearMatmulBackward.apply(t, (64, 64)),
                             backend="aot_eager", fullgraph=True)
    grad = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = compiled(x)
    (got,) = torch.autograd.grad(out, x, grad)
    expected = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, torch.autograd.grad(expected, x, grad)[0],
                               rtol=1e-5, atol=1e-5)


def test_a_channels_last_input_gets_a_channels_last_gradient() -> None:
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    (got,) = torch.autograd.grad(_BilinearMatmulBackward.apply(x, (32, 32)), x,
                                 torch.randn(2, 3, 32, 32))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()


def test_the_cpu_keeps_pytorchs_backward() -> None:
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    assert type(upsample_bilinear(x, (16, 16)).grad_fn).__name__ == "UpsampleBilinear2DBackward0"
