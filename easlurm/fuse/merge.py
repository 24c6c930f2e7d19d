"""Collapse K expert generators into one plain backbone with per-layer mixing weights (DESIGN.md §2 "Fusion" 3).

For every fused layer l (a conv, linear layer or LayerNorm; "conv" below, as the names of the arguments say) with
averaged attention w̄_l (K non-negative numbers summing to 1):
θ_l = Σ_k w̄_{l,k} θ_{l,k}, for ``<l>.weight`` and ``<l>.bias`` alike. The sum is accumulated in float64 and cast
back to the parameter's dtype, so a one-hot w̄_l reproduces that expert's tensor bit for bit.

Entries that belong to no fused layer (e.g. a PReLU slope, normalisation statistics — the paper's MSRResNet and
RRDBNet have none; SwinIR's relative-position bias tables and its buffers) follow one rule, shared with
:func:`easlurm.fuse.dynamic.make_dynamic` so the dynamic model that is trained and the merged model agree:
floating-point entries identical in all experts are kept as they are; entries that differ are averaged
**uniformly** (the attention never saw a per-layer weight for them). Non-float entries (integer counters) must be
identical, otherwise :class:`FusionError`. Tensors on the meta device (networks built for their shapes only, e.g.
by the bill) cannot be compared and are taken from expert 0.

State dicts are ``dict[str, Tensor]`` with the keys of the ordinary backbone class (loadable with ``strict=True``);
output key order is expert 0's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import EaslurmError

__all__ = ["FusionError", "WEIGHT_SUM_TOL", "check_layer_weights", "combine_shared", "merge_state_dicts"]

WEIGHT_SUM_TOL = 1e-6


class FusionError(EaslurmError):
    """Experts, layer weights or a dynamic model cannot be fused; the message names the layer or key."""


def check_layer_weights(layer: str, weights: Sequence[float] | np.ndarray | torch.Tensor,
                        num_experts: int) -> np.ndarray:
    """Validate one layer's mixing weights and return them as float64 (K,).

    They must be K finite, non-negative numbers summing to 1 within ``WEIGHT_SUM_TOL``; otherwise
    :class:`FusionError` naming ``layer``.
    """
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().double().numpy()
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FusionError(f"layer '{layer}': mixing weights are not numbers ({weights!r})") from exc
    if w.shape != (num_experts,):
        raise FusionError(f"layer '{layer}': expected {num_experts} mixing weights (one per expert), "
                          f"got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise FusionError(f"layer '{layer}': mixing weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise FusionError(f"layer '{layer}': mixing weights must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise FusionError(f"layer '{layer}': mixing weights must sum to 1 (±{WEIGHT_SUM_TOL:g}), "
                          f"got sum {total!r} for {w.tolist()}")
    return w


def _check_same_keys(experts: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    if len(experts) == 0:
        raise FusionError("no experts given: need at least one state dict")
    keys = list(experts[0].keys())
    key_set = set(keys)
    for k, sd in enumerate(experts[1:], start=1):
        other = set(sd.keys())
        missing = [key for key in keys if key not in other]
        if missing:
            raise FusionError(f"expert {k} lacks key '{missing[0]}' that expert 0 has")
        extra = [key for key in sd.keys() if key not in key_set]
        if extra:
            raise FusionError(f"expert {k} has key '{extra[0]}' that expert 0 lacks")
    for key in keys:
        ref = experts[0][key]
        if not isinstance(ref, torch.Tensor):
            raise FusionError(f"expert 0: entry '{key}' is a {type(ref).__name__}, not a tensor")
        for k, sd in enumerate(experts[1:], start=1):
            t = sd[key]
            if not isinstance(t, torch.Tensor):
                raise FusionError(f"expert {k}: entry '{key}' is a {type(t).__name__}, not a tensor")
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise FusionError(f"expert {k}: entry '{key}' is {tuple(t.shape)} {t.dtype}, expert 0 has "
                                  f"{tuple(ref.shape)} {ref.dtype}")
    return keys


def combine_shared(experts: Sequence[Mapping[str, torch.Tensor]], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Combine the non-conv entries ``keys`` of the experts (see the module docstring for the rule).

    Returns fresh tensors (clones) on expert 0's device; identical entries are expert 0's values exactly.
    """
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [sd[key] for sd in experts]
        ref = tensors[0]
        same = ref.is_meta or all(torch.equal(ref, t.to(ref.device)) for t in tensors[1:])
        if same:
            out[key] = ref.detach().clone()
        elif ref.is_floating_point() or ref.is_complex():
            stacked = torch.stack([t.detach().to(ref.device, torch.float64) for t in tensors])
            out[key] = stacked.mean(dim=0).to(ref.dtype)
        else:
            raise FusionError(f"non-float entry '{key}' ({ref.dtype}) differs between experts; it cannot be "
                              f"averaged")
    return out


def merge_state_dicts(experts: Sequence[Mapping[str, torch.Tensor]],
                      layer_weights: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
                      conv_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Merge K expert state dicts into one: θ_l = Σ_k w̄_{l,k} θ_{l,k} for every conv layer in ``conv_names``.

    Args:
        experts: K state dicts of the same backbone (same keys, shapes and dtypes).
        layer_weights: for every conv layer name, K non-negative weights summing to 1 (±1e-6); exactly the layers
            in ``conv_names`` (a missing or unknown layer is an error, to catch name typos).
        conv_names: conv layer names as in ``named_modules`` (e.g. ``body.0.conv1``); each needs a
            ``<name>.weight`` entry and may have ``<name>.bias``.

    Returns:
        A new state dict (expert 0's key order, expert 0's device) for the ordinary backbone class. Non-conv entries
        follow :func:`combine_shared`.

    Raises:
        FusionError (a ``ValueError``) naming the layer or key at fault.
    """
    keys = _check_same_keys(experts)
    num = len(experts)
    names = list(conv_names)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise FusionError(f"conv layer '{dup}' is listed twice in conv_names")
    name_set = set(names)
    unknown = [n for n in layer_weights if n not in name_set]
    if unknown:
        raise FusionError(f"layer_weights names layer '{unknown[0]}', which is not among the conv layers")
    key_set = set(keys)
    conv_keys: dict[str, np.ndarray] = {}
    for name in names:
        prefix = f"{name}." if name else ""
        if f"{prefix}weight" not in key_set:
            raise FusionError(f"conv layer '{name}': the experts have no entry '{prefix}weight'")
        if name not in layer_weights:
            raise FusionError(f"conv layer '{name}': no mixing weights given")
        w = check_layer_weights(name, layer_weights[name], num)
        for suffix in ("weight", "bias"):
            if f"{prefix}{suffix}" in key_set:
                conv_keys[f"{prefix}{suffix}"] = w

    shared = combine_shared(experts, [k for k in keys if k not in conv_keys])
    device = experts[0][keys[0]].device if keys else torch.device("cpu")
    merged: dict[str, torch.Tensor] = {}
    for key in keys:
        if key in conv_keys:
            ref = experts[0][key]
            w_k = torch.as_tensor(conv_keys[key], dtype=torch.float64, device=device)
            stacked = torch.stack([sd[key].detach().to(device, torch.float64) for sd in experts])
            merged[key] = torch.tensordot(w_k, stacked, dims=1).to(ref.dtype)
        else:
            merged[key] = shared[key]
    return merged


