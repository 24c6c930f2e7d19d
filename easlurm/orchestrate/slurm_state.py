"""Slurm job states that work with and without accounting (slurmdbd).

submitit reads job states from ``sacct`` only, so on a cluster without accounting a cancelled or killed job is
never "done". This module asks every source Slurm has and normalises the answer to one small vocabulary
(:data:`STATES`):

1. ``sacct`` (the accounting database), when it works. Whether it does is probed once per ``SLURM_CONF`` and
   cached; "Slurm accounting storage is disabled" makes every later call skip it.
2. ``squeue --states=all --array`` (slurmctld's memory: every job younger than ``MinJobAge``). When accounting is
   on too, slurmctld's answer overrides sacct's for the jobs it still holds, because accounting lags slurmctld by
   up to seconds (an array's tasks reach the database one by one).
3. ``scontrol show job`` for requested ids the two above did not report.

Ids not found anywhere are ``UNKNOWN``. Job ids are strings: ``"123"`` (a job, or a whole array) or ``"123_4"``
(one array task). For an array job ``"123"`` the result holds the array's overall state under ``"123"`` and one
entry per task (``"123_0"``, ``"123_1"``, ...), pending tasks included.

Every call is a subprocess with a timeout; a missing Slurm binary, a timeout or a controller that does not answer
raise :class:`SlurmQueryError` naming the command.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import EaslurmError

__all__ = [
    "STATES",
    "TERMINAL_STATES",
    "SlurmQueryError",
    "accounting_available",
    "is_terminal",
    "JobInfo",
    "job_infos",
    "job_states",
    "normalise_state",
]

#: Every state :func:`job_states` returns.
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

#: States after which a job never runs again (without a manual requeue).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"})

#: Seconds one Slurm client command may take before :class:`SlurmQueryError`.
DEFAULT_TIMEOUT_S = 60.0

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

# Which state an array reports when its tasks disagree: any live task keeps it live; among finished tasks the
# most telling failure wins (a FAILED task says more about the array than a CANCELLED sibling).
_ARRAY_PRECEDENCE = (
    "RUNNING",
    "PENDING",
    "REQUEUED",
    "HELD",
    "UNKNOWN",
    "FAILED",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "CANCELLED",
    "COMPLETED",
)

_JOB_ID_RE = re.compile(r"\d+(?:_\d+)?")
_DISABLED_MARK = "accounting storage is disabled"
#: What squeue/scontrol say of a job id slurmctld does not hold (any more): "Invalid job id specified" (squeue,
#: older scontrol) or "Job 123_4 not found" (scontrol, array tasks past MinJobAge).
_INVALID_ID_MARKS = ("invalid job id", "not found")
_CHUNK = 200  # ids per command line; keeps argv short on clusters with huge job lists

_accounting_cache: dict[str, bool] = {}


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


def is_terminal(state: str) -> bool:
    """True when ``state`` (normalised or a raw Slurm name) means the job will not run again. UNKNOWN is not."""
    return normalise_state(state) in TERMINAL_STATES


def accounting_available(*, timeout_s: float = DEFAULT_TIMEOUT_S, refresh: bool = False) -> bool:
    """Whether ``sacct`` answers on the cluster ``SLURM_CONF`` points at.

    Probed once per ``SLURM_CONF`` value and cached (``refresh=True`` probes again). A definite "accounting
    storage is disabled" or a working answer is cached; a transient failure (slurmdbd down) returns False
    without caching, so a later call probes again. Raises :class:`SlurmQueryError` when ``sacct`` is missing.
    """
    key = _cache_key()
    if not refresh and key in _accounting_cache:
        return _accounting_cache[key]
    # An empty time window: the cheapest question that still needs the database.
    proc = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID",
                 "--starttime=now", "--endtime=now"], timeout_s)
    if proc.returncode == 0:
        _accounting_cache[key] = True
        return True
    if _DISABLED_MARK in (proc.stdout + proc.stderr).lower():
        _accounting_cache[key] = False
    return False


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job: normalised state, its reason while waiting, its exit status when ended."""
    state: str
    reason: str = ""
    exit_code: int | None = None
    elapsed_s: float | None = None


def job_states(
    job_ids: Sequence[str],
    *,
    use_sacct: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, str]:
    """State of each job in ``job_ids`` (see :func:`job_infos`; the same, states only)."""
    return {k: v.state for k, v in job_infos(job_ids, use_sacct=use_sacct, timeout_s=timeout_s).items()}


