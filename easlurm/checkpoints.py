"""Multi-file checkpoints: a small journal so a set of files and the ``meta.json`` listing their checksums change
together (DESIGN.md §3-4). No torch here: the launcher, ``status`` and ``prune`` read these records without it.

A commit stages its files in ``DIR/.staging/`` and writes ``meta.json`` there last; once the staged meta exists the
checkpoint is committed and is rolled forward into ``DIR`` (by this call, or by the folder's owner after a crash).
A staging folder without ``meta.json`` is an interrupted write and is discarded.

A checkpoint may also *reference* a file committed by another (finished, never again modified) checkpoint of the
same run instead of copying it: ``meta.json`` lists the name under ``refs`` with a path relative to ``DIR``.

Trust (README "Who may write a run directory"): a run folder may be group-writable, so nothing here follows a link
it did not make. The staging folder is opened once with ``O_DIRECTORY|O_NOFOLLOW`` and every staged file is created
``O_EXCL|O_NOFOLLOW`` relative to that descriptor; roll-forward moves only the names the staged meta lists; a
reference must stay inside the run and name a regular file; a caller holding a lease passes its ``fence`` so a
process that lost the folder renames nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import CheckpointError
from .store import make_dirs, read_checked, read_json, sha256_bytes, umask_mode

STAGING = ".staging"
META = "meta.json"
#: A folder's list of files deleted on purpose by ``easlurm prune`` (name → sha256, size).
PRUNED = ".pruned"
#: What marks a run's root: references may not leave the folder holding it.
RUN_MARKERS = ("config.yaml", "run.json")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


@dataclass(frozen=True)
class FileRef:
    """A committed file: where it really is, its sha256 and its size in bytes (None: not recorded)."""
    path: Path
    sha256: str
    size: int | None


def check_name(name: object, where: Path) -> str:
    """``name`` if it is a plain file name (no separator, not ``.``/``..``, no NUL), else :class:`CheckpointError`."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise CheckpointError(f"{where}: {name!r} is not a plain file name")
    return name


def _open_dir(path: Path, dir_fd: int | None = None) -> int:
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open as a folder without following links ({exc.strerror})") \
            from exc


@contextlib.contextmanager
def _staging(folder: Path, *, create: bool) -> Iterator[tuple[int, int]]:
    """Descriptors of ``folder`` and of its staging folder (made first when ``create``; ``mkdir`` fails if one is
    there), neither reached through a link."""
    folder_fd = _open_dir(folder)
    try:
        if create:
            os.mkdir(STAGING, umask_mode(0o777), dir_fd=folder_fd)
        sfd = _open_dir(Path(STAGING), dir_fd=folder_fd)
        try:
            yield folder_fd, sfd
        finally:
            os.close(sfd)
    finally:
        os.close(folder_fd)


