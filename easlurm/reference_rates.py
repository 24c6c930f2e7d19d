"""Reference step rates measured by the GPU check on named cards: what the bill expects before any run measured.

A run's own rates (its stages' recorded attempts, :mod:`easlurm.timings`) are always preferred; where no run of a
configuration has finished a stage yet, :func:`reference_rates` offers the GPU check's figure for a stage whose
configuration matches the measured one on everything the measurement depends on (:attr:`Reference.match`:
backbone, sizes, batch, population, fitness set, precision). The bill then says which card and which measurement the
expectation comes from. The figures are the *step* time (data loading, logging and checkpoints are not in them;
the loader keeps up at these rates, BENCHMARKS.md "Loader"), in the precision named, before the GPU work of issue
17 (CUDA graphs, k members per GPU) — the shipped configs' time limits are sized from them with
:data:`LIMIT_MARGIN` (a limit that proves short costs a requeue, never work: the task checkpoints at the warning).

Torch-free; the numbers are copied from ``bench/results/`` (the file named in each entry, with the command that
produced it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .timings import Rates, StageRate

if TYPE_CHECKING:
    from .config import Config

#: Time limits of the shipped paper configs: at least this many times the reference expectation of a task, rounded
#: up to the hour (room for a slower card, a busier host, VGG19 instead of the VGG16 measured, first-iteration
#: start-up and the loader).
LIMIT_MARGIN = 4.0


@dataclass(frozen=True)
class Reference:
    """One measured stage rate: ``kind`` (stage kind), seconds per ``unit`` on ``card``, measured on ``date`` by
    ``source`` under ``conditions``; used for a config whose values at the dotted paths of ``match`` equal these."""
    kind: str
    seconds_per_unit: float
    unit: str
    card: str
    date: str
    source: str
    conditions: str
    match: tuple[tuple[str, Any], ...]

    def matches(self, cfg: Config) -> bool:
        return all(_value(cfg, path) == want for path, want in self.match)

    def describe(self) -> str:
        return f"{self.card}, GPU check of {self.date} ({self.source.split(',')[0]})"


def _value(cfg: Config, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


_RRDB = (("model.arch", "rrdbnet"), ("model.options.num_feat", 64), ("model.options.num_block", 23),
         ("model.options.num_grow_ch", 32), ("data.scale", 4))
_MSRRESNET = (("model.arch", "msrresnet"), ("model.options.num_feat", 64), ("model.options.num_block", 16),
              ("data.scale", 4))
_MEMBER = (("data.patch_size", 128), ("adam.batch_size", 16), ("adam.bf16", False),
           ("adam.members_per_task", 1), ("adam.cuda_graph", False))
_H200 = "NVIDIA H200"
_GPU_MD = "bench/results/gpu.md, bash bench/gpu_check.sh"
_RUN1_MD = "bench/results/gpu-run1.md, bash bench/gpu_check.sh"

#: The measurements (BENCHMARKS.md, "GPU").
REFERENCES: tuple[Reference, ...] = (
    Reference("adam", 0.2113, "iteration", _H200, "2026-11-27", _GPU_MD,
              "member step, TF32, eager, default Adam, VGG16 perceptual layers of rrdb.yaml",
              _RRDB + _MEMBER + (("discriminator.arch", "vgg_style"), ("loss.gan_type", "relativistic"))),
    Reference("adam", 0.0350, "iteration", _H200, "2026-11-27", _GPU_MD,
              "member step, TF32, eager, default Adam, VGG16 conv5_4",
              _MSRRESNET + _MEMBER + (("discriminator.arch", "vgg_style"),)),
    Reference("ea", 11.69, "generation", _H200, "2026-11-27", _RUN1_MD,
              "one MOEA/D generation of 5 children on 800 tiles, eval batch 16, VGG16 perceptual",
              _RRDB + (("population.size", 5), ("ea.selection", "moead"), ("data.fitness_images", 16),
                       ("data.fitness_tile", 128), ("data.fitness_max_tiles", 50), ("ea.eval_batch", 16),
                       ("ea.batch_children", False))),
    Reference("fuse", 0.895, "iteration", _H200, "2026-11-27", _RUN1_MD,
              "fusion step of 5 RRDB experts, batch 16 x 128 px, VGG16 perceptual",
              _RRDB + (("population.size", 5), ("data.patch_size", 128), ("fusion.batch_size", 16))),
)


def reference_rates(cfg: Config, kinds: set[str] | None = None) -> tuple[Rates, list[Reference]] | None:
    """The reference rates that apply to ``cfg`` (for the stage ``kinds`` given; default all), as
    :class:`~easlurm.timings.Rates` keyed like a measured run's, and the references used; None when none applies."""
    from .timings import rate_key

    found = [r for r in REFERENCES if (kinds is None or r.kind in kinds) and r.matches(cfg)]
    chosen: dict[str, Reference] = {}
    for r in found:
        chosen.setdefault(r.kind, r)
    if not chosen:
        return None
    stages = {k: StageRate(r.seconds_per_unit, r.unit) for k, r in chosen.items()}
    source = "; ".join(f"reference {r.describe()} ({k})" for k, r in chosen.items())
    return Rates(stages, {k: rate_key(cfg, k) for k in chosen}, source), list(chosen.values())


__all__ = ["LIMIT_MARGIN", "Reference", "REFERENCES", "reference_rates"]