def job_infos(
    job_ids: Sequence[str],
    *,
    use_sacct: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, JobInfo]:
    """State of each job in ``job_ids``, normalised to :data:`STATES`.

    Args:
        job_ids: ``"123"`` (a job or a whole array) or ``"123_4"`` (one array task); ints are accepted too.
        use_sacct: ``None`` (default): sacct if accounting works, merged with slurmctld's view (which wins for
            the jobs slurmctld still holds), then scontrol for the rest. ``True``: sacct only (raises
            :class:`SlurmQueryError` when accounting is unavailable). ``False``: slurmctld only (squeue, then
            scontrol).
        timeout_s: limit for each Slurm client command, in seconds.

    Returns:
        ``{id: state}`` for every requested id (``"UNKNOWN"`` when no source knows it), plus ``"A_T"`` entries for
        every task of each requested array job ``A``.
    """
    ids = _validate_ids(job_ids)
    if not ids:
        return {}
    rows: dict[str, _Row] = {}
    sacct_ok = False
    if use_sacct is True or (use_sacct is None and _sacct_usable(timeout_s)):
        try:
            rows.update(_rows_by_key(_sacct_rows(ids, timeout_s)))
            sacct_ok = True
        except SlurmQueryError:
            if use_sacct:
                raise
    if use_sacct is not True:
        try:
            rows.update(_rows_by_key(_squeue_rows(ids, timeout_s)))
            for job_id in [i for i in ids if not _resolve(i, rows)]:
                rows.update(_rows_by_key(_scontrol_rows(job_id, timeout_s)))
        except SlurmQueryError:
            # With sacct's answer in hand a silent controller costs only freshness, not correctness.
            if not sacct_ok:
                raise
    result: dict[str, JobInfo] = {}
    for job_id in ids:
        found = _resolve(job_id, rows)
        result.update(found)
        result.setdefault(job_id, JobInfo("UNKNOWN"))
    return result


def _sacct_usable(timeout_s: float) -> bool:
    try:
        return accounting_available(timeout_s=timeout_s)
    except SlurmQueryError:
        return False  # no sacct binary at all: squeue/scontrol still answer


@dataclass(frozen=True)
class _Row:
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


def _cache_key() -> str:
    return os.environ.get("SLURM_CONF", "")


def _validate_ids(job_ids: Sequence[str]) -> list[str]:
    if isinstance(job_ids, (str, bytes)):
        raise SlurmQueryError(f"job_ids must be a sequence of ids, not the single string {job_ids!r}")
    ids: list[str] = []
    for job_id in job_ids:
        text = str(job_id).strip() if isinstance(job_id, (str, int)) else None
        if text is None or not _JOB_ID_RE.fullmatch(text):
            raise SlurmQueryError(f"invalid Slurm job id {job_id!r}: expected digits, or ARRAYID_TASK like '123_4'")
        if text not in ids:
            ids.append(text)
    return ids


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise SlurmQueryError(f"'{argv[0]}' not found on PATH: is the Slurm client installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmQueryError(f"'{' '.join(argv[:2])} ...' timed out after {timeout_s:g} s") from exc


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start:start + _CHUNK])


def _failure(argv: list[str], proc: subprocess.CompletedProcess[str]) -> SlurmQueryError:
    detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
    return SlurmQueryError(f"'{argv[0]}' failed (exit {proc.returncode}): {detail}")


def _sacct_rows(ids: Sequence[str], timeout_s: float) -> list[_Row]:
    rows: list[_Row] = []
    for chunk in _chunks(ids):
        # --allocations drops job steps (123.batch); an explicit --jobs list makes sacct search from the epoch.
        argv = ["sacct", "--noheader", "--parsable2", "--allocations",
                "--format=JobID,JobIDRaw,State,Reason,ExitCode,ElapsedRaw",
                f"--jobs={','.join(chunk)}"]
        proc = _run(argv, timeout_s)
        if proc.returncode != 0:
            if _DISABLED_MARK in (proc.stdout + proc.stderr).lower():
                _accounting_cache[_cache_key()] = False
                raise SlurmQueryError(
                    f"sacct: Slurm accounting storage is disabled (SLURM_CONF={_cache_key() or 'default'})")
            raise _failure(argv, proc)
        rows.extend(_parse_table(proc.stdout))
    return rows


