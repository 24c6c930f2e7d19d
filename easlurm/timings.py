"""What a run directory says about time: when each task ran, for how long, and the step rates it measured.

Read by ``status`` (cost report), the bill (expected time from an earlier run) and the warning leads (a stage's
step time). Nothing here writes, and nothing here imports torch.

The one source is the stages' own records: every stage keeps ``attempts`` in the record its kind names
(:attr:`easlurm.stages.kind.StageKind.record`) — one entry per process that worked on the task, ``{"started",
"loop_started", "updated", "first", "last", "host", "job", "device", "gpus"}`` (Unix seconds; progress units at its
start and at its latest commit). A run made before a stage recorded attempts shows no times for that stage
(:func:`read_attempts` returns None) rather than guessed ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from . import stages as registry
from .errors import CheckpointError

if TYPE_CHECKING:
    from .config import Config
    from .orchestrate.plan import Stage
    from .store import RunDir

__all__ = ["Span", "TaskTime", "StageRate", "Rates", "read_attempts", "task_times", "rates_from_times",
           "measured_rates", "rate_key", "parse_local_time"]


@dataclass(frozen=True)
class Span:
    """One attempt of a task: ``start``..``end`` (Unix s) and the progress units (iterations, generations) it made.
    ``loop_start``: when its loop began (``start`` when unknown); the gap is start-up."""
    start: float
    end: float
    units: int = 0
    loop_start: float | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class TaskTime:
    """When one task ran: its attempts (``spans``), when its output was committed for good (``done_at``) and where
    the times came from (``source``: ``record`` or ``none``)."""
    stage: str
    kind: str
    cycle: int | None
    index: int
    label: str
    spans: list[Span] = field(default_factory=list)
    done_at: float | None = None
    source: str = "none"

    @property
    def start(self) -> float | None:
        return min((s.start for s in self.spans), default=None)

    @property
    def end(self) -> float | None:
        ends = [s.end for s in self.spans] + ([self.done_at] if self.done_at is not None else [])
        return max(ends, default=None)

    @property
    def busy_s(self) -> float:
        """Seconds the task ran, summed over attempts (what it held its resources for)."""
        return sum(s.seconds for s in self.spans)

    @property
    def units(self) -> int:
        return sum(s.units for s in self.spans)


def read_attempts(attempts: Any) -> list[Span] | None:
    """A record's ``attempts`` as spans; None when there are none. Each attempt: ``started`` (process start, Unix
    s), ``loop_started`` (first unit), ``updated`` (its latest commit), ``first``/``last`` (units at its start and at
    ``updated``). Malformed entries are skipped."""
    if not isinstance(attempts, list) or not attempts:
        return None
    out = []
    for a in attempts:
        try:
            start, end = float(a["started"]), float(a["updated"])
            loop = float(a.get("loop_started") or start)
            units = max(0, int(a.get("last", 0)) - int(a.get("first", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        out.append(Span(start, max(start, end), units, loop))
    return out or None


def parse_local_time(text: str) -> float | None:
    """``2026-11-27T12:03:00`` or ``2026-11-27 12:03:00`` (local time, as easlurm and Slurm write them) → Unix s."""
    try:
        return time.mktime(time.strptime(text.replace(" ", "T"), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def task_times(cfg: Config, run: RunDir, plan: list[Stage], done: Mapping[tuple[str, int], bool] | None = None
               ) -> list[TaskTime]:
    """One :class:`TaskTime` per task of ``plan`` that has work (stage order; an Adam phase's slot that is not
    Adam-trained has none and no job). ``done``: (stage key, index) → finished, when the caller already knows (else
    each task's ``is_done`` is asked)."""
    out: list[TaskTime] = []
    for stage in plan:
        for i, task in enumerate(stage.tasks):
            if not stage.kind.busy(cfg, task.arguments):
                continue
            tt = TaskTime(stage.key, stage.kind.name, stage.cycle, i, task.label)
            try:
                record = stage.kind.record(cfg, run, **task.arguments)
            except CheckpointError:
                record = None
            spans = read_attempts(record.attempts) if record is not None else None
            if spans:
                tt.spans, tt.source = spans, "record"
                finished = done[(stage.key, i)] if done is not None else task.is_done()
                tt.done_at = max(s.end for s in spans) if finished else None
            out.append(tt)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rates


@dataclass(frozen=True)
class StageRate:
    """Measured cost of one stage kind: ``seconds_per_unit`` (per iteration / generation / task) and the start-up
    seconds before the first unit (0 when not measured); ``tasks`` it was measured over."""
    seconds_per_unit: float
    unit: str
    startup_s: float = 0.0
    tasks: int = 0


@dataclass
class Rates:
    """Step rates of the stage kinds of one configuration (``key``: the config fields each kind's rate depends on,
    so a rate is only used for a config that agrees on them). ``source``: where they were measured."""
    stages: dict[str, StageRate]
    key: dict[str, dict[str, Any]]
    source: str
    schema: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "easlurm-rates", "schema": self.schema, "source": self.source, "key": self.key,
                "stages": {k: vars(v) for k, v in sorted(self.stages.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Rates:
        if d.get("kind") != "easlurm-rates" or d.get("schema") != 1:
            raise CheckpointError(f"{where}: not an easlurm rates record (kind easlurm-rates, schema 1)")
        try:
            stages = {k: StageRate(float(v["seconds_per_unit"]), str(v["unit"]), float(v.get("startup_s", 0.0)),
                                   int(v.get("tasks", 0))) for k, v in d["stages"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where}: malformed stage rate ({exc})") from exc
        return cls(stages, dict(d.get("key", {})), str(d.get("source", where)))


def rate_key(cfg: Config, kind: str) -> dict[str, Any]:
    """The config values stage ``kind``'s speed depends on (beyond the hardware), from its descriptor."""
    return registry.get(kind).rate_key(cfg)


def rates_from_times(cfg: Config, times: list[TaskTime], source: str) -> Rates:
    """Per stage kind: seconds per unit over every finished task that did the stage's work (start-up excluded
    where it is known), and the mean start-up."""
    stages: dict[str, StageRate] = {}
    for kind in registry.KINDS:
        tasks = {(s.stage, s.index): s for s in times if s.kind == kind.name}
        done = [t for t in tasks.values() if t.done_at is not None and t.spans]
        done = [t for t in done if kind.busy(cfg, _args(kind, cfg, t))]
        if not done:
            continue
        if kind.unit == "task":
            stages[kind.name] = StageRate(sum(t.busy_s for t in done) / len(done), kind.unit, 0.0, len(done))
            continue
        spans = [s for t in done for s in t.spans if s.units > 0]
        units = sum(s.units for s in spans)
        if not units:
            continue
        loop_s = sum(max(0.0, s.end - (s.loop_start if s.loop_start is not None else s.start)) for s in spans)
        startup = [(s.loop_start - s.start) for s in spans if s.loop_start is not None and s.loop_start > s.start]
        stages[kind.name] = StageRate(loop_s / units, kind.unit, sum(startup) / len(startup) if startup else 0.0,
                                      len(done))
    return Rates(stages, {k: rate_key(cfg, k) for k in stages}, source)


def _args(kind: registry.StageKind, cfg: Config, t: TaskTime) -> dict[str, Any]:
    specs = kind.tasks(cfg, t.cycle)
    return specs[t.index].arguments if t.index < len(specs) else {}


def measured_rates(cfg: Config, run: RunDir, plan: list[Stage]) -> Rates:
    """The step rates a run measured (the attempts of ``plan``'s finished tasks)."""
    return rates_from_times(cfg, task_times(cfg, run, plan), f"run {run.root}")
