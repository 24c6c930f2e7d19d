"""A lock file per member (``.lock`` in its folder, holding the job id) so two tasks never train it at once.

A lock is taken over when it is stale: its holder is this very Slurm job (a requeued task), a process on this host
that no longer exists, or a Slurm job that has ended.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError


def identity() -> dict[str, Any]:
    """Who holds the lock: Slurm job (``123`` or ``123_4`` for array tasks), host and pid."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    if holder.get("job") and holder["job"] == me["job"]:
        return True
    if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
        return True
    if holder.get("job"):
        try:
            from ..orchestrate.slurm_state import is_terminal, job_states

            return is_terminal(job_states([holder["job"]]).get(holder["job"], "UNKNOWN"))
        except Exception:  # no Slurm reachable from here: cannot prove it stale
            return False
    return False


@contextlib.contextmanager
def member_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the duration; raise :class:`CheckpointError` naming the holder when busy."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    me = identity()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError):
                holder = {}
            if holder and not _stale(holder, me):
                raise CheckpointError(f"{folder}: member is being trained by job {holder.get('job')} "
                                      f"(pid {holder.get('pid')} on {holder.get('host')}); lock {lock}. Remove the "
                                      f"lock only if that task is gone.") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise CheckpointError(f"{lock}: could not take the member lock")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
