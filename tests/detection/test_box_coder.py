"""Box coder: hand values, round trip, clamp, and torchvision's BoxCoder on the same input."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from resnet_detect.detection.box_coder import BoxCoder


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 500
    wh = torch.rand(n, 2, generator=gen) * 200 + 20  # size ratios < 62.5: no clamping
    return torch.cat([xy, xy + wh], dim=1)


def test_hand_values() -> None:
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 10.0, 25.0, 30.0]])  # centre moves (+10, +10), width x2, height x1
    deltas = coder.encode(ref, gt)
    expected = torch.tensor([[10 * 10 / 10, 10 * 10 / 20, 5 * math.log(2.0), 0.0]])
    assert torch.allclose(deltas, expected, atol=1e-6)


def test_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights=weights)
        ref, gt = _random_boxes(200, gen), _random_boxes(200, gen)
        assert torch.allclose(coder.decode(coder.encode(ref, gt), ref), gt, atol=1e-3)


def test_decode_several_boxes_per_reference() -> None:
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    gen = torch.Generator().manual_seed(1)
    ref = _random_boxes(5, gen)
    gts = [_random_boxes(5, gen) for _ in range(3)]
    deltas = torch.cat([coder.encode(ref, g) for g in gts], dim=1)  # (5, 3*4)
    decoded = coder.decode(deltas, ref).view(5, 3, 4)
    for k in range(3):
        assert torch.allclose(decoded[:, k], gts[k], atol=1e-3)


def test_scale_clamp() -> None:
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), ref)
    # width capped at 16 * exp(log(1000/16)) = 1000, centred on 8
    assert torch.allclose(out, torch.tensor([[8 - 500.0, 8 - 500.0, 8 + 500.0, 8 + 500.0]]))


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0),
                                     (10.0, 20.0, 5.0, 2.5)])
def test_equals_torchvision(weights) -> None:
    gen = torch.Generator().manual_seed(2)
    ref, gt = _random_boxes(300, gen), _random_boxes(300, gen)
    ours, theirs = BoxCoder(weights=weights), TVBoxCoder(weights)
    assert torch.equal(ours.encode(ref, gt), theirs.encode_single(gt, ref))
    deltas = torch.randn(300, 8, generator=gen) * 3  # some past the scale clamp
    assert torch.equal(ours.decode(deltas, ref), theirs.decode_single(deltas, ref))


def test_no_boxes() -> None:
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
