"""What a stage kind is, as data: :class:`StageKind` (torch-free) and the Slurm resources its jobs ask for.

A stage kind — pretraining, the init stage, an Adam phase, an EA phase, fusion, evaluation, or one a test adds — is
one module in :mod:`easlurm.stages` holding one :class:`StageKind` and one line in the registry
(:data:`easlurm.stages.KINDS`). Everything outside the stage's own code learns about it from the descriptor: the plan
(which stages, in which order, with which tasks), config validation (``executor.slurm.<name>`` and its defaults),
the bill (units of work, expected time, requested GPU-hours), the pre-timeout warning lead (what one checkpoint
commit writes), ``status`` and the timings (the record that holds its attempts), and the preflight (how to shrink
its settings). Nothing here imports torch: the launcher, ``status`` and ``prune`` ask a descriptor whether a task is
done on a login node without a GPU stack; only the job itself imports the stage's ``entry``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..fields import setting

if TYPE_CHECKING:
    from ..config import Config
    from ..records import StageRecord
    from ..store import RunDir


@dataclass
class StageResources:
    """Slurm resources of one stage kind's jobs (``executor.slurm.<kind>``)."""
    time_min: int = setting(60, min=3, doc="time limit in minutes (>= 3: the pre-timeout signal comes "
                                           "signal_lead_s before it and slurmctld checks for due signals only "
                                           "every ~30 s)")
    gpus: int = setting(1, min=0)
    cpus: int = setting(4, min=1)
    mem_gb: int = setting(16, min=1)
    signal_lead_s: int | None = setting(None, min=60, doc="seconds before the time limit at which the stage is told "
                                                          "to checkpoint; null → from the stage's checkpoint size "
                                                          "and step time (easlurm.leads)")
    extra: dict[str, str] = setting(factory=dict, doc="extra sbatch flags, e.g. {constraint: a100}")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a stage: its label in logs and reports (``member 02``) and the keyword arguments its entry, its
    done check and its progress take besides the run (``cycle=3, member=2``)."""
    label: str
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)


def _always(cfg: Config) -> bool:
    return True


def _one(cfg: Config, cycle: int | None) -> int:
    return 1


def _no_progress(cfg: Config, run: RunDir, **args: Any) -> int:
    return 0


def _no_record(cfg: Config, run: RunDir, **args: Any) -> StageRecord | None:
    return None


def _busy(cfg: Config, args: Mapping[str, Any]) -> bool:
    return True


def _nothing(cfg: Config) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StageKind:
    """One kind of stage (see the module docstring). Callables take the run's :class:`~easlurm.config.Config`;
    those about one task also take the :class:`~easlurm.store.RunDir` and the task's arguments as keywords."""

    name: str
    """Stage keys (``adam/003`` or ``fuse``), ``executor.slurm.<name>``, ``RUN/logs/<name>-003``, job names."""
    summary: str
    """One line: what the stage does."""
    entry: str
    """``module:function`` the job calls as ``entry(run_dir=RUN, **args)``; the only reference that imports torch,
    resolved inside the job."""
    tasks: Callable[[Config, int | None], list[TaskSpec]]
    """The tasks of the stage of this kind in ``cycle`` (None for a stage that runs once)."""
    is_done: Callable[..., bool]
    """``is_done(cfg, run, **args)``: whether the task's outputs exist and are intact — the check the stage itself
    makes when it restarts, so the launcher, ``status`` and the job agree. Torch-free and cheap (sizes, not
    hashes): it runs for every task on every poll."""
    unit: str = "task"
    """What one unit of progress is: ``iteration``, ``generation``, or ``task`` for a stage without a loop."""
    resources: StageResources = field(default_factory=StageResources)
    """Default ``executor.slurm.<name>``."""
    gpus_used: int = 1
    """GPUs one task uses (a request above it is refused: the extra GPUs would sit idle)."""
    cycles: Callable[[Config], list[int]] | None = None
    """For a stage that runs once per cycle, the cycles it runs in; None for a stage that runs once. Stages of the
    kinds with cycles interleave cycle by cycle, in registry order (``adam/000, ea/000, adam/001, …``)."""
    enabled: Callable[[Config], bool] = _always
    """Whether a run of this config has the stage at all (pretraining: only without ``model.pretrained``)."""
    array: bool = False
    """Tasks are submitted as one Slurm job array (index = task index)."""
    progress: Callable[..., int] = _no_progress
    """``progress(cfg, run, **args)``: committed units (a failed task that progressed gets its retries back)."""
    units: Callable[[Config, int | None], int] = _one
    """Units of work of one task of the stage in ``cycle`` (the bill: units × seconds per unit)."""
    busy: Callable[[Config, Mapping[str, Any]], bool] = _busy
    """Whether a task does work and so gets a job (a member slot that is not Adam-trained has none: its task is done
    from the start and the bill counts no job for it)."""
    commits: Callable[[Config], dict[str, int]] = _nothing
    """What one checkpoint commit writes: file kind (keys of :func:`easlurm.footprint.checkpoint_sizes`) → count.
    Empty for a stage that does not checkpoint when warned (it is warned 60 s ahead)."""
    unit_s_default: float | None = None
    """Seconds of one unit assumed for the warning lead before the run has measured its own."""
    rate_key: Callable[[Config], dict[str, Any]] = _nothing
    """The config values the stage's speed depends on (a measured rate is reused only where they agree)."""
    record: Callable[..., StageRecord | None] = _no_record
    """``record(cfg, run, **args)``: the task's record (its ``attempts`` are every time ``status`` and the bill
    report), None before the task wrote one."""
    tiny: Callable[[Config], dict[str, Any]] = _nothing
    """Dotted config fields → the values the preflight and the tests run this stage with (sizes, not structure)."""

    def __repr__(self) -> str:
        return f"StageKind({self.name!r})"


__all__ = ["StageResources", "TaskSpec", "StageKind"]
