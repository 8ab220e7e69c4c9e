"""padded_nms: greedy NMS of a padded batch as matrix products keeps what torchvision's NMS
keeps."""
import pytest
import torch
from torchvision.ops import nms

from resnet_detect.detection import padded_nms
from resnet_detect.detection.padded_nms import padded_greedy_nms


def clustered_boxes(images: int, count: int, clusters: int, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, count, 4) boxes around a few centres, as an RPN's top-k are, sorted by
    decreasing score per image, and their scores."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(images, clusters, 2, generator=gen) * 800
    sizes = torch.rand(images, clusters, 2, generator=gen) * 200 + 10
    pick = torch.randint(0, clusters, (images, count, 1), generator=gen).expand(-1, -1, 2)
    centre = centres.gather(1, pick) + torch.randn(images, count, 2, generator=gen) * 15
    size = sizes.gather(1, pick) * (1 + 0.2 * torch.randn(images, count, 2, generator=gen)
                                    ).clamp(min=0.3)
    scores, order = torch.rand(images, count, generator=gen).sort(dim=1, descending=True)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    return boxes.gather(1, order[..., None].expand(-1, -1, 4)), scores


@pytest.mark.parametrize("count,clusters", [(1, 1), (40, 3), (500, 20), (1200, 200)])
def test_keeps_what_torchvisions_nms_keeps(count: int, clusters: int) -> None:
    """Also under autocast, as in an RPN of a bf16 training step."""
    boxes, scores = clustered_boxes(3, count, clusters)
    # invalid boxes (padding, filtered out) neither stay nor suppress: the best one of each
    # image among them
    valid = torch.rand(3, count, generator=torch.Generator().manual_seed(1)) > 0.2
    valid[:, 0] = False
    for threshold, amp in ((0.5, False), (0.7, False), (0.7, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            keep = padded_greedy_nms(boxes, valid, threshold)
        for image in range(3):
            rows = valid[image].nonzero()[:, 0]
            expected = rows[nms(boxes[image, rows], scores[image, rows], threshold)]
            assert torch.equal(keep[image].nonzero()[:, 0], expected.sort().values)
        assert keep[:, 0].sum() == 0


def chain(count: int, step: float = 1.2) -> torch.Tensor:
    """Boxes 10 x 10 in a line, `step` apart: box i overlapping i + 1 by 0.79 and i + 2 by
    0.61 at 1.2."""
    x = torch.arange(count, dtype=torch.float32) * step
    return torch.stack([x, torch.zeros(count), x + 10, torch.full((count,), 10.0)], dim=1)


def test_a_long_chain_of_suppressions_is_followed_to_its_end(monkeypatch) -> None:
    """Greedy NMS keeps every other box of a chain, and the products need as many steps as
    boxes to settle: several checks of "changed?" below the limit, torchvision's NMS for the
    rows past it (only those: the others keep their products' answer)."""
    steps = padded_nms.MAX_CHECKS * padded_nms.STEPS_PER_CHECK
    finished = []
    monkeypatch.setattr(padded_nms, "nms", lambda *args: finished.append(args) or nms(*args))
    for count, finished_rows in ((3 * padded_nms.STEPS_PER_CHECK + 3, 0), (steps + 11, 1)):
        boxes = torch.stack([chain(count), chain(count, step=20.0)])  # the second row: no
        # overlaps, settled at once
        valid = torch.ones(2, count, dtype=torch.bool)
        valid[1, 1] = False
        finished.clear()
        keep = padded_greedy_nms(boxes, valid, 0.7)
        assert len(finished) == finished_rows
        assert keep[0].tolist() == [i % 2 == 0 for i in range(count)]
        assert keep[1].tolist() == [i != 1 for i in range(count)]
        for row in range(2):
            rows = valid[row].nonzero()[:, 0]
            expected = rows[nms(boxes[row, rows], torch.linspace(1, 0, count)[rows], 0.7)]
            assert torch.equal(keep[row].nonzero()[:, 0], expected.sort().values)
    monkeypatch.setattr(padded_nms, "IOU_CHUNK", 1)  # the IoUs one image at a time
    boxes, scores = clustered_boxes(4, 300, 10)
    valid = torch.ones(4, 300, dtype=torch.bool)
    assert torch.equal(padded_greedy_nms(boxes, valid, 0.7),
                       torch.stack([torch.zeros(300, dtype=torch.bool).index_fill_(
                           0, nms(b, s, 0.7), True) for b, s in zip(boxes, scores)]))


def test_an_iou_at_the_threshold_is_not_suppressed() -> None:
    """torchvision drops a box whose IoU is above the threshold, not at it: IoU 0.5 exactly."""
    boxes = torch.tensor([[[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0], [0.0, 0.0, 4.0, 1.0]]])
    keep = padded_greedy_nms(boxes, torch.ones(1, 3, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[True, True, False]]  # 1 and 0: 2/4; 2 and 0: 3/4


def test_the_steps_benchmark_counts_the_products_a_row_needs() -> None:
    """benchmarks/padded_nms_steps.py: a chain of n boxes changes at every step up to n - 1
    (box j is decided at step j), so its n-th product is the first that shows it settled;
    boxes apart are settled by the first."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from padded_nms_steps import settle_steps
    boxes = torch.stack([chain(10), chain(10, step=20.0), torch.cat([chain(3), chain(7, 20.0)
                                                                     + 100])])
    assert settle_steps(boxes, torch.ones(3, 10, dtype=torch.bool), 0.7) == [10, 1, 3]
