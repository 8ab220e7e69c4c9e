"""engine.optim: the fused SGD steps parameters whose first gradient comes late, with the
numbers of PyTorch's unfused SGD (to rounding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_detect.engine.optim import build_optimizer, unknown_modules


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


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_only_conv_and_linear_weights_decay(name: str) -> None:
    """A step with zero gradients moves only what weight decay moves: every conv and linear
    weight by exactly w * (1 - lr * wd) (SGD's and AdamW's decay alike, the first step), no
    bias and no norm weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, name=name, lr=0.1, weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.01) if p.ndim > 1 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=n)  # 1e-3 apart


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_lr_multipliers_scale_the_named_modules_the_longest_name_winning(name: str) -> None:
    """One step from a gradient of ones moves each parameter by lr x its module's factor
    (SGD's first step: lr x grad; AdamW's: lr x sign, ~lr), `backbone.res` by 0.5 inside
    `backbone`'s 0.1, `head` by 1, a name that only begins like a module's (`backbone.re`)
    matching nothing; norms and biases keep no decay in their module's groups."""
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.stem = nn.Conv2d(1, 2, 3)
    model.backbone.res = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    model.head = nn.Linear(2, 1)
    optimizer = build_optimizer(model, name=name, lr=0.01, weight_decay=0.0,
                                lr_multipliers={"backbone.res": 0.5, "backbone": 0.1})
    factors = {"backbone.stem": 0.1, "backbone.res": 0.5, "head": 1.0}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        p.data.zero_()  # the step is the parameter afterwards, to float32 rounding
    optimizer.step()
    for n, p in model.named_parameters():
        factor = next(f for module, f in factors.items() if n.startswith(module))
        torch.testing.assert_close(p.detach(), torch.full_like(p, -0.01 * factor), rtol=1e-6,
                                   atol=0, msg=n)
    # the first group is the unnamed modules' (the logged lr); the others in sorted names
    assert [(g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        (0.01, 1), (0.01, 1), (0.001, 1), (0.001, 1), (0.005, 1), (0.005, 3)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0] * 6
    decaying = build_optimizer(model, name=name, lr=0.01, weight_decay=0.1,
                               lr_multipliers={"backbone": 0.1})
    assert [(g["weight_decay"], [p.ndim for p in g["params"]])
            for g in decaying.param_groups] == [(0.1, [2]), (0.0, [1]), (0.1, [4, 4]),
                                                (0.0, [1, 1, 1, 1])]
    assert unknown_modules(model, ["backbone.re", "backbone.res.1", "head.bias", "neck"]) == [
        "backbone.re", "neck"]
    model.backbone.stem.requires_grad_(False)  # frozen: a factor there changes nothing
    assert unknown_modules(model, ["backbone.stem", "backbone"]) == []
    assert unknown_modules(model, ["backbone.stem", "backbone"], trainable=True) == [
        "backbone.stem"]
