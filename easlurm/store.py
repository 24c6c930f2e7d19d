"""Atomic, checksummed files and the run-directory layout (DESIGN.md §4).

Every job writes its outputs through these helpers: a temp file in the destination folder, fsync, then
``os.replace`` — so a reader (or a restarted job) sees either the old file or the complete new one, never half of
one, even on a shared filesystem. This module imports no torch (the launcher, ``status`` and ``prune`` run
without it); the multi-file checkpoint journal is :mod:`easlurm.checkpoints`, tensor files are written and read by
:mod:`easlurm.tensor_files`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
#: Mode of every folder made in a group-shared run (set by :func:`apply_group_umask`): group-writable, new entries
#: keep the group (setgid), and only an entry's owner may rename or delete it (sticky) — so a group member can add
#: files but never replace the owner's records, staging folders or temp files.
SHARED_DIR_MODE = 0o3770
_SHARED = False


def umask_mode(mode: int) -> int:
    """``mode`` as an ordinary ``open()``/``mkdir()`` would get it under the process's umask (mkstemp and mkdtemp
    make 0600/0700 paths; files on a shared filesystem are read by other users' tools)."""
    return mode & ~_UMASK


def make_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and its missing parents; in a group-shared run each new one gets :data:`SHARED_DIR_MODE`."""
    folder = Path(folder)
    missing = []
    here = folder
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, umask_mode(0o777))
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        if _SHARED:
            os.chmod(path, SHARED_DIR_MODE)
    return folder


def fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a crash can lose it on some filesystems.
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same(path: str | os.PathLike[str], ours: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)


def _require_same(tmp: str, ours: os.stat_result, dest: Path) -> None:
    if not _same(tmp, ours):
        raise CheckpointError(f"{dest}: its temp file {tmp} was replaced while it was written (by another process "
                              f"with write access to {dest.parent}); not renamed into place")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a fresh temp file next to it (``mkstemp``, so ``O_EXCL``), written,
    ``fchmod``-ed and fsynced through that one descriptor, then renamed onto ``path`` if the name still holds that
    file. The temp file is never reopened by name, so a link swapped in for it cannot redirect the write, and what
    was swapped in is never left in place (:class:`CheckpointError`). On an error ``path`` is left as it was (bar
    that last case, where it is removed rather than left a link) and the temp file is removed."""
    dest = Path(path)
    make_dirs(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        try:
            # mkstemp makes 0600 files; run files are read by the group's tools (status, TensorBoard).
            os.fchmod(fd, umask_mode(0o666))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            ours = os.fstat(fd)
        finally:
            os.close(fd)
        _require_same(tmp, ours, dest)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            _require_same(tmp, ours, dest)
            raise
        if not _same(dest, ours):  # swapped in the instant between the check and the rename: never leave it there
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            raise CheckpointError(f"{dest}: its temp file {tmp} was replaced while it was renamed (by another "
                                  f"process with write access to {dest.parent}); removed")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON atomically (byte-stable for equal inputs)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


#: Largest JSON record easlurm reads (run records are kilobytes; a bigger one is not ours).
MAX_JSON_BYTES = 64 << 20


def open_regular(path: Path, *, follow: bool = True, what: str = "file") -> int:
    """A read descriptor on ``path`` if it is a regular file, opened non-blocking (a FIFO cannot stall the reader)
    and, unless ``follow``, without following a final link (run files are never links); :class:`CheckpointError`
    naming it (``what`` not found, cannot open, not a regular file) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {what} not found") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise CheckpointError(f"{path}: is a symbolic link; refusing to follow it (run files are never links)") \
                from exc
        raise CheckpointError(f"{path}: cannot open {what} ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file")
    return fd


def read_checked(path: Path, *, sha256: str | None = None, size: int | None = None, limit: int | None = None,
                 follow: bool = True, keep: bool = True, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), checked on the way: its ``fstat`` size against
    the recorded ``size`` and the ``limit`` *before* a byte is read, its sha256 while it is read (``keep=False``:
    verify only, return nothing). :class:`CheckpointError` names the file on any mismatch."""
    fd = open_regular(path, follow=follow, what=what)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        expected = os.fstat(fd).st_size
        if size is not None and expected != size:
            raise CheckpointError(f"{path}: {expected} bytes, but {size} were recorded (file is corrupt or was "
                                  f"replaced)")
        if limit is not None and expected > limit:
            raise CheckpointError(f"{path}: {expected} bytes, more than the {limit}-byte limit for a {what}")
        digest, chunks, total = hashlib.sha256(), [], 0
        while total <= expected:
            block = fh.read(min(1 << 20, expected + 1 - total))
            if not block:
                break
            digest.update(block)
            total += len(block)
            if keep:
                chunks.append(block)
    if total != expected:
        raise CheckpointError(f"{path}: changed while it was read ({expected} bytes, then {total})")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise CheckpointError(f"{path}: sha256 mismatch (expected {sha256[:12]}…, file is corrupt or was replaced)")
    return b"".join(chunks)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing, oversized, non-regular or corrupt file (including one nested too deep to
    parse) raises :class:`CheckpointError` naming it."""
    p = Path(path)
    with os.fdopen(open_regular(p), "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{p}: {st.st_size} bytes, more than any easlurm record ({MAX_JSON_BYTES})")
        raw = fh.read(MAX_JSON_BYTES + 1)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{p}: not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (opened non-blocking: a FIFO is refused, not waited on).
    Raises :class:`CheckpointError` naming a path that is missing or not a regular file."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(Path(path)), "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def make_run_dir(path: str | os.PathLike[str], group_shared: bool = False) -> Path:
    """Create a run directory readable by its owner's group only (0750), or shared with the group
    (:data:`SHARED_DIR_MODE`, 3770). A run directory is a trust anchor — jobs unpickle nothing from it, but they do
    read configs and checkpoints from it — so it is never world-accessible."""
    root = Path(path)
    make_dirs(root)
    os.chmod(root, SHARED_DIR_MODE if group_shared else 0o750)
    return root


def apply_group_umask(group_shared: bool) -> None:
    """With a group-shared run, files are written group-writable (umask 007) and folders made sticky (see
    :data:`SHARED_DIR_MODE`); otherwise the umask is left alone."""
    global _UMASK, _SHARED
    if group_shared:
        os.umask(0o007)
        _UMASK = 0o007
    _SHARED = bool(group_shared)


# ----------------------------------------------------------------------------------------------------------------
# Run-directory layout (DESIGN.md §4). Cycle and member folders are zero-padded so sorted() listings are in order.


class RunDir:
    """Paths inside one run directory; creates nothing by itself.

    Every stage writes its outputs once, into folders it owns (DESIGN.md §3-4):

    ========================  ==========================================================================
    ``pretrain/``             the L1 pretraining stage (when ``model.pretrained`` is null)
    ``cycles/C/start/I/``     cycle C's start population: written by the init stage (C = 0) or by the EA
                              phase of cycle C-1; never modified afterwards
    ``cycles/C/members/I/``   cycle C's trained population: written (and checkpointed) by member I's Adam
                              phase of cycle C; final once its meta.json says ``done``
    ``cycles/C/ea/``          the EA phase of cycle C (its records, lineage, generation checkpoints)
    ``fusion/``, ``eval/``    the fusion and evaluation stages
    ========================  ==========================================================================
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def record(self) -> Path:
        """``run.json``: how the run was launched (executor kind, command, easlurm version)."""
        return self.root / "run.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    def cycle(self, c: int) -> Path:
        return self.root / "cycles" / f"{c:03d}"

    def start(self, c: int, i: int) -> Path:
        """Slot ``i`` of cycle ``c``'s start population."""
        return self.cycle(c) / "start" / f"{i:02d}"

    def member(self, c: int, i: int) -> Path:
        """Slot ``i`` of cycle ``c``'s trained population."""
        return self.cycle(c) / "members" / f"{i:02d}"

    def ea(self, c: int) -> Path:
        return self.cycle(c) / "ea"

    @property
    def fusion(self) -> Path:
        return self.root / "fusion"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the run root, POSIX style (how run files name each other)."""
        return Path(os.path.normpath(Path(path).absolute())).relative_to(self.root).as_posix()
