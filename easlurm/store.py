"""Atomic, checksummed files and the run-directory layout (DESIGN.md §4).

Every job writes its outputs through these helpers: a temp file in the destination folder, fsync, then
``os.replace`` — so a reader (or a restarted job) sees either the old file or the complete new one, never half of
one, even on a shared filesystem. This module imports no torch (the launcher, ``status`` and ``prune`` run
without it); tensor files are written and read by :mod:`easlurm.tensor_files`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import CheckpointError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def umask_mode(mode: int) -> int:
    """``mode`` as an ordinary ``open()``/``mkdir()`` would get it under the process's umask (mkstemp and mkdtemp
    make 0600/0700 paths; files on a shared filesystem are read by other users' tools)."""
    return mode & ~_UMASK


def fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a crash can lose it on some filesystems.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on clean exit fsync it and rename it onto ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    # mkstemp makes 0600 files; a run directory on a shared filesystem is read by other users' tools (status,
    # TensorBoard), so give the file the permissions an ordinary open() would.
    os.chmod(tmp, umask_mode(0o666))
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON atomically (byte-stable for equal inputs)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing or corrupt file raises :class:`CheckpointError` naming it."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{p}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc})") from exc


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Multi-file checkpoints: a small journal so a set of files (G.pt, D.pt, optim.pt, …) and the meta.json that lists
# their checksums change together. New files are staged in DIR/.staging/ with meta.json written there last; once the
# staged meta exists the checkpoint is committed and is rolled forward into DIR (by this call, or by the next reader
# after a crash). A staging folder without meta.json is an interrupted write and is discarded.
#
# A checkpoint may also *reference* a file committed by another (finished, never again modified) checkpoint instead
# of copying it: meta.json then lists the file under ``refs`` as a path relative to DIR, with the target's sha256
# and size. Stage outputs are write-once, so a reference stays valid for the life of the run (DESIGN.md §3).

STAGING = ".staging"
META = "meta.json"
#: A folder's list of files deleted on purpose by ``python -m easlurm.prune`` (name → sha256, size).
PRUNED = ".pruned"


@dataclass(frozen=True)
class FileRef:
    """A committed file: where it really is, its sha256 and its size in bytes."""
    path: Path
    sha256: str
    size: int | None


def recover_checkpoint_dir(folder: str | os.PathLike[str]) -> None:
    """Finish or discard an interrupted :func:`commit_checkpoint` in ``folder`` (idempotent)."""
    folder = Path(folder)
    staging = folder / STAGING
    if not staging.is_dir():
        return
    if (staging / META).is_file():
        for src in sorted(staging.iterdir()):
            if src.name != META:
                os.replace(src, folder / src.name)
        os.replace(staging / META, folder / META)
        fsync_dir(folder)
    for leftover in sorted(staging.iterdir()):
        leftover.unlink()
    staging.rmdir()


def commit_checkpoint(folder: str | os.PathLike[str], files: Mapping[str, bytes], meta: Mapping[str, Any],
                      refs: Mapping[str, FileRef] | None = None) -> dict[str, Any]:
    """Atomically replace ``files`` (and references ``refs``) and ``meta.json`` in ``folder``; return the meta.

    ``meta["sha256"]``/``meta["size"]`` are set for every file in ``files`` and ``refs``; ``meta["refs"]`` maps a
    referenced name to its path relative to ``folder``. Entries already listed keep theirs unless replaced, so a
    partial update (e.g. only G.pt) stays verifiable. A name given as a file replaces an earlier reference.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_checkpoint_dir(folder)
    refs = dict(refs or {})
    clash = sorted(set(files) & set(refs))
    if clash:
        raise ValueError(f"{folder}: {clash} given both as file and as reference")
    old = read_json(folder / META) if (folder / META).is_file() else {}
    staging = folder / STAGING
    staging.mkdir()
    out = dict(meta)
    out["sha256"] = {**old.get("sha256", {}), **{n: sha256_bytes(d) for n, d in files.items()},
                     **{n: r.sha256 for n, r in refs.items()}}
    out["size"] = {**old.get("size", {}), **{n: len(d) for n, d in files.items()},
                   **{n: r.size for n, r in refs.items() if r.size is not None}}
    old_refs = {n: p for n, p in old.get("refs", {}).items() if n not in files}
    new_refs = {n: Path(os.path.relpath(Path(r.path).absolute(), folder.absolute())).as_posix()
                for n, r in refs.items()}
    if old_refs or new_refs:
        out["refs"] = {**old_refs, **new_refs}
    else:
        out.pop("refs", None)
    for name, data in files.items():
        with open(staging / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    atomic_write_json(staging / META, out)  # the commit point
    recover_checkpoint_dir(folder)
    return out


def read_checkpoint_meta(folder: str | os.PathLike[str], recover: bool = False) -> dict[str, Any] | None:
    """The committed meta.json of a checkpoint folder, or None.

    Only the folder's owner (the job that writes it) may pass ``recover=True`` to roll an interrupted commit forward
    first; other readers (the launcher, status, the next stage) must not touch a staging folder another process
    may be filling right now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if recover:
        recover_checkpoint_dir(folder)
    if not (folder / META).is_file():
        return None
    meta = read_json(folder / META)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / META}: expected a JSON object")
    return meta


