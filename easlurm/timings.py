"""What a run directory says about time: when each task ran, for how long, and the step rates it measured.

Read by ``status`` (cost report) and the bill (expected time from an earlier run). Nothing here writes.

Sources, best first, per task (times are Unix seconds):

1. ``attempts`` in the task's own record (member/pretrain/fusion ``meta.json``, the EA's ``done.json``,
   ``eval/timing.json``): one entry per attempt, ``{"started", "loop_started", "updated", "first", "last", "host",
   "job", "device", "gpus"}`` — see :func:`read_attempts` (written by the stages once they record it).
2. TensorBoard: every attempt of a training stage opens its own event file; its first event is the writer's
   creation (just before the loop), its ``purge_step`` tells which cycle/iteration it resumed at, and its last
   summary event says how far it got and when. Start-up before the writer opened (imports, model build, data) is
   not seen here; where a job log exists (local executor ``logs/<stage>/task-II.log``, Slurm
   ``slurm/<stage>/<job>.out``) its start line moves the attempt's start back to the process start.
3. File times: a record's modification time is when its last commit happened (the task's end once done).
"""
from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import Config
from .errors import CheckpointError
from .population import is_adam_trained, phase_iters
from .store import RunDir, read_json

__all__ = ["Span", "TaskTime", "StageRate", "Rates", "RATE_UNITS", "read_attempts", "tb_spans", "log_starts",
           "task_times", "rates_from_times", "rate_key", "parse_local_time"]

