"""backbones.winograd: the 3x3 stride-1 convolution as Winograd F(4x4, 3x3) products gives a
float64 convolution's output and gradients to float32 accuracy, on any map size and chunking;
backbones.conv routes trainable convolutions of many channels on AVX2 CPUs to it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_detect.backbones import conv as conv_module
from resnet_detect.backbones import winograd
from resnet_detect.backbones.conv import Conv2d, takes_winograd
from resnet_detect.backbones.layers import conv_norm
from resnet_detect.backbones.resnet import Bottleneck
from resnet_detect.backbones.winograd import Winograd3x3

# Winograd's F(4x4, 3x3) error: a few times float32's rounding of the direct sum (measured
# 1e-5 of the largest output on 64-512 channels); a wrong transform or tile is off by O(1)
TOLERANCE = 5e-5


def exact_and_winograd(n: int, c: int, o: int, h: int, w: int, bias: bool,
                       channels_last: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=g) / (3 * c ** 0.5)
    b = torch.randn(o, generator=g) if bias else None
    upstream = torch.randn(n, o, h, w, generator=g)
    results = []
    for dtype in (torch.float64, torch.float32):
        leaves = [t.to(dtype).requires_grad_() for t in (x, weight) + ((b,) if bias else ())]
        if dtype == torch.float64:
            out = F.conv2d(leaves[0], leaves[1], leaves[2] if bias else None, padding=1)
        else:
            out = Winograd3x3.apply(*leaves, *([] if bias else [None]))
            assert "Winograd3x3" in out.grad_fn.name()
        (out * upstream.to(dtype)).sum().backward()
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    return list(zip(*results))


def assert_close_to_exact(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for exact, got in pairs:
        assert got.shape == exact.shape and got.dtype == torch.float32
        scale = exact.abs().max().item()
        assert scale > 0.1
        assert (got.double() - exact).abs().max().item() <= TOLERANCE * scale


@pytest.mark.parametrize(("shape", "bias"), [((2, 16, 24, 12, 20), False),  # whole blocks
                                             ((3, 8, 8, 13, 18), True),  # ragged bottom/right
                                             ((1, 5, 7, 1, 1), True),  # one pixel
                                             ((2, 4, 6, 3, 9), False)])
def test_output_and_gradients_of_an_exact_convolution(shape: tuple[int, ...],
                                                      bias: bool) -> None:
    assert_close_to_exact(exact_and_winograd(*shape, bias=bias))


def test_nchw_inputs_too() -> None:
    assert_close_to_exact(exact_and_winograd(2, 6, 10, 9, 14, bias=True, channels_last=False))


@pytest.mark.parametrize("chunk_bytes", [1, 36 * 5 * 24 * 4 * 3, 36 * 5 * 24 * 4 * 10])
def test_every_chunking_gives_the_exact_values(monkeypatch: pytest.MonkeyPatch,
                                               chunk_bytes: int) -> None:
    """Bands of one tile row, of three tile rows (the last band short) and several images per
    chunk (the last chunk short)."""
    monkeypatch.setattr(winograd, "CHUNK_BYTES", chunk_bytes)
    assert_close_to_exact(exact_and_winograd(3, 16, 24, 17, 19, bias=True))


def test_chunks_cover_every_tile_row_once() -> None:
    for n, rows, row_bytes in [(3, 5, 1 << 30), (3, 5, winograd.CHUNK_BYTES // 2),
                               (5, 2, winograd.CHUNK_BYTES // 4)]:
        covered = [(i, r) for i0, i1, r0, r1 in winograd._chunks(n, rows, row_bytes)
                   for i in range(i0, i1) for r in range(r0, r1)]
        assert sorted(covered) == [(i, r) for i in range(n) for r in range(rows)]


@pytest.fixture
def avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", True)
    monkeypatch.setattr(conv_module, "_INTEL_AVX512", False)


def decoder_map(channels: int = 128, size: tuple[int, int] = (40, 40),
                n: int = 2) -> torch.Tensor:
    """DeepLabV3+'s decoder map of the segmentation quickstart: 2 x 100 blocks of 4 x 4."""
    return torch.randn(n, channels, *size).contiguous(memory_format=torch.channels_last)


