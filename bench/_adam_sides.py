"""The two sides bench/adam_step.py times against each other: the member trainer's ``MemberStep`` and a bare
PyTorch loop written independently of easlurm.train and easlurm.losses, from identical start states; and the
measuring pieces around them (fixed batches, the same-math check, timed blocks, FLOPs). bench/gpu_check.py's
member-step section uses them too. Images are NCHW RGB float in [0, 1] throughout.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import stamp, sync

from easlurm.config import Config
from easlurm.engine.data import batches
from easlurm.errors import EaslurmError
from easlurm.train.member import build_member

# ----------------------------------------------------------------------------------------------------------------
# The bare loop (independent of easlurm.train and easlurm.losses)

class BareStep:
    """One EA-Adam iteration written out plainly: G update from the normalised two-gradient mix, then one D step.

    ``lr``: N×3×h×w, ``hr``: N×3×(s·h)×(s·w), RGB float in [0, 1]. ``vgg(x)`` returns ``{layer: features}``
    (pre-ReLU, ImageNet-normalised inside); ``layer_weights`` weighs the L1 distance of each layer's features.
    """

    def __init__(self, g: nn.Module, d: nn.Module, vgg: nn.Module, layer_weights: dict[str, float], l2: bool,
                 gan: str, w: tuple[float, float], eps: float, perceptual_weight: float, gan_weight: float,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, bf16: bool, channels_last: bool):
        self.g, self.d, self.vgg, self.layer_weights, self.l2, self.gan = g, d, vgg, layer_weights, l2, gan
        self.w_dist, self.w_perc = w
        self.eps, self.pw, self.gw = eps, perceptual_weight, gan_weight
        self.opt_g, self.opt_d = opt_g, opt_d
        self.bf16, self.channels_last = bf16, channels_last
        self.params = [p for p in g.parameters() if p.requires_grad]

    def amp(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def direction(self, g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None]
                  ) -> list[torch.Tensor | None]:
        """The per-tensor normalised mix, one tensor at a time (bench/gpu_check.py times a flat variant)."""
        out: list[torch.Tensor | None] = []
        for a, b in zip(g1, g2):
            step = None
            if a is not None:
                step = (self.w_dist / (a.norm(2) + self.eps)) * a
            if b is not None:
                t = (self.w_perc / (b.norm(2) + self.eps)) * b
                step = t if step is None else step + t
            out.append(step)
        return out

    @staticmethod
    def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        with self.amp():
            sr = self.g(lr)
            srf = sr.float()
            l_dist = (srf - hr).abs().mean()
            f_sr = self.vgg(srf)
            with torch.no_grad():
                f_hr = self.vgg(hr)
            l_vgg = sum(w * ((f_sr[k] - f_hr[k]).pow(2).mean() if self.l2 else (f_sr[k] - f_hr[k]).abs().mean())
                        for k, w in self.layer_weights.items())
            fake = self.d(sr).float()
            if self.gan == "vanilla":
                l_adv = self.bce(fake, True)
            else:  # relativistic average, real logits fixed for the generator
                real = self.d(hr).float().detach()
                l_adv = 0.5 * (self.bce(real - fake.mean(), False) + self.bce(fake - real.mean(), True))
            l_perc = self.pw * l_vgg + self.gw * l_adv
        n = len(self.params)
        g1 = (torch.autograd.grad(l_dist, self.params, retain_graph=self.w_perc != 0.0, allow_unused=True)
              if self.w_dist != 0.0 else (None,) * n)
        g2 = (torch.autograd.grad(l_perc, self.params, allow_unused=True) if self.w_perc != 0.0 else (None,) * n)
        for p, step in zip(self.params, self.direction(g1, g2)):
            p.grad = step
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        fake_in = sr.detach()
        with self.amp():
            real = self.d(hr).float()
            fake = self.d(fake_in).float()
            if self.gan == "vanilla":
                l_d = self.bce(real, True) + self.bce(fake, False)
            else:
                l_d = 0.5 * (self.bce(real - fake.detach().mean(), True) + self.bce(fake - real.detach().mean(), False))
        l_d.backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        return fake_in


# ----------------------------------------------------------------------------------------------------------------
# Set-up

@dataclass
class Side:
    """One contestant: a callable ``(lr, hr)`` doing one iteration, and its optimizers (for the equivalence check)."""
    name: str
    step: Callable[[torch.Tensor, torch.Tensor], Any]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    times: list[np.ndarray] = field(default_factory=list)  # per block: [wall, cpu] seconds per iteration


def make_optimizers(cfg: Config, g: nn.Module, d: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G and D, as ``easlurm.train.member.build_member`` makes them."""
    return (torch.optim.Adam(g.parameters(), lr=cfg.adam.lr, betas=tuple(cfg.adam.betas)),
            torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr, betas=tuple(cfg.discriminator.betas)))


