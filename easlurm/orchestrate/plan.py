"""The plan of a run: its stages in order, the typed calls of each stage, and each call's own "done" check.

    [pretrain] → init → adam/000 (array of N) → ea/000 → adam/001 → … → ea/C-1 → [adam/C (final)] → fuse → eval

A :class:`Task` is a stage function plus its keyword arguments (``easlurm.train.member:train_member(run_dir, cycle,
member)``), and names the stage module's ``is_done`` — the same check the stage makes when it restarts — so the
launcher, ``status`` and the stage agree on what is finished. Whether a task is done is read from the run directory
only (the files are the truth; job ids in ``state.json`` are bookkeeping), so "resume" is "run whatever is not done".
Executors call :meth:`Task.call` in-process (debug, inside a Slurm job) or start ``python -m
easlurm.orchestrate.runner RUN STAGE INDEX`` (local executor), which rebuilds the plan and makes the same call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..population import adam_cycles
from ..store import RunDir

STAGE_KINDS = ("pretrain", "init", "adam", "ea", "fuse", "eval")


def resolve(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function."""
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


@dataclass(frozen=True)
class Task:
    """One stage call: ``fn(**kwargs)``; ``done`` names the stage's completion check (same kwargs);
    ``label`` names the task in logs and reports (e.g. ``member 02``); ``progress_fn`` names the stage's count of
    committed iterations/generations (a failed task that progressed gets its retries back)."""
    fn: str
    kwargs: tuple[tuple[str, Any], ...]
    done: str
    label: str
    progress_fn: str | None = None

    def progress(self) -> int:
        """How far the task got (committed iterations or generations; 0 when the stage does not say)."""
        return int(resolve(self.progress_fn)(**self.arguments)) if self.progress_fn else 0

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def call(self) -> Any:
        return resolve(self.fn)(**self.arguments)

    def is_done(self) -> bool:
        return bool(resolve(self.done)(**self.arguments))

    def describe(self) -> str:
        """``module:function(k=v, …)`` (for logs and the dry run)."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs if k != "run_dir")
        return f"{self.fn}({args})"


@dataclass
class Stage:
    """A group of tasks that may run at once (an Adam phase is a Slurm array); stages run strictly in order."""
    key: str                      # "pretrain", "init", "adam/003", "ea/003", "fuse", "eval"
    kind: str                     # one of STAGE_KINDS (selects executor.slurm.<kind> resources)
    cycle: int | None
    tasks: list[Task] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return self.kind == "adam"


def _task(fn: str, done: str, label: str, progress: str | None = None, **kwargs: Any) -> Task:
    return Task(fn, tuple(kwargs.items()), done, label, progress)


def build_plan(cfg: Config, run: RunDir) -> list[Stage]:
    """All stages of the run described by ``cfg`` (done or not)."""
    r = str(run.root)
    stages: list[Stage] = []
    if not cfg.model.pretrained:
        stages.append(Stage("pretrain", "pretrain", None, [
            _task("easlurm.train.pretrain:pretrain", "easlurm.train.pretrain:is_done", "pretrain",
                  "easlurm.train.pretrain:progress", run_dir=r)]))
    stages.append(Stage("init", "init", None, [
        _task("easlurm.train.init:init_population", "easlurm.train.init:is_done", "start population", run_dir=r)]))
    for c in adam_cycles(cfg):
        stages.append(Stage(f"adam/{c:03d}", "adam", c, [
            _task("easlurm.train.member:train_member", "easlurm.train.member:is_done", f"member {i:02d}",
                  "easlurm.train.member:progress", run_dir=r, cycle=c, member=i)
            for i in range(cfg.population.size)]))
        if c < cfg.run.cycles:
            stages.append(Stage(f"ea/{c:03d}", "ea", c, [
                _task("easlurm.evo.job:run_ea", "easlurm.evo.job:is_done", f"ea cycle {c}",
                      "easlurm.evo.job:progress", run_dir=r, cycle=c)]))
    stages.append(Stage("fuse", "fuse", None, [
        _task("easlurm.fuse.job:run_fusion", "easlurm.fuse.job:is_done", "fusion", "easlurm.fuse.job:progress",
              run_dir=r)]))
    stages.append(Stage("eval", "eval", None, [
        _task("easlurm.evaluate:evaluate_run", "easlurm.evaluate:is_done", "evaluation", run_dir=r)]))
    return stages


def find_task(plan: list[Stage], key: str, index: int) -> tuple[Stage, Task]:
    """The stage with ``key`` and its task ``index`` (KeyError/IndexError naming them otherwise)."""
    for s in plan:
        if s.key == key:
            if not 0 <= index < len(s.tasks):
                raise IndexError(f"stage {key} has tasks 0..{len(s.tasks) - 1}, not {index}")
            return s, s.tasks[index]
    raise KeyError(f"no stage {key!r} in the plan (stages: {', '.join(s.key for s in plan)})")


def task_done(stage: Stage, index: int, run: RunDir | None = None) -> bool:
    """Whether task ``index`` of ``stage`` has finished, judged by the stage's own check."""
    return stage.tasks[index].is_done()


def stage_done(stage: Stage, run: RunDir | None = None) -> bool:
    return all(t.is_done() for t in stage.tasks)


def pending_stages(plan: list[Stage], run: RunDir | None = None) -> list[Stage]:
    """The stages that still have unfinished tasks, in order."""
    return [s for s in plan if not stage_done(s)]


def stage_slug(stage: Stage) -> str:
    """``adam/003`` → ``adam-003`` (folder and file names)."""
    return stage.key.replace("/", "-")


def task_log(run: RunDir, stage: Stage, index: int) -> Path:
    """``RUN/logs/<stage>/task-II.log``: a task's output under the local executor (appended on every attempt)."""
    return run.logs / stage_slug(stage) / f"task-{index:02d}.log"
