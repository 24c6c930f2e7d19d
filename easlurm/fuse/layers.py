"""What every dynamic layer of the fusion model shares (DESIGN.md §2 "Fusion" 1), and the functions over them.

A dynamic layer (:class:`DynamicLayer`) stands for one parameterised layer of the backbone: it holds the K experts'
frozen tensors of that layer stacked as buffers (``weight`` (K, …) and ``bias`` (K, …) or None, in expert order) and
a trainable attention branch (``attention``) that maps the layer's input to a per-image mixing vector a ∈ Δ^K; the
layer then computes with Σ_k a_k·W_k and Σ_k a_k·b_k. The kinds are :class:`easlurm.fuse.dynamic.DynamicConv2d`
(convs) and :class:`easlurm.fuse.token_layers.DynamicLinear` / ``DynamicLayerNorm`` (a transformer's token layers).

``fixed_attention`` (K,) replaces the branch with one vector for every image (tests; evaluating averaged weights);
with ``record`` on, the (N, K) vectors of the last forward are kept, detached, in ``last_attention``.

:class:`AttentionBranch` is the reference's branch for convs (github.com/csslc/EA-Adam, ``models/*_dynamic/*_block.py``,
class ``Fusion``; fusion configs ``num_feat_fusion: 64``, ``num_params: 100``, ``use_bias: True``):

    Conv(C_in → 64, k) · LeakyReLU(0.2) · Conv(64 → 64, k) · LeakyReLU(0.2) · Conv(64 → 100, k) · LeakyReLU(0.2)
    → global average pool → 100-d → Linear(100 → 15) · LeakyReLU(0.2) → Linear(15 → K) → softmax

with k = 5 for SRResNet and 3 for RRDB, stride 1, padding k // 2, biases on every layer (``att_hidden`` is the 64,
``att_channels`` the 100).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .merge import FusionError

__all__ = ["MAPPING_HIDDEN", "LRELU_SLOPE", "AttentionBranch", "DynamicLayer", "dynamic_layers",
           "attention_parameters", "set_fixed_attention", "set_record", "check_experts"]

MAPPING_HIDDEN = 15
LRELU_SLOPE = 0.2


class AttentionBranch(nn.Module):
    """Per-image softmax weights over K experts from a feature map.

    Input: (N, C_in, H, W) features (any range). Output: (N, K) float, rows non-negative and summing to 1.
    """

    def __init__(self, in_channels: int, num_experts: int, kernel_size: int = 3, hidden: int = 64,
                 channels: int = 100) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise FusionError(f"attention kernel size must be odd and >= 1 (same-size output), got {kernel_size}")
        pad = kernel_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, stride=1, padding=pad),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Conv2d(hidden, hidden, kernel_size, stride=1, padding=pad),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Conv2d(hidden, channels, kernel_size, stride=1, padding=pad),
            nn.LeakyReLU(LRELU_SLOPE),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mapping = nn.Sequential(
            nn.Linear(channels, MAPPING_HIDDEN),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(MAPPING_HIDDEN, num_experts),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(x)).flatten(1)
        return torch.softmax(self.mapping(pooled), dim=1)


def check_experts(name: str, layers: Sequence[nn.Module], kind: type, fields: Sequence[str]) -> nn.Module:
    """Expert 0's layer after checking that all K are ``kind`` with equal ``fields``, the same bias presence and the
    same weight dtype; :class:`FusionError` naming the layer otherwise."""
    if len(layers) == 0:
        raise FusionError(f"layer '{name}': no expert layers given")
    for k, m in enumerate(layers):
        if not isinstance(m, kind):
            raise FusionError(f"layer '{name}': expert {k} holds a {type(m).__name__}, not an {kind.__name__}")
    ref = layers[0]
    for k, m in enumerate(layers[1:], start=1):
        for f in fields:
            if getattr(m, f) != getattr(ref, f):
                raise FusionError(f"layer '{name}': expert {k} has {f}={getattr(m, f)!r}, expert 0 has "
                                  f"{getattr(ref, f)!r}")
        if (_tensor(m, "bias") is None) != (_tensor(ref, "bias") is None):
            raise FusionError(f"layer '{name}': expert {k} has bias={_tensor(m, 'bias') is not None}, expert 0 has "
                              f"bias={_tensor(ref, 'bias') is not None}")
        w, w0 = _tensor(m, "weight"), _tensor(ref, "weight")
        if w is not None and w0 is not None and w.dtype != w0.dtype:
            raise FusionError(f"layer '{name}': expert {k} weights are {w.dtype}, expert 0's are {w0.dtype}")
    return ref


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


class DynamicLayer(nn.Module):
    """Base of the dynamic layers (see the module docstring): the stacked expert tensors, the attention switches.

    Subclasses build ``self.attention`` and implement ``forward``; :meth:`mixing` gives them the vectors to use.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    attention: nn.Module

    def __init__(self, experts: Sequence[nn.Module], name: str) -> None:
        super().__init__()
        self.name = name
        self.num_experts = len(experts)
        weights = [w for w in (_tensor(e, "weight") for e in experts) if w is not None]
        biases = [_tensor(e, "bias") for e in experts]
        if len(weights) != len(experts):
            raise FusionError(f"layer '{name}': an expert's layer has no weight tensor")
        device = weights[0].device
        with torch.no_grad():
            self.register_buffer("weight", torch.stack([w.detach().to(device).clone() for w in weights]))
            bias = None
            if biases[0] is not None:
                bias = torch.stack([b.detach().to(device).clone() for b in biases if b is not None])
            self.register_buffer("bias", bias)
        self.record = False
        self.last_attention: torch.Tensor | None = None
        self._fixed: torch.Tensor | None = None

    @property
    def fixed_attention(self) -> torch.Tensor | None:
        """The (K,) vector that replaces the attention branch, or None to use the branch."""
        return self._fixed

    @fixed_attention.setter
    def fixed_attention(self, value: torch.Tensor | Sequence[float] | np.ndarray | None) -> None:
        if value is None:
            self._fixed = None
            return
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu", torch.float64)
        else:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        if t.shape != (self.num_experts,):
            raise FusionError(f"layer '{self.name}': fixed_attention must have shape ({self.num_experts},), "
                              f"got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise FusionError(f"layer '{self.name}': fixed_attention must be finite, got {t.tolist()}")
        self._fixed = t

    def fixed_mix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Σ a_k W_k, Σ a_k b_k) for the fixed vector a (one set of weights for the whole batch)."""
        assert self._fixed is not None
        a = self._fixed.to(device=self.weight.device, dtype=self.weight.dtype)
        bias = torch.tensordot(a, self.bias, dims=1) if self.bias is not None else None
        return torch.tensordot(a, self.weight, dims=1), bias

    def remember(self, att: torch.Tensor) -> None:
        """Keep the (N, K) vectors of this forward when recording."""
        if self.record:
            self.last_attention = att.detach()


def dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicLayer]]:
    """All dynamic layers of ``model`` (every kind) with their names, in module-registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicLayer)]


def attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of every attention branch, in module order (what the fusion optimizer gets)."""
    params: list[nn.Parameter] = []
    for _, layer in dynamic_layers(model):
        params.extend(layer.attention.parameters())
    return params


def set_fixed_attention(model: nn.Module,
                        value: torch.Tensor | Sequence[float] | np.ndarray
                        | Mapping[str, torch.Tensor | Sequence[float] | np.ndarray] | None) -> None:
    """Set (or clear with None) ``fixed_attention`` on every dynamic layer.

    ``value`` is one (K,) vector for all layers or a mapping layer name → (K,) that must name every layer.
    """
    layers = dynamic_layers(model)
    if isinstance(value, Mapping):
        names = [n for n, _ in layers]
        name_set = set(names)
        unknown = [k for k in value if k not in name_set]
        if unknown:
            raise FusionError(f"set_fixed_attention: '{unknown[0]}' is not a dynamic layer of the model")
        for name, layer in layers:
            if name not in value:
                raise FusionError(f"set_fixed_attention: no vector given for layer '{name}'")
            layer.fixed_attention = value[name]
    else:
        for _, layer in layers:
            layer.fixed_attention = value


def set_record(model: nn.Module, flag: bool) -> None:
    """Turn recording of the last attention vectors on/off on every dynamic layer (off also clears them)."""
    for _, layer in dynamic_layers(model):
        layer.record = flag
        if not flag:
            layer.last_attention = None
