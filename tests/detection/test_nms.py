"""batched_nms_top gives torchvision's batched_nms(...)[:k] while running NMS on fewer boxes."""
import pytest
import torch
from torchvision.ops import batched_nms

from resnet_detect.detection import nms
from resnet_detect.detection.nms import batched_nms_top


def _candidates(count: int, classes: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * 400
    wh = torch.rand(count, 2, generator=generator) * 120 + 4
    scores = torch.randperm(count, generator=generator).float() / count  # no two equal
    labels = torch.randint(0, classes, (count,), generator=generator)
    return torch.cat([xy, xy + wh], 1), scores, labels


@pytest.mark.parametrize("count,classes,k", [
    (30_000, 1203, 300),  # LVIS-like: far more candidates than survivors
    (20_000, 3, 100),     # few classes: many suppressed, the prefix has to grow
    (500, 80, 100),       # no more than 4k candidates: torchvision's call itself
    (2_000, 1, 1_000),    # one class: more asked for than ever survive
])
def test_same_indices_as_whole_nms(count: int, classes: int, k: int) -> None:
    for seed in range(3):
        boxes, scores, labels = _candidates(count, classes, seed)
        expected = batched_nms(boxes, scores, labels, 0.5)[:k]
        got = batched_nms_top(boxes, scores, labels, 0.5, k)
        assert torch.equal(got, expected)


def test_prefix_grows_while_fewer_than_k_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    # the 60 best candidates are one box of one class: NMS keeps one of them, so the first
    # prefix (the 4k = 20 best) leaves 1 survivor and the next one (80) the rest
    boxes, scores, labels = _candidates(200, 5, seed=7)
    scores[:60] = 2.0 + torch.arange(60, 0, -1) / 100
    boxes[:60] = torch.tensor([10.0, 10.0, 60.0, 60.0])
    labels[:60] = 0
    sizes = []
    real_nms = nms.batched_nms
    monkeypatch.setattr(nms, "batched_nms", lambda b, *a: sizes.append(len(b)) or real_nms(b, *a))
    got = batched_nms_top(boxes, scores, labels, 0.5, 5)
    assert torch.equal(got, real_nms(boxes, scores, labels, 0.5)[:5])
    assert got[0] == 0 and sizes == [19, 79]  # strictly above the 20th and 80th best score


def test_equal_scores_stay_together_at_the_prefix_boundary() -> None:
    # scores on a coarse grid: many ties, some at every prefix boundary; which of two equal,
    # overlapping boxes survives is arbitrary, but the kept scores are torchvision's
    boxes, scores, labels = _candidates(6_000, 2, seed=3)
    scores = (scores * 20).floor() / 20
    expected = batched_nms(boxes, scores, labels, 0.5)[:50]
    got = batched_nms_top(boxes, scores, labels, 0.5, 50)
    assert torch.equal(scores[got], scores[expected])


def test_empty_and_zero() -> None:
    empty = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert batched_nms_top(*empty, 0.5, 100).shape == (0,)
    boxes, scores, labels = _candidates(1_000, 4, seed=1)
    assert batched_nms_top(boxes, scores, labels, 0.5, 0).shape == (0,)
