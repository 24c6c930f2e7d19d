"""The init stage (``init``): cycle 0's start population, written once, before any Adam phase (CPU only).

Its job (:func:`easlurm.train.init.init_population`) writes ``cycles/000/start/I/`` for every slot (the shared start
generator and a fresh discriminator per slot) and then ``cycles/000/start/done.json`` (:class:`InitRecord`: when it
ran). The stage is done when every slot is committed and intact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CheckpointError
from ..population import member_complete
from ..records import StageRecord
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir


@dataclass(kw_only=True)
class InitRecord(StageRecord):
    """``cycles/000/start/done.json``: one unit (the whole start population)."""
    KINDS: ClassVar[tuple[str, ...]] = ("init",)
    kind: str = "init"
    slots: int = 0


def record_path(run: RunDir) -> Path:
    return run.cycle(0) / "start" / "done.json"


def is_done(cfg: Config, run: RunDir) -> bool:
    """Every slot of cycle 0's start population committed and intact."""
    return all(member_complete(run.start(0, i), "start") for i in range(cfg.population.size))


def _record(cfg: Config, run: RunDir) -> InitRecord | None:
    try:
        return InitRecord.read(record_path(run))
    except CheckpointError:
        return None


def _rate_key(cfg: Config) -> dict[str, Any]:
    return {**_keys.hardware(cfg, "init"), "population": cfg.population.size}


KIND = StageKind(
    name="init",
    summary="cycle 0's start population: the start generator and a fresh discriminator per slot",
    entry="easlurm.train.init:init_population",
    tasks=lambda cfg, cycle: [TaskSpec("start population")],
    is_done=is_done,
    resources=StageResources(time_min=30, gpus=0, cpus=2, mem_gb=16),
    gpus_used=0,
    rate_key=_rate_key,
    record=_record,
)

__all__ = ["KIND", "InitRecord", "record_path", "is_done"]
