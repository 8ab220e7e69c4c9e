"""batched_nms_top gives torchvision's batched_nms(...)[:k] while running NMS on fewer boxes;
per_image_batched_nms gives the per-image batched_nms loop's keep indices, streams or not."""
import warnings

import pytest
import torch
from torchvision.ops import batched_nms
from torchvision.ops import boxes as box_ops

from resnet_detect.detection.nms import batched_nms_top, per_image_batched_nms


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
    expected = batched_nms(boxes, scores, labels, 0.5)[:5]
    sizes = []
    for name in ("_batched_nms_vanilla", "_batched_nms_coordinate_trick"):
        real = getattr(box_ops, name)
        monkeypatch.setattr(box_ops, name, lambda b, *a, real=real: sizes.append(len(b))
                            or real(b, *a))
    got = batched_nms_top(boxes, scores, labels, 0.5, 5)
    assert torch.equal(got, expected)
    assert got[0] == 0 and sizes == [19, 79]  # strictly above the 20th and 80th best score


def test_equal_scores_stay_together_at_the_prefix_boundary() -> None:
    # scores on a coarse grid: many ties, some at every prefix boundary; which of two equal,
    # overlapping boxes survives is arbitrary, but the kept scores are torchvision's
    boxes, scores, labels = _candidates(6_000, 2, seed=3)
    scores = (scores * 20).floor() / 20
    expected = batched_nms(boxes, scores, labels, 0.5)[:50]
    got = batched_nms_top(boxes, scores, labels, 0.5, 50)
    assert torch.equal(scores[got], scores[expected])


def test_of_two_equal_overlapping_boxes_the_first_survives_as_over_every_candidate() -> None:
    """A saturated softmax scores 1.0 exactly: torchvision keeps the lower index of two
    overlapping boxes of one class and score (the prefix was in topk's order)."""
    for seed in range(20):
        boxes, scores, labels = _candidates(3_000, 50, seed)
        i, j = sorted(torch.randperm(3_000, generator=torch.Generator().manual_seed(seed))[:2]
                      .tolist())
        scores[[i, j]] = 1.0
        labels[[i, j]] = 3
        boxes[i], boxes[j] = torch.tensor([10.0, 10, 60, 60]), torch.tensor([12.0, 10, 62, 60])
        got = batched_nms_top(boxes, scores, labels, 0.5, 100)
        assert i in got and j not in got
        assert torch.equal(got.sort().values, batched_nms(boxes, scores, labels, 0.5)[:100]
                           .sort().values)


def test_a_prefix_takes_the_whole_calls_way_through_torchvision() -> None:
    """Over 1000 boxes on a CPU torchvision runs NMS class by class; a prefix of 399 would
    have taken its one NMS of class-offset boxes, whose float rounding turned an IoU of
    0.50015 into 0.49971 and kept a box the whole call suppresses."""
    boxes, scores, labels = _candidates(2_000, 80, seed=0)
    boxes[5], scores[5] = torch.tensor([1300.0, 700, 1333, 799]), 0.95
    boxes[0], boxes[1] = torch.tensor([0.0, 0, 10, 10]), torch.tensor([3.33204, 0, 13.33204, 10])
    scores[0], scores[1] = 1.5, 1.4  # the best two
    labels[0] = labels[1] = 79
    expected = batched_nms(boxes, scores, labels, 0.5)[:100]
    assert 0 in expected and 1 not in expected
    assert torch.equal(batched_nms_top(boxes, scores, labels, 0.5, 100), expected)


def test_a_traced_graph_runs_the_whole_nms_on_any_input() -> None:
    """Traced (ONNX export), the prefix loop would freeze the branch the example took: a
    heavily suppressed input then gave 1 detection instead of 100."""
    def top(boxes, scores, labels):
        return batched_nms_top(boxes, scores, labels, 0.5, 100)

    boxes, scores, labels = _candidates(2_000, 80, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        traced = torch.jit.trace(top, (boxes, scores, labels))
    boxes[:1900] = torch.tensor([5.0, 5, 50, 50])  # one box, many times: 1 survivor of them
    labels[:1900] = 0
    expected = batched_nms(boxes, scores, labels, 0.5)[:100]
    assert len(expected) == 100 and torch.equal(traced(boxes, scores, labels), expected)


def test_empty_and_zero() -> None:
    empty = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert batched_nms_top(*empty, 0.5, 100).shape == (0,)
    boxes, scores, labels = _candidates(1_000, 4, seed=1)
    assert batched_nms_top(boxes, scores, labels, 0.5, 0).shape == (0,)


def _images(device: str = "cpu") -> list[tuple[torch.Tensor, ...]]:
    """Per image (boxes, scores, levels) as the RPN has them: 5 levels, some images empty or
    of one box, and one above the CPU's 4000 coordinates (torchvision's per-level path)."""
    sizes = [300, 0, 1, 1200, 57, 0, 2_000, 5, 800]
    images = [_candidates(n, 5, seed) for seed, n in enumerate(sizes)]
    return [tuple(t.to(device) for t in image) for image in images]


@pytest.mark.parametrize("streams", [0, 1, 4, 16])
def test_per_image_nms_keeps_what_the_per_image_loop_keeps(streams: int) -> None:
    images = _images()
    expected = [batched_nms(b, s, i, 0.7) for b, s, i in images]
    got = per_image_batched_nms(*zip(*images), 0.7, streams=streams)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype == torch.int64 and torch.equal(g, e)
    assert [len(k) for k in got][1:3] == [0, 1]  # the empty image, the one of one box
    assert per_image_batched_nms([], [], [], 0.7, streams=streams) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side streams need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_image_nms_on_side_streams_keeps_what_the_loop_keeps(dtype: torch.dtype) -> None:
    # bf16 boxes: torchvision's CUDA NMS takes them only under autocast (which casts them to
    # float32), and autocast is set per thread: the side streams' threads take the caller's
    images = [(b.to(dtype), s.to(dtype), i) for b, s, i in _images("cuda")]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        expected = [batched_nms(b, s, i, 0.7) for b, s, i in images]
        for _ in range(3):  # the streams and threads are made once, then reused
            got = per_image_batched_nms(*zip(*images), 0.7, streams=4)
            # read on the caller's stream after it: no torch.cuda.synchronize() in between
            assert [k.tolist() for k in got] == [k.tolist() for k in expected]
