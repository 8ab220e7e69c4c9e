"""Size helpers that an ONNX export can trace: the per-row indices of a mask."""
import torch

from detection.tracing import true_indices_per_row


def _per_row_nonzero(mask: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(row, as_tuple=True)[0] for row in mask]


def test_true_indices_per_row_equals_a_nonzero_per_row() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 37, generator=gen) < 0.3
    mask[1] = False  # an empty row
    mask[3] = True  # a full one
    for case in (mask, torch.zeros(3, 0, dtype=torch.bool), torch.zeros(0, 4, dtype=torch.bool)):
        got = true_indices_per_row(case)
        expected = _per_row_nonzero(case)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == torch.int64 and torch.equal(g, e)


def test_true_indices_per_row_keeps_counts_dynamic_when_traced() -> None:
    def first_row_sum(values: torch.Tensor) -> torch.Tensor:
        return values[0][true_indices_per_row(values > 0)[0]].sum()

    example = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, -3.0]])
    traced = torch.jit.trace(first_row_sum, (example,))
    other = torch.tensor([[-1.0, 4.0, 5.0], [1.0, -1.0, -1.0]])
    assert traced(other).item() == 9.0
    other = torch.tensor([[-1.0, -4.0, 5.0], [1.0, -1.0, -1.0]])
    assert traced(other).item() == 5.0  # one entry: a count frozen at 2 would add -1