def file_ref(folder: str | os.PathLike[str], name: str, meta: Mapping[str, Any]) -> FileRef:
    """Where ``name`` of the checkpoint in ``folder`` really is (its own file or a referenced one), with its
    recorded sha256 and size. Raises :class:`CheckpointError` when meta.json does not list it."""
    folder = Path(folder)
    expected = meta.get("sha256", {}).get(name)
    if expected is None:
        raise CheckpointError(f"{folder / name}: not listed in {folder / META}")
    rel = meta.get("refs", {}).get(name)
    path = Path(os.path.normpath(folder / rel)) if rel else folder / name
    return FileRef(path, expected, meta.get("size", {}).get(name))


def was_pruned(ref: FileRef) -> bool:
    """Whether the file ``ref`` names was deleted on purpose by the prune command (its folder's ``.pruned`` list
    holds it with the same sha256)."""
    listed = ref.path.parent / PRUNED
    if not listed.is_file():
        return False
    try:
        entry = json.loads(listed.read_text(encoding="utf-8")).get(ref.path.name)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(entry, dict) and entry.get("sha256") == ref.sha256


def checkpoint_intact(folder: str | os.PathLike[str], meta: Mapping[str, Any], *, full: bool = False,
                      skip: Iterable[str] = ()) -> bool:
    """True when every file meta.json lists exists with its recorded size (``full``: and its sha256).

    The size check is what launchers and done checks use (cheap on a shared filesystem); every reader verifies the
    sha256 anyway when it loads a file. Files the prune command deleted (see :func:`was_pruned`) count as
    present. ``skip``: names not to check.
    """
    skipped = set(skip)
    for name in sorted(meta.get("sha256", {})):
        if name in skipped:
            continue
        try:
            ref = file_ref(folder, name, meta)
        except CheckpointError:
            return False
        try:
            size = ref.path.stat().st_size
        except OSError:
            if was_pruned(ref):
                continue  # deleted on purpose by the prune command: the stage that wrote it is still done
            return False
        if ref.size is not None and size != ref.size:
            return False
        if full and sha256_file(ref.path) != ref.sha256:
            return False
    return True


def verify_checkpoint_dir(folder: str | os.PathLike[str]) -> bool:
    """True when meta.json exists and every file it lists (or references) matches its sha256."""
    try:
        meta = read_checkpoint_meta(folder)
    except CheckpointError:
        return False
    return meta is not None and checkpoint_intact(folder, meta, full=True)


def make_run_dir(path: str | os.PathLike[str], group_shared: bool = False) -> Path:
    """Create a run directory readable by its owner's group only (0750), or shared with the group (2770: group
    members may write; new files keep the group). A run directory is a trust anchor — jobs unpickle nothing from
    it, but they do read configs and checkpoints from it — so it is never world-accessible."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o2770 if group_shared else 0o750)
    return root


def apply_group_umask(group_shared: bool) -> None:
    """With a group-shared run, files are written group-writable (umask 007); otherwise the umask is left alone."""
    if group_shared:
        global _UMASK
        os.umask(0o007)
        _UMASK = 0o007


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