def test_conv2d_takes_winograd_for_trainable_convolutions_of_many_channels(
        avx2_cpu: None) -> None:
    ours = Conv2d(128, 128, 3, padding=1)
    reference = torch.nn.Conv2d(128, 128, 3, padding=1)
    reference.load_state_dict(ours.state_dict())
    x = decoder_map()
    out = ours(x)
    assert "Winograd3x3" in out.grad_fn.name()
    expected = reference.double()(x.double())
    assert (out.double() - expected).abs().max() <= TOLERANCE * expected.abs().max()


@pytest.mark.parametrize("size", [(50, 68), (63, 64), (50, 66)])
def test_the_output_can_be_changed_in_place(avx2_cpu: None, size: tuple[int, int]) -> None:
    """ResNet blocks and the RPN head apply ReLU in place to a convolution's output; a map cut
    in height only (50 x 68: R50's res4 on an 800 x 1088 image) must not come back a view."""
    conv = Conv2d(128, 128, 3, padding=1)
    x = decoder_map(size=size, n=1)
    out = conv(x)
    assert "Winograd3x3" in out.grad_fn.name()
    torch.nn.functional.relu(out, inplace=True).sum().backward()
    assert conv.weight.grad.abs().max() > 0


def test_a_frozen_batchnorm_bottleneck_trains_on_the_route(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R50's res4 block on an 800 x 1088 image's 50 x 68 map: the frozen BatchNorm folded into
    the 3x3 convolution, then ReLU in place; the gradients of PyTorch's convolution.

    The shift keeps that ReLU's input positive: where it is near zero, the two convolutions'
    rounding can fall on either side of it, and one such pixel changes a whole output
    channel's weight gradient by that pixel's share (seen on an Intel CPU, one thread)."""
    torch.manual_seed(0)
    block = Bottleneck(in_channels=1024, planes=256, norm="frozen_bn")
    block.norm2.bias.fill_(5.0)
    x = torch.randn(1, 1024, 50, 68).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(1, 1024, 50, 68)
    grads = {}
    for avx2 in (False, True):
        monkeypatch.setattr(conv_module, "_AVX2_ONLY", avx2)
        monkeypatch.setattr(conv_module, "_INTEL_AVX512", False)
        block.zero_grad()
        (block(x) * upstream).sum().backward()
        grads[avx2] = block.conv2.weight.grad.clone()
        with torch.no_grad():
            mid = F.relu(conv_norm(block.conv1, block.norm1, x))
            assert conv_norm(block.conv2, block.norm2, mid).min() > 0
    expected = grads[False]
    assert (grads[True] - expected).abs().max() <= TOLERANCE * expected.abs().max()


def route(x: torch.Tensor, out_channels: int = 128, **kwargs: int) -> bool:
    conv = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    conv.update({key: (value, value) if key != "groups" else value
                 for key, value in kwargs.items()})
    weight = torch.zeros(out_channels, x.shape[1] // conv["groups"], 3, 3, requires_grad=True)
    return takes_winograd(x, weight, conv["stride"], conv["padding"], conv["dilation"],
                          conv["groups"])


def test_routes_only_where_it_was_measured_faster(avx2_cpu: None) -> None:
    x = decoder_map()
    assert route(x)
    assert not route(decoder_map(channels=64))  # few input channels
    assert not route(x, out_channels=64)  # few output channels
    assert not route(decoder_map(size=(36, 40), n=1))  # 90 blocks of 4 x 4
    assert not route(decoder_map(size=(10, 10), n=20))  # 180 blocks, padded by 44 %
    assert route(decoder_map(size=(14, 14), n=20)) is False  # padded by 31 %
    assert route(decoder_map(size=(16, 16), n=20))
    assert not route(x.contiguous())  # NCHW
    assert not route(x, stride=2)
    assert not route(x, padding=2, dilation=2)
    assert not route(x, groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not route(x)
    assert not takes_winograd(x.double(), torch.zeros(128, 128, 3, 3, dtype=torch.float64),
                              (1, 1), (1, 1), (1, 1), 1)


def test_not_where_float32_products_run_in_bf16(avx2_cpu: None) -> None:
    """set_float32_matmul_precision("medium") makes the products bf16 on CPUs with bf16
    kernels (10 % error on an Intel Xeon), not PyTorch's convolution."""
    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    try:
        matmul.fp32_precision = "bf16"
        assert not route(decoder_map())
        matmul.fp32_precision = "tf32"  # "high": float32 on CPUs
        assert route(decoder_map())
    finally:
        matmul.fp32_precision = previous


@pytest.fixture
def winograd_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shapes of every Winograd forward (Winograd3x3 calls it by module name)."""
    calls: list[tuple[int, ...]] = []
    original = winograd.winograd_conv3x3

    def counted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return original(x, weight)

    monkeypatch.setattr(winograd, "winograd_conv3x3", counted)
    return calls


def test_inference_takes_it_too(avx2_cpu: None, winograd_calls: list) -> None:
    conv = Conv2d(128, 128, 3, padding=1).eval()
    x = decoder_map()
    expected = torch.nn.functional.conv2d(x.double(), conv.weight.double(),
                                          conv.bias.double(), padding=1)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out = conv(x)
        assert (out.double() - expected).abs().max() <= TOLERANCE * expected.abs().max()
    assert winograd_calls == [tuple(x.shape)] * 2
    frozen = torch.zeros(128, 128, 3, 3)  # a frozen layer's forward
    assert takes_winograd(x, frozen, (1, 1), (1, 1), (1, 1), 1)


def test_tracing_for_export_keeps_the_convolution_operator(avx2_cpu: None,
                                                           winograd_calls: list) -> None:
    conv = Conv2d(128, 128, 3, padding=1).eval()
    with torch.no_grad():  # no trace check: it would compare with the Winograd forward
        traced = torch.jit.trace(conv, decoder_map(), check_trace=False)
    operators = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in operators and "prim::PythonOp" not in operators
    assert winograd_calls == []


def test_compiling_keeps_the_convolution_operator(avx2_cpu: None,
                                                  winograd_calls: list) -> None:
    """A graph-recording backend: dynamo's graph has the convolutions, not the products, and
    is one graph (no break at a convolution: the routes' checks are not traced)."""
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(graph: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(graph)
        return graph.forward

    convs = torch.nn.Sequential(Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(),
                                Conv2d(128, 128, 3, padding=1))
    torch._dynamo.reset()
    compiled = torch.compile(convs, backend=recording_backend)
    with torch.no_grad():
        compiled(decoder_map())
    assert len(graphs) == 1
    targets = [str(node.target) for graph in graphs for node in graph.graph.nodes]
    assert sum("conv2d" in target for target in targets) == 2
    assert not any("bmm" in target for target in targets)
    assert winograd_calls == []


def test_intel_avx512_routes_only_large_maps_of_256_channels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R50-FPN's p2-p4 convolutions (256 channels, 442 blocks and more for two 800 x 1067
    images); not res5 (512 channels, 126 blocks), 128 channels, or the AVX2 thresholds."""
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", False)
    monkeypatch.setattr(conv_module, "_INTEL_AVX512", True)
    assert route(decoder_map(channels=256, size=(50, 68)), out_channels=256)  # 442 blocks
    assert not route(decoder_map(channels=512, size=(25, 34)), out_channels=512)  # 126
    assert not route(decoder_map(channels=256, size=(40, 40)), out_channels=256)  # 200
    assert not route(decoder_map(channels=128, size=(100, 136)))
    assert not route(decoder_map(channels=256, size=(50, 68)), out_channels=128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not route(decoder_map(channels=256, size=(50, 68)), out_channels=256)


def test_other_cpus_keep_pytorch_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_module, "_AVX2_ONLY", False)
    monkeypatch.setattr(conv_module, "_INTEL_AVX512", False)
    assert not route(decoder_map())
    assert not route(decoder_map(channels=256, size=(50, 68)), out_channels=256)
    assert "Winograd3x3" not in Conv2d(128, 128, 3, padding=1)(decoder_map()).grad_fn.name()
