"""The torch side of the store: tensor dicts as bytes, and loading them back with ``weights_only=True``.

Checkpoints are plain tensor dicts. A shared filesystem is writable by many, so arbitrary objects are never
unpickled: every load goes through ``torch.load(weights_only=True)``, and a file listed in a checkpoint's
``meta.json`` is verified against its sha256 first (:func:`load_verified`). Everything that needs no torch (atomic
writes, the commit journal, the run layout) is in :mod:`easlurm.store`.

What reaches ``torch.load`` is bounded (security audit N9, N2): the file is opened non-blocking (a FIFO cannot stall
the reader), must be a regular file of at most :data:`MAX_CHECKPOINT_BYTES` (and of its recorded size, checked with
``fstat`` before anything is read), is hashed while it is read, and, in torch's zip format, may hold only stored
records (``torch.save`` never compresses; a 64 KiB deflated file inflated to a 64 MiB tensor) that do not overlap.
Files of a run are opened without following a final symbolic link (:func:`load_verified`).
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoints import file_ref, read_checkpoint_meta, was_pruned
from .errors import CheckpointError
from .store import atomic_write_bytes, read_checked, sha256_bytes


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


#: The largest file (and the most bytes its zip records may hold in all) :func:`load_checkpoint` reads by default.
MAX_CHECKPOINT_BYTES = 16 << 30
_ZIP_LOCAL = b"PK\x03\x04"  # torch tells its zip format from the legacy pickle format by these first bytes


def _read(p: Path, sha256: str | None, size: int | None, max_bytes: int, follow_symlinks: bool) -> io.BytesIO:
    """The bytes of ``p``, opened as described in the module docstring, sized and hashed while read."""
    return io.BytesIO(read_checked(p, sha256=sha256, size=size, limit=max_bytes, follow=follow_symlinks,
                                   what="checkpoint"))


def _check_records(p: Path, data: io.BytesIO, max_bytes: int) -> None:
    """Refuse a torch zip file whose records are compressed, overlap, or hold more than the file or ``max_bytes``."""
    raw = data.getbuffer()
    try:
        if bytes(raw[:4]) != _ZIP_LOCAL:
            return  # torch's legacy format: a pickle followed by raw storages, nothing to inflate
        try:
            infos = zipfile.ZipFile(data).infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise CheckpointError(f"{p}: cannot load checkpoint (corrupt zip: {exc})") from exc
        total = 0
        for info in infos:
            head = bytes(raw[info.header_offset:info.header_offset + 30])
            method = struct.unpack_from("<H", head, 8)[0] if len(head) == 30 and head[:4] == _ZIP_LOCAL else None
            if info.compress_type != zipfile.ZIP_STORED or method != zipfile.ZIP_STORED:
                raise CheckpointError(f"{p}: record {info.filename!r} is compressed (zip method "
                                      f"{info.compress_type}/{method}); torch.save never compresses, so it is not "
                                      "inflated")
            if info.file_size != info.compress_size:
                raise CheckpointError(f"{p}: record {info.filename!r} claims {info.file_size} bytes stored in "
                                      f"{info.compress_size}")
            total += info.file_size
        if total > min(len(raw), max_bytes):
            raise CheckpointError(f"{p}: its zip records hold {total} bytes, more than the file's {len(raw)} "
                                  f"(overlapping records) or the {max_bytes}-byte limit")
    finally:
        raw.release()
        data.seek(0)


def load_checkpoint(path: str | os.PathLike[str], sha256: str | None = None,
                    map_location: str | torch.device = "cpu", *, size: int | None = None,
                    max_bytes: int = MAX_CHECKPOINT_BYTES, follow_symlinks: bool = True) -> Any:
    """Load a tensor dict with ``weights_only=True``; verify its sha256 (while reading) and its size when given.

    ``size``: the byte count recorded for the file, compared with ``fstat`` before anything is read. ``max_bytes``:
    the largest file, and the most bytes its zip records may hold. ``follow_symlinks=False`` refuses a final
    symbolic link (run files; user-supplied weight files may be links and are followed by default).

    Raises :class:`CheckpointError` naming the file when it is missing, not a regular file (a FIFO is refused, never
    waited on), of another size, too large, fails the checksum, holds compressed or overlapping zip records, or
    does not unpickle as plain tensors (a shared filesystem is writable by many: arbitrary objects are never
    unpickled).
    """
    p = Path(path)
    data = _read(p, sha256, size, max_bytes, follow_symlinks)
    _check_records(p, data, max_bytes)
    try:
        return torch.load(data, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{p}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc


def load_verified(folder: str | os.PathLike[str], name: str, meta: Mapping[str, Any] | None = None,
                  map_location: str | torch.device = "cpu") -> Any:
    """Load ``folder/name`` (or the file it references) after checking it against the sha256 and size in meta.json
    (:func:`load_checkpoint` without following a final link)."""
    folder = Path(folder)
    meta = meta if meta is not None else read_checkpoint_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder}: no meta.json (not a checkpoint folder, or never written)")
    ref = file_ref(folder, name, meta)
    if not ref.path.is_file() and was_pruned(ref):
        raise CheckpointError(f"{ref.path}: deleted by `python -m easlurm.prune` (only the last cycles keep their "
                              f"discriminator and optimizer states); this cycle cannot be redone")
    return load_checkpoint(ref.path, sha256=ref.sha256, map_location=map_location, size=ref.size,
                           follow_symlinks=False)


__all__ = ["MAX_CHECKPOINT_BYTES", "torch_bytes", "atomic_torch_save", "load_checkpoint", "load_verified"]
