"""Generic dynamic-convolution wrapper for fusing K expert generators (DESIGN.md §2 "Fusion" 1 and 3).

:func:`make_dynamic` deep-copies expert 0 and replaces **every** ``nn.Conv2d`` found by ``named_modules`` with a
:class:`DynamicConv2d` over the K experts' matching convs, so any backbone (toy nets, MSRResNet, RRDBNet) works
without a hand-written dynamic twin. Each dynamic layer holds the frozen expert kernels as buffers and a trainable
attention branch on the layer's input that picks, per image, the mixing vector a ∈ Δ^K used for both kernel
Σ_k a_k W_k and bias Σ_k a_k b_k.

Attention branch — as in the reference code (github.com/csslc/EA-Adam, ``models/*_dynamic/*_block.py``, class
``Fusion``; fusion configs ``num_feat_fusion: 64``, ``num_params: 100``, ``use_bias: True``):

    Conv(C_in → 64, k) · LeakyReLU(0.2) · Conv(64 → 64, k) · LeakyReLU(0.2) · Conv(64 → 100, k) · LeakyReLU(0.2)
    → global average pool → 100-d → Linear(100 → 15) · LeakyReLU(0.2) → Linear(15 → K) → softmax

with k = 5 for SRResNet and 3 for RRDB, stride 1, padding k // 2, biases on every layer. Here ``att_hidden`` is the
64 and ``att_channels`` the 100. Every conv of the backbone becomes dynamic, as in the reference (conv_first …
conv_last, upsampling convs included). The reference uses one image per batch when averaging; here the average is
per image too (the sum of all images' vectors over the number of images), whatever the batch size.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .merge import FusionError, combine_shared

__all__ = ["AttentionBranch", "DynamicConv2d", "make_dynamic", "attention_parameters", "dynamic_layers",
           "set_fixed_attention", "set_record", "AttentionAverager", "average_attention"]

_MAPPING_HIDDEN = 15
_LRELU_SLOPE = 0.2


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
            nn.LeakyReLU(_LRELU_SLOPE),
            nn.Conv2d(hidden, hidden, kernel_size, stride=1, padding=pad),
            nn.LeakyReLU(_LRELU_SLOPE),
            nn.Conv2d(hidden, channels, kernel_size, stride=1, padding=pad),
            nn.LeakyReLU(_LRELU_SLOPE),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mapping = nn.Sequential(
            nn.Linear(channels, _MAPPING_HIDDEN),
            nn.LeakyReLU(_LRELU_SLOPE),
            nn.Linear(_MAPPING_HIDDEN, num_experts),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(x)).flatten(1)
        return torch.softmax(self.mapping(pooled), dim=1)


def _check_expert_convs(name: str, convs: Sequence[nn.Module]) -> nn.Conv2d:
    if len(convs) == 0:
        raise FusionError(f"layer '{name}': no expert convs given")
    for k, c in enumerate(convs):
        if not isinstance(c, nn.Conv2d):
            raise FusionError(f"layer '{name}': expert {k} holds a {type(c).__name__}, not an nn.Conv2d")
    ref = convs[0]
    if ref.groups != 1:
        raise FusionError(f"layer '{name}': grouped convs (groups={ref.groups}) are not supported")
    if ref.padding_mode != "zeros":
        raise FusionError(f"layer '{name}': padding_mode '{ref.padding_mode}' is not supported (only 'zeros')")
    fields = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
              "padding_mode")
    for k, c in enumerate(convs[1:], start=1):
        for f in fields:
            if getattr(c, f) != getattr(ref, f):
                raise FusionError(f"layer '{name}': expert {k} has {f}={getattr(c, f)!r}, expert 0 has "
                                  f"{getattr(ref, f)!r}")
        if (c.bias is None) != (ref.bias is None):
            raise FusionError(f"layer '{name}': expert {k} has bias={c.bias is not None}, expert 0 has "
                              f"bias={ref.bias is not None}")
        if c.weight.dtype != ref.weight.dtype:
            raise FusionError(f"layer '{name}': expert {k} weights are {c.weight.dtype}, expert 0's are "
                              f"{ref.weight.dtype}")
    assert isinstance(ref, nn.Conv2d)
    return ref


class DynamicConv2d(nn.Module):
    """A conv whose kernel is a per-image convex mix of K frozen expert kernels.

    Buffers (frozen, saved in the state dict): ``weight`` (K, O, I, kh, kw) and ``bias`` (K, O) or None, stacked in
    expert order. Trainable: ``attention`` (:class:`AttentionBranch` on this layer's input).

    Forward: x (N, I, H, W) → (N, O, H', W') with the experts' stride/padding/dilation. Per image n the kernel is
    Σ_k a_{n,k} W_k and the bias Σ_k a_{n,k} b_k; the batch is folded into the groups of one conv.

    ``fixed_attention`` (K,) — when set, the branch is skipped and every image uses that vector (not required to
    sum to 1); used by tests and to evaluate averaged weights. When ``record`` is True the (N, K) vectors of the
    last forward are kept, detached, in ``last_attention``.
    """

    def __init__(self, experts: Sequence[nn.Conv2d], att_kernel: int = 3, att_channels: int = 100,
                 att_hidden: int = 64, name: str = "conv",
                 fixed_attention: torch.Tensor | None = None) -> None:
        super().__init__()
        ref = _check_expert_convs(name, experts)
        self.name = name
        self.num_experts = len(experts)
        self.in_channels = ref.in_channels
        self.out_channels = ref.out_channels
        self.kernel_size = ref.kernel_size
        self.stride = ref.stride
        self.padding = ref.padding
        self.dilation = ref.dilation
        device, dtype = ref.weight.device, ref.weight.dtype
        with torch.no_grad():
            self.register_buffer("weight", torch.stack([c.weight.detach().to(device).clone() for c in experts]))
            bias = None
            if ref.bias is not None:
                bias = torch.stack([c.bias.detach().to(device).clone() for c in experts])  # type: ignore[union-attr]
            self.register_buffer("bias", bias)
        self.attention = AttentionBranch(self.in_channels, self.num_experts, att_kernel, att_hidden,
                                         att_channels).to(device=device, dtype=dtype)
        self.record = False
        self.last_attention: torch.Tensor | None = None
        self._fixed: torch.Tensor | None = None
        self.fixed_attention = fixed_attention

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

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, experts={self.num_experts}, {self.in_channels}->{self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise FusionError(f"layer '{self.name}': expected input (N, {self.in_channels}, H, W), "
                              f"got {tuple(x.shape)}")
        n = x.shape[0]
        w_all = cast(torch.Tensor, self.weight)
        b_all = cast("torch.Tensor | None", self.bias)
        if self._fixed is not None:
            # One kernel for the whole batch: a plain conv, no grouping needed.
            a = self._fixed.to(device=w_all.device, dtype=w_all.dtype)
            kernel = torch.tensordot(a, w_all, dims=1)
            bias = torch.tensordot(a, b_all, dims=1) if b_all is not None else None
            out = F.conv2d(x, kernel, bias, self.stride, self.padding, self.dilation)
            att = a.unsqueeze(0).expand(n, -1)
        else:
            att = self.attention(x)
            a = att.to(w_all.dtype)
            kernel = (a @ w_all.flatten(1)).view(n * self.out_channels, *w_all.shape[2:])
            bias = (a @ b_all).flatten() if b_all is not None else None
            folded = x.reshape(1, n * self.in_channels, x.shape[2], x.shape[3])
            out = F.conv2d(folded, kernel, bias, self.stride, self.padding, self.dilation, groups=n)
            out = out.view(n, self.out_channels, out.shape[2], out.shape[3])
        if self.record:
            self.last_attention = att.detach()
        return out


def dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConv2d]]:
    """All :class:`DynamicConv2d` layers of ``model`` with their names, in module-registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicConv2d)]


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


