"""k members' iteration as one batched computation: stacked weights, ``torch.func.vmap``, one perceptual pass.

:class:`PopulationStep` does for k members at once exactly what k :class:`~easlurm.train.member.MemberStep` calls
do one after another (each member on its own batch, with its own generator, discriminator, preference and Adam
states): the generators and discriminators run as one vmapped call over weights stacked along a new leading
dimension (convolutions become grouped convolutions), the frozen perceptual net sees all members' outputs in one
pass, the two gradients are taken once for all members (the members' losses are independent, so the gradient of
their sum with respect to member i's weights is member i's gradient), the per-member per-tensor normalised mix is
computed on the stacked gradients, and one fused Adam updates the stacked weights (Adam is elementwise: the same as
k Adams). The discriminators' BatchNorm statistics are stacked buffers updated in place, in the single step's order.

It is the population-batched form of issue 17 and is **not used for training yet**: whether it is faster than k
steps in turn depends on the grouped-convolution kernels of the GPU at hand (the gate in BENCHMARKS.md "GPU", still
to be measured). On CPU it is tested equal to k single steps in float64 (``tests/test_population_step.py``) and its
operator count per member is benchmarked (``bench/population_step.py``). bf16 autocast and channels_last are not
supported here (the reference precision is TF32/fp32).

Tensors: LR ``k×B×3×h×w``, HR ``k×B×3×H×W`` (member i's batch at index i), RGB in [0, 1].
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from .. import losses
from ..config import Config
from ..errors import ConfigError
from ..runtime import adam
from .member import StepResult


def _flat(grads: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked gradients (k × … each) as one flat vector, tensor after tensor (each tensor's k members in order),
    and the lengths of its (tensor, member) segments."""
    k = grads[0].shape[0]
    lengths = torch.tensor([g[0].numel() for g in grads for _ in range(k)], device=grads[0].device)
    return torch.cat([g.reshape(-1) for g in grads]), lengths


