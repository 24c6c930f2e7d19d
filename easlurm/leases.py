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
away before creating a new one and puts it back unless the file moved aside is the very one judged stale (same
inode and modification time), so of two contenders only one can win, even over an empty or unreadable record.
Works inside containers without Slurm commands, on NFS/Lustre, and after Slurm has forgotten the holder's job.

Fencing: each lease carries a ``fence`` number, one more than the record it replaced. :meth:`Lease.check` re-reads
the file (not a cached flag), so a holder that was paused (Slurm suspend, gang scheduling) and taken over learns it
at its next check; writers pass ``lease.check`` as the ``fence`` of
:func:`~easlurm.checkpoints.commit_checkpoint`, which calls it right before its commit point.
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
from .store import make_dirs, umask_mode

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


@dataclass(frozen=True)
class _Seen:
    """One observation of a lease file: its record ({} when empty or unreadable) and which file it was."""
    holder: dict[str, Any]
    mtime: float
    ino: int
    mtime_ns: int


def _read(path: Path) -> _Seen | None:
    """The lease file at ``path`` as it is now, or None when there is none. An unreadable record counts as {}."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return _Seen({}, 0.0, -1, -1)  # a link or worse where a lease should be: stale, and never followed
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        text = fh.read(1 << 16)
    try:
        holder = json.loads(text)
    except (ValueError, RecursionError):
        holder = {}  # a half-written record: its creator died between create and write, or is writing now
    return _Seen(holder if isinstance(holder, dict) else {}, st.st_mtime, st.st_ino, st.st_mtime_ns)


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
    fence: int = 1
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease file still holds this lease (re-read now, not cached)."""
        if self.lost or not self._still_ours():
            self.lost = True
            raise LeaseLost(f"{self.what}: lease {self.path} (fence {self.fence}) was taken over by another "
                            f"process; stopping without writing")

    def _still_ours(self) -> bool:
        for attempt in range(3):
            got = _read(self.path)
            if got is not None:
                return got.holder.get("token") == self.token
            # Missing: a contender may have moved it aside for a moment and be putting it back (see _take_over).
            time.sleep(0.05 * (attempt + 1))
        return False

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
        if not self.lost and self._still_ours():
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


def _take_over(path: Path, seen: _Seen) -> None:
    """Move a stale lease away — unless the file moved is not the one judged stale (then put it back)."""
    aside = path.with_name(f"{LEASE_NAME}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else moved it first
    try:
        st = os.stat(aside, follow_symlinks=False)
        same = (st.st_ino, st.st_mtime_ns) == (seen.ino, seen.mtime_ns) or seen.ino < 0
    except FileNotFoundError:
        return
    if not same:
        try:
            os.link(aside, path, follow_symlinks=False)  # a fresh lease we must not steal: restore it
        except FileExistsError:
            pass  # yet another contender created one meanwhile; the one we moved has lost either way
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()


def acquire(folder: Path, what: str, ttl: float = DEFAULT_TTL_S) -> Lease:
    """Take the lease of ``folder`` (created if needed) or raise :class:`LeaseBusy` naming the live holder."""
    make_dirs(folder)
    path = folder / LEASE_NAME
    me = identity()
    token = secrets.token_hex(16)
    deadline = time.monotonic() + ttl + 5
    watched: _Seen | None = None
    fence = 1
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, umask_mode(0o666))
        except FileExistsError:
            fd = -1
        if fd < 0:
            seen = _read(path)
            if seen is None:
                continue  # released between our create and read
            holder = seen.holder
            if _stale(holder, seen.mtime, me, folder, ttl):
                if isinstance(holder.get("fence"), int):
                    fence = max(fence, holder["fence"] + 1)
                _take_over(path, seen)
                continue
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and \
                    holder["pid"] != me["pid"] and _pid_alive(holder["pid"]):
                raise LeaseBusy(f"{what}: {folder} is being worked on by {_describe(holder)} (lease {path})")
            if watched is not None and watched.ino == seen.ino and seen.mtime_ns > watched.mtime_ns:
                raise LeaseBusy(f"{what}: {folder} is being worked on by {_describe(holder)} (lease {path}, "
                                f"renewed {_now(folder) - seen.mtime:.0f} s ago); a second task must not write it")
            if watched is None or watched.ino != seen.ino:
                watched = seen
            if time.monotonic() > deadline:
                raise LeaseBusy(f"{what}: {folder} is held by {_describe(holder)} (lease {path})")
            time.sleep(min(2.0, max(0.2, ttl / 8)))
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**me, "token": token, "fence": fence, "what": what, "ttl_s": ttl,
                       "acquired": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return Lease(path, token, ttl, what, fence).start()


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
    return None if got is None else got.holder


__all__ = ["LEASE_NAME", "DEFAULT_TTL_S", "LeaseBusy", "LeaseLost", "Lease", "identity", "acquire", "held",
           "holder_of"]
