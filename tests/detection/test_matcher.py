"""Matcher: thresholds, ignored band, low-quality matches, empty inputs, torchvision parity."""

import pytest
import torch
from torchvision.ops import box_iou
from torchvision.models.detection._utils import Matcher as TVMatcher

from resnet_detect.detection.matcher import Matcher


def test_thresholds_and_ignore_band() -> None:
    # 2 gt x 5 predictions
    iou = torch.tensor(
        [
            [0.80, 0.50, 0.20, 0.00, 0.65],
            [0.10, 0.60, 0.25, 0.70, 0.30],
        ]
    )
    matcher = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=False)
    idxs, labels = matcher(iou)
    assert idxs.tolist() == [0, 1, 1, 1, 0]
    assert labels.tolist() == [1, -1, 0, 1, -1]


def test_low_quality_matches() -> None:
    # gt 1's best prediction (IoU 0.4) is below the foreground threshold; it becomes
    # foreground, and keeps its own best gt. Ties are all promoted.
    iou = torch.tensor(
        [
            [0.9, 0.1, 0.45, 0.0],
            [0.1, 0.4, 0.40, 0.4],
        ]
    )
    matcher = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=True)
    idxs, labels = matcher(iou)
    assert labels.tolist() == [1, 1, 1, 1]
    assert idxs.tolist() == [0, 1, 0, 1]
    plain = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=False)
    assert plain(iou)[1].tolist() == [1, -1, -1, -1]


def test_equal_thresholds_have_no_ignore_band() -> None:
    iou = torch.tensor([[0.49, 0.5, 0.51]])
    _, labels = Matcher(low_threshold=0.5, high_threshold=0.5, allow_low_quality_matches=False)(iou)
    assert labels.tolist() == [0, 1, 1]


def test_empty_inputs() -> None:
    matcher = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=True)
    idxs, labels = matcher(torch.zeros(0, 4))
    assert idxs.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]
    idxs, labels = matcher(torch.zeros(3, 0))
    assert idxs.numel() == 0 and labels.numel() == 0


def test_equals_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    iou = torch.rand(6, 400, generator=gen) ** 2
    for low, high, allow in ((0.3, 0.7, True), (0.5, 0.5, False)):
        idxs, labels = Matcher(
            low_threshold=low, high_threshold=high, allow_low_quality_matches=allow
        )(iou)
        ref = TVMatcher(high, low, allow_low_quality_matches=allow)(iou)
        assert torch.equal(labels == 1, ref >= 0)
        assert torch.equal(labels == 0, ref == -1)
        assert torch.equal(labels == -1, ref == -2)
        assert torch.equal(idxs[ref >= 0], ref[ref >= 0])


@pytest.mark.parametrize("low_quality", [True, False])
def test_matching_boxes_in_blocks_of_gt_rows_gives_the_whole_matrixs_result(
        low_quality: bool) -> None:
    """A dense image (1000 boxes against R50-FPN's 267k anchors) took 9 GB in one IoU matrix:
    blocks of gt rows give the same indices and labels, bit for bit, ties included (the first
    of equal gt boxes wins, as max() picks it)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 60], dim=1)
    gt = boxes[torch.randint(0, 300, (57,), generator=g)] + torch.randn(57, 4, generator=g)
    gt = torch.cat([gt, gt[:5], boxes[:3]])  # repeated gt boxes: ties between gt rows
    matcher = Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=low_quality)
    whole = matcher(box_iou(gt, boxes))
    for max_elements in (300, 1000, 7 * 300, 10**6):  # 1, 3, 7 rows a block, all at once
        blocks = matcher.match_boxes(gt, boxes, max_elements=max_elements)
        assert torch.equal(blocks[0], whole[0]) and torch.equal(blocks[1], whole[1])
    assert (whole[1] == 1).sum() > 10 and (whole[1] == -1).sum() > 10  # every label occurs