def _staged_meta(sfd: int, where: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(META, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=sfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{where / META}: cannot open ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{where / META}: not a regular file")
    with os.fdopen(fd, "rb") as fh:
        try:
            meta = json.loads(fh.read())
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"{where / META}: not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where / META}: expected a JSON object")
    return meta


def _clear_staging(folder_fd: int, sfd: int, staging: Path) -> None:
    """Remove what is in the staging folder ``sfd`` names, then the folder itself if it is still that one."""
    for name in sorted(os.listdir(sfd)):
        try:
            os.unlink(name, dir_fd=sfd)
        except IsADirectoryError as exc:
            raise CheckpointError(f"{staging / name}: a folder inside the staging folder; remove it by hand") \
                from exc
        except FileNotFoundError:
            pass
    try:
        same = os.stat(STAGING, dir_fd=folder_fd, follow_symlinks=False).st_ino == os.fstat(sfd).st_ino
    except FileNotFoundError:
        return
    if same:
        os.rmdir(STAGING, dir_fd=folder_fd)


def _roll_forward(folder_fd: int, sfd: int, folder: Path, meta: Mapping[str, Any]) -> None:
    listed = meta.get("sha256", {})
    if not isinstance(listed, dict):
        raise CheckpointError(f"{folder / STAGING / META}: 'sha256' is not an object")
    staged = set(os.listdir(sfd))
    for name in sorted(listed):
        if check_name(name, folder / STAGING) in staged:
            os.replace(name, name, src_dir_fd=sfd, dst_dir_fd=folder_fd)
    os.replace(META, META, src_dir_fd=sfd, dst_dir_fd=folder_fd)
    os.fsync(folder_fd)


def recover_checkpoint_dir(folder: str | os.PathLike[str]) -> None:
    """Finish or discard an interrupted :func:`commit_checkpoint` in ``folder`` (idempotent; owner only).

    A ``.staging`` that is a link or not a folder is refused (:class:`CheckpointError`), never followed.
    """
    folder = Path(folder)
    try:
        st = os.stat(folder / STAGING, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{folder / STAGING}: not a folder (a link or file put there by someone else?); "
                              f"refusing to recover through it — remove it by hand")
    with _staging(folder, create=False) as (folder_fd, sfd):
        meta = _staged_meta(sfd, folder / STAGING)
        if meta is not None:
            _roll_forward(folder_fd, sfd, folder, meta)
        _clear_staging(folder_fd, sfd, folder / STAGING)


def _write_new(sfd: int, name: str, data: bytes) -> None:
    fd = os.open(name, _NEW_FILE_FLAGS, umask_mode(0o666), dir_fd=sfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(folder: str | os.PathLike[str], files: Mapping[str, bytes], meta: Mapping[str, Any],
                      refs: Mapping[str, FileRef] | None = None,
                      fence: Callable[[], None] | None = None) -> dict[str, Any]:
    """Atomically replace ``files`` (and references ``refs``) and ``meta.json`` in ``folder``; return the meta.

    ``meta["sha256"]``/``meta["size"]`` are set for every file in ``files`` and ``refs``; ``meta["refs"]`` maps a
    referenced name to its path relative to ``folder``. Entries already listed keep theirs unless replaced, so a
    partial update (e.g. only G.pt) stays verifiable. A name given as a file replaces an earlier reference.
    ``fence``: called right before the commit point (a lease's ``check``); when it raises, the staged files are
    removed and nothing in ``folder`` changes.
    """
    folder = Path(folder)
    make_dirs(folder)
    recover_checkpoint_dir(folder)
    refs = dict(refs or {})
    for name in [*files, *refs]:
        check_name(name, folder)
    clash = sorted(set(files) & set(refs))
    if clash:
        raise ValueError(f"{folder}: {clash} given both as file and as reference")
    old = read_checkpoint_meta(folder) or {}
    out = dict(meta)
    out["sha256"] = {**_mapping(old, "sha256", folder), **{n: sha256_bytes(d) for n, d in files.items()},
                     **{n: r.sha256 for n, r in refs.items()}}
    out["size"] = {**_mapping(old, "size", folder), **{n: len(d) for n, d in files.items()},
                   **{n: r.size for n, r in refs.items() if r.size is not None}}
    old_refs = {n: p for n, p in _mapping(old, "refs", folder).items() if n not in files}
    new_refs = {n: Path(os.path.relpath(Path(r.path).absolute(), folder.absolute())).as_posix()
                for n, r in refs.items()}
    if old_refs or new_refs:
        out["refs"] = {**old_refs, **new_refs}
    else:
        out.pop("refs", None)
    payload = (json.dumps(out, indent=2, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
    with _staging(folder, create=True) as (folder_fd, sfd):
        try:
            for name, data in files.items():
                _write_new(sfd, name, data)
            _write_new(sfd, f"{META}.tmp", payload)
            os.fsync(sfd)
            if fence is not None:
                fence()
        except BaseException:
            _clear_staging(folder_fd, sfd, folder / STAGING)
            raise
        os.rename(f"{META}.tmp", META, src_dir_fd=sfd, dst_dir_fd=sfd)  # the commit point
        os.fsync(sfd)
        _roll_forward(folder_fd, sfd, folder, out)
        _clear_staging(folder_fd, sfd, folder / STAGING)
    return out


def _mapping(meta: Mapping[str, Any], key: str, folder: Path) -> dict[str, Any]:
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise CheckpointError(f"{folder / META}: {key!r} is not an object")
    return value


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The checkpoint keys of a meta.json typed: sha256 (name → hex), size (name → int ≥ 0), refs (name → str)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    for key, ok in (("sha256", lambda v: isinstance(v, str) and len(v) == 64),
                    ("size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                    ("refs", lambda v: isinstance(v, str) and v != "")):
        entries = meta.get(key, {})
        if not isinstance(entries, dict):
            raise CheckpointError(f"{path}: {key!r} must map file names to values, got {type(entries).__name__}")
        for name, value in entries.items():
            check_name(name, path)
            if not ok(value):
                raise CheckpointError(f"{path}: {key}[{name!r}] has an unusable value {str(value)[:40]!r}")
    return meta


def read_checkpoint_meta(folder: str | os.PathLike[str], recover: bool = False) -> dict[str, Any] | None:
    """The committed meta.json of a checkpoint folder, or None; a wrongly typed one is a :class:`CheckpointError`.

    Only the folder's owner (the job that writes it) may pass ``recover=True`` to roll an interrupted commit forward
    first; other readers (the launcher, status, the next stage) must not touch a staging folder another process
    may be filling right now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if recover:
        recover_checkpoint_dir(folder)
    try:
        st = os.stat(folder / META, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{folder / META}: not a regular file")
    return _check_meta(read_json(folder / META), folder / META)


def run_root_of(folder: Path) -> Path:
    """The run directory holding ``folder``: its nearest ancestor with a ``config.yaml`` or ``run.json``."""
    here = folder.resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).is_file() for marker in RUN_MARKERS):
            return candidate
    raise CheckpointError(f"{folder}: not inside a run directory (no {' or '.join(RUN_MARKERS)} above it), so a "
                          f"reference from it cannot be confined")


def confine(root: Path, path: Path, what: str) -> Path:
    """``path`` if it lies inside the run directory ``root`` (links resolved), else :class:`CheckpointError`
    naming ``what``."""
    real, top = path.resolve(), root.resolve()
    if real != top and top not in real.parents:
        raise CheckpointError(f"{what}: leads outside the run directory {top}; refused")
    return path


def ref_in_run(root: Path, rel: str, sha256: str) -> FileRef:
    """A reference to the run file ``rel`` (POSIX, relative to the run directory ``root``, as run records name
    files): confined to the run, a regular file, its size read without following a final link."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise CheckpointError(f"{root}: {rel!r} must be a path relative to the run directory")
    path = confine(root, Path(os.path.normpath(root / rel)), f"{root}: {rel!r}")
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise CheckpointError(f"{path}: checkpoint not found") from exc
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a regular file")
    return FileRef(path, sha256, st.st_size)


def file_ref(folder: str | os.PathLike[str], name: str, meta: Mapping[str, Any]) -> FileRef:
    """Where ``name`` of the checkpoint in ``folder`` really is (its own file or a referenced one), with its
    recorded sha256 and size. Raises :class:`CheckpointError` when meta.json does not list it, or when a reference
    is absolute or leads outside the run directory."""
    folder = Path(folder)
    check_name(name, folder)
    expected = _mapping(meta, "sha256", folder).get(name)
    if expected is None:
        raise CheckpointError(f"{folder / name}: not listed in {folder / META}")
    rel = _mapping(meta, "refs", folder).get(name)
    size = _mapping(meta, "size", folder).get(name)
    if not rel:
        return FileRef(folder / name, expected, size)
    if not isinstance(rel, str) or os.path.isabs(rel):
        raise CheckpointError(f"{folder / META}: reference {name!r} → {rel!r} must be a path relative to the folder")
    path = confine(run_root_of(folder), Path(os.path.normpath(folder / rel)),
                   f"{folder / META}: reference {name!r} → {rel!r}")
    return FileRef(path, expected, size)


def read_ref(ref: FileRef, *, limit: int | None = None) -> bytes:
    """The bytes of ``ref``, a run file: not followed if a link, its size (recorded, then ``limit``) checked with
    ``fstat`` before reading and its sha256 while reading (:func:`easlurm.store.read_checked`)."""
    return read_checked(ref.path, sha256=ref.sha256, size=ref.size, limit=limit, follow=False, what="checkpoint")


def verify_ref(ref: FileRef) -> None:
    """:func:`read_ref` without keeping the bytes: raises :class:`CheckpointError` unless ``ref`` is intact."""
    read_checked(ref.path, sha256=ref.sha256, size=ref.size, follow=False, keep=False, what="checkpoint")


def was_pruned(ref: FileRef) -> bool:
    """Whether the file ``ref`` names was deleted on purpose by the prune command (its folder's ``.pruned`` list
    holds it with the same sha256)."""
    listed = ref.path.parent / PRUNED
    try:
        entry = read_json(listed).get(ref.path.name)
    except (CheckpointError, AttributeError):
        return False
    return isinstance(entry, dict) and entry.get("sha256") == ref.sha256


def checkpoint_intact(folder: str | os.PathLike[str], meta: Mapping[str, Any], *, full: bool = False,
                      skip: Iterable[str] = ()) -> bool:
    """True when every file meta.json lists exists as a regular file with its recorded size (``full``: and its
    sha256).

    The size check is what launchers and done checks use (cheap on a shared filesystem); every reader verifies the
    sha256 anyway when it loads a file. Files the prune command deleted (see :func:`was_pruned`) count as
    present. ``skip``: names not to check.
    """
    skipped = set(skip)
    try:
        names = sorted(_mapping(meta, "sha256", Path(folder)))
    except CheckpointError:
        return False
    for name in names:
        if name in skipped:
            continue
        try:
            ref = file_ref(folder, name, meta)
        except CheckpointError:
            return False
        try:
            st = os.stat(ref.path, follow_symlinks=False)
        except OSError:
            if was_pruned(ref):
                continue  # deleted on purpose by the prune command: the stage that wrote it is still done
            return False
        if not stat.S_ISREG(st.st_mode) or (ref.size is not None and st.st_size != ref.size):
            return False
        if full:
            try:
                verify_ref(ref)
            except CheckpointError:
                return False
    return True


def verify_checkpoint_dir(folder: str | os.PathLike[str]) -> bool:
    """True when meta.json exists and every file it lists (or references) matches its sha256."""
    try:
        meta = read_checkpoint_meta(folder)
    except CheckpointError:
        return False
    return meta is not None and checkpoint_intact(folder, meta, full=True)


__all__ = ["STAGING", "META", "PRUNED", "FileRef", "check_name", "recover_checkpoint_dir", "commit_checkpoint",
           "read_checkpoint_meta", "run_root_of", "confine", "ref_in_run", "file_ref", "read_ref",
           "verify_ref", "was_pruned", "checkpoint_intact", "verify_checkpoint_dir"]
