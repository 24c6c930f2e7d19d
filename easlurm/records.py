"""The record every stage keeps of its own work: one base shape, one checked reader.

Each stage writes one JSON record per task — a member's ``meta.json``, pretraining's and fusion's ``meta.json``,
the EA phase's ``done.json``, the init and evaluation stages' ``done.json`` — and every record is a
:class:`StageRecord`: its ``kind`` and ``schema`` (what wrote it), how far the task got (``iteration`` of
``iters_target`` units: iterations, generations or, for stages without a loop, 1 of 1), whether it is ``done``, and
its ``attempts`` (when and where each process worked on it, :class:`easlurm.runtime.AttemptLog`), from which
``status`` and the bill take every time they report.

:meth:`StageRecord.from_dict` is the one checked reader: a record of another kind, another schema, a missing
required field or a value of the wrong type is one :class:`~easlurm.errors.CheckpointError` naming the file and the
field. Records that live in a checkpoint folder (:mod:`easlurm.store`) carry the store's entries (``sha256``,
``size``, ``refs``) in :attr:`StageRecord.files`; :attr:`StageRecord.store` is the whole mapping for the store's
calls. This module imports no torch.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Mapping, TypeVar, Union, get_args, get_origin
from typing import get_type_hints

from .checkpoints import checkpoint_intact, read_checkpoint_meta
from .errors import CheckpointError
from .store import read_json

if TYPE_CHECKING:
    from .store import RunDir

#: Keys of a checkpoint folder's meta.json that belong to the store (checksums, sizes, references).
STORE_KEYS = ("sha256", "size", "refs")

R = TypeVar("R", bound="StageRecord")


def _hints(cls: type) -> dict[str, Any]:
    # Resolving the string annotations costs ~0.5 ms a class; status and the launcher read hundreds of records.
    return _HINTS.get(cls) or _HINTS.setdefault(cls, get_type_hints(cls))


_HINTS: dict[type, dict[str, Any]] = {}


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` (from JSON) fits the annotation ``tp`` (shallow: containers are checked by kind only)."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


@dataclass(kw_only=True)
class StageRecord:
    """What a stage records of one task (see the module docstring). Subclasses name the ``KINDS`` they accept and
    their ``SCHEMA``; ``LEGACY_SCHEMA`` is the schema assumed for a record written before it carried one."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    SCHEMA: ClassVar[int] = 1
    LEGACY_SCHEMA: ClassVar[int | None] = None
    #: Keys written by older versions → the field that holds them now.
    RENAMED: ClassVar[dict[str, str]] = {}

    kind: str
    iteration: int = 0
    iters_target: int = 0
    done: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    schema: int = 1
    files: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (without the store's entries, which the store writes itself)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "files"}
        d["schema"] = self.SCHEMA
        return d

    @property
    def store(self) -> dict[str, Any]:
        """The whole meta.json mapping (record + the store's checksums), for :mod:`easlurm.store` calls."""
        return {**self.to_dict(), **self.files}

    @property
    def complete(self) -> bool:
        return self.done

    @classmethod
    def from_dict(cls: type[R], d: Any, where: str | Path) -> R:
        """The record ``d`` (a JSON object read from ``where``), checked; :class:`CheckpointError` names the file
        and what is wrong."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{where}: expected a JSON object, got {type(d).__name__}")
        d = {**{new: d[old] for old, new in cls.RENAMED.items() if old in d and new not in d}, **d}
        if d.get("kind") not in cls.KINDS:
            raise CheckpointError(f"{where}: not a {' or '.join(cls.KINDS)} record (kind {d.get('kind')!r})")
        schema = d.get("schema", cls.LEGACY_SCHEMA)
        if schema != cls.SCHEMA:
            raise CheckpointError(f"{where}: {d.get('kind')} record schema {schema!r}, this easlurm reads "
                                  f"{cls.SCHEMA} (a run made by another easlurm version)")
        hints = _hints(cls)
        names = [f for f in dataclasses.fields(cls) if f.name != "files"]
        missing = [f.name for f in names if f.name not in d and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise CheckpointError(f"{where}: {d.get('kind')} record lacks {', '.join(missing)}")
        kw: dict[str, Any] = {}
        for f in names:
            if f.name not in d:
                continue
            if not _type_ok(d[f.name], hints[f.name]):
                raise CheckpointError(f"{where}: {f.name} must be {hints[f.name]}, got {d[f.name]!r}")
            kw[f.name] = d[f.name]
        kw["schema"] = cls.SCHEMA
        kw = cls._convert(kw, str(where), d)
        return cls(**kw, files={k: d[k] for k in STORE_KEYS if k in d})

    @classmethod
    def _convert(cls, kw: dict[str, Any], where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Turn checked JSON values into field values (tuples, renamed keys of older records &c.); subclasses
        extend it. ``raw``: the whole mapping read."""
        return kw

    @classmethod
    def read(cls: type[R], path: Path) -> R | None:
        """The record in the JSON file ``path``, None when there is none; a corrupt one raises
        :class:`CheckpointError` naming it."""
        if not path.is_file():
            return None
        return cls.from_dict(read_json(path), path)


class FolderRecord(Generic[R]):
    """The record of a stage that owns one checkpoint folder (its ``meta.json``): reading it, and the done check and
    progress a stage kind derives from it."""

    def __init__(self, cls: type[R], folder: Callable[[RunDir], Path], needs: tuple[str, ...] = ()):
        self.cls, self.folder, self.needs = cls, folder, needs

    def read(self, run: RunDir, recover: bool = False) -> R | None:
        """The record, None before the first commit; a corrupt one raises :class:`CheckpointError` (``recover``:
        the stage itself, see :func:`easlurm.checkpoints.read_checkpoint_meta`)."""
        folder = self.folder(run)
        raw = read_checkpoint_meta(folder, recover=recover)
        return None if raw is None else self.cls.from_dict(raw, folder / "meta.json")

    def get(self, cfg: Any, run: RunDir) -> R | None:
        """The record, or None when there is none or it cannot be read."""
        try:
            return self.read(run)
        except CheckpointError:
            return None

    def is_done(self, cfg: Any, run: RunDir) -> bool:
        """Record done, listing ``needs``, and every file it lists present with its recorded size."""
        rec = self.get(cfg, run)
        return (rec is not None and rec.done and all(n in rec.files.get("sha256", {}) for n in self.needs)
                and checkpoint_intact(self.folder(run), rec.store))

    def progress(self, cfg: Any, run: RunDir) -> int:
        rec = self.get(cfg, run)
        return 0 if rec is None else rec.iteration


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


__all__ = ["STORE_KEYS", "StageRecord", "FolderRecord"]
