"""The heart of EA-Adam: a per-tensor normalised mix of two gradients.

For every parameter tensor p the update direction handed to Adam is

    d_p = w_dist · g1_p / (‖g1_p‖₂ + ε) + w_perc · g2_p / (‖g2_p‖₂ + ε)

with g1 = ∇L_dist and g2 = ∇L_perc. Preferences enter here, not as raw loss weights, so a member's position on the
perception–distortion trade-off does not depend on the two losses' scales.
"""
from __future__ import annotations

from typing import Sequence

import torch


def normalised_mix(g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None], w_dist: float,
                   w_perc: float, eps: float = 1e-7) -> list[torch.Tensor | None]:
    """Mix two per-tensor gradient lists; ``None`` (a term with weight 0 that was not computed) counts as zero.

    Returns one tensor per parameter (``None`` where both inputs are ``None``).
    """
    if len(g1) != len(g2):
        raise ValueError(f"gradient lists differ in length: {len(g1)} vs {len(g2)}")
    out: list[torch.Tensor | None] = []
    for a, b in zip(g1, g2):
        d = None
        if a is not None and w_dist != 0.0:
            d = (w_dist / (a.norm(2) + eps)) * a
        if b is not None and w_perc != 0.0:
            t = (w_perc / (b.norm(2) + eps)) * b
            d = t if d is None else d + t
        out.append(d)
    return out


def weighted_sum(g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None], w_dist: float,
                 w_perc: float) -> list[torch.Tensor | None]:
    """``w_dist·g1 + w_perc·g2`` per tensor, no normalisation: the gradient of the weighted loss
    ``w_dist·L_dist + w_perc·L_perc`` (the ESRGAN-style single objective; ``adam.mix: weighted_sum``)."""
    if len(g1) != len(g2):
        raise ValueError(f"gradient lists differ in length: {len(g1)} vs {len(g2)}")
    out: list[torch.Tensor | None] = []
    for a, b in zip(g1, g2):
        d = None if a is None or w_dist == 0.0 else w_dist * a
        if b is not None and w_perc != 0.0:
            d = w_perc * b if d is None else d + w_perc * b
        out.append(d)
    return out


def mix(kind: str, g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None], w_dist: float,
        w_perc: float, eps: float = 1e-7) -> list[torch.Tensor | None]:
    """The update direction of ``adam.mix`` (``normalised`` or ``weighted_sum``)."""
    if kind == "normalised":
        return normalised_mix(g1, g2, w_dist, w_perc, eps)
    if kind == "weighted_sum":
        return weighted_sum(g1, g2, w_dist, w_perc)
    raise ValueError(f"adam.mix: unknown {kind!r}")


def global_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """‖g‖₂ over all tensors as a 0-d float tensor on their device (no host sync; 0 when there are none)."""
    sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else torch.zeros(())
