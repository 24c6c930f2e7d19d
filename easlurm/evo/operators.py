"""Variation operators on generator genomes: SBX crossover, Gaussian weight mutation, partner choice.

A *genome* is a generator's state dict: ``dict[str, torch.Tensor]`` (ordered as the model's ``state_dict()``), less
the entries its backbone keeps out of it (:mod:`easlurm.evo.genes`). Which entries are genes is the backbone's rule
too, passed to the operators as key lists (``keys``); without one, floating-point tensors are SBX's genes and
:func:`is_weight_key` says what mutation perturbs. Any other entry rides along unchanged from the first parent.
Every operator returns new tensors, keeps the key order of its first argument and never modifies its inputs.
Randomness comes only from the explicit generator argument, consumed in key order, so the same seed gives the same
child on any machine and device.

Reference: DESIGN.md §2 "EA phase", steps 1-2 (github.com/csslc/EA-Adam, ``EA_operator/gen.py`` and the EA loop of
``train_EA-Adam_srresnet.py``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from . import EvoError

__all__ = [
    "Genome",
    "sbx_u_to_beta",
    "sbx_child",
    "sbx_child_with_u",
    "is_weight_key",
    "gaussian_mutation",
    "choose_partner",
]

Genome = dict[str, torch.Tensor]


def sbx_u_to_beta(u: float, eta: float) -> float:
    """SBX spread factor β for a uniform draw ``u`` in [0, 1) and distribution index ``eta`` >= 0.

    ``β = (2u)^(1/(η+1))`` if ``u <= 0.5`` else ``(1 / (2(1-u)))^(1/(η+1))``. β = 1 at u = 0.5 (child = first
    parent); β < 1 contracts towards the second parent, β > 1 expands away from it. Large η keeps β near 1.
    """
    u = float(u)
    eta = float(eta)
    if not (0.0 <= u < 1.0):
        raise EvoError(f"sbx_u_to_beta: u must lie in [0, 1), got {u!r}")
    if not (math.isfinite(eta) and eta >= 0.0):
        raise EvoError(f"sbx_u_to_beta: eta must be a finite number >= 0, got {eta!r}")
    exponent = 1.0 / (eta + 1.0)
    if u <= 0.5:
        return (2.0 * u) ** exponent
    return (1.0 / (2.0 * (1.0 - u))) ** exponent


def _check_same_structure(p1: Mapping[str, torch.Tensor], p2: Mapping[str, torch.Tensor]) -> None:
    if set(p1.keys()) != set(p2.keys()):
        only1 = sorted(set(p1.keys()) - set(p2.keys()))
        only2 = sorted(set(p2.keys()) - set(p1.keys()))
        raise EvoError(f"SBX parents have different keys: only in p1 {only1[:5]}, only in p2 {only2[:5]}")
    for key, t1 in p1.items():
        t2 = p2[key]
        if not isinstance(t1, torch.Tensor) or not isinstance(t2, torch.Tensor):
            raise EvoError(f"SBX parents: entry {key!r} is not a tensor")
        if t1.shape != t2.shape:
            raise EvoError(f"SBX parents: key {key!r} has shape {tuple(t1.shape)} vs {tuple(t2.shape)}")
        if t1.is_floating_point() != t2.is_floating_point():
            raise EvoError(f"SBX parents: key {key!r} is floating-point in one parent only ({t1.dtype} vs {t2.dtype})")


def _gene_keys(genome: Mapping[str, torch.Tensor], keys: Sequence[str] | None = None) -> list[str]:
    """The genes of ``genome`` in its key order: ``keys`` (each must be a floating-point entry), or every
    floating-point entry when None."""
    if keys is None:
        return [k for k, t in genome.items() if t.is_floating_point()]
    wanted = set(keys)
    missing = sorted(wanted - set(genome))
    if missing:
        raise EvoError(f"genome lacks the gene entries {missing[:5]}")
    bad = sorted(k for k in wanted if not genome[k].is_floating_point())
    if bad:
        raise EvoError(f"gene entries {bad[:5]} are not floating-point tensors")
    return [k for k in genome if k in wanted]


def sbx_child_with_u(
    p1: Mapping[str, torch.Tensor], p2: Mapping[str, torch.Tensor], eta: float, us: Sequence[float],
    keys: Sequence[str] | None = None,
) -> Genome:
    """First SBX offspring of ``p1`` and ``p2`` with given draws: one ``u`` per gene, in key order.

    The genes are ``keys`` (the backbone's crossover entries, :class:`easlurm.evo.genes.GenePlan`), or every
    floating-point tensor when None. For each gene: ``child = 0.5 * ((1 + β) * p1 + (1 - β) * p2)``,
    ``β = sbx_u_to_beta(u, eta)``, computed in the tensor's dtype on ``p1``'s device. Every other entry is cloned
    from ``p1``. (The second offspring of the pair is ``sbx_child_with_u(p2, p1, eta, us, keys)``; the pair's mean
    equals the parents' mean.) With ``u = 0.5`` the child equals ``p1`` exactly.
    """
    _check_same_structure(p1, p2)
    genes = _gene_keys(p1, keys)
    us = [float(u) for u in us]
    if len(us) != len(genes):
        raise EvoError(f"sbx_child_with_u: need one u per gene ({len(genes)}), got {len(us)}")
    draws = dict(zip(genes, us))
    child: Genome = {}
    with torch.no_grad():
        for key, t1 in p1.items():
            if key not in draws:
                child[key] = t1.detach().clone()
                continue
            beta = sbx_u_to_beta(draws[key], eta)
            t2 = p2[key].detach().to(device=t1.device, dtype=t1.dtype)
            child[key] = 0.5 * ((1.0 + beta) * t1.detach() + (1.0 - beta) * t2)
    return child


def sbx_child(
    p1: Mapping[str, torch.Tensor], p2: Mapping[str, torch.Tensor], eta: float, rng: np.random.Generator,
    keys: Sequence[str] | None = None,
) -> tuple[Genome, list[float]]:
    """First SBX offspring (DESIGN.md §2 EA step 1; reference η = 20), drawing its own ``u`` values.

    Draw order: one ``u = rng.random()`` (uniform in [0, 1)) per gene of ``p1`` (``keys``, or every floating-point
    tensor when None), in key order, nothing else. Returns ``(child, us)``; ``us`` goes into the lineage so the
    child can be re-created with :func:`sbx_child_with_u`. The reference draws u with torch on each tensor; here
    numpy's Generator is used so a child depends only on the lineage seed.
    """
    _check_same_structure(p1, p2)
    us = [float(rng.random()) for _ in _gene_keys(p1, keys)]
    return sbx_child_with_u(p1, p2, eta, us, keys), us


def is_weight_key(name: str, tensor: torch.Tensor) -> bool:
    """True for a mutable weight: a floating-point tensor with ``ndim >= 2`` whose name does not end in "bias".

    Conv (``O×I×kh×kw``) and linear (``O×I``) weights qualify; biases, 1-D scales (e.g. PReLU / norm weights) and
    non-float buffers do not. (The reference selects keys ending in "t", which for its networks are exactly the
    conv weights.)
    """
    return tensor.is_floating_point() and tensor.ndim >= 2 and not name.endswith("bias")


def gaussian_mutation(
    genome: Mapping[str, torch.Tensor], rate: float, sigma: float, generator: torch.Generator,
    keys: Sequence[str] | None = None,
) -> tuple[Genome, int]:
    """Gaussian mutation of weight tensors (DESIGN.md §2 EA step 2; reference rate 0.02, σ = 0.03).

    Each element of every weight tensor — the entries in ``keys`` (the backbone's mutation entries,
    :class:`easlurm.evo.genes.GenePlan`), or those :func:`is_weight_key` accepts when None — independently gets
    ``N(0, σ²)`` noise with probability ``rate``. All other entries — biases included — are cloned unchanged, so
    the child keeps the biases it got from crossover. Note: the reference (``gen_mut``) rebuilds the child from a
    copy of the *parent* and loads only the weights into it, which silently reverts the crossover child's biases to
    the parent's; that is a bug and is not reproduced here.

    Determinism: for each weight tensor, in key order, first a uniform mask ``torch.rand(shape) < rate`` then the
    noise ``torch.randn(shape) * σ`` are drawn in float32 **on the CPU** from ``generator`` (which must be a CPU
    generator); the product is then moved to the tensor's device/dtype and added. The same seed therefore gives
    the same child on any device. Returns ``(child, number of mutated elements)``.
    """
    rate = float(rate)
    sigma = float(sigma)
    if not (0.0 <= rate <= 1.0):
        raise EvoError(f"gaussian_mutation: rate must lie in [0, 1], got {rate!r}")
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise EvoError(f"gaussian_mutation: sigma must be a finite number >= 0, got {sigma!r}")
    if generator.device.type != "cpu":
        raise EvoError(f"gaussian_mutation: generator must be a CPU torch.Generator, got one on {generator.device}")
    genes = set(_gene_keys(genome, keys)) if keys is not None else None
    child: Genome = {}
    mutated = 0
    with torch.no_grad():
        for key, tensor in genome.items():
            t = tensor.detach()
            if not (is_weight_key(key, t) if genes is None else key in genes):
                child[key] = t.clone()
                continue
            mask = torch.rand(t.shape, generator=generator, dtype=torch.float32, device="cpu") < rate
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32, device="cpu") * sigma
            mutated += int(mask.sum().item())
            delta = torch.where(mask, noise, torch.zeros((), dtype=torch.float32))
            child[key] = t + delta.to(device=t.device, dtype=t.dtype)
    return child, mutated


def choose_partner(
    i: int, n: int, neighbourhood: Sequence[int], p_global: float, rng: np.random.Generator
) -> int:
    """Pick member ``i``'s crossover partner (DESIGN.md §2 EA step 1; reference p_global = 0.3).

    Draw order, from ``rng``: first ``r = rng.random()``; if ``r < p_global`` the candidates are all members
    ``0..n-1`` except ``i`` (ascending), otherwise ``neighbourhood`` minus ``i`` (in the given order, duplicates
    dropped); then one ``rng.integers(len(candidates))`` picks the partner. Exactly two draws per call. (The
    reference draws two distinct candidates and uses only the first; the marginal distribution is the same.)
    """
    i, n = int(i), int(n)
    p_global = float(p_global)
    if n < 2:
        raise EvoError(f"choose_partner: need at least 2 members to pick a partner, got n={n}")
    if not (0 <= i < n):
        raise EvoError(f"choose_partner: member index {i} out of range for n={n}")
    if not (0.0 <= p_global <= 1.0):
        raise EvoError(f"choose_partner: p_global must lie in [0, 1], got {p_global!r}")
    for j in neighbourhood:
        if not (0 <= int(j) < n):
            raise EvoError(f"choose_partner: neighbourhood of member {i} contains {j}, out of range for n={n}")
    r = float(rng.random())
    if r < p_global:
        candidates = [j for j in range(n) if j != i]
    else:
        candidates = list(dict.fromkeys(int(j) for j in neighbourhood if int(j) != i))
        if not candidates:
            raise EvoError(f"choose_partner: neighbourhood {list(neighbourhood)} of member {i} has no other member")
    return candidates[int(rng.integers(len(candidates)))]