def _module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)]


def _check_same_structure(experts: Sequence[nn.Module]) -> None:
    ref_types = _module_types(experts[0])
    ref_sd = experts[0].state_dict()
    for k, e in enumerate(experts[1:], start=1):
        types = _module_types(e)
        for (n0, t0), (n1, t1) in zip(ref_types, types):
            if n0 != n1 or t0 is not t1:
                raise FusionError(f"expert {k} differs from expert 0 at layer '{n0 or '<root>'}': "
                                  f"{t0.__name__} '{n0}' vs {t1.__name__} '{n1}'")
        if len(types) != len(ref_types):
            shorter, longer = (types, ref_types) if len(types) < len(ref_types) else (ref_types, types)
            n_extra = longer[len(shorter)][0]
            raise FusionError(f"expert {k} differs from expert 0 at layer '{n_extra}': present in only one of them")
        sd = e.state_dict()
        for key, t in ref_sd.items():
            other = sd.get(key)
            if other is None or other.shape != t.shape:
                layer = key.rsplit(".", 1)[0] if "." in key else "<root>"
                got = "missing" if other is None else f"shape {tuple(other.shape)}"
                raise FusionError(f"expert {k} differs from expert 0 at layer '{layer}': '{key}' is {got}, "
                                  f"expert 0 has shape {tuple(t.shape)}")
        extra = [key for key in sd if key not in ref_sd]
        if extra:
            raise FusionError(f"expert {k} differs from expert 0: extra entry '{extra[0]}'")


def _conv_names(model: nn.Module) -> list[str]:
    seen: dict[int, str] = {}
    names: list[str] = []
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Conv2d):
            if id(m) in seen:
                raise FusionError(f"conv '{name}' is the same module as '{seen[id(m)]}' (shared weights); "
                                  f"make_dynamic needs one module per conv layer")
            seen[id(m)] = name
            names.append(name)
    return names


