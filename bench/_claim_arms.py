"""The arms of bench/paper_claim.py as easlurm settings, and their generator-update budgets.

Every arm is an ordinary easlurm run: the bench config plus ``--set`` overrides (:func:`arm_overrides`). The arms of
one seed differ ONLY in the keys of :attr:`Arm.overrides` (``ea.selection`` and ``adam.mix``), which every arm sets
explicitly so a bench config cannot leave one arm on a different setting by accident.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from easlurm.config import Config, load_run_config
from easlurm.errors import CheckpointError, EaslurmError
from easlurm.population import adam_cycles, is_adam_trained, phase_iters, read_member
from easlurm.store import RunDir

__all__ = ["BenchError", "Arm", "ARMS", "ARM_BY_NAME", "ARM_KEYS", "arm_overrides", "planned_updates",
           "recorded_updates"]


class BenchError(EaslurmError):
    """The benchmark cannot go on (a failed arm, unequal update counts, inconsistent results); names the culprit."""


@dataclass(frozen=True)
class Arm:
    """One arm: a name (its run directory), a label (tables, plot) and the overrides that make it this arm."""

    name: str
    label: str
    overrides: tuple[str, ...]

    @property
    def evolves(self) -> bool:
        """Whether the arm's EA phases evolve the population (``ea.selection`` other than ``identity``)."""
        return "ea.selection=identity" not in self.overrides


ARMS: tuple[Arm, ...] = (
    Arm("ea_moead", "EA-Adam (MOEA/D)", ("ea.selection=moead", "adam.mix=normalised")),
    Arm("ea_nsga2", "EA-Adam (NSGA-II)", ("ea.selection=nsga2", "adam.mix=normalised")),
    Arm("adam_only", "Adam only (identity EA)", ("ea.selection=identity", "adam.mix=normalised")),
    Arm("weighted_sum", "Weighted-sum losses (ESRGAN-style, no EA)",
        ("ea.selection=identity", "adam.mix=weighted_sum")),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
#: The config keys in which the arms of one seed differ (nothing else may).
ARM_KEYS = ("ea.selection", "adam.mix")


def arm_overrides(arm: Arm | None, seed: int, pretrained: Path | None, demo_dir: Path,
                  extra: Sequence[str] = ()) -> list[str]:
    """``--set`` overrides of one run directory: the seed's pretraining run (``arm=None``) or an arm of that seed.

    Every run of a seed shares ``run.seed`` (hence the discriminators' initialisation and the data streams per
    (cycle, slot)); arms load the seed's pretrained generator through ``model.pretrained``. Each arm's run executes
    one task at a time (``executor.local.max_parallel=1``; the bench runs arms side by side instead). ``extra`` (the
    user's overrides) comes last and wins — except over an arm's own keys, which would make the arms the same.
    """
    for o in extra:
        if o.partition("=")[0].strip() in ARM_KEYS:
            raise BenchError(f"--set {o}: {', '.join(ARM_KEYS)} define the arms; they cannot be overridden")
    out = [f"run.seed={seed}", f"data.demo_dir={demo_dir}", "executor.local.max_parallel=1"]
    if arm is not None:
        if pretrained is None:
            raise BenchError(f"arm {arm.name}: needs the seed's pretrained generator")
        out.append(f"model.pretrained={pretrained}")
        out.extend(arm.overrides)
    out.extend(extra)
    return out


def planned_updates(cfg: Config) -> int:
    """Generator updates a run of ``cfg`` makes: Σ over its Adam phases (``easlurm.population.adam_cycles``, the
    final phase included) of the phase's iterations × the Adam-trained slots (``population.member0`` ``ea_only`` or
    ``frozen`` leaves slot 0 untrained). The same for every arm: no arm key changes it."""
    trained = sum(1 for i in range(cfg.population.size) if is_adam_trained(cfg, i))
    return trained * sum(phase_iters(cfg, c) for c in adam_cycles(cfg))


def recorded_updates(run_dir: str | Path) -> int:
    """Generator updates a finished run records: Σ over Adam phases and slots of the trained member's
    ``iteration`` (``easlurm.population.MemberMeta``; an untrained slot's record says 0). Raises
    :class:`BenchError` naming the folder of a missing or unfinished member."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    total = 0
    for c in adam_cycles(cfg):
        for i in range(cfg.population.size):
            folder = run.member(c, i)
            try:
                meta = read_member(folder)
            except CheckpointError as exc:
                raise BenchError(f"{folder}: unreadable member record ({exc})") from exc
            if meta is None or not meta.done:
                raise BenchError(f"{folder}: member missing or its Adam phase unfinished")
            total += meta.iteration
    return total
