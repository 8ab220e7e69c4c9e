"""engine.optim: the fused SGD steps parameters whose first gradient comes late, with the
numbers of PyTorch's unfused SGD (to rounding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_detect.engine.optim import build_optimizer


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_parameter_first_trained_after_the_others_steps_as_unfused_sgd(nesterov: bool) -> None:
    """Step 1 trains `a` only (as path sampling leaves a branch out), step 2 both: the fused
    step refused `b` without a momentum buffer beside `a`'s."""
    torch.manual_seed(0)
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4, 3))
    reference = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    ours = build_optimizer(model, name="sgd", lr=0.1, weight_decay=1e-4, nesterov=nesterov)
    assert ours.defaults["fused"]
    theirs = torch.optim.SGD([{"params": [reference["a"], reference["b"]],
                               "weight_decay": 1e-4}], lr=0.1, momentum=0.9, nesterov=nesterov)
    for names in (["a"], ["a", "b"], ["b"], ["a", "b"]):
        for params, optimizer in ((dict(model.named_parameters()), ours), (reference, theirs)):
            optimizer.zero_grad()
            sum((params[n] ** 2).sum() for n in names).backward()
            optimizer.step()
    for name, param in model.named_parameters():  # fused and unfused round apart
        torch.testing.assert_close(param, reference[name], rtol=1e-6, atol=1e-7)


def test_the_zero_momentum_buffers_leave_the_fused_steps_bit_identical() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    ours = build_optimizer(model, name="sgd", lr=0.1, weight_decay=0.0)
    theirs = torch.optim.SGD(reference, lr=0.1, momentum=0.9, fused=True)
    x = torch.randn(8, 6)
    for _ in range(3):
        for params, optimizer in ((list(model.parameters()), ours), (reference, theirs)):
            optimizer.zero_grad()
            torch.nn.functional.linear(x, *params).square().sum().backward()
            optimizer.step()
    for param, expected in zip(model.parameters(), reference):
        assert torch.equal(param, expected)
