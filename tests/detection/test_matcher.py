"""Matcher: thresholds, ignored band, low-quality matches, empty inputs, torchvision parity."""

import torch
from torchvision.models.detection._utils import Matcher as TVMatcher

from detection.matcher import Matcher


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
