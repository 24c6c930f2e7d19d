"""Collapse a dynamic model (:mod:`easlurm.fuse.dynamic`) into one plain backbone with the averaged attention.

Reads the stacked expert tensors of every dynamic layer (:class:`~easlurm.fuse.layers.DynamicLayer`: convs, linear
layers, LayerNorms), takes the other entries as the experts share them, drops the attention branches, and merges
with :func:`easlurm.fuse.merge.merge_state_dicts` (θ_l = Σ_k w̄_{l,k} θ_{l,k}). Kept apart from both so that each
imports only what is below it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .layers import dynamic_layers
from .merge import FusionError, merge_state_dicts


def _owner(key: str, prefixes: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """Return (layer name, suffix) when ``key`` belongs to one of the dynamic layers, else None."""
    for name, prefix in prefixes:
        if key.startswith(prefix):
            return name, key[len(prefix):]
    return None


def merge_from_dynamic(dynamic_model: nn.Module,
                       averages: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collapse a model built by :func:`easlurm.fuse.dynamic.make_dynamic` into a plain backbone state dict.

    Args:
        dynamic_model: the dynamic model (its stacked expert tensors are read; attention branches are dropped).
        averages: per dynamic layer name, the K averaged attention weights (e.g. from ``average_attention``).

    Returns:
        The state dict the ordinary backbone class loads with ``strict=True`` (same keys and order as the experts).
    """
    layers = dynamic_layers(dynamic_model)
    if not layers:
        raise FusionError("merge_from_dynamic: the model has no dynamic layer (was it built by make_dynamic?)")
    num = layers[0][1].num_experts
    # Longest names first so a layer nested inside another's name space is never claimed by the outer one.
    prefixes = sorted(((n, f"{n}." if n else "") for n, _ in layers), key=lambda p: -len(p[1]))
    experts: list[dict[str, torch.Tensor]] = [{} for _ in range(num)]
    for key, tensor in dynamic_model.state_dict().items():
        owner = _owner(key, prefixes)
        if owner is None:
            for sd in experts:
                sd[key] = tensor
        elif owner[1] in ("weight", "bias"):
            if tensor.shape[0] != num:
                raise FusionError(f"dynamic layer '{owner[0]}': entry '{key}' stacks {tensor.shape[0]} experts, "
                                  f"expected {num}")
            for k, sd in enumerate(experts):
                sd[key] = tensor[k]
        # anything else under a dynamic layer is its attention branch: not part of the backbone
    return merge_state_dicts(experts, averages, [n for n, _ in layers])


__all__ = ["merge_from_dynamic"]
