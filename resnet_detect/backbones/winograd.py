"""The 3x3 stride-1 "same" convolution as Winograd F(4x4, 3x3) matrix products (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016), forward and backward.

Each 4 x 4 block of output pixels comes from a 6 x 6 tile of input pixels: the tiles and the
kernels are carried into a 36-point transform domain, where the convolution is 36 matrix
products (tiles x in channels) @ (in channels x out channels), and the products are carried
back to 4 x 4 outputs. That is 36 multiplications per output block and channel pair instead of
144: 4x fewer. The transforms are small matrix products over the 36 (or 16) tile points, run
on chunks of tiles that stay in cache. On CPUs whose oneDNN has no Winograd kernels of its own
(AVX2) this is faster for maps of many channels (BENCHMARKS.md). The error against an exact
convolution is a few times float32's direct one (the transforms' constants reach 8).

The backward: the input gradient is the same convolution of the output gradient with the
flipped, transposed kernel; the weight gradient is the adjoint of the forward's products, 36
products (in channels x tiles) @ (tiles x out channels) summed over the chunks.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

# F(4x4, 3x3) with the points 0, 1, -1, 2, -2 and infinity: B^T (input), G (kernel), A^T (output)
_B_T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
# bytes of one chunk's transformed tiles (36 x tiles x channels floats): a few MB stay in cache
CHUNK_BYTES = 8 << 20


def _two_sided(matrix: list[list[float]]) -> Tensor:
    """M (x) M: M @ tile @ M^T on row-major flattened tiles as one matrix product."""
    m = torch.tensor(matrix, dtype=torch.float64)
    return torch.kron(m, m)


# float64; each call takes them in its own dtype
_INPUT, _KERNEL, _OUTPUT = _two_sided(_B_T), _two_sided(_G), _two_sided(_A_T)


def tile_grid(h: int, w: int) -> tuple[int, int]:
    """Rows and columns of 4 x 4 output blocks that cover an h x w map."""
    return -(-h // 4), -(-w // 4)


def _chunks(n: int, tile_rows: int, row_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(first image, last image + 1, first tile row, last tile row + 1) of each chunk: whole
    images while they fit, else bands of tile rows of one image."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    if rows >= tile_rows:
        images = rows // tile_rows
        for i in range(0, n, images):
            yield i, min(n, i + images), 0, tile_rows
        return
    for i in range(n):
        for r in range(0, tile_rows, rows):
            yield i, i + 1, r, min(tile_rows, r + rows)


def _padded_nhwc(x: Tensor, tile_rows: int, tile_cols: int) -> Tensor:
    """x (N, C, H, W) as an (N, 4 * rows + 2, 4 * cols + 2, C) buffer: a zero border of one
    pixel (the convolution's padding) and zeros beyond to whole tiles."""
    n, c, h, w = x.shape
    padded = x.new_zeros(n, 4 * tile_rows + 2, 4 * tile_cols + 2, c)
    padded[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    return padded


def _input_tiles(padded: Tensor, i0: int, i1: int, r0: int, r1: int, tile_cols: int) -> Tensor:
    """(36, tiles * C): the chunk's 6 x 6 input tiles, overlapping by two pixels, as rows."""
    _, height, width, c = padded.shape
    tiles = padded[i0:i1, 4 * r0:].as_strided(
        (6, 6, i1 - i0, r1 - r0, tile_cols, c),
        (width * c, c, height * width * c, 4 * width * c, 4 * c, 1))
    return tiles.reshape(36, -1)


def _transformed_input_chunks(x: Tensor, out_channels: int
                              ) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Per chunk: its images i0:i1 and tile rows r0:r1, and its input tiles carried into the
    transform domain, B^T d B as (36, tiles, C)."""
    n, c, h, w = x.shape
    tile_rows, tile_cols = tile_grid(h, w)
    padded = _padded_nhwc(x, tile_rows, tile_cols)
    b_t = _INPUT.to(x.dtype)
    row_bytes = 36 * tile_cols * max(c, out_channels) * x.element_size()
    for i0, i1, r0, r1 in _chunks(n, tile_rows, row_bytes):
        tiles = _input_tiles(padded, i0, i1, r0, r1, tile_cols)
        yield i0, i1, r0, r1, (b_t @ tiles).view(36, -1, c)


def _kernel_transform(weight: Tensor) -> Tensor:
    """(36, C, O): G g G^T of each (out, in) channel pair's 3 x 3 kernel."""
    o, c = weight.shape[:2]
    g = _KERNEL.to(weight.dtype)
    return (g @ weight.reshape(o * c, 9).t()).view(36, o, c).transpose(1, 2).contiguous()


def winograd_conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """conv2d(x, weight, stride=1, padding=1) for a 3x3 weight; a channels-last result."""
    n, _, h, w = x.shape
    o = weight.shape[0]
    tile_rows, tile_cols = tile_grid(h, w)
    kernels = _kernel_transform(weight)
    a_t = _OUTPUT.to(x.dtype)
    out = torch.empty((n, o, 4 * tile_rows, 4 * tile_cols), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    rows = out.permute(0, 2, 3, 1)  # the same memory as (N, H, W, O)
    for i0, i1, r0, r1, transformed in _transformed_input_chunks(x, o):
        blocks = a_t @ torch.bmm(transformed, kernels).view(36, -1)
        rows[i0:i1, 4 * r0:4 * r1].view(i1 - i0, r1 - r0, 4, tile_cols, 4, o).copy_(
            blocks.view(4, 4, i1 - i0, r1 - r0, tile_cols, o).permute(2, 3, 0, 4, 1, 5))
    if out.shape[2:] != (h, w):  # a fresh tensor: a slice cut only in height is no copy
        out = out[:, :, :h, :w].clone(memory_format=torch.channels_last)
    return out


def winograd_weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """The weight gradient of conv2d(x, weight, stride=1, padding=1) for a 3x3 weight."""
    n, c, h, w = x.shape
    o = grad.shape[1]
    tile_rows, tile_cols = tile_grid(h, w)
    grad_blocks = grad.new_zeros(n, 4 * tile_rows, 4 * tile_cols, o)
    grad_blocks[:, :h, :w] = grad.permute(0, 2, 3, 1)
    a_t = _OUTPUT.to(x.dtype)
    kernels = x.new_zeros(36, c, o)
    for i0, i1, r0, r1, transformed in _transformed_input_chunks(x, o):
        blocks = grad_blocks[i0:i1, 4 * r0:4 * r1].view(i1 - i0, r1 - r0, 4, tile_cols, 4, o)
        grad_products = a_t.t() @ blocks.permute(2, 4, 0, 1, 3, 5).reshape(16, -1)
        kernels.baddbmm_(transformed.transpose(1, 2), grad_products.view(36, -1, o))
    g = _KERNEL.to(x.dtype)
    return (g.t() @ kernels.view(36, c * o)).view(3, 3, c, o).permute(3, 2, 0, 1).contiguous()


class Winograd3x3(torch.autograd.Function):
    """conv2d(x, weight, bias, stride=1, padding=1) for a 3x3 weight, backward included."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        out = winograd_conv3x3(x, weight)
        if bias is not None:
            out = out.add_(bias.view(1, -1, 1, 1))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = winograd_conv3x3(grad, weight.flip(2, 3).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            grad_w = winograd_weight_grad(grad, x)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b
