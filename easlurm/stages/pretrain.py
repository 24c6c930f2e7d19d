"""The pretraining stage (``pretrain``): the L1-trained start generator, when ``model.pretrained`` is null.

Its job (:func:`easlurm.train.pretrain.pretrain`) writes ``RUN/pretrain/`` — ``G.pt``, ``optim.pt``, ``rng.pt`` and
``meta.json`` (:class:`PretrainRecord`) — committed every ``pretrain.checkpoint_every`` iterations, at the end and
on the pre-timeout warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..records import FolderRecord, StageRecord
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir


@dataclass(kw_only=True)
class PretrainRecord(StageRecord):
    """``RUN/pretrain/meta.json``."""
    KINDS: ClassVar[tuple[str, ...]] = ("pretrain",)
    LEGACY_SCHEMA: ClassVar[int | None] = 1
    kind: str = "pretrain"


#: ``RUN/pretrain/meta.json``: read, done check, progress.
RECORD = FolderRecord(PretrainRecord, lambda run: run.pretrain)


def read_record(cfg: Config | None, run: RunDir, recover: bool = False) -> PretrainRecord | None:
    """The pretraining record, None before its first commit (``recover``: the stage itself)."""
    return RECORD.read(run, recover)


def _rate_key(cfg: Config) -> dict[str, Any]:
    return {**_keys.network(cfg), **_keys.hardware(cfg, "pretrain"), "patch": cfg.data.patch_size,
            "batch": cfg.pretrain.batch_size}


KIND = StageKind(
    name="pretrain",
    summary="L1 pretraining of the PSNR-oriented start generator (when model.pretrained is null)",
    entry="easlurm.train.pretrain:pretrain",
    tasks=lambda cfg, cycle: [TaskSpec("pretrain")],
    is_done=RECORD.is_done,
    unit="iteration",
    resources=StageResources(time_min=24 * 60),
    enabled=lambda cfg: not cfg.model.pretrained,
    progress=RECORD.progress,
    units=lambda cfg, cycle: cfg.pretrain.iters,
    commits=lambda cfg: {"G.pt": 1, "pretrain optim.pt": 1, "rng.pt": 1},
    unit_s_default=5.0,
    rate_key=_rate_key,
    record=RECORD.get,
    tiny=lambda cfg: {"pretrain.iters": 2, "pretrain.batch_size": 2, "pretrain.checkpoint_every": 1},
)

__all__ = ["KIND", "RECORD", "PretrainRecord", "read_record"]