#: What one unit of progress is, per stage kind (a task unit for stages without a loop).
RATE_UNITS = {"pretrain": "iteration", "init": "task", "adam": "iteration", "ea": "generation",
              "fuse": "iteration", "eval": "task"}


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
    the times came from (``source``: record | tensorboard | file times, ``+ log`` when job logs gave the starts)."""
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


# ----------------------------------------------------------------------------------------------------------------
# Records


def read_attempts(record: Mapping[str, Any] | None) -> list[Span] | None:
    """The ``attempts`` a stage wrote into its record, as spans; None when the record has none.

    Each attempt: ``started`` (process start, Unix s), ``loop_started`` (first iteration), ``updated`` (its latest
    commit), ``first``/``last`` (progress units at its start and at ``updated``). Malformed entries are skipped.
    """
    if not record or not isinstance(record.get("attempts"), list):
        return None
    out = []
    for a in record["attempts"]:
        try:
            start, end = float(a["started"]), float(a["updated"])
            loop = float(a.get("loop_started", start))
            units = max(0, int(a.get("last", 0)) - int(a.get("first", 0)))
        except (KeyError, TypeError, ValueError):
            continue
        out.append(Span(start, max(start, end), units, loop))
    return out


def _raw(path: Path) -> dict[str, Any] | None:
    try:
        d = read_json(path)
    except CheckpointError:
        return None
    return d if isinstance(d, dict) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard event files (TFRecord framing: u64 length, u32 crc, data, u32 crc), read without TensorFlow and
# without parsing every event: only the first few and the last summaries are decoded.


@dataclass(frozen=True)
class TbFile:
    """One event file = one writer = one attempt: created at ``created`` (Unix s) with ``purge_step``; its last
    summary event had ``last_step`` at ``last_wall`` (None when it holds no summary)."""
    path: Path
    created: float
    purge_step: int
    last_step: int | None
    last_wall: float | None


def _records(fh: Any, size: int) -> list[tuple[int, int]]:
    out = []
    while True:
        head = fh.read(12)
        if len(head) < 12:
            break
        (n,) = struct.unpack("<Q", head[:8])
        pos = fh.tell()
        if pos + n + 4 > size:  # a record still being written
            break
        out.append((pos, n))
        fh.seek(n + 4, os.SEEK_CUR)
    return out


_TB_CACHE: dict[tuple[str, int, int, str], TbFile | None] = {}


def _read_tb(path: Path, tag_prefix: str) -> TbFile | None:
    """The first events and the last summary (tag starting with ``tag_prefix``) of one event file; cached by
    path, size and mtime (a status of a long run reads every member's files once per cycle)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, tag_prefix)
    if key not in _TB_CACHE:
        _TB_CACHE[key] = _scan_tb(path, st.st_size, tag_prefix)
    return _TB_CACHE[key]


def _scan_tb(path: Path, size: int, tag_prefix: str) -> TbFile | None:
    from tensorboard.compat.proto.event_pb2 import Event

    try:
        with open(path, "rb") as fh:
            recs = _records(fh, size)
            if not recs:
                return None

            def event(k: int) -> Any:
                fh.seek(recs[k][0])
                return Event.FromString(fh.read(recs[k][1]))

            head = [event(k) for k in range(min(3, len(recs)))]
            purge = max((e.step for e in head if not e.HasField("summary")), default=0)
            last_step = last_wall = None
            for k in range(len(recs) - 1, -1, -1):
                e = event(k)
                if e.HasField("summary") and any(v.tag.startswith(tag_prefix) for v in e.summary.value):
                    last_step, last_wall = int(e.step), float(e.wall_time)
                    break
    except Exception:  # noqa: BLE001 - protobuf/struct/OS errors alike: a damaged file is just not a time source
        return None
    return TbFile(path, float(head[0].wall_time), int(purge), last_step, last_wall)


def tb_spans(folder: Path, tag_prefix: str = "") -> list[TbFile]:
    """The event files of a TensorBoard folder in creation order (their last summary with a tag starting with
    ``tag_prefix``)."""
    if not folder.is_dir():
        return []
    files = [_read_tb(p, tag_prefix) for p in sorted(folder.glob("events.out.tfevents.*"))]
    return sorted((f for f in files if f is not None), key=lambda f: f.created)


# ----------------------------------------------------------------------------------------------------------------
# Job logs: process starts


_LOCAL_START = re.compile(r"^=== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) attempt \d+")
_SLURM_START = re.compile(r"^\[easlurm\] (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) job (\S+) task (\d+) ")


def parse_local_time(text: str) -> float | None:
    """``2026-11-27T12:03:00`` or ``2026-11-27 12:03:00`` (local time, as easlurm and Slurm write them) → Unix s."""
    try:
        return time.mktime(time.strptime(text.replace(" ", "T"), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def log_starts(run: RunDir, slug: str, index: int) -> list[float]:
    """Process start times of task ``index`` of stage ``slug`` (e.g. ``adam-001``) from its job logs."""
    starts: list[float] = []
    local = run.logs / slug / f"task-{index:02d}.log"
    for path, pattern in [(local, _LOCAL_START)] + [(p, _SLURM_START)
                                                     for p in sorted((run.slurm / slug).glob("*.out"))]:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = pattern.match(line)
            if m and (pattern is _LOCAL_START or int(m.group(3)) == index):
                t = parse_local_time(m.group(1))
                if t is not None:
                    starts.append(t)
    return sorted(starts)


def _with_log_starts(spans: list[Span], starts: list[float]) -> tuple[list[Span], bool]:
    """Move each span's start back to the latest process start before it (within the span's own attempt)."""
    used = False
    out = []
    prev_end = float("-inf")
    for s in spans:
        before = [t for t in starts if prev_end - 1 <= t <= s.start + 1]
        if before:
            out.append(Span(min(before[-1], s.start), s.end, s.units, s.loop_start or s.start))
            used = True
        else:
            out.append(s)
        prev_end = s.end
    return out, used


# ----------------------------------------------------------------------------------------------------------------
# Per task


def _member_tb(run: RunDir, cfg: Config, cycle: int, slot: int, done_at: float | None) -> list[Span]:
    step0 = sum(phase_iters(cfg, c) for c in range(cycle))
    end_step = step0 + phase_iters(cfg, cycle)
    spans = []
    for f in tb_spans(run.tb / f"member_{slot:02d}", "speed/"):
        if not step0 <= f.purge_step < end_step or f.last_step is None:
            continue
        spans.append(Span(f.created, f.last_wall or f.created, max(0, f.last_step - f.purge_step), f.created))
    return _close_last(spans, done_at)


def _close_last(spans: list[Span], done_at: float | None) -> list[Span]:
    # The final commit comes after the last logged step: the record's time ends the last attempt.
    if spans and done_at is not None and done_at >= spans[-1].end:
        last = spans[-1]
        spans[-1] = Span(last.start, done_at, last.units, last.loop_start)
    return spans


def _loop_tb(folder: Path, tag: str, done_at: float | None, lo: int = 0, hi: int | None = None,
             first_at_purge: bool = False) -> list[Span]:
    """Spans of the event files whose purge step lies in [lo, hi). ``first_at_purge``: the first unit is logged at
    the purge step itself (the EA logs generation g at step0 + g + 1 and purges at step0 + g + 1)."""
    spans = []
    for f in tb_spans(folder, tag):
        if f.purge_step < lo or (hi is not None and f.purge_step >= hi) or f.last_step is None:
            continue
        units = max(0, f.last_step - f.purge_step + (1 if first_at_purge else 0))
        spans.append(Span(f.created, f.last_wall or f.created, units, f.created))
    return _close_last(spans, done_at)


def _task(cfg: Config, run: RunDir, stage: Any, index: int, done: bool, prev_end: float | None) -> TaskTime:
    """When task ``index`` of ``stage`` ran; ``prev_end``: when the stage before it finished (the start of a task
    that leaves no start mark of its own — init, evaluation — when no job log says better)."""
    kind, c = stage.kind, stage.cycle
    tt = TaskTime(stage.key, kind, c, index, stage.tasks[index].label)
    slug = stage.key.replace("/", "-")
    record: dict[str, Any] | None = None
    spans: list[Span] = []
    end: float | None = None
    if kind == "adam":
        folder = run.member(c, index)
        record, end = _raw(folder / "meta.json"), _mtime(folder / "meta.json")
        if not is_adam_trained(cfg, index):  # finishes at once: its record only references the start entry
            if done and end is not None:
                tt.spans, tt.done_at, tt.source = [Span(end, end)], end, "file times"
            return tt
        spans = _member_tb(run, cfg, c, index, end if done else None)
    elif kind == "ea":
        record, end = _raw(run.ea(c) / "done.json"), _mtime(run.ea(c) / "done.json")
        g = cfg.ea.generations
        spans = _loop_tb(run.tb / "ea", "ea/hypervolume", end if done else None, c * g + 1, (c + 1) * g + 1,
                         first_at_purge=True)
    elif kind in ("pretrain", "fuse"):
        folder = run.pretrain if kind == "pretrain" else run.fusion
        record, end = _raw(folder / "meta.json"), _mtime(folder / "meta.json")
        spans = _loop_tb(run.tb / ("pretrain" if kind == "pretrain" else "fusion"), "speed/", end if done else None)
    elif kind == "eval":
        record, end = _raw(run.eval / "timing.json"), _mtime(run.eval / "results.md")
    elif kind == "init":
        times = [t for t in (_mtime(run.start(0, i) / "meta.json") for i in range(cfg.population.size))
                 if t is not None]
        end = max(times) if times else None
    tt.done_at = end if done else None
    attempts = read_attempts(record)
    if attempts:
        tt.spans, tt.source = attempts, "record"
        return tt
    starts = log_starts(run, slug, index)
    if kind in ("eval", "init"):
        if done and end is not None:
            before = [t for t in starts if t <= end + 1]
            start = before[-1] if before else (prev_end if prev_end is not None and prev_end <= end else end)
            tt.spans = [Span(min(start, end), end, 0, start)]
            tt.source = "file times + log" if before else "file times"
        return tt
    if spans:
        tt.spans, used = _with_log_starts(spans, starts)
        tt.source = "tensorboard + log" if used else "tensorboard"
    return tt


def task_times(cfg: Config, run: RunDir, plan: list[Any], done: Mapping[tuple[str, int], bool] | None = None
               ) -> list[TaskTime]:
    """One :class:`TaskTime` per task of ``plan`` (stage order). ``done``: (stage key, index) → finished, when the
    caller already knows (else each task's ``is_done`` is asked)."""
    out: list[TaskTime] = []
    prev_end: float | None = None
    for stage in plan:
        mine = []
        for i, task in enumerate(stage.tasks):
            d = done[(stage.key, i)] if done is not None else task.is_done()
            mine.append(_task(cfg, run, stage, i, d, prev_end))
        ends = [t.end for t in mine if t.end is not None]
        prev_end = max(ends) if ends and all(t.done_at is not None for t in mine) else prev_end
        out += mine
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
    """The config values a stage kind's speed depends on (beyond the hardware)."""
    m, d, loss = cfg.model, cfg.discriminator, cfg.loss
    net = {"model": [m.arch, m.num_feat, m.num_block, m.num_grow_ch], "scale": cfg.data.scale}
    perc = {"perceptual": [loss.perceptual.net, sorted(loss.perceptual.layers)]}
    res = getattr(cfg.executor.slurm, kind)
    hw = {"partition": cfg.executor.slurm.partition, "extra": dict(sorted(res.extra.items())), "gpus": res.gpus}
    if kind == "adam":
        return {**net, **perc, **hw, "d": [d.arch, d.num_feat], "patch": cfg.data.patch_size,
                "batch": cfg.adam.batch_size, "bf16": cfg.adam.bf16, "channels_last": cfg.adam.channels_last,
                "gan": loss.gan_type}
    if kind == "pretrain":
        return {**net, **hw, "patch": cfg.data.patch_size, "batch": cfg.pretrain.batch_size}
    if kind == "ea":
        return {**net, **perc, **hw, "population": cfg.population.size, "tile": cfg.data.fitness_tile,
                "images": cfg.data.fitness_images, "tiles": cfg.data.fitness_max_tiles,
                "eval_batch": cfg.ea.eval_batch, "operators": [cfg.ea.p_crossover, cfg.ea.p_mutation]}
    if kind == "fuse":
        return {**net, **perc, **hw, "population": cfg.population.size, "patch": cfg.data.patch_size,
                "batch": cfg.fusion.batch_size, "att": [cfg.fusion.att_kernel, cfg.fusion.att_channels]}
    if kind == "eval":
        return {**net, **hw, "sets": sorted(cfg.eval.sets), "metrics": list(cfg.eval.metrics),
                "population": cfg.population.size}
    return {**hw, "population": cfg.population.size}


def rates_from_times(cfg: Config, times: list[TaskTime], source: str) -> Rates:
    """Per stage kind: seconds per unit over every finished task that made progress (start-up excluded where the
    start-up is known), and the mean start-up."""
    stages: dict[str, StageRate] = {}
    for kind, unit in RATE_UNITS.items():
        done = [t for t in times if t.kind == kind and t.done_at is not None and t.spans]
        if kind == "adam":
            done = [t for t in done if is_adam_trained(cfg, t.index)]
        if not done:
            continue
        if unit == "task":
            stages[kind] = StageRate(sum(t.busy_s for t in done) / len(done), unit, 0.0, len(done))
            continue
        spans = [s for t in done for s in t.spans if s.units > 0]
        units = sum(s.units for s in spans)
        if not units:
            continue
        loop_s = sum(max(0.0, s.end - (s.loop_start if s.loop_start is not None else s.start)) for s in spans)
        startup = [(s.loop_start - s.start) for s in spans if s.loop_start is not None and s.loop_start > s.start]
        stages[kind] = StageRate(loop_s / units, unit, sum(startup) / len(startup) if startup else 0.0, len(done))
    return Rates(stages, {k: rate_key(cfg, k) for k in stages}, source)
