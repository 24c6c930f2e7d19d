"""The torch side of the store: tensor dicts as bytes, and loading them back with ``weights_only=True``.

Checkpoints are plain tensor dicts. A shared filesystem is writable by many, so arbitrary objects are never
unpickled: every load goes through ``torch.load(weights_only=True)``, and a file listed in a checkpoint's
``meta.json`` is verified against its sha256 first (:func:`load_verified`). Everything that needs no torch (atomic
writes, the commit journal, the run layout) is in :mod:`easlurm.store`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError
from .store import atomic_write_bytes, file_ref, read_checkpoint_meta, sha256_bytes, was_pruned


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


def load_verified(folder: str | os.PathLike[str], name: str, meta: Mapping[str, Any] | None = None,
                  map_location: str | torch.device = "cpu") -> Any:
    """Load ``folder/name`` (or the file it references) after checking it against the sha256 in meta.json."""
    folder = Path(folder)
    meta = meta if meta is not None else read_checkpoint_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder}: no meta.json (not a checkpoint folder, or never written)")
    ref = file_ref(folder, name, meta)
    if not ref.path.is_file() and was_pruned(ref):
        raise CheckpointError(f"{ref.path}: deleted by `python -m easlurm.prune` (only the last cycles keep their "
                              f"discriminator and optimizer states); this cycle cannot be redone")
    return load_checkpoint(ref.path, sha256=ref.sha256, map_location=map_location)


__all__ = ["torch_bytes", "atomic_torch_save", "load_checkpoint", "load_verified"]
