"""The heart of EA-Adam: a per-tensor normalised mix of two gradients.

For every parameter tensor p the update direction handed to Adam is

    d_p = w_dist · g1_p / (‖g1_p‖₂ + ε) + w_perc · g2_p / (‖g2_p‖₂ + ε)

with g1 = ∇L_dist and g2 = ∇L_perc. Preferences enter here, not as raw loss weights, so a member's position on the
perception–distortion trade-off does not depend on the two losses' scales.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _normalised(grads: Sequence[torch.Tensor | None], w: float, eps: float) -> dict[int, torch.Tensor]:
    """``{k: w / (‖g_k‖₂ + eps) · g_k}`` for the present gradients, with the norms of all tensors in one
    ``_foreach_norm`` and the scaling in one ``_foreach_mul``: a handful of kernel launches whatever the tensor count
    (RRDB has 702 parameter tensors; one small launch per tensor and operation made the host, not the GPU, set the
    pace)."""
    idx = [k for k, g in enumerate(grads) if g is not None]
    if not idx or w == 0.0:
        return {}
    ts = [grads[k] for k in idx]
    scales = w / (torch.stack(torch._foreach_norm(ts)) + eps)  # type: ignore[arg-type]
    return dict(zip(idx, torch._foreach_mul(ts, list(scales.unbind()))))  # type: ignore[arg-type]


def normalised_mix(g1: Sequence[torch.Tensor | None], g2: Sequence[torch.Tensor | None], w_dist: float,
                   w_perc: float, eps: float = 1e-7) -> list[torch.Tensor | None]:
    """Mix two per-tensor gradient lists; ``None`` (a term with weight 0 that was not computed) counts as zero.

    Returns one tensor per parameter (``None`` where both inputs are ``None``).
    """
    if len(g1) != len(g2):
        raise ValueError(f"gradient lists differ in length: {len(g1)} vs {len(g2)}")
    d1, d2 = _normalised(g1, w_dist, eps), _normalised(g2, w_perc, eps)
    both = sorted(set(d1) & set(d2))
    summed = dict(zip(both, torch._foreach_add([d1[k] for k in both], [d2[k] for k in both]))) if both else {}
    return [summed.get(k, d1.get(k, d2.get(k))) for k in range(len(g1))]


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


def global_norm(grads: Sequence[torch.Tensor | None], device: torch.device | str | None = None) -> torch.Tensor:
    """‖g‖₂ over all tensors as a 0-d float tensor on their device (no host sync; 0 on ``device`` when there are
    none), from one ``_foreach_norm``."""
    present = [g.detach() for g in grads if g is not None]
    if not present:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)).float())
