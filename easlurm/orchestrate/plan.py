"""The plan of a run: its stages in order and their tasks, built from the stage registry (:mod:`easlurm.stages`).

    [pretrain] → init → adam/000 (array of N) → ea/000 → adam/001 → … → ea/C-1 → [adam/C (final)] → fuse → eval

Every stage is an instance of a registered :class:`~easlurm.stages.kind.StageKind`; the plan names none of them.
A :class:`Task` is one call of its kind's entry (``easlurm.train.member:train_member(run_dir, cycle=3, member=2)``)
and asks its kind whether it is done — the same check the stage makes when it restarts — so the launcher,
``status`` and the stage agree on what is finished. Whether a task is done is read from the run directory only (the
files are the truth; job ids in ``state.json`` are bookkeeping), so "resume" is "run whatever is not done". Nothing
here imports torch: a task's entry is imported only by :meth:`Task.call`, inside the job
(``python -m easlurm.orchestrate.runner RUN STAGE INDEX`` rebuilds the plan and makes the call).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import stages as registry
from ..config import Config
from ..errors import ConfigError
from ..stages.kind import StageKind
from ..store import RunDir


def resolve(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function."""
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


@dataclass(frozen=True)
class Task:
    """One call of a stage kind's entry: ``entry(run_dir=RUN, **args)``; ``label`` names it in logs and reports
    (``member 02``). Its done check and progress are its kind's, on this run."""
    kind: StageKind
    args: tuple[tuple[str, Any], ...]
    label: str
    cfg: Config = field(repr=False, compare=False)
    run: RunDir = field(repr=False, compare=False)

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)

    def is_done(self) -> bool:
        return bool(self.kind.is_done(self.cfg, self.run, **self.arguments))

    def progress(self) -> int:
        """How far the task got (committed iterations or generations; 0 when the stage does not say)."""
        return int(self.kind.progress(self.cfg, self.run, **self.arguments))

    def call(self) -> Any:
        """Run the task in this process (imports the stage's code, and with it torch)."""
        return resolve(self.kind.entry)(run_dir=str(self.run.root), **self.arguments)

    def describe(self) -> str:
        """``module:function(k=v, …)`` (for logs and the dry run)."""
        return f"{self.kind.entry}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


@dataclass
class Stage:
    """A group of tasks that may run at once (an Adam phase is a Slurm array); stages run strictly in order.
    ``before_cycles``: a once-only stage that runs before the first per-cycle stage (pretrain, init)."""
    key: str                      # "pretrain", "init", "adam/003", "ea/003", "fuse", "eval"
    kind: StageKind
    cycle: int | None
    tasks: list[Task] = field(default_factory=list)
    before_cycles: bool = False

    @property
    def is_array(self) -> bool:
        return self.kind.array


def _stage(kind: StageKind, cfg: Config, run: RunDir, cycle: int | None, before: bool = False) -> Stage:
    key = kind.name if cycle is None else f"{kind.name}/{cycle:03d}"
    tasks = [Task(kind, spec.args, spec.label, cfg, run) for spec in kind.tasks(cfg, cycle)]
    return Stage(key, kind, cycle, tasks, before)


def build_plan(cfg: Config, run: RunDir, kinds: Sequence[StageKind] | None = None) -> list[Stage]:
    """All stages of the run described by ``cfg`` (done or not), in order: the kinds (default: the registry's) in
    their order, the per-cycle kinds interleaved cycle by cycle where the first of them stands. Builds paths only;
    reads nothing."""
    kinds = [k for k in (registry.KINDS if kinds is None else kinds) if k.enabled(cfg)]
    cyclic = [k for k in kinds if k.cycles is not None]
    per_kind = {k.name: k.cycles(cfg) for k in cyclic if k.cycles is not None}
    stages: list[Stage] = []
    block_done = False
    for kind in kinds:
        if kind.cycles is None:
            stages.append(_stage(kind, cfg, run, None, before=not block_done and bool(cyclic)))
        elif not block_done:
            block_done = True
            for c in sorted({c for cs in per_kind.values() for c in cs}):
                stages += [_stage(k, cfg, run, c) for k in cyclic if c in per_kind[k.name]]
    return stages


def find_task(plan: list[Stage], key: str, index: int) -> tuple[Stage, Task]:
    """The stage with ``key`` and its task ``index`` (:class:`ConfigError` naming them otherwise)."""
    for s in plan:
        if s.key == key:
            if not 0 <= index < len(s.tasks):
                raise ConfigError(f"stage {key} has tasks 0..{len(s.tasks) - 1}, not {index}")
            return s, s.tasks[index]
    raise ConfigError(f"no stage {key!r} in the plan (stages: {', '.join(s.key for s in plan)})")


def to_run(stage: Stage) -> list[int]:
    """Indices of ``stage``'s tasks that are not done — what a launch would run (a task with no work, such as an
    Adam phase's slot that is not Adam-trained, is done from the start)."""
    return [i for i, t in enumerate(stage.tasks) if not t.is_done()]


#: (stage key, task index) → done: one look at the files, shared by everything that decides in one round.
Done = dict[tuple[str, int], bool]


def snapshot(plan: list[Stage]) -> Done:
    """Every task's done check, asked once."""
    return {(s.key, i): t.is_done() for s in plan for i, t in enumerate(s.tasks)}


def stage_done(stage: Stage, done: Done | None = None) -> bool:
    if done is not None:
        return all(done[(stage.key, i)] for i in range(len(stage.tasks)))
    return all(t.is_done() for t in stage.tasks)


def pending_stages(plan: list[Stage], done: Done | None = None) -> list[Stage]:
    """The stages that still have unfinished tasks, in order (``done``: a :func:`snapshot` to use instead of asking
    every task again)."""
    return [s for s in plan if not stage_done(s, done)]


def stage_slug(stage: Stage) -> str:
    """``adam/003`` → ``adam-003`` (folder and file names)."""
    return stage.key.replace("/", "-")


def task_log(run: RunDir, stage: Stage, index: int) -> Path:
    """``RUN/logs/<stage>/task-II.log``: a task's output under the local executor (appended on every attempt)."""
    return run.logs / stage_slug(stage) / f"task-{index:02d}.log"
