"""The pretraining stage (``pretrain``): the L1-trained start generator, when ``model.pretrained`` is null.

Its job (:func:`easlurm.train.pretrain.pretrain`) writes ``RUN/pretrain/`` — ``G.pt``, ``optim.pt``, ``rng.pt`` and
``meta.json`` (:class:`PretrainRecord`) — committed every ``pretrain.checkpoint_every`` iterations, at the end and
on the pre-timeout warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CheckpointError
from ..records import StageRecord
from ..store import checkpoint_intact, read_checkpoint_meta
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


def read_record(cfg: Config | None, run: RunDir, recover: bool = False) -> PretrainRecord | None:
    """The pretraining record, None before its first commit (``recover``: the stage itself, see
    :func:`easlurm.store.read_checkpoint_meta`)."""
    raw = read_checkpoint_meta(run.pretrain, recover=recover)
    return None if raw is None else PretrainRecord.from_dict(raw, run.pretrain / "meta.json")


def is_done(cfg: Config, run: RunDir) -> bool:
    """Record done and every file it lists present with its recorded size."""
    try:
        rec = read_record(cfg, run)
    except CheckpointError:
        return False
    return rec is not None and rec.done and checkpoint_intact(run.pretrain, rec.store)


def progress(cfg: Config, run: RunDir) -> int:
    try:
        rec = read_record(cfg, run)
    except CheckpointError:
        return 0
    return 0 if rec is None else rec.iteration


def _record(cfg: Config, run: RunDir) -> PretrainRecord | None:
    try:
        return read_record(cfg, run)
    except CheckpointError:
        return None


def _rate_key(cfg: Config) -> dict[str, Any]:
    return {**_keys.network(cfg), **_keys.hardware(cfg, "pretrain"), "patch": cfg.data.patch_size,
            "batch": cfg.pretrain.batch_size}


KIND = StageKind(
    name="pretrain",
    summary="L1 pretraining of the PSNR-oriented start generator (when model.pretrained is null)",
    entry="easlurm.train.pretrain:pretrain",
    tasks=lambda cfg, cycle: [TaskSpec("pretrain")],
    is_done=is_done,
    unit="iteration",
    resources=StageResources(time_min=24 * 60),
    enabled=lambda cfg: not cfg.model.pretrained,
    progress=progress,
    units=lambda cfg, cycle: cfg.pretrain.iters,
    commits=lambda cfg: {"G.pt": 1, "pretrain optim.pt": 1, "rng.pt": 1},
    unit_s_default=5.0,
    rate_key=_rate_key,
    record=_record,
    tiny=lambda cfg: {"pretrain.iters": 2, "pretrain.batch_size": 2, "pretrain.checkpoint_every": 1},
)

__all__ = ["KIND", "PretrainRecord", "read_record", "is_done", "progress"]