def _squeue_rows(ids: Sequence[str], timeout_s: float) -> list[_Row]:
    rows: list[_Row] = []
    for chunk in _chunks(ids):
        # --array gives each pending task its own line; --states=all keeps finished jobs (until MinJobAge).
        argv = ["squeue", "--noheader", "--states=all", "--array", "--format=%i|%A|%T|%r||%M",
                f"--jobs={','.join(chunk)}"]
        proc = _run(argv, timeout_s)
        if proc.returncode != 0:
            # A single id slurmctld has forgotten is an error to squeue; to us it just means "not here".
            if any(m in proc.stderr.lower() for m in _INVALID_ID_MARKS):
                continue
            raise _failure(argv, proc)
        rows.extend(_parse_table(proc.stdout))
    return rows


_SCONTROL_FIELDS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode|RunTime)=(\S*)")


def _scontrol_rows(job_id: str, timeout_s: float) -> list[_Row]:
    argv = ["scontrol", "--oneliner", "show", "job", job_id]
    proc = _run(argv, timeout_s)
    if proc.returncode != 0:
        if any(m in (proc.stdout + proc.stderr).lower() for m in _INVALID_ID_MARKS):
            return []
        raise _failure(argv, proc)
    rows: list[_Row] = []
    for line in proc.stdout.splitlines():
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
        rows.extend(_rows_from_fields(label, raw, state, fields.get("Reason", ""), fields.get("ExitCode", ""),
                                      fields.get("RunTime", "")))
    return rows


def _parse_table(text: str) -> list[_Row]:
    """Rows from ``JOBID|RAWID|STATE|REASON|EXITCODE|ELAPSED`` lines (sacct --parsable2 and squeue --format
    alike)."""
    rows: list[_Row] = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        rows.extend(_rows_from_fields(*parts))
    return rows


def _exit_code(text: str) -> int | None:
    """``"2:0"`` → 2; a signal death ``"0:9"`` → 128 + 9; empty or unparsable → None."""
    rc, _, sig = text.strip().partition(":")
    if not rc.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) and not int(rc) else int(rc)


_TASK_RE = re.compile(r"(\d+)_(\d+)")
_RANGE_RE = re.compile(r"(\d+)_\[([^\]]*)\]")


def _elapsed(text: str) -> float | None:
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


def _rows_from_fields(label: str, raw_id: str, raw_state: str, raw_reason: str = "", raw_exit: str = "",
                      raw_elapsed: str = "") -> list[_Row]:
    state = normalise_state(raw_state)
    label, raw_id = label.strip(), raw_id.strip()
    reason = "" if raw_reason.strip() in ("", "None", "(null)") else raw_reason.strip()
    code, ran = _exit_code(raw_exit), _elapsed(raw_elapsed)
    if m := _TASK_RE.fullmatch(label):
        return [_Row(m.group(1), m.group(2), raw_id, state, reason, code, ran)]
    if m := _RANGE_RE.fullmatch(label):
        return [_Row(m.group(1), task, raw_id, state, reason, code, ran) for task in _expand_tasks(m.group(2))]
    if label.isdigit():
        return [_Row(None, None, label, state, reason, code, ran)]
    return []  # heterogeneous components ("12+0") and steps are not asked for


def _expand_tasks(spec: str) -> list[str]:
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


def _rows_by_key(rows: Iterable[_Row]) -> dict[str, _Row]:
    return {row.key: row for row in rows}


def _info(row: _Row) -> JobInfo:
    return JobInfo(row.state, row.reason, row.exit_code, row.elapsed_s)


def _resolve(job_id: str, rows: dict[str, _Row]) -> dict[str, JobInfo]:
    """The entries for one requested id from the merged rows; empty when no row matches it."""
    if "_" in job_id:
        row = rows.get(job_id)
        return {job_id: _info(row)} if row is not None else {}
    tasks = {key: _info(row) for key, row in rows.items() if row.array_id == job_id}
    if tasks:
        ordered = dict(sorted(tasks.items(), key=lambda kv: int(kv[0].split("_")[1])))
        ordered[job_id] = JobInfo(_array_state(i.state for i in ordered.values()))
        return ordered
    row = rows.get(job_id)
    if row is not None:
        return {job_id: _info(row)}
    # An array task asked for by its own numeric id (squeue prints it as A_T).
    for row in rows.values():
        if row.raw_id == job_id and row.array_id is not None:
            return {job_id: _info(row)}
    return {}


def _array_state(task_states: Iterable[str]) -> str:
    present = set(task_states)
    for state in _ARRAY_PRECEDENCE:
        if state in present:
            return state
    return "UNKNOWN"
