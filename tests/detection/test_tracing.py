"""Size helpers that an ONNX export can trace: the indices of the true entries of masks."""
import torch

from resnet_detect.detection.tracing import true_indices


def test_true_indices_equals_a_nonzero_per_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = list(torch.rand(5, 37, generator=gen) < 0.3)
    masks[1] = torch.zeros(37, dtype=torch.bool)  # no true entry
    masks[3] = torch.ones(37, dtype=torch.bool)  # all true
    masks.append(torch.rand(11, generator=gen) < 0.5)  # shorter than the others
    masks.append(torch.zeros(0, dtype=torch.bool))
    same_length = list(torch.rand(4, 23, generator=gen) < 0.5)
    for case in (masks, same_length, masks[:1], [torch.zeros(0, dtype=torch.bool)] * 2, []):
        got = true_indices(case)
        assert len(got) == len(case)
        for g, mask in zip(got, case):
            assert g.dtype == torch.int64 and torch.equal(g, torch.nonzero(mask)[:, 0])
    as_rows = true_indices(torch.stack(same_length))  # an (N, K) mask: each row
    for g, mask in zip(as_rows, same_length, strict=True):
        assert torch.equal(g, torch.nonzero(mask)[:, 0])


def test_true_indices_keeps_counts_dynamic_when_traced() -> None:
    def first_row_sum(values: torch.Tensor) -> torch.Tensor:
        return values[0][true_indices(list(values > 0))[0]].sum()

    example = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, -3.0]])
    traced = torch.jit.trace(first_row_sum, (example,))
    other = torch.tensor([[-1.0, 4.0, 5.0], [1.0, -1.0, -1.0]])
    assert traced(other).item() == 9.0
    other = torch.tensor([[-1.0, -4.0, 5.0], [1.0, -1.0, -1.0]])
    assert traced(other).item() == 5.0  # one entry: a count frozen at 2 would add -1
