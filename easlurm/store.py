"""Atomic, checksummed files and the run-directory layout (DESIGN.md §4).

Every job writes its outputs through these helpers: a temp file in the destination folder, fsync, then
``os.replace`` — so a reader (or a restarted job) sees either the old file or the complete new one, never half of
one, even on a shared filesystem. Checkpoints are plain tensor dicts read back with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import CheckpointError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
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
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
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


def torch_bytes(obj: Any) -> bytes:
    """Serialise a tensor dict with ``torch.save`` into bytes (so it can be hashed and written atomically)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """Save a plain tensor dict atomically; return the sha256 of the written bytes."""
    data = torch_bytes(obj)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_checkpoint(path: str | os.PathLike[str], sha256: str | None = None,
                    map_location: str | torch.device = "cpu") -> Any:
    """Load a tensor dict with ``weights_only=True``; verify its sha256 when given.

    Raises :class:`CheckpointError` naming the file when it is missing, fails the checksum or does not unpickle as
    plain tensors (a shared filesystem is writable by many: arbitrary objects are never unpickled).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    data = p.read_bytes()
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CheckpointError(f"{p}: sha256 mismatch (expected {sha256[:12]}…, file is corrupt or was replaced)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{p}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------------------------------
# Multi-file checkpoints: a small journal so a set of files (G.pt, D.pt, optim.pt, …) and the meta.json that lists
# their checksums change together. New files are staged in DIR/.staging/ with meta.json written there last; once the
# staged meta exists the checkpoint is committed and is rolled forward into DIR (by this call, or by the next reader
# after a crash). A staging folder without meta.json is an interrupted write and is discarded.

STAGING = ".staging"
META = "meta.json"


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
        _fsync_dir(folder)
    for leftover in sorted(staging.iterdir()):
        leftover.unlink()
    staging.rmdir()


def commit_checkpoint(folder: str | os.PathLike[str], files: dict[str, bytes], meta: dict[str, Any]) -> dict[str, Any]:
    """Atomically replace ``files`` and ``meta.json`` in ``folder``; return the meta written.

    ``meta["sha256"]`` is set to the checksum of every file in ``files``; other files already listed there keep
    their entries, so a partial update (e.g. only G.pt) stays verifiable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_checkpoint_dir(folder)
    staging = folder / STAGING
    staging.mkdir()
    old = read_json(folder / META).get("sha256", {}) if (folder / META).is_file() else {}
    meta = dict(meta)
    meta["sha256"] = {**old, **{name: sha256_bytes(data) for name, data in files.items()}}
    for name, data in files.items():
        with open(staging / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    atomic_write_json(staging / META, meta)  # the commit point
    recover_checkpoint_dir(folder)
    return meta


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
    return read_json(folder / META)


def load_verified(folder: str | os.PathLike[str], name: str, meta: dict[str, Any] | None = None,
                  map_location: str | torch.device = "cpu") -> Any:
    """Load ``folder/name`` after checking it against the sha256 recorded in the folder's meta.json."""
    folder = Path(folder)
    meta = meta if meta is not None else read_checkpoint_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder}: no meta.json (not a checkpoint folder, or never written)")
    expected = meta.get("sha256", {}).get(name)
    if expected is None:
        raise CheckpointError(f"{folder / name}: not listed in {folder / META}")
    return load_checkpoint(folder / name, sha256=expected, map_location=map_location)


def verify_checkpoint_dir(folder: str | os.PathLike[str]) -> bool:
    """True when meta.json exists and every file it lists matches its sha256."""
    try:
        meta = read_checkpoint_meta(folder)
    except CheckpointError:
        return False
    if meta is None:
        return False
    for name, expected in sorted(meta.get("sha256", {}).items()):
        p = Path(folder) / name
        if not p.is_file() or sha256_file(p) != expected:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Run-directory layout (DESIGN.md §4). Cycle and member folders are zero-padded so sorted() listings are in order.


class RunDir:
    """Paths inside one run directory; creates nothing by itself."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    def cycle(self, c: int) -> Path:
        return self.root / "cycles" / f"{c:03d}"

    def member(self, c: int, i: int) -> Path:
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