def _squares(flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of squares of every (tensor, member) segment: one reduction whatever the tensor count."""
    return torch.segment_reduce(flat * flat, "sum", lengths=lengths)


def stacked_mix(kind: str, g1: Sequence[torch.Tensor], g2: Sequence[torch.Tensor], w_dist: torch.Tensor,
                w_perc: torch.Tensor, eps: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`easlurm.train.mix.mix` for stacked gradients (k × … per tensor) and per-member weights (k vectors):
    ``normalised``: w_dist,i·g1 / (‖g1‖ + ε) + w_perc,i·g2 / (‖g2‖ + ε) per member and tensor; ``weighted_sum``:
    w_dist,i·g1 + w_perc,i·g2. A member whose weight is 0 gets exactly the other term (0·x adds nothing). Computed on
    one flat vector (a handful of operators for any tensor count, as the single step's ``_foreach`` mix). Returns
    the directions (stacked, contiguous) and each member's global gradient norms ‖g1‖, ‖g2‖ (k vectors)."""
    if kind not in ("normalised", "weighted_sum"):
        raise ValueError(f"adam.mix: unknown {kind!r}")
    k, n_tensors = g1[0].shape[0], len(g1)
    f1, lengths = _flat(g1)
    f2, _ = _flat(g2)
    sq1, sq2 = _squares(f1, lengths), _squares(f2, lengths)
    if kind == "weighted_sum":
        s1, s2 = w_dist.repeat(n_tensors), w_perc.repeat(n_tensors)
    else:
        s1, s2 = w_dist.repeat(n_tensors) / (sq1.sqrt() + eps), w_perc.repeat(n_tensors) / (sq2.sqrt() + eps)
    total = f1.numel()
    d = (f1 * s1.repeat_interleave(lengths, output_size=total)
         + f2 * s2.repeat_interleave(lengths, output_size=total))
    out = [t.view(g.shape) for t, g in zip(d.split([g.numel() for g in g1]), g1)]
    return out, sq1.view(n_tensors, k).sum(0).sqrt(), sq2.view(n_tensors, k).sum(0).sqrt()


class PopulationStep:
    """k members' iteration at once (see the module docstring). Built from the members' own modules and optimizers
    (:meth:`from_members`); :meth:`to_members` writes the stacked state back into them (weights, BatchNorm
    statistics, Adam moments and step), so a member's checkpoint is written as a single member's would be."""

    def __init__(self, cfg: Config, gs: Sequence[nn.Module], ds: Sequence[nn.Module], perceptual: nn.Module,
                 prefs: Sequence[tuple[float, float]], device: torch.device) -> None:
        if not (len(gs) == len(ds) == len(prefs) >= 1):
            raise ConfigError(f"population step: {len(gs)} generators, {len(ds)} discriminators, {len(prefs)} "
                              f"preferences: one of each per member")
        if cfg.adam.bf16 or cfg.adam.channels_last:
            raise ConfigError("population step: adam.bf16 and adam.channels_last are not supported (fp32/TF32 only)")
        self.cfg, self.perceptual, self.device, self.k = cfg, perceptual, device, len(gs)
        self.gp, self.gb = stack_module_state(list(gs))
        self.dp, self.db = stack_module_state(list(ds))
        self.g_names, self.d_names = list(self.gp), list(self.dp)
        self._g = copy.deepcopy(gs[0]).to("meta")  # the architecture, for functional calls
        self._d = copy.deepcopy(ds[0]).to("meta")
        dtype = next(iter(self.gp.values())).dtype
        w = torch.tensor([list(p) for p in prefs], dtype=dtype, device=device)
        self.w_dist, self.w_perc = w[:, 0].contiguous(), w[:, 1].contiguous()
        a, dc = cfg.adam, cfg.discriminator
        self.opt_g = adam(self.gp.values(), a.lr, a.betas)
        self.opt_d = adam(self.dp.values(), dc.lr, dc.betas)

    @classmethod
    def from_members(cls, cfg: Config, members: Sequence[tuple[nn.Module, nn.Module, torch.optim.Optimizer,
                                                                   torch.optim.Optimizer, tuple[float, float]]],
                     perceptual: nn.Module, device: torch.device) -> PopulationStep:
        """Stack members given as (G, D, G's Adam, D's Adam, preference), their Adam states included."""
        step = cls(cfg, [m[0] for m in members], [m[1] for m in members], perceptual, [m[4] for m in members],
                   device)
        for stacked_opt, names, modules, which in ((step.opt_g, step.g_names, [m[0] for m in members], 2),
                                                   (step.opt_d, step.d_names, [m[1] for m in members], 3)):
            _stack_adam(stacked_opt, names, modules, [m[which] for m in members])  # type: ignore[misc]
        return step

    def to_members(self, members: Sequence[tuple[nn.Module, nn.Module, torch.optim.Optimizer,
                                                 torch.optim.Optimizer, tuple[float, float]]]) -> None:
        """Copy the stacked weights, buffers and Adam states back into the members' own modules and optimizers."""
        with torch.no_grad():
            for i, (g, d, opt_g, opt_d, _) in enumerate(members):
                for module, params, buffers in ((g, self.gp, self.gb), (d, self.dp, self.db)):
                    for name, p in module.named_parameters():
                        p.copy_(params[name][i])
                    for name, b in module.named_buffers():
                        b.copy_(buffers[name][i])
                _unstack_adam(self.opt_g, self.g_names, g, opt_g, i)
                _unstack_adam(self.opt_d, self.d_names, d, opt_d, i)

    def _g_call(self, p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._g, (p, b), (x,))

    def _d_call(self, p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._d, (p, b), (x,))

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[StepResult, torch.Tensor]:
        """One G update and one D update of every member; losses as k-vectors on the device (members in order),
        and the SR batches (k × B × 3 × H × W, detached)."""
        cfg, kind = self.cfg, self.cfg.loss.gan_type
        sr = vmap(self._g_call)(self.gp, self.gb, lr)
        l_dist = vmap(losses.l1_loss)(sr, hr)
        l_per = vmap(lambda s, h: self.perceptual(s, h))(sr, hr)

        def gan(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], s: torch.Tensor, h: torch.Tensor
                ) -> torch.Tensor:
            d_fake = self._d_call(p, b, s)  # the single step's order: fake logits first, then (detached) real ones
            d_real = self._d_call(p, b, h).detach() if losses.needs_real_logits(kind) else None
            return losses.gan_g_loss(kind, d_fake, d_real)

        l_gan = vmap(gan)(self.dp, self.db, sr, hr)
        l_perc = cfg.loss.perceptual_weight * l_per + cfg.loss.gan_weight * l_gan
        params = [self.gp[n] for n in self.g_names]
        g1 = torch.autograd.grad(l_dist.sum(), params, retain_graph=True)
        g2 = torch.autograd.grad(l_perc.sum(), params)
        direction, n1, n2 = stacked_mix(cfg.adam.mix, g1, g2, self.w_dist, self.w_perc, cfg.adam.norm_eps)
        for p, dp in zip(params, direction):
            p.grad = dp
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        sr_d = sr.detach()

        def d_loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], s: torch.Tensor, h: torch.Tensor
                   ) -> torch.Tensor:
            real = self._d_call(p, b, h)
            return losses.gan_d_loss(kind, real, self._d_call(p, b, s))

        l_d = vmap(d_loss)(self.dp, self.db, sr_d, hr)
        self.opt_d.zero_grad(set_to_none=True)
        l_d.sum().backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        # A term with weight 0 is not computed by the single step: its gradient norm reads 0 there.
        res = StepResult(l_dist.detach(), l_per.detach(), l_gan.detach(), l_d.detach(),
                         (n1 * (self.w_dist != 0)).detach(), (n2 * (self.w_perc != 0)).detach())
        return res, sr_d


