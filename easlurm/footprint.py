"""The disk footprint of a run, computed before it runs (for the bill, :mod:`easlurm.bill`).

Checkpoint sizes come from the configured G and D built on the meta device (no weights allocated) and serialised
with one-element storages: the ``torch.save`` framing and pickle are then exactly those of the real files and only
the tensor data is added (off by at most the 64-byte alignment per tensor). Adam state is exp_avg + exp_avg_sq per
parameter + a step scalar. The small records (meta.json, lineage rows, PNGs, TensorBoard events) use sizes measured
on runs of this version.

What a cycle writes in the run layout (RUN-STATE: start entries *reference* members' D/optimizer state and carried
genomes instead of copying them): the EA phase of C-1 writes the start entries of C — a new G.pt per replaced slot
(at most the replaceable slots), references for the rest; the Adam phase of C writes, per Adam-trained member, G +
D + optimizer + RNG state (a slot that is not trained only references its start entry); the EA phase of C writes
its records (lineage.jsonl grows with generations × population × the generator's tensor count, through SBX's u
values), and TensorBoard events. Pruning (``python -m easlurm.prune``) deletes D.pt/optim.pt/rng.pt of the members
of cycles older than the last K and keeps every G.pt.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Sequence

from .config import Config
from .population import adam_cycles, is_adam_trained, is_replaceable, phase_iters

__all__ = ["DEFAULT_KEEP", "NEW_GENOMES", "MEMBERS", "EA_RECORDS", "TENSORBOARD", "Disk", "checkpoint_sizes",
           "disk_bill"]

#: The parts of a cycle's bytes (keys of :attr:`Disk.per_cycle`).
NEW_GENOMES = "EA's new genomes (start entries, at most)"
MEMBERS = "trained members (G + D + optimizer + RNG)"
EA_RECORDS = "EA records (lineage, fitness, front)"
TENSORBOARD = "TensorBoard"

#: Default number of recent cycles whose D/optimizer/RNG state pruning keeps.
DEFAULT_KEEP = 2
# Sizes of the small records, measured on runs of this version (bytes): a member/start meta.json, an EA done.json
# per slot, front.png / its TensorBoard copy, the evaluation outputs, one TensorBoard scalar event.
_META, _DONE_PER_SLOT, _FRONT_PNG, _EVAL = 900, 100, 45_000, 100_000
_TB_SCALAR, _TB_IMAGE_RATIO = 52, 0.4
_LINEAGE_ROW, _U_PER_TENSOR, _OP = 420, 20, 60


@dataclass(frozen=True)
class Disk:
    """Bytes written: ``files`` (one checkpoint file of each kind), ``per_cycle`` (a middle cycle, by part),
    ``once`` (pretrain, init, fusion, evaluation), run totals without and with pruning (``keep`` cycles kept)."""
    files: dict[str, int]
    per_cycle: dict[str, int]
    once: dict[str, int]
    adam_phases: int
    total: int
    prunable_per_cycle: int
    keep: int
    total_pruned: int
    ea_progress_peak: int

    @property
    def cycle_total(self) -> int:
        return sum(self.per_cycle.values())


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint sizes


def _proxy_bytes(obj: Any) -> int:
    """Exact ``torch.save`` size of a structure of meta tensors: saved with one-element storages (same framing,
    same pickle), plus the data the real storages would add. Off by at most the 64-byte alignment per tensor."""
    import torch

    from .tensor_files import torch_bytes

    extra = 0

    def swap(x: Any) -> Any:
        nonlocal extra
        if torch.is_tensor(x):
            extra += (x.numel() - 1) * x.element_size() if x.numel() else 0
            return torch.zeros(1, dtype=x.dtype).expand(x.shape) if x.dim() else torch.zeros((), dtype=x.dtype)
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(swap(v) for v in x)
        return x

    return len(torch_bytes(swap(obj))) + extra


def _adam_state(params: list[Any], betas: Sequence[float]) -> dict[str, Any]:
    """What ``optimizer_state_cpu(Adam(params))`` holds after a step: exp_avg, exp_avg_sq, step per parameter."""
    import torch

    from .runtime import adam

    opt = adam(params, 1e-4, betas)
    state = {i: {"step": torch.zeros(()), "exp_avg": p, "exp_avg_sq": p} for i, p in enumerate(params)}
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


_SIZES: dict[str, dict[str, int]] = {}


def _sizes(cfg: Config) -> dict[str, int]:
    import torch

    from . import factory, rng
    from .evo.genes import gene_plan
    from .fuse.dynamic import make_dynamic
    from .models.specs import generator_spec
    from .tensor_files import torch_bytes

    with torch.device("meta"):
        g = factory.build_generator(cfg)
        d = factory.build_discriminator(cfg)
        fused = make_dynamic([g] * cfg.population.size, cfg.fusion.att_kernel, cfg.fusion.att_channels)
    att = [p for p in fused.parameters() if p.requires_grad]
    att_state = {k: v for k, v in fused.state_dict().items() if ".attention." in k}
    gp, dp = list(g.parameters()), list(d.parameters())
    return {
        "G.pt": _proxy_bytes(g.state_dict()), "D.pt": _proxy_bytes(d.state_dict()),
        "optim.pt": _proxy_bytes({"g": _adam_state(gp, cfg.adam.betas), "d": _adam_state(dp, cfg.discriminator.betas)}),
        "rng.pt": len(torch_bytes(rng.capture())),
        "pretrain optim.pt": _proxy_bytes({"g": _adam_state(gp, cfg.pretrain.betas)}),
        "fusion attention.pt": _proxy_bytes(att_state),
        "fusion optim.pt": _proxy_bytes({"att": _adam_state(att, cfg.fusion.betas),
                                         "d": _adam_state(dp, cfg.fusion.betas)}),
        "G tensors": len(gene_plan(g, generator_spec(cfg.model.arch).ea_genes).crossover),  # SBX u values
        "G parameters": sum(p.numel() for p in gp), "D parameters": sum(p.numel() for p in dp),
    }


def checkpoint_sizes(cfg: Config) -> dict[str, int]:
    """Bytes of each checkpoint file of a run of ``cfg`` (G.pt, D.pt, a member's optim.pt, rng.pt, pretrain and
    fusion files) plus the parameter counts (``G parameters``, ``D parameters``). Cached per architecture. Builds
    the networks on the meta device: raises ImportError where torch is not installed."""
    c = cfg
    key = json.dumps([c.model.arch, dataclasses.asdict(c.model.options), c.data.scale, c.data.patch_size,
                      c.discriminator.arch, c.discriminator.num_feat, c.population.size, c.fusion.att_kernel,
                      c.fusion.att_channels])
    if key not in _SIZES:
        _SIZES[key] = _sizes(cfg)
    return dict(_SIZES[key])


def _tb_member_bytes(iters: int, log_every: int, image_every: int | None, patch: int) -> int:
    logs = iters // log_every + (1 if iters % log_every else 0)
    images = (iters // image_every + (1 if iters % image_every else 0)) if image_every else 0
    return logs * 8 * _TB_SCALAR + images * int(_TB_IMAGE_RATIO * 3 * patch * 3 * patch + 100)


def disk_bill(cfg: Config, keep: int = DEFAULT_KEEP) -> Disk:
    """Disk written by a run of ``cfg`` (see the module docstring); ``keep``: cycles pruning keeps."""
    s = checkpoint_sizes(cfg)
    n = cfg.population.size
    trained = sum(1 for i in range(n) if is_adam_trained(cfg, i))
    replaceable = 0 if cfg.ea.selection == "identity" else sum(1 for i in range(n) if is_replaceable(cfg, i))
    member = s["G.pt"] + s["D.pt"] + s["optim.pt"] + s["rng.pt"] + _META
    ea = cfg.ea
    rows = ea.generations * n
    row = _LINEAGE_ROW + ea.p_crossover * (s["G tensors"] * _U_PER_TENSOR + _OP) + ea.p_mutation * _OP
    ea_records = int(rows * row) + 2_500 + 120 * ea.generations + _FRONT_PNG + 700 + _DONE_PER_SLOT * n
    a = cfg.adam
    tb_ea = ea.generations * (4 + 2 * n) * _TB_SCALAR + _FRONT_PNG

    def cycle_parts(c: int) -> dict[str, int]:
        iters = phase_iters(cfg, c)
        parts = {NEW_GENOMES: replaceable * s["G.pt"] + n * _META,
                 MEMBERS: trained * member + (n - trained) * _META,
                 EA_RECORDS: ea_records,
                 TENSORBOARD: trained * _tb_member_bytes(iters, a.log_every, a.image_every, cfg.data.patch_size)
                 + tb_ea}
        if c == 0:  # the init stage: one shared G, a fresh D per slot
            parts[NEW_GENOMES] = s["G.pt"] + n * (s["D.pt"] + _META)
        if c >= cfg.run.cycles:  # the final Adam phase: no EA after it
            parts[EA_RECORDS] = 0
            parts[TENSORBOARD] -= tb_ea
        return parts

    phases = adam_cycles(cfg)
    per_cycle = cycle_parts(1 if cfg.run.cycles > 1 else 0)
    total_cycles = sum(sum(cycle_parts(c).values()) for c in phases)
    if not cfg.adam.final_phase:  # the last EA phase's start entries, never trained
        total_cycles += replaceable * s["G.pt"] + n * _META
    once: dict[str, int] = {}
    if not cfg.model.pretrained:
        p = cfg.pretrain
        once["pretrain"] = (s["G.pt"] + s["pretrain optim.pt"] + s["rng.pt"] + _META
                            + (p.iters // p.log_every + 1) * 4 * _TB_SCALAR)
    f = cfg.fusion
    once["fusion"] = (s["fusion attention.pt"] + s["D.pt"] + s["fusion optim.pt"] + s["rng.pt"]
                      + (1 + len(f.export)) * s["G.pt"] + (3 if f.export else 2) * _META
                      + (f.iters // f.log_every + 1) * 8 * _TB_SCALAR)
    once["evaluation"] = _EVAL
    total = total_cycles + sum(once.values())
    prunable = trained * (s["D.pt"] + s["optim.pt"] + s["rng.pt"])
    pruned_cycles = max(0, len(phases) - keep)
    return Disk(files={k: v for k, v in s.items() if k.endswith(".pt")}, per_cycle=per_cycle, once=once,
                adam_phases=len(phases), total=total, prunable_per_cycle=prunable, keep=keep,
                total_pruned=total - pruned_cycles * prunable, ea_progress_peak=n * s["G.pt"])
