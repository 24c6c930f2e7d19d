"""Generic dynamic-layer wrapper for fusing K expert generators (DESIGN.md §2 "Fusion" 1 and 3).

:func:`make_dynamic` deep-copies expert 0 and replaces **every** parameterised layer of a kind it knows — found by
``named_modules`` and module type, so any backbone (toy nets, MSRResNet, RRDBNet, SwinIR) works without a
hand-written dynamic twin — with a dynamic layer over the K experts' matching layers (:mod:`easlurm.fuse.layers`):

- ``nn.Conv2d`` → :class:`DynamicConv2d` (every conv, as the reference: conv_first … conv_last, upsampling convs
  included; its attention branch is the reference's conv branch, :class:`~easlurm.fuse.layers.AttentionBranch`);
- ``nn.Linear`` → :class:`~easlurm.fuse.token_layers.DynamicLinear` and ``nn.LayerNorm`` (with affine weights) →
  :class:`~easlurm.fuse.token_layers.DynamicLayerNorm` — a transformer's qkv, projection and MLP layers and its
  norms (SwinIR), with a per-token attention branch (:mod:`easlurm.fuse.token_layers` says why).

Linear and LayerNorm are matched by exact type (a subclass such as ``nn.MultiheadAttention``'s ``out_proj``, whose
weight its owner reads directly, is left alone); MSRResNet and RRDBNet have neither, so their fusion is unchanged.
Each dynamic layer holds the frozen expert tensors as buffers and a trainable attention branch on the layer's input
that picks, per image, the mixing vector a ∈ Δ^K used for weight Σ_k a_k W_k and bias Σ_k a_k b_k. Every other
entry (SwinIR: the relative-position bias tables and buffers) follows :func:`easlurm.fuse.merge.combine_shared`.

The reference uses one image per batch when averaging; here the average is per image too (the sum of all images'
vectors over the number of images), whatever the batch size.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    AttentionBranch, DynamicLayer, attention_parameters, check_experts, dynamic_layers, set_fixed_attention, set_record,
)
from .merge import FusionError, combine_shared
from .token_layers import DynamicLayerNorm, DynamicLinear, TokenLayer, forget_batch_size, note_batch_size

__all__ = ["AttentionBranch", "DynamicLayer", "DynamicConv2d", "DynamicLinear", "DynamicLayerNorm", "make_dynamic",
           "attention_parameters", "dynamic_layers", "fusable_layers", "set_fixed_attention", "set_record",
           "AttentionAverager", "average_attention"]


def _check_expert_convs(name: str, convs: Sequence[nn.Module]) -> nn.Conv2d:
    ref = check_experts(name, convs, nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                                 "dilation", "groups", "padding_mode"))
    assert isinstance(ref, nn.Conv2d)
    if ref.groups != 1:
        raise FusionError(f"layer '{name}': grouped convs (groups={ref.groups}) are not supported")
    if ref.padding_mode != "zeros":
        raise FusionError(f"layer '{name}': padding_mode '{ref.padding_mode}' is not supported (only 'zeros')")
    return ref


class DynamicConv2d(DynamicLayer):
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
        ref = _check_expert_convs(name, experts)
        super().__init__(experts, name)
        self.in_channels = ref.in_channels
        self.out_channels = ref.out_channels
        self.kernel_size = ref.kernel_size
        self.stride = ref.stride
        self.padding = ref.padding
        self.dilation = ref.dilation
        self.attention = AttentionBranch(self.in_channels, self.num_experts, att_kernel, att_hidden,
                                         att_channels).to(device=ref.weight.device, dtype=ref.weight.dtype)
        self.fixed_attention = fixed_attention

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, experts={self.num_experts}, {self.in_channels}->{self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise FusionError(f"layer '{self.name}': expected input (N, {self.in_channels}, H, W), "
                              f"got {tuple(x.shape)}")
        n = x.shape[0]
        w_all = self.weight
        b_all = self.bias
        if self.fixed_attention is not None:
            # One kernel for the whole batch: a plain conv, no grouping needed.
            kernel, bias = self.fixed_mix()
            out = F.conv2d(x, kernel, bias, self.stride, self.padding, self.dilation)
            att = self.fixed_attention.to(device=w_all.device, dtype=w_all.dtype).unsqueeze(0).expand(n, -1)
        else:
            att = self.attention(x)
            a = att.to(w_all.dtype)
            kernel = (a @ w_all.flatten(1)).view(n * self.out_channels, *w_all.shape[2:])
            bias = (a @ b_all).flatten() if b_all is not None else None
            folded = x.reshape(1, n * self.in_channels, x.shape[2], x.shape[3])
            out = F.conv2d(folded, kernel, bias, self.stride, self.padding, self.dilation, groups=n)
            out = out.view(n, self.out_channels, out.shape[2], out.shape[3])
        self.remember(att)
        return out


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


#: Layer kinds :func:`make_dynamic` wraps: (does this module qualify, its dynamic layer's builder). Convs by
#: ``isinstance`` (as ever); Linear and LayerNorm by exact type (see the module docstring).
Builder = Callable[[str, Sequence[nn.Module], int, int, int], DynamicLayer]
LAYER_KINDS: tuple[tuple[Callable[[nn.Module], bool], Builder], ...] = (
    (lambda m: isinstance(m, nn.Conv2d),
     lambda name, ms, k, c, h: DynamicConv2d(ms, att_kernel=k, att_channels=c,  # type: ignore[arg-type]
                                             att_hidden=h, name=name)),
    (lambda m: type(m) is nn.Linear,
     lambda name, ms, k, c, h: DynamicLinear(ms, att_hidden=h, att_channels=c, name=name)),  # type: ignore[arg-type]
    (lambda m: type(m) is nn.LayerNorm and m.elementwise_affine,
     lambda name, ms, k, c, h: DynamicLayerNorm(ms, att_hidden=h, att_channels=c,  # type: ignore[arg-type]
                                                name=name)),
)


def _kind(module: nn.Module) -> Builder | None:
    return next((build for qualifies, build in LAYER_KINDS if qualifies(module)), None)


def fusable_layers(model: nn.Module) -> list[str]:
    """Names of the layers :func:`make_dynamic` makes dynamic, in module order (``""``: the model itself)."""
    seen: dict[int, str] = {}
    names: list[str] = []
    for name, m in model.named_modules(remove_duplicate=False):
        if _kind(m) is not None:
            if id(m) in seen:
                raise FusionError(f"layer '{name}' is the same module as '{seen[id(m)]}' (shared weights); "
                                  f"make_dynamic needs one module per layer")
            seen[id(m)] = name
            names.append(name)
    return [""] if "" in names else names  # the kinds are leaf layers; "": the model is one bare layer


def make_dynamic(experts: Sequence[nn.Module], att_kernel: int = 3, att_channels: int = 100, *,
                 att_hidden: int = 64) -> nn.Module:
    """Build the dynamic fusion model over K experts of one backbone.

    Args:
        experts: K modules of identical structure (same module tree, state-dict keys and shapes, layer configs).
            They are not modified.
        att_kernel: kernel size of the conv layers' attention convs (3 for RRDB, 5 for SRResNet in the reference;
            token layers' branches are per-token).
        att_channels: width of the pooled attention feature (reference: 100).
        att_hidden: width of the first two attention layers (reference: 64).

    Returns:
        A deep copy of expert 0 in which every layer of a kind in :data:`LAYER_KINDS` (:func:`fusable_layers`) is a
        dynamic layer over the experts' matching layers. Other parameters/buffers follow
        :func:`easlurm.fuse.merge.combine_shared` (kept if identical, else averaged uniformly). Only
        attention-branch parameters require grad. Same device/dtype as the experts. With token layers, the model
        tells them each forward's batch size (:func:`easlurm.fuse.token_layers.note_batch_size`).

    Raises:
        FusionError naming the first layer where the experts differ (or a layer config that is not supported).
    """
    if len(experts) == 0:
        raise FusionError("make_dynamic: no experts given")
    for k, e in enumerate(experts):
        if not isinstance(e, nn.Module):
            raise FusionError(f"make_dynamic: expert {k} is a {type(e).__name__}, not an nn.Module")
        if dynamic_layers(e):
            raise FusionError(f"make_dynamic: expert {k} already contains dynamic layers")
    _check_same_structure(experts)
    names = fusable_layers(experts[0])
    if not names:
        raise FusionError(f"make_dynamic: {type(experts[0]).__name__} has no layer to fuse (nn.Conv2d, nn.Linear, "
                          f"nn.LayerNorm)")

    def build(name: str) -> DynamicLayer:
        layers = [e.get_submodule(name) for e in experts]
        make = _kind(layers[0])
        assert make is not None
        return make(name or "<root>", layers, att_kernel, att_channels, att_hidden)

    if names == [""]:  # the backbone is a single bare layer
        model: nn.Module = build("")
    else:
        model = copy.deepcopy(experts[0])
        prefixes = tuple(f"{n}." for n in names)
        sds = [e.state_dict() for e in experts]
        shared_keys = [key for key in sds[0] if not key.startswith(prefixes)]
        shared = combine_shared(sds, shared_keys)
        own = model.state_dict()
        with torch.no_grad():
            for key, value in shared.items():
                own[key].copy_(value)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, build(name))
        if any(isinstance(m, TokenLayer) for m in model.modules()):
            model.register_forward_pre_hook(note_batch_size)
            model.register_forward_hook(forget_batch_size)
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
            raise FusionError("AttentionAverager: the model has no dynamic layer")
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
