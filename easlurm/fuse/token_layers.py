"""Dynamic linear and LayerNorm layers: fusion of a transformer's token layers (SwinIR's qkv, projection, MLP and
norms), built by :func:`easlurm.fuse.dynamic.make_dynamic` from any ``nn.Linear`` / ``nn.LayerNorm``.

A token layer sees (…, C) inputs whose leading dimensions hold the batch first (SwinIR: (B, H·W, C) for the norms
and MLP, (B·windows, ws², C) for qkv and the projection — windows are cut image by image). Per image n the layer uses
Σ_k a_{n,k}·W_k and Σ_k a_{n,k}·b_k, exactly as a dynamic conv does.

Attention branch (:class:`TokenAttentionBranch`): the reference's branch for SwinIR (``models/swinIR_dynamic``)
rearranges a token layer's input into an image and runs the 5×5-conv branch of
:class:`~easlurm.fuse.layers.AttentionBranch` on it. A layer wrapped by module type cannot know that layout (where
the windows are, the image's height and width), so here the three convs are per-token (1×1) — Linear(C → 64) ·
LeakyReLU · Linear(64 → 64) · LeakyReLU · Linear(64 → 100) · LeakyReLU — followed by the same mean over all of an
image's tokens, Linear(100 → 15) · LeakyReLU · Linear(15 → K) and softmax. The mean over tokens does not depend on
their order, so windows and shifts change nothing. ``fusion.att_kernel`` does not apply to token layers.

How a layer knows the batch size: the fusion model built by ``make_dynamic`` notes the batch of its input on every
token layer before each forward (:func:`note_batch_size`, a forward pre-hook on the model) and clears it after;
a token layer called on its own takes its input's first dimension.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LRELU_SLOPE, MAPPING_HIDDEN, DynamicLayer, check_experts
from .merge import FusionError

__all__ = ["TokenAttentionBranch", "TokenLayer", "DynamicLinear", "DynamicLayerNorm", "note_batch_size",
           "forget_batch_size"]


class TokenAttentionBranch(nn.Module):
    """Per-image softmax weights over K experts from tokens: (N, T, C) → (N, K), rows summing to 1."""

    def __init__(self, in_features: int, num_experts: int, hidden: int = 64, channels: int = 100) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(hidden, hidden), nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(hidden, channels), nn.LeakyReLU(LRELU_SLOPE),
        )
        self.mapping = nn.Sequential(
            nn.Linear(channels, MAPPING_HIDDEN), nn.LeakyReLU(LRELU_SLOPE), nn.Linear(MAPPING_HIDDEN, num_experts),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mapping(self.features(tokens).mean(dim=1)), dim=1)


class TokenLayer(DynamicLayer):
    """A dynamic layer on (…, C) tokens (see the module docstring); ``batch_size`` is set by the fusion model."""

    in_features: int

    def __init__(self, experts: Sequence[nn.Module], name: str, in_features: int, att_hidden: int,
                 att_channels: int) -> None:
        super().__init__(experts, name)
        self.in_features = in_features
        self.batch_size: int | None = None
        ref = self.weight
        self.attention = TokenAttentionBranch(in_features, self.num_experts, att_hidden, att_channels).to(
            device=ref.device, dtype=ref.dtype)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (N, T, C), N the batch size (batch-major leading dimensions), C the layer's input features."""
        n = self.batch_size or x.shape[0]
        d = self._feature_dims()
        if x.ndim <= d or math.prod(x.shape[-d:]) != self.in_features or x.numel() % (n * self.in_features):
            raise FusionError(f"layer '{self.name}': input {tuple(x.shape)} is not a batch of {n} images of "
                              f"tokens with {self.in_features} features")
        return x.reshape(n, -1, self.in_features)

    def _feature_dims(self) -> int:
        return 1

    def remember_fixed(self, x: torch.Tensor) -> None:
        """Record the fixed vector for each image of ``x`` (when recording)."""
        if self.record and self.fixed_attention is not None:
            n = self.tokens(x).shape[0]
            self.remember(self.fixed_attention.to(x.device, x.dtype).unsqueeze(0).expand(n, -1))

    def mixed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(tokens (N, T, C), per-image weights (N, …), per-image biases (N, …) or None) from the branch."""
        xt = self.tokens(x)
        att = self.attention(xt)
        self.remember(att)
        a = att.to(self.weight.dtype)
        n = a.shape[0]
        weight = (a @ self.weight.flatten(1)).view(n, *self.weight.shape[1:])
        bias = a @ self.bias.flatten(1) if self.bias is not None else None
        return xt, weight, bias


class DynamicLinear(TokenLayer):
    """``nn.Linear`` over K experts: ``weight`` (K, O, I), ``bias`` (K, O) or None. Input (…, I) → (…, O)."""

    def __init__(self, experts: Sequence[nn.Linear], att_hidden: int = 64, att_channels: int = 100,
                 name: str = "linear") -> None:
        ref = check_experts(name, experts, nn.Linear, ("in_features", "out_features"))
        super().__init__(experts, name, ref.in_features, att_hidden, att_channels)  # type: ignore[arg-type]
        self.out_features: int = ref.out_features  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, experts={self.num_experts}, {self.in_features}->{self.out_features}, "
                f"bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_attention is not None:
            weight, bias = self.fixed_mix()
            self.remember_fixed(x)
            return F.linear(x, weight, bias)
        xt, weight, bias = self.mixed(x)
        out = torch.bmm(xt, weight.transpose(1, 2))
        if bias is not None:
            out = out + bias.unsqueeze(1)
        return out.reshape(*x.shape[:-1], self.out_features)


class DynamicLayerNorm(TokenLayer):
    """``nn.LayerNorm`` (with affine weights) over K experts: ``weight`` (K, *shape), ``bias`` (K, *shape) or None.
    Normalises as the experts do (same shape and eps), then scales and shifts per image."""

    def __init__(self, experts: Sequence[nn.LayerNorm], att_hidden: int = 64, att_channels: int = 100,
                 name: str = "norm") -> None:
        ref = check_experts(name, experts, nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine"))
        if not getattr(ref, "elementwise_affine", False):
            raise FusionError(f"layer '{name}': a LayerNorm without affine weights has nothing to fuse")
        assert isinstance(ref, nn.LayerNorm)
        shape = tuple(ref.normalized_shape)
        super().__init__(experts, name, math.prod(shape), att_hidden, att_channels)
        self.normalized_shape: tuple[int, ...] = shape
        self.eps: float = ref.eps

    def _feature_dims(self) -> int:
        return len(self.normalized_shape)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, experts={self.num_experts}, {self.normalized_shape}, eps={self.eps}, "
                f"bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_attention is not None:
            weight, bias = self.fixed_mix()
            self.remember_fixed(x)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        xt, weight, bias = self.mixed(x)
        # Normalising over the flattened trailing dimensions is what LayerNorm over ``normalized_shape`` does.
        normed = F.layer_norm(xt, (self.in_features,), None, None, self.eps)
        out = normed * weight.flatten(1).unsqueeze(1)
        if bias is not None:
            out = out + bias.flatten(1).unsqueeze(1)
        return out.reshape(x.shape)


def note_batch_size(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a fusion model: tell its token layers the batch size of this forward's input."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    n = int(x.shape[0]) if x is not None and x.ndim > 0 else None
    for m in model.modules():
        if isinstance(m, TokenLayer):
            m.batch_size = n


def forget_batch_size(model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook of a fusion model: clear what :func:`note_batch_size` noted."""
    for m in model.modules():
        if isinstance(m, TokenLayer):
            m.batch_size = None
