"""The fusion stage (``fuse``): the final population in, one plain backbone out.

Its job (:func:`easlurm.fuse.job.run_fusion`) trains the attention branches into ``RUN/fusion/`` — ``attention.pt``,
``D.pt``, ``optim.pt``, ``rng.pt`` and ``meta.json`` (:class:`FusionMeta`) — committed every
``fusion.checkpoint_every`` iterations, at the end and on the pre-timeout warning; the last commit adds
``attention.json`` and ``fused.pt`` with ``done: true``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..records import FolderRecord, StageRecord
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir


@dataclass(kw_only=True)
class FusionMeta(StageRecord):
    """``RUN/fusion/meta.json`` (the store adds sha256/size). ``experts_sha256``: the distinct experts' ``G.pt``
    in the order of the dynamic model; ``slot_expert``: final slot → index into it; ``average_ids``: the training
    images the attention was averaged over."""
    KINDS: ClassVar[tuple[str, ...]] = ("fusion",)
    RENAMED: ClassVar[dict[str, str]] = {"val_ids": "average_ids"}  # records before the stage registry
    kind: str = "fusion"
    experts_sha256: list[str]
    slot_expert: list[int]
    experts_cycle: int
    discriminator_from: int
    average_ids: list[str] = field(default_factory=list)
    attention_layers: int = 0


#: ``RUN/fusion/meta.json``: read, done check (``fused.pt`` listed: the last commit), progress.
RECORD = FolderRecord(FusionMeta, lambda run: run.fusion, needs=("fused.pt",))


def read_record(cfg: Config | None, run: RunDir, recover: bool = False) -> FusionMeta | None:
    """The fusion record, None before its first commit (``recover``: the stage itself)."""
    return RECORD.read(run, recover)


def _rate_key(cfg: Config) -> dict[str, Any]:
    f = cfg.fusion
    return {**_keys.network(cfg), **_keys.perceptual(cfg), **_keys.hardware(cfg, "fuse"),
            "population": cfg.population.size, "patch": cfg.data.patch_size, "batch": f.batch_size,
            "att": [f.att_kernel, f.att_channels]}


def _tiny(cfg: Config) -> dict[str, Any]:
    return {"fusion.iters": 4, "fusion.milestones": [2] if cfg.fusion.milestones else [], "fusion.batch_size": 2,
            "fusion.att_channels": 4, "fusion.checkpoint_every": 2, "fusion.average_images": 3}


KIND = StageKind(
    name="fuse",
    summary="fusion: attention over the final experts, averaged and merged into one plain backbone",
    entry="easlurm.fuse.job:run_fusion",
    tasks=lambda cfg, cycle: [TaskSpec("fusion")],
    is_done=RECORD.is_done,
    unit="iteration",
    resources=StageResources(time_min=12 * 60),
    progress=RECORD.progress,
    units=lambda cfg, cycle: cfg.fusion.iters,
    commits=lambda cfg: {"fusion attention.pt": 1, "D.pt": 1, "fusion optim.pt": 1, "rng.pt": 1},
    unit_s_default=5.0,
    rate_key=_rate_key,
    record=RECORD.get,
    tiny=_tiny,
)

__all__ = ["KIND", "RECORD", "FusionMeta", "read_record"]
