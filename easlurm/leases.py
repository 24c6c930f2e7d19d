"""Leases: one live writer per stage folder (and one launcher per run), with no Slurm query and no lock server.

A lease is a file (``.lease`` in the guarded folder) created with ``O_EXCL`` and holding who took it (a random
token, host, pid, Slurm job id, what it guards). While the holder works, a daemon thread renews it every
``ttl / 4`` seconds by touching the file; the modification time is then set by the file server, so holders and
contenders on different nodes compare times from one clock (a probe file written next to it gives "now").

A contender takes the lease over when the holder is provably gone:

* the holder is this very Slurm job (a requeued task) and not a live process on this host (two processes of one
  allocation share the job id),
* the holder ran on this host and its pid no longer exists, or
* the lease was not renewed for ``ttl`` seconds (a killed task on another node, or a forgotten job).

Otherwise the contender watches the lease for up to ``ttl`` seconds: a renewal proves the holder alive and the
contender refuses (:class:`LeaseBusy`, naming the holder); silence makes it stale. Takeover renames the stale file
away before creating a new one, so of two contenders only one can win. Works inside containers without Slurm
commands, on NFS/Lustre, and after Slurm has forgotten the holder's job.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import EaslurmError

LEASE_NAME = ".lease"
#: Seconds without renewal after which a holder counts as dead (``executor.lease_s`` overrides it for stages).
DEFAULT_TTL_S = 120.0


class LeaseBusy(EaslurmError):
    """The folder is held by a live process; the message names it (host, pid, job)."""


class LeaseLost(EaslurmError):
    """This process's lease was taken over (it stopped renewing in time); it must not write any more."""


def identity() -> dict[str, Any]:
    """Who we are: Slurm job (``123`` or ``123_4`` for array tasks), host and pid."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> tuple[dict[str, Any], float] | None:
    """(holder record, mtime) of a lease file, or None when there is none. An unreadable record counts as {}."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        holder = {}  # a half-written record: its creator died between create and write, or is writing now
    return (holder if isinstance(holder, dict) else {}), st.st_mtime


def _now(folder: Path) -> float:
    """The file server's current time, read from a probe file's mtime (falls back to this host's clock)."""
    probe = folder / f".lease-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _describe(holder: dict[str, Any]) -> str:
    job = f"job {holder['job']}, " if holder.get("job") else ""
    return f"{job}pid {holder.get('pid')} on {holder.get('host')}"


@dataclass
class Lease:
    """A held lease; :meth:`check` raises :class:`LeaseLost` once someone else took it over."""
    path: Path
    token: str
    ttl: float
    what: str
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.what}: lease {self.path} was taken over by another process; stopping without "
                            f"writing")

    def _still_ours(self) -> bool:
        got = _read(self.path)
        return got is not None and got[0].get("token") == self.token

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            if not self._still_ours():
                self.lost = True
                return
            with contextlib.suppress(OSError):
                os.utime(self.path, None)

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._renew_forever, name=f"lease:{self.path}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._still_ours():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _stale(holder: dict[str, Any], mtime: float, me: dict[str, Any], folder: Path, ttl: float) -> bool:
    here = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
    if here and holder["pid"] != me["pid"] and _pid_alive(holder["pid"]):
        # Alive on this host, whatever its job id: two processes of one allocation share SLURM_JOB_ID (two
        # launchers in one salloc shell), and a requeued task's predecessor is dead by the time it starts.
        return False
    if holder.get("job") and holder.get("job") == me["job"]:
        return True
    if here and not _pid_alive(holder["pid"]):
        return True
    return _now(folder) - mtime > ttl


def _take_over(path: Path, token_seen: Any) -> None:
    """Move a stale lease away — unless it is no longer the one judged stale (then put it back)."""
    aside = path.with_name(f"{LEASE_NAME}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else moved it first
    got = _read(aside)
    if got is not None and got[0].get("token") != token_seen:
        with contextlib.suppress(FileExistsError, OSError):
            os.link(aside, path)  # a fresh lease we must not steal: restore it unless another appeared
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()


def acquire(folder: Path, what: str, ttl: float = DEFAULT_TTL_S) -> Lease:
    """Take the lease of ``folder`` (created if needed) or raise :class:`LeaseBusy` naming the live holder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEASE_NAME
    me = identity()
    token = secrets.token_hex(16)
    deadline = time.monotonic() + ttl + 5
    watched: tuple[Any, float] | None = None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fd = -1
        if fd < 0:
            got = _read(path)
            if got is None:
                continue  # released between our create and read
            holder, mtime = got
            if _stale(holder, mtime, me, folder, ttl):
                _take_over(path, holder.get("token"))
                continue
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and \
                    holder["pid"] != me["pid"] and _pid_alive(holder["pid"]):
                raise LeaseBusy(f"{what}: {folder} is being worked on by {_describe(holder)} (lease {path})")
            if watched is not None and watched[0] == holder.get("token") and mtime > watched[1]:
                raise LeaseBusy(f"{what}: {folder} is being worked on by {_describe(holder)} (lease {path}, "
                                f"renewed {_now(folder) - mtime:.0f} s ago); a second task must not write it")
            if watched is None or watched[0] != holder.get("token"):
                watched = (holder.get("token"), mtime)
            if time.monotonic() > deadline:
                raise LeaseBusy(f"{what}: {folder} is held by {_describe(holder)} (lease {path})")
            time.sleep(min(2.0, max(0.2, ttl / 8)))
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**me, "token": token, "what": what, "ttl_s": ttl,
                       "acquired": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return Lease(path, token, ttl, what).start()


@contextlib.contextmanager
def held(folder: Path, what: str, ttl: float = DEFAULT_TTL_S) -> Iterator[Lease]:
    """Hold the lease of ``folder`` for the duration of the block."""
    lease = acquire(folder, what, ttl)
    try:
        yield lease
    finally:
        lease.release()


def holder_of(folder: Path) -> dict[str, Any] | None:
    """The current lease record of ``folder`` (for status displays), or None."""
    got = _read(folder / LEASE_NAME)
    return None if got is None else got[0]


__all__ = ["LEASE_NAME", "DEFAULT_TTL_S", "LeaseBusy", "LeaseLost", "Lease", "identity", "acquire", "held",
           "holder_of"]