def _stack_adam(stacked: torch.optim.Optimizer, names: Sequence[str], modules: Sequence[nn.Module],
                opts: Sequence[torch.optim.Optimizer]) -> None:
    """Stacked Adam state from the members' (their step counts must agree: Adam's bias correction is shared)."""
    by_name = [dict(m.named_parameters()) for m in modules]
    group = stacked.param_groups[0]
    for name, sp in zip(names, group["params"]):
        found = [o.state.get(bn[name]) for o, bn in zip(opts, by_name)]
        if all(not s for s in found):
            continue
        states = [s for s in found if s]
        if len(states) != len(found):
            raise ConfigError(f"population step: members' Adam states differ in which tensors they hold ({name})")
        steps = {float(s["step"]) for s in states}
        if len(steps) != 1:
            raise ConfigError(f"population step: members' Adam step counts differ ({sorted(steps)}): one stacked "
                              f"Adam needs the same count")
        stacked.state[sp] = {"step": states[0]["step"].detach().clone().to(sp.device, torch.float32),
                             "exp_avg": torch.stack([s["exp_avg"] for s in states]).to(sp.device),
                             "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in states]).to(sp.device)}


def _unstack_adam(stacked: torch.optim.Optimizer, names: Sequence[str], module: nn.Module,
                  opt: torch.optim.Optimizer, i: int) -> None:
    by_name = dict(module.named_parameters())
    for name, sp in zip(names, stacked.param_groups[0]["params"]):
        s = stacked.state.get(sp)
        if not s:
            continue
        p = by_name[name]
        own = opt.state.get(p)
        step = s["step"].detach().clone()
        if own and torch.is_tensor(own.get("step")):
            step = step.to(own["step"].device, own["step"].dtype)
        opt.state[p] = {"step": step, "exp_avg": s["exp_avg"][i].detach().clone(),
                        "exp_avg_sq": s["exp_avg_sq"][i].detach().clone()}


__all__ = ["PopulationStep", "stacked_mix"]
