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
