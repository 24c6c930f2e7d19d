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
from typing import Any, Iterable, Sequence

from .slurm_text import (
    SACCT_USAGE_FIELDS, STATES, Row, SlurmQueryError, normalise_state, parse_sacct, parse_scontrol, parse_table,
)

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
    "sacct_usage",
]

#: States after which a job never runs again (without a manual requeue).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"})

#: Seconds one Slurm client command may take before :class:`SlurmQueryError`.
DEFAULT_TIMEOUT_S = 60.0

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
    rows: dict[str, Row] = {}
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


def _sacct_rows(ids: Sequence[str], timeout_s: float) -> list[Row]:
    rows: list[Row] = []
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
        rows.extend(parse_table(proc.stdout))
    return rows


def _squeue_rows(ids: Sequence[str], timeout_s: float) -> list[Row]:
    rows: list[Row] = []
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
        rows.extend(parse_table(proc.stdout))
    return rows


def _scontrol_rows(job_id: str, timeout_s: float) -> list[Row]:
    argv = ["scontrol", "--oneliner", "show", "job", job_id]
    proc = _run(argv, timeout_s)
    if proc.returncode != 0:
        if any(m in (proc.stdout + proc.stderr).lower() for m in _INVALID_ID_MARKS):
            return []
        raise _failure(argv, proc)
    return parse_scontrol(proc.stdout)


def _rows_by_key(rows: Iterable[Row]) -> dict[str, Row]:
    return {row.key: row for row in rows}


def _info(row: Row) -> JobInfo:
    return JobInfo(row.state, row.reason, row.exit_code, row.elapsed_s)


def _resolve(job_id: str, rows: dict[str, Row]) -> dict[str, JobInfo]:
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


def sacct_usage(job_ids: list[str], timeout_s: float = 60.0) -> dict[str, dict[str, Any]] | None:
    """:func:`parse_sacct` for ``job_ids``; None when accounting is not available (no sacct, no slurmdbd)."""
    try:
        if not job_ids or not accounting_available(timeout_s=timeout_s):
            return None
        text = ""
        for k in range(0, len(job_ids), 200):
            proc = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", f"--format={SACCT_USAGE_FIELDS}",
                                   "-j", ",".join(job_ids[k:k + 200])], capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
            if proc.returncode != 0:
                return None
            text += proc.stdout
    except (SlurmQueryError, OSError, subprocess.TimeoutExpired):
        return None
    return parse_sacct(text)
