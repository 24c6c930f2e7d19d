"""The registry of stage kinds: what a run is made of, in plan order (torch-free).

Each kind is one module here holding one :class:`~easlurm.stages.kind.StageKind` — its tasks, its done check, its
record, its resources and what it costs — and one line in :data:`KINDS`. The plan
(:func:`easlurm.orchestrate.plan.build_plan`), config validation (``executor.slurm.<kind>``), the bill, the
warning leads, the timings, ``status`` and the preflight iterate this list; none of them names a kind. Kinds with
``cycles`` interleave cycle by cycle where the first of them stands (``adam/000, ea/000, adam/001, …``); the others
run once, in list order.

To add a kind: write its module (a :class:`StageKind` whose ``entry`` is the job's function) and put it in
:data:`KINDS` where it runs — or, from code that extends easlurm (and in the tests), :func:`register` it.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator

from ..errors import ConfigError
from . import adam, ea, evaluation, fuse, init, pretrain
from .kind import StageKind, StageResources, TaskSpec

#: The stage kinds, in the order their stages run.
KINDS: list[StageKind] = [pretrain.KIND, init.KIND, adam.KIND, ea.KIND, fuse.KIND, evaluation.KIND]


def names() -> list[str]:
    return [k.name for k in KINDS]


def get(name: str) -> StageKind:
    """The kind called ``name``; :class:`ConfigError` with the known ones (and a suggestion) otherwise."""
    for k in KINDS:
        if k.name == name:
            return k
    close = difflib.get_close_matches(name, names(), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"no stage kind {name!r}{hint}; the kinds are {', '.join(names())}")


def default_resources() -> dict[str, StageResources]:
    """``executor.slurm.<kind>`` defaults of every registered kind (fresh copies)."""
    import copy

    return {k.name: copy.deepcopy(k.resources) for k in KINDS}


def register(kind: StageKind, *, after: str | None = None) -> None:
    """Add ``kind`` to the registry, after the kind called ``after`` (default: last)."""
    if kind.name in names():
        raise ConfigError(f"stage kind {kind.name!r} is registered already")
    if "/" in kind.name or not kind.name.replace("_", "").isalnum():
        raise ConfigError(f"stage kind {kind.name!r}: letters, digits and '_' only (it names folders and jobs)")
    at = len(KINDS) if after is None else names().index(get(after).name) + 1
    KINDS.insert(at, kind)


def unregister(name: str) -> None:
    KINDS.remove(get(name))


@contextlib.contextmanager
def registered(kind: StageKind, *, after: str | None = None) -> Iterator[StageKind]:
    """``kind`` registered for the duration of a ``with`` block (tests, one-off tools)."""
    register(kind, after=after)
    try:
        yield kind
    finally:
        unregister(kind.name)


__all__ = ["KINDS", "StageKind", "StageResources", "TaskSpec", "names", "get", "default_resources", "register",
           "unregister", "registered"]