def build_sides(cfg: Config, device: torch.device, w: tuple[float, float]) -> tuple[Side, Side]:
    """The member trainer's ``MemberStep`` (built by ``build_member`` from one seed) and a :class:`BareStep` over
    deep copies of its G, D and perceptual net, with optimizers of its own: identical start states."""
    torch.manual_seed(0)
    ms = build_member(cfg, w, device, where="bench").s
    g, d, perc = copy.deepcopy(ms.g), copy.deepcopy(ms.d), copy.deepcopy(ms.perceptual)
    opt_g, opt_d = make_optimizers(cfg, g, d)
    bare = BareStep(g, d, perc.vgg, dict(perc.layer_weights), perc.criterion == "l2", cfg.loss.gan_type, w,
                    cfg.adam.norm_eps, cfg.loss.perceptual_weight, cfg.loss.gan_weight, opt_g, opt_d,
                    ms.autocast, ms.channels_last)
    return Side("MemberStep", ms, ms.opt_g, ms.opt_d), Side("bare", bare, opt_g, opt_d)


def fixed_batches(cfg: Config, shards: Path, count: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """``count`` real training batches (LR, HR), drawn once through the project's loader and kept on ``device``."""
    it = batches(shards, cfg, cfg.adam.batch_size, seed=0, start_index=0, total=count * cfg.adam.batch_size,
                 num_workers=0)
    return [tuple(t.to(device) for t in next(it)) for _ in range(count)]


def rel_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors concatenated."""
    num = sum(float((x.float() - y.float()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.float().pow(2).sum()) for y in b)
    return (num / max(den, 1e-30)) ** 0.5


def moment_diff(ref: Side, other: Side, which: str) -> float | None:
    """After a step of both sides: the relative difference of ``other``'s Adam first moments (∝ its update
    direction) from ``ref``'s, for ``which`` optimizer (``opt_g`` or ``opt_d``); None when the two updated different
    numbers of tensors, or none."""
    o_ref, o = getattr(ref, which), getattr(other, which)
    p_ref = [p for grp in o_ref.param_groups for p in grp["params"] if p in o_ref.state]
    p_other = [p for grp in o.param_groups for p in grp["params"] if p in o.state]
    if len(p_ref) != len(p_other) or not p_ref:
        return None
    return rel_diff([o.state[p]["exp_avg"] for p in p_other], [o_ref.state[p]["exp_avg"] for p in p_ref])


def check_same_math(trainer: Side, bare: Side, lr: torch.Tensor, hr: torch.Tensor, tol: float) -> dict[str, float]:
    """One step of each side from identical states; their Adam first moments (∝ the update directions) must agree."""
    trainer.step(lr, hr)
    bare.step(lr, hr)
    out = {}
    for which in ("opt_g", "opt_d"):
        diff = moment_diff(trainer, bare, which)
        if diff is None:
            raise EaslurmError(f"bench: {which} updated other tensors in MemberStep than in the bare loop")
        out[which] = diff
        if not diff <= tol:
            raise EaslurmError(f"bench: the bare loop does not do MemberStep's math ({which} first moments differ by "
                               f"{diff:.2e} relative, tolerance {tol:.0e})")
    return out


def timed_block(side: Side, data: list[tuple[torch.Tensor, ...]], iters: int, device: torch.device,
                first: int = 0) -> np.ndarray:
    """[wall, CPU] seconds per iteration over ``iters`` steps on ``data[first]``, ``data[first + 1]``, …"""
    sync(device)
    t0 = stamp()
    for k in range(first, first + iters):
        lr, hr = data[k % len(data)]
        side.step(lr, hr)
    sync(device)
    return (stamp() - t0) / iters


def count_flops(side: Side, lr: torch.Tensor, hr: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        side.step(lr, hr)
    return int(counter.get_total_flops())


def bookkeeping_cost(g: nn.Module, device: torch.device, repeats: int = 20) -> np.ndarray:
    """[wall, CPU] seconds for what MemberStep does beyond the bare loop, timed alone (fastest of ``repeats``).

    That is: the global ‖g1‖ and ‖g2‖ it returns for logging (``easlurm.train.mix.global_norm``, device tensors,
    no host read) — on gradient-shaped tensors, without the rest of the step. (The loss finiteness watch and the
    host reads at log steps belong to the training loop, not to MemberStep: see the whole-job table.)
    """
    from easlurm.train.mix import global_norm

    grads = [[torch.randn_like(p) for p in g.parameters()] for _ in range(2)]
    best = np.full(2, np.inf)
    for _ in range(repeats):
        sync(device)
        t0 = stamp()
        global_norm(grads[0])
        global_norm(grads[1])
        sync(device)
        best = np.minimum(best, stamp() - t0)
    return best