def make_dynamic(experts: Sequence[nn.Module], att_kernel: int = 3, att_channels: int = 100, *,
                 att_hidden: int = 64) -> nn.Module:
    """Build the dynamic fusion model over K experts of one backbone.

    Args:
        experts: K modules of identical structure (same module tree, state-dict keys and shapes, conv configs).
            They are not modified.
        att_kernel: kernel size of the attention branch convs (3 for RRDB, 5 for SRResNet in the reference).
        att_channels: width of the pooled attention feature (reference: 100).
        att_hidden: width of the first two attention convs (reference: 64).

    Returns:
        A deep copy of expert 0 in which every ``nn.Conv2d`` is a :class:`DynamicConv2d` over the experts' matching
        convs. Non-conv parameters/buffers follow :func:`easlurm.fuse.merge.combine_shared` (kept if identical,
        else averaged uniformly). Only attention-branch parameters require grad. Same device/dtype as the experts.

    Raises:
        FusionError naming the first layer where the experts differ (or a conv config that is not supported).
    """
    if len(experts) == 0:
        raise FusionError("make_dynamic: no experts given")
    for k, e in enumerate(experts):
        if not isinstance(e, nn.Module):
            raise FusionError(f"make_dynamic: expert {k} is a {type(e).__name__}, not an nn.Module")
        if dynamic_layers(e):
            raise FusionError(f"make_dynamic: expert {k} already contains DynamicConv2d layers")
    _check_same_structure(experts)
    names = _conv_names(experts[0])
    if not names:
        raise FusionError(f"make_dynamic: {type(experts[0]).__name__} has no nn.Conv2d to fuse")

    def build(name: str) -> DynamicConv2d:
        convs = [e.get_submodule(name) for e in experts]
        return DynamicConv2d(convs, att_kernel=att_kernel, att_channels=att_channels,  # type: ignore[arg-type]
                             att_hidden=att_hidden, name=name or "<root>")

    if names == [""]:  # the backbone is a single bare conv
        model: nn.Module = build("")
    else:
        model = copy.deepcopy(experts[0])
        conv_prefixes = tuple(f"{n}." for n in names)
        sds = [e.state_dict() for e in experts]
        shared_keys = [key for key in sds[0] if not key.startswith(conv_prefixes)]
        shared = combine_shared(sds, shared_keys)
        own = model.state_dict()
        with torch.no_grad():
            for key, value in shared.items():
                own[key].copy_(value)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, build(name))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in attention_parameters(model):
        p.requires_grad_(True)
    return model


class AttentionAverager:
    """Accumulates, per dynamic layer, the mean attention vector over many images.

    Call :meth:`update` after each forward of ``model`` made with recording on (:func:`set_record`); read
    :meth:`averages`. Sums are kept in float64; each image counts once whatever the batch size.
    """

    def __init__(self, model: nn.Module) -> None:
        self._layers = dynamic_layers(model)
        if not self._layers:
            raise FusionError("AttentionAverager: the model has no DynamicConv2d layer")
        self._sums: dict[str, np.ndarray] = {n: np.zeros(layer.num_experts, dtype=np.float64)
                                             for n, layer in self._layers}
        self.count = 0

    def update(self) -> None:
        """Add the vectors recorded by the last forward pass (then clear them so none is counted twice)."""
        batch: int | None = None
        for name, layer in self._layers:
            att = layer.last_attention
            if att is None:
                raise FusionError(f"AttentionAverager: layer '{name}' recorded nothing; run the forward pass "
                                  f"with set_record(model, True) before update()")
            if batch is None:
                batch = att.shape[0]
            elif att.shape[0] != batch:
                raise FusionError(f"AttentionAverager: layer '{name}' recorded {att.shape[0]} images, "
                                  f"earlier layers {batch}")
        for name, layer in self._layers:
            att = layer.last_attention
            assert att is not None
            self._sums[name] += att.detach().to("cpu", torch.float64).sum(dim=0).numpy()
            layer.last_attention = None
        self.count += int(batch or 0)

    def averages(self) -> dict[str, np.ndarray]:
        """Layer name → mean (K,) float64 attention, in module order."""
        if self.count == 0:
            raise FusionError("AttentionAverager: no images accumulated")
        return {name: s / self.count for name, s in self._sums.items()}


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def average_attention(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, np.ndarray]:
    """Run ``model`` (eval mode, no grad) over ``batches`` and return each layer's mean attention vector.

    Args:
        model: a model from :func:`make_dynamic` (its mode and recording flags are restored afterwards).
        batches: LR images, each a float tensor NCHW, RGB in [0, 1] (the reference uses a centre crop of half the
            height and width of 100 validation LR images); moved to the model's device.

    Returns:
        Layer name → float64 (K,) mean over all images, in module order (deterministic).
    """
    averager = AttentionAverager(model)
    layers = dynamic_layers(model)
    old_record = [layer.record for _, layer in layers]
    was_training = model.training
    device = _model_device(model)
    model.eval()
    set_record(model, True)
    try:
        for i, batch in enumerate(batches):
            if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
                shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise FusionError(f"average_attention: batch {i} must be an NCHW tensor, got {shape}")
            model(batch.to(device))
            averager.update()
    finally:
        model.train(was_training)
        for (_, layer), flag in zip(layers, old_record):
            layer.record = flag
            layer.last_attention = None
    return averager.averages()
