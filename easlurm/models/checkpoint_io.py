"""Load BasicSR-style generator checkpoints into easlurm backbones.

Accepted file layouts (all read with ``torch.load(weights_only=True)``, never arbitrary pickles):

* a dict holding ``params_ema`` (preferred — BasicSR's EMA weights) and/or ``params``;
* a bare state dict ``{name: tensor}``.

Keys written by ``nn.DataParallel`` (``module.`` prefix) are unwrapped. Keys of other code bases are renamed as the
backbone's spec says (:attr:`easlurm.models.specs.GeneratorSpec.renames`: the original ESRGAN repository's
``RRDB_trunk.N.RDBk``, ``trunk_conv``, ``upconv1/2``, ``HRconv`` for RRDBNet).
Loading is strict: any missing, unexpected or mis-shaped key raises :class:`~easlurm.errors.CheckpointError`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..tensor_files import load_checkpoint

__all__ = ["extract_state_dict", "load_generator_weights"]

_PREFERRED_KEYS = ("params_ema", "params")
_SHOW = 5

def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)}: {', '.join(keys[:_SHOW])}{more}"


def extract_state_dict(obj: Any, source: str = "<checkpoint>", key: str | None = None,
                       renames: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the generator state dict out of a loaded checkpoint object.

    ``key``: the entry to use (``"params"`` — what the reference EA-Adam code loads — or ``"params_ema"``); a
    checkpoint without it is an error, except a bare state dict (no such entries at all), which is used as is.
    ``None``: ``params_ema`` when present, else ``params``, else bare. Returns ``(state_dict, where)`` with ``where``
    one of ``"params_ema"``, ``"params"``, ``"bare"``. Unwraps DataParallel keys and applies ``renames`` ((regex,
    replacement) pairs, in order). Raises :class:`CheckpointError` naming ``source``.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    present = [k for k in _PREFERRED_KEYS if k in obj]
    if key is not None and present and key not in obj:
        raise CheckpointError(f"{source}: has no {key!r} entry (it has {', '.join(present)}; set "
                              f"model.pretrained_key accordingly)")
    where = key if key is not None and key in obj else next(iter(present), "bare")
    state = obj[where] if where != "bare" else obj
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: {where!r} is not a non-empty state dict")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        hint = " (keys: " + ", ".join(sorted(map(str, obj))[:_SHOW]) + ")" if where == "bare" else ""
        raise CheckpointError(f"{source}: entries that are not tensors in {where!r}: {_listing(bad)}{hint}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if renames:
        renamed = {}
        for k, v in state.items():
            for pattern, repl in renames:
                k = re.sub(pattern, repl, k)
            renamed[k] = v
        state = renamed
    return state, where


def load_generator_weights(model: nn.Module, path: str | os.PathLike[str], key: str | None = None,
                           sha256: str | None = None) -> str:
    """Load a BasicSR checkpoint at ``path`` into ``model`` strictly; return which entry was used (``key`` as in
    :func:`extract_state_dict`). ``sha256``: the file's pinned full digest (``model.pretrained_sha256``).

    Raises :class:`CheckpointError` naming the file when it is missing/unreadable or not the pinned file, when keys
    are missing or unexpected (first few of each plus counts), or when a tensor's shape differs (naming the key).
    """
    p = Path(path)
    from ..assets import verify_hash_in_name
    from .specs import spec_of

    if p.is_file() and sha256 is None:
        verify_hash_in_name(p)  # BasicSR's released files carry their sha256 prefix in the name (…-150ff491.pth)

    spec = spec_of(model)
    state, where = extract_state_dict(load_checkpoint(p, sha256=sha256), str(p), key,
                                      spec.renames if spec is not None else ())
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        raise CheckpointError(f"{p} ({where}) does not match {type(model).__name__}: " + "; ".join(parts))
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{p} ({where}): key {k!r} has shape {tuple(state[k].shape)}, "
                                  f"{type(model).__name__} needs {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return where
