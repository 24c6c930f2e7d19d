"""The population-batched step (easlurm.train.population_step) equals k single MemberSteps in float64: losses,
gradient norms, the mix (a preference weight of 0 included), Adam, and the discriminators' BatchNorm statistics."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import TINY
from easlurm import factory
from easlurm.config import load_config
from easlurm.errors import ConfigError
from easlurm.runtime import adam
from easlurm.train.member import MemberStep
from easlurm.train.population_step import PopulationStep

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
PREFS = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]  # both weights 0 once: a term the single step does not compute


def _members(cfg):
    out = []
    for i, w in enumerate(PREFS):
        torch.manual_seed(10 + i)
        g = factory.build_generator(cfg).double().train()
        d = factory.build_discriminator(cfg).double().train()
        out.append((g, d, adam(g.parameters(), cfg.adam.lr, cfg.adam.betas),
                    adam(d.parameters(), cfg.discriminator.lr, cfg.discriminator.betas), w))
    return out


def _copy(members):
    out = []
    for g, d, _, _, w in members:
        g2, d2 = copy.deepcopy(g), copy.deepcopy(d)
        out.append((g2, d2, None, None, w))
    return out


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("mix,gan", [("normalised", "relativistic"), ("weighted_sum", "vanilla")])
def test_the_batched_step_equals_k_single_steps_in_float64(mix, gan):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*TINY, f"adam.mix={mix}", f"loss.gan_type={gan}",
                                                       "adam.lr=1e-2", "discriminator.lr=1e-2"])
    perceptual = factory.build_perceptual(cfg).double()
    batched = _members(cfg)
    singles = []
    for g, d, _, _, w in _copy(batched):
        singles.append(MemberStep(cfg, g, d, perceptual, w, adam(g.parameters(), cfg.adam.lr, cfg.adam.betas),
                                  adam(d.parameters(), cfg.discriminator.lr, cfg.discriminator.betas),
                                  torch.device("cpu")))
    step = PopulationStep.from_members(cfg, batched, perceptual, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    for it in range(3):
        hr = torch.rand(len(PREFS), 2, 3, 32, 32, generator=gen, dtype=torch.float64)
        lr = torch.nn.functional.avg_pool2d(hr.flatten(0, 1), 4).unflatten(0, (len(PREFS), 2))
        res, sr = step(lr, hr)
        for i, single in enumerate(singles):
            r, s = single(lr[i], hr[i])
            _close(sr[i], s, f"iteration {it}, member {i}: SR")
            for name in ("l1", "perceptual", "gan", "d"):
                _close(getattr(res, name)[i], getattr(r, name), f"iteration {it}, member {i}: {name}")
            for name in ("grad_norm_dist", "grad_norm_perc"):  # logged values: the single step reports float32
                torch.testing.assert_close(getattr(res, name)[i].float(), getattr(r, name), rtol=1e-6, atol=0)
        if it == 0:  # one step: gradients, mix and Adam agree to 1e-10
            step.to_members(batched)
            _same_state(batched, singles, 1e-10)
    # Three steps: the discriminators' gradients before a BatchNorm come out of a cancellation (the batch mean is
    # removed), so the two computations' float64 rounding (grouped vs single convolutions) shows at ~1e-9 relative
    # in those gradients, and Adam turns a gradient that is zero up to rounding (a BatchNorm bias right before
    # another normalisation) into ±lr·noise/ε: after three steps every tensor agrees to 1e-6 of its norm.
    step.to_members(batched)
    _same_state(batched, singles, 1e-6, per_tensor=True)


def _same_state(batched, singles, tol: float, per_tensor: bool = False) -> None:
    """Weights, BatchNorm statistics and Adam states of every member agree: elementwise to ``tol`` (relative and
    absolute), or with ``per_tensor`` as ‖a − b‖ ≤ tol · ‖b‖ + 1e-12 per tensor."""
    def check(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        a, b = a.double(), b.double()
        if per_tensor:
            assert float((a - b).norm()) <= tol * float(b.norm()) + 1e-12, what
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")

    for i, ((g, d, opt_g, opt_d, _), single) in enumerate(zip(batched, singles)):
        for mine, theirs, what in ((g, single.g, "G"), (d, single.d, "D")):
            for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
                check(a, b, f"member {i}: {what}.{name}")
        for opt, ref, what in ((opt_g, single.opt_g, "G"), (opt_d, single.opt_d, "D")):
            sa, sb = opt.state_dict()["state"], ref.state_dict()["state"]
            assert sa.keys() == sb.keys(), what
            for k in sa:
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    check(sa[k][key], sb[k][key], f"member {i}: {what} Adam {key} of tensor {k}")


def test_stacking_needs_agreeing_adam_steps_and_refuses_bf16():
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*TINY])
    perceptual = factory.build_perceptual(cfg).double()
    members = _members(cfg)
    g, d, opt_g, _, _ = members[0]
    for p in g.parameters():  # member 0 took one step more than the others
        p.grad = torch.zeros_like(p)
    opt_g.step()
    with pytest.raises(ConfigError, match="step counts differ|differ in which tensors"):
        PopulationStep.from_members(cfg, members, perceptual, torch.device("cpu"))
    bf16 = load_config(REPO / "configs" / "tiny.yaml", [*TINY, "adam.bf16=true"])
    with pytest.raises(ConfigError, match="bf16"):
        PopulationStep(bf16, [g], [d], perceptual, [(0.5, 0.5)], torch.device("cpu"))
