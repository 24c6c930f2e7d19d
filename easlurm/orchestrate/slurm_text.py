"""What Slurm's client commands print, parsed: pure functions, no subprocess (the queries are in
:mod:`easlurm.orchestrate.slurm_state`).

Long state names (``sacct``, ``squeue %T``, ``scontrol``) normalise to :data:`STATES`; ``sacct --parsable2`` and
``squeue --format`` tables and ``scontrol --oneliner`` lines become :class:`Row` s, one per job or array task (task
ranges such as ``123_[0-5%2]`` expanded).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import EaslurmError

__all__ = ["STATES", "SlurmQueryError", "Row", "normalise_state", "parse_table", "parse_scontrol", "exit_code",
           "elapsed", "rows_from_fields", "expand_tasks", "SACCT_USAGE_FIELDS", "parse_sacct"]

#: Every state :func:`easlurm.orchestrate.slurm_state.job_states` returns.
STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "PREEMPTED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "REQUEUED",
        "HELD",
        "UNKNOWN",
    }
)


# Slurm's long state names (squeue %T, sacct State, scontrol JobState) → STATES. Transitional states map to the
# phase a caller acts on: a COMPLETING job has stopped computing but still holds its node, so it counts as RUNNING.
_RAW_TO_STATE = {
    "PENDING": "PENDING",
    "RESV_DEL_HOLD": "PENDING",
    "CONFIGURING": "RUNNING",
    "RUNNING": "RUNNING",
    "COMPLETING": "RUNNING",
    "SUSPENDED": "RUNNING",
    "STOPPED": "RUNNING",
    "SIGNALING": "RUNNING",
    "STAGE_OUT": "RUNNING",
    "RESIZING": "RUNNING",
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "CANCELLED": "CANCELLED",
    "REVOKED": "CANCELLED",
    "TIMEOUT": "TIMEOUT",
    "DEADLINE": "TIMEOUT",
    "PREEMPTED": "PREEMPTED",
    "NODE_FAIL": "NODE_FAIL",
    "BOOT_FAIL": "NODE_FAIL",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "REQUEUED": "REQUEUED",
    "REQUEUE_HOLD": "HELD",
    "REQUEUE_FED": "REQUEUED",
    "SPECIAL_EXIT": "HELD",
}


class SlurmQueryError(EaslurmError):
    """A Slurm client command is missing, timed out or failed; the message names the command."""


def normalise_state(raw: str) -> str:
    """Map a long Slurm state name to :data:`STATES`, e.g. ``"CANCELLED by 0"`` → ``"CANCELLED"``.

    Long names only, as ``sacct``, ``squeue %T`` and ``scontrol`` print them (case-insensitive); short codes such
    as ``"CD"`` and anything unrecognised give ``"UNKNOWN"``.
    """
    words = raw.strip().split()
    if not words:
        return "UNKNOWN"
    word = words[0].upper().rstrip("+")  # sacct may append "+" when a state was truncated
    if word in STATES:
        return word
    return _RAW_TO_STATE.get(word, "UNKNOWN")


@dataclass(frozen=True)
class Row:
    """One job or array task as a source reported it."""

    array_id: str | None  # the array's job id for an array task, else None
    task_id: str | None   # the task index for an array task, else None
    raw_id: str           # Slurm's own numeric job id of this row (pending tasks share the array's)
    state: str            # normalised
    reason: str = ""      # Slurm's reason for a waiting job ("JobHeldAdmin", "Resources", …); "None" → ""
    exit_code: int | None = None  # the job's exit status when Slurm reports one (ExitCode=rc:signal)
    elapsed_s: float | None = None  # how long it ran (0: cancelled before it started)

    @property
    def key(self) -> str:
        return f"{self.array_id}_{self.task_id}" if self.array_id is not None else self.raw_id


def parse_table(text: str) -> list[Row]:
    """Rows from ``JOBID|RAWID|STATE|REASON|EXITCODE|ELAPSED`` lines (sacct --parsable2 and squeue --format
    alike)."""
    rows: list[Row] = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        rows.extend(rows_from_fields(*parts))
    return rows


def exit_code(text: str) -> int | None:
    """``"2:0"`` → 2; a signal death ``"0:9"`` → 128 + 9; empty or unparsable → None."""
    rc, _, sig = text.strip().partition(":")
    if not rc.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) and not int(rc) else int(rc)


_TASK_RE = re.compile(r"(\d+)_(\d+)")
_RANGE_RE = re.compile(r"(\d+)_\[([^\]]*)\]")


def elapsed(text: str) -> float | None:
    """Seconds from sacct's ElapsedRaw (``"42"``) or squeue/scontrol's ``[D-]HH:MM:SS`` / ``MM:SS``; None when
    absent or unparsable."""
    t = text.strip()
    if not t or t in ("N/A", "INVALID"):
        return None
    if t.isdigit():
        return float(t)
    days, _, clock = t.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        secs = sum(v * m for v, m in zip(reversed(parts), (1, 60, 3600)))
        return float(secs + (int(days) * 86400 if days else 0))
    except ValueError:
        return None


def rows_from_fields(label: str, raw_id: str, raw_state: str, raw_reason: str = "", raw_exit: str = "",
                      raw_elapsed: str = "") -> list[Row]:
    state = normalise_state(raw_state)
    label, raw_id = label.strip(), raw_id.strip()
    reason = "" if raw_reason.strip() in ("", "None", "(null)") else raw_reason.strip()
    code, ran = exit_code(raw_exit), elapsed(raw_elapsed)
    if m := _TASK_RE.fullmatch(label):
        return [Row(m.group(1), m.group(2), raw_id, state, reason, code, ran)]
    if m := _RANGE_RE.fullmatch(label):
        return [Row(m.group(1), task, raw_id, state, reason, code, ran) for task in expand_tasks(m.group(2))]
    if label.isdigit():
        return [Row(None, None, label, state, reason, code, ran)]
    return []  # heterogeneous components ("12+0") and steps are not asked for


def expand_tasks(spec: str) -> list[str]:
    """``"0-5,7,9-13:2%4"`` → task indices as strings (the ``%N`` throttle is dropped)."""
    spec = spec.split("%", 1)[0]
    tasks: list[str] = []
    for part in filter(None, spec.split(",")):
        span, _, step_text = part.partition(":")
        first, _, last = span.partition("-")
        try:
            lo = int(first)
            hi = int(last) if last else lo
            step = int(step_text) if step_text else 1
        except ValueError:
            raise SlurmQueryError(f"cannot parse Slurm array task list {spec!r} (part {part!r})") from None
        if step < 1 or hi < lo:
            raise SlurmQueryError(f"cannot parse Slurm array task list {spec!r} (part {part!r})")
        tasks.extend(str(t) for t in range(lo, hi + 1, step))
    return tasks


_SCONTROL_FIELDS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode|RunTime)=(\S*)")


def parse_scontrol(text: str) -> list[Row]:
    """Rows from ``scontrol --oneliner show job`` output (one line per job or array task / task range)."""
    rows: list[Row] = []
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for name, value in _SCONTROL_FIELDS.findall(line):
            fields.setdefault(name, value)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        raw, state = fields["JobId"], fields["JobState"]
        if "ArrayJobId" in fields and "ArrayTaskId" in fields:
            task = fields["ArrayTaskId"]
            label = f"{fields['ArrayJobId']}_{task}" if task.isdigit() else f"{fields['ArrayJobId']}_[{task}]"
        else:
            label = raw
        rows.extend(rows_from_fields(label, raw, state, fields.get("Reason", ""), fields.get("ExitCode", ""),
                                      fields.get("RunTime", "")))
    return rows


#: What ``sacct`` is asked for the cost report (:func:`parse_sacct`).
SACCT_USAGE_FIELDS = "JobID,Submit,Eligible,Start,End,ElapsedRaw,AllocTRES,State"


def _local_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip().replace(" ", "T"), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def parse_sacct(text: str) -> dict[str, dict[str, Any]]:
    """``sacct -n -P -X --duplicates --format=JobID,Submit,Eligible,Start,End,ElapsedRaw,AllocTRES,State`` output →
    job id → {"elapsed_s" (summed over requeues), "gpu_s" (elapsed × allocated GPUs), "queue_s" (Start − Eligible,
    summed), "runs"}. Rows that never started contribute no time."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) != 8 or not f[0]:
            continue
        job, _submit, eligible, start, _end, elapsed, tres, _state = f
        try:
            secs = float(elapsed)
        except ValueError:
            secs = 0.0
        gpus = 0
        for item in tres.split(","):
            name, _, value = item.partition("=")
            if name.startswith("gres/gpu") and ":" not in name[len("gres/gpu"):].lstrip(":") and value.isdigit():
                gpus = max(gpus, int(value))
        t_el, t_st = _local_time(eligible), _local_time(start)
        rec = out.setdefault(job, {"elapsed_s": 0.0, "gpu_s": 0.0, "queue_s": 0.0, "runs": 0})
        if t_st is None:
            continue
        rec["runs"] += 1
        rec["elapsed_s"] += secs
        rec["gpu_s"] += secs * gpus
        if t_el is not None:
            rec["queue_s"] += max(0.0, t_st - t_el)
    return out
