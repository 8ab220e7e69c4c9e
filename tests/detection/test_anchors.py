"""Anchors: cell anchors and grids against hand values and torchvision's generator."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from resnet_detect.detection.anchors import RECENT_SIZES, AnchorGenerator, make_cell_anchors


def test_cell_anchors_hand_values() -> None:
    # size 32: ratio 0.5 -> w = 32*sqrt(2) = 45.25, h = 22.63 -> half sides rounded 23, 11
    cells = make_cell_anchors([32], [0.5, 1.0, 2.0])
    expected = torch.tensor(
        [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    )
    assert torch.equal(cells, expected)
    # ratio-major, then size
    cells = make_cell_anchors([16, 64], [1.0, 2.0])
    assert cells.tolist() == [
        [-8, -8, 8, 8],
        [-32, -32, 32, 32],
        [-6, -11, 6, 11],
        [-23, -45, 23, 45],
    ]


def test_grid_order_and_coordinates() -> None:
    gen = AnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]])
    feature = torch.zeros(1, 8, 2, 3)
    (anchors,) = gen([feature], (8, 12))  # stride 4 on both axes
    assert anchors.shape == (2 * 3 * 3, 4)
    # location (y=1, x=2) is the 6th location (row-major); its first cell anchor
    assert anchors[5 * 3].tolist() == [8 - 23, 4 - 11, 8 + 23, 4 + 11]
    assert anchors[5 * 3 + 2].tolist() == [8 - 11, 4 - 23, 8 + 11, 4 + 23]
    assert anchors[0].tolist() == [-23, -11, 23, 11]


def test_offset_half_cell() -> None:
    gen = AnchorGenerator(sizes=[[16]], aspect_ratios=[[1.0]], offset=0.5)
    (anchors,) = gen([torch.zeros(1, 1, 2, 2)], (32, 32))  # stride 16
    assert anchors.tolist() == [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]]


def test_stride_is_padded_size_floordiv_grid() -> None:
    # P6 of an 800x1088 batch is 13x17: torchvision's rule gives stride 800 // 13 = 61 in y.
    gen = AnchorGenerator(sizes=[[512]], aspect_ratios=[[1.0]])
    (anchors,) = gen([torch.zeros(1, 1, 13, 17)], (800, 1088))
    centres_y = ((anchors[:, 1] + anchors[:, 3]) / 2).unique()
    centres_x = ((anchors[:, 0] + anchors[:, 2]) / 2).unique()
    assert centres_y[1].item() == 61 and centres_y[-1].item() == 12 * 61
    assert centres_x[1].item() == 64 and centres_x[-1].item() == 16 * 64


def test_fpn_anchors_equal_torchvision() -> None:
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    ref = TVAnchorGenerator(sizes, ratios)
    padded = (96, 128)
    feats = [torch.zeros(1, 4, 96 // s, 128 // s) for s in (4, 8, 16, 32)] + [
        torch.zeros(1, 4, 2, 2)
    ]
    expected = ref(ImageList(torch.zeros(1, 3, *padded), [padded]), feats)[0]
    got = torch.cat(ours(feats, padded))
    assert torch.equal(got, expected)
    assert ours.num_anchors_per_location == [3] * 5


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="same number of levels"):
        AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0], [1.0], [2.0]])
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(sizes=[[0]], aspect_ratios=[[1.0]])
    # a flat list (detectron2 spreads it over every level), a null or a name in a level were
    # TypeErrors; torchvision's tuples are lists of numbers too
    for sizes, ratios, named in (
            ([32, 64], [[1.0]], "sizes"), ([[None], [64]], [[1.0]], "sizes"),
            ([[32]], [["a"]], "aspect_ratios"), ([[32]], None, "aspect_ratios"),
            ([[32]], [[True]], "aspect_ratios")):
        with pytest.raises(ValueError, match=rf"anchor {named} must be a list of lists of "
                                             rf"numbers, one list per feature level"):
            AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    assert AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0),)).sizes == [
        [32], [64]]
    assert AnchorGenerator(sizes=[np.array([32.0])], aspect_ratios=[[np.float32(1.0)]]).sizes \
        == [[32.0]]  # numpy's numbers too
    with pytest.raises(ValueError, match="2 levels"):
        AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0]])(
            [torch.zeros(1, 1, 2, 2)], (8, 8)
        )


def test_anchors_are_kept_per_size_and_device_and_follow_the_model() -> None:
    generator = AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[0.5, 1.0, 2.0]])
    maps = [torch.zeros(1, 1, 8, 10), torch.zeros(1, 1, 4, 5)]
    first = generator(maps, (64, 80))
    again = generator(maps, (64, 80))
    assert all(a is b for a, b in zip(first, again))  # computed once for a size
    other = generator([torch.zeros(1, 1, 8, 12), torch.zeros(1, 1, 4, 6)], (64, 96))
    assert [len(a) for a in other] == [8 * 12 * 3, 4 * 6 * 3]
    # what a new generator computes for the same size
    fresh = AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[0.5, 1.0, 2.0]])
    assert all(torch.equal(a, b) for a, b in zip(first, fresh(maps, (64, 80))))
    # the cell anchors move with the model and are not saved in checkpoints
    assert generator.state_dict() == {}
    generator.double()  # anchors of a size not kept yet are float32 too
    assert all(a.dtype == torch.float32 for a in generator(maps[:1] + [torch.zeros(1, 1, 4, 6)],
                                                           (64, 96)))
    with torch.inference_mode():  # not the tensors of outside inference mode
        inside = generator(maps, (64, 80))
    assert all(a.is_inference() for a in inside) and not any(a.is_inference() for a in first)
    for size in range(16, 16 + 2 * RECENT_SIZES):  # kept sizes are bounded
        generator([torch.zeros(1, 1, size, size), torch.zeros(1, 1, size // 2, size // 2)],
                  (8 * size, 8 * size))
    assert len(generator._recent) == RECENT_SIZES
