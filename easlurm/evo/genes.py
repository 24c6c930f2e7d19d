"""Which state-dict entries of a generator are genes: what SBX crosses, what mutation perturbs, what stays out.

A backbone's rule is its spec's :attr:`~easlurm.models.specs.GeneratorSpec.ea_genes`; :func:`gene_plan` turns it into
a :class:`GenePlan` of key names for one network (built on any device, the meta device included: only names, module
types and dtypes are read).

- ``float_tensors`` (MSRResNet, RRDBNet; the default): the genome is the whole state dict; SBX crosses every
  floating-point entry; mutation perturbs the floating-point entries with ``ndim >= 2`` whose name does not end in
  ``bias`` (:func:`easlurm.evo.operators.is_weight_key`) — for these conv-only networks exactly the reference's rule
  (its SBX takes keys ending in "t" or "s", weights and biases; its mutation keys ending in "t", the conv weights).
- ``layer_weights`` (SwinIR): SBX **and** mutation touch only the ``weight`` of every conv (``nn.Conv1d/2d/3d`` and
  their transposes) and ``nn.Linear`` — the qkv and projection layers and the MLPs included: the reference's "weights
  only" rule, applied to the layers a transformer has. Biases, LayerNorm scales and shifts and the relative-position
  bias tables stay as the first parent's (the child's own slot); SBX, a mean of two parents' entries, would make
  little sense on a norm's scale or on a table of attention offsets, and the reference evolves no SwinIR (its SwinIR
  config never runs the EA). Registered buffers — ``relative_position_index`` (int64) and the shifted windows'
  ``attn_mask`` (0/−100 floats) — are architecture constants, not weights: they are **kept out of the genome**
  (:meth:`GenePlan.genome`), so no operator, no generation checkpoint and no SBX ``u`` ever sees them; every member
  must hold the configured network's values (:meth:`GenePlan.check_buffers`) and a genome gets them back when it is
  written as a checkpoint (:meth:`GenePlan.complete`).

With ``float_tensors`` the genome and the draws are exactly what easlurm did before the rule was a backbone's, so
MSRResNet and RRDBNet runs are bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from . import EvoError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["GENE_RULES", "GenePlan", "gene_plan"]

#: The rules a backbone spec may name.
GENE_RULES = ("float_tensors", "layer_weights")


@dataclass(frozen=True)
class GenePlan:
    """The gene layout of one network: key names, each tuple in state-dict order.

    ``crossover``: the entries SBX crosses (one ``u`` each). ``mutation``: the entries mutation may perturb, or None
    for :func:`~easlurm.evo.operators.is_weight_key`'s name rule. ``buffers``: the entries kept out of the genome and
    ``buffer_values`` their values (CPU tensors; the configured network's). ``keys``: the full state dict's order.
    """

    rule: str
    crossover: tuple[str, ...]
    mutation: tuple[str, ...] | None
    buffers: tuple[str, ...]
    keys: tuple[str, ...]
    buffer_values: Mapping[str, torch.Tensor]

    def genome(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` without the buffers (the same tensors, not copies), in state-dict order."""
        drop = set(self.buffers)
        return {k: v for k, v in state.items() if k not in drop}

    def check_buffers(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """:class:`EvoError` naming ``source`` and the entry when a buffer of ``state`` is not the configured
        network's (the genome leaves buffers out, so they must be the same in every member)."""
        import torch

        for key in self.buffers:
            got = state.get(key)
            want = self.buffer_values[key]
            if got is None or got.shape != want.shape or not torch.equal(got.detach().cpu(), want):
                raise EvoError(f"{source}: buffer {key!r} differs from the configured network's; buffers are not "
                               f"evolved and must be the architecture's own values")

    def complete(self, genome: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full state dict of ``genome`` (the buffers put back, on the genome's device), in state-dict order."""
        if not self.buffers:
            return dict(genome)
        device = next(iter(genome.values())).device if genome else None
        return {k: genome[k] if k in genome else self.buffer_values[k].to(device) for k in self.keys}


def _layer_weights(model: nn.Module) -> set[str]:
    from torch import nn

    kinds = (nn.modules.conv._ConvNd, nn.Linear)
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, kinds) and isinstance(getattr(module, "weight", None), nn.Parameter):
            out.add(f"{name}.weight" if name else "weight")
    return out


def gene_plan(model: nn.Module, rule: str = "float_tensors") -> GenePlan:
    """The :class:`GenePlan` of ``model`` under ``rule`` (see the module docstring)."""
    if rule not in GENE_RULES:
        raise EvoError(f"ea genes: unknown rule {rule!r}; valid: {', '.join(GENE_RULES)}")
    state = model.state_dict()
    keys = tuple(state)
    if rule == "float_tensors":
        return GenePlan(rule, tuple(k for k, t in state.items() if t.is_floating_point()), None, (), keys, {})
    buffer_names = {n for n, _ in model.named_buffers()}
    buffers = tuple(k for k in keys if k in buffer_names)
    weights = _layer_weights(model)
    evolved = tuple(k for k in keys if k in weights)
    values = {k: state[k].detach().cpu().clone() if not state[k].is_meta else state[k] for k in buffers}
    return GenePlan(rule, evolved, evolved, buffers, keys, values)
