"""The Adam every stage builds (easlurm.runtime.adam): torch's fused implementation where it exists, the same update
as the default one up to rounding, and a resume across the two keeps the chosen one."""
from __future__ import annotations

import copy

import torch

from easlurm.runtime import adam


def _net(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 2, 1)).to(dtype)


def _steps(net: torch.nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.rand(2, 3, 8, 8, generator=gen, dtype=next(net.parameters()).dtype)
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()


def test_fused_where_torch_has_it_and_the_same_update_as_the_default():
    a, b = _net(torch.float64), _net(torch.float64)
    fused, plain = adam(a.parameters(), 1e-2, (0.9, 0.99)), adam(b.parameters(), 1e-2, (0.9, 0.99), fused=False)
    assert fused.param_groups[0]["fused"] and not plain.param_groups[0]["fused"]
    _steps(a, fused, 5)
    _steps(b, plain, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    meta = torch.nn.Linear(2, 2, device="meta")
    assert not adam(meta.parameters(), 1e-3, (0.9, 0.99)).param_groups[0]["fused"]  # no fused kernel there


def test_a_resume_across_implementations_keeps_the_chosen_one_and_its_trajectory():
    ref, net = _net(torch.float64), _net(torch.float64)
    ref_opt = adam(ref.parameters(), 1e-2, (0.9, 0.99))
    _steps(ref, ref_opt, 6)
    # Three steps with the default implementation (a run made before fused Adam), saved, then resumed fused.
    old = adam(net.parameters(), 1e-2, (0.9, 0.99), fused=False)
    _steps(net, old, 3)
    saved = copy.deepcopy(old.state_dict())
    assert not saved["param_groups"][0]["fused"] and saved["state"][0]["step"].device.type == "cpu"
    resumed = adam(net.parameters(), 1e-2, (0.9, 0.99))
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["fused"] is True
    _steps_from(net, resumed, start=3, total=6)
    for p, q in zip(ref.parameters(), net.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def _steps_from(net: torch.nn.Module, opt: torch.optim.Optimizer, start: int, total: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for i in range(total):
        x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        if i < start:
            continue
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()


def test_a_gradient_laid_out_unlike_its_parameter_gets_the_right_update():
    """torch's fused CPU Adam reads a channels-last gradient of a contiguous parameter as if it were contiguous (a
    permuted update: SwinIR's conv gradients are laid out so); easlurm's Adam gives such a gradient its parameter's
    layout first, so the update is the default implementation's."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    b = torch.nn.Parameter(a.detach().clone())
    grad = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    assert grad.stride() != a.stride()
    fused, plain = adam([a], 0.1, (0.9, 0.99)), adam([b], 0.1, (0.9, 0.99), fused=False)
    assert fused.param_groups[0]["fused"]
    for _ in range(3):
        a.grad = grad.clone(memory_format=torch.preserve_format)
        b.grad = grad.clone(memory_format=torch.preserve_format)
        fused.step()
        plain.step()
    torch.testing.assert_close(fused.state[a]["exp_avg"], plain.state[b]["exp_avg"])
    torch.testing.assert_close(a.detach(), b.detach())
