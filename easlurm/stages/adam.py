"""The Adam phases (``adam/CCC``): one task per population slot, submitted as one job array per cycle.

Member I's task of cycle C (:func:`easlurm.train.member.train_member`) reads ``cycles/C/start/I`` and writes
``cycles/C/members/I`` — ``G.pt``, ``D.pt``, ``optim.pt``, ``rng.pt`` and ``meta.json``
(:class:`easlurm.population.MemberMeta`) — committed every ``adam.checkpoint_every`` iterations, at the end and on
the pre-timeout warning. A slot that is not Adam-trained (``population.member0``: ``ea_only``, ``frozen``) has no
work: its task is done from the start, no job is queued for it (the array holds the trained slots only, array
index = slot), and readers take its start entry (:func:`easlurm.population.after_adam`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from ..population import MemberMeta, adam_cycles, is_adam_trained, member_complete, phase_iters, read_member
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir


def is_done(cfg: Config, run: RunDir, cycle: int, member: int) -> bool:
    """The member's record says done and its files exist with their recorded sizes (a slot that is not
    Adam-trained: always — there is nothing to do, and the stage before wrote its start entry)."""
    return not is_adam_trained(cfg, member) or member_complete(run.member(cycle, member), "member")


def _record(cfg: Config, run: RunDir, cycle: int, member: int) -> MemberMeta | None:
    try:
        return read_member(run.member(cycle, member))
    except CheckpointError:
        return None


def progress(cfg: Config, run: RunDir, cycle: int, member: int) -> int:
    """Committed iterations of the member's Adam phase (0 before its first checkpoint)."""
    rec = _record(cfg, run, cycle, member)
    return 0 if rec is None else rec.iteration


def _tasks(cfg: Config, cycle: int | None) -> list[TaskSpec]:
    return [TaskSpec(f"member {i:02d}", (("cycle", cycle), ("member", i))) for i in range(cfg.population.size)]


def _rate_key(cfg: Config) -> dict[str, Any]:
    d, a = cfg.discriminator, cfg.adam
    return {**_keys.network(cfg), **_keys.perceptual(cfg), **_keys.hardware(cfg, "adam"), "d": [d.arch, d.num_feat],
            "patch": cfg.data.patch_size, "batch": a.batch_size, "bf16": a.bf16, "channels_last": a.channels_last,
            "gan": cfg.loss.gan_type}


def _tiny(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"adam.batch_size": 2, "adam.iters_per_cycle": 6, "adam.checkpoint_every": 3,
                           "adam.log_every": 1, "adam.image_every": 3}
    # Only the phase layouts a config uses: a first/final phase of its own length stays one.
    if cfg.adam.first_phase_iters is not None:
        out["adam.first_phase_iters"] = 4
    if cfg.adam.final_phase_iters is not None:
        out["adam.final_phase_iters"] = 4
    return out


KIND = StageKind(
    name="adam",
    summary="an Adam phase: every member trains its generator and discriminator (one array task per slot)",
    entry="easlurm.train.member:train_member",
    tasks=_tasks,
    is_done=is_done,
    unit="iteration",
    resources=StageResources(time_min=12 * 60),
    cycles=adam_cycles,
    array=True,
    progress=progress,
    units=lambda cfg, cycle: phase_iters(cfg, cycle or 0),
    busy=lambda cfg, args: is_adam_trained(cfg, int(args["member"])),
    commits=lambda cfg: {"G.pt": 1, "D.pt": 1, "optim.pt": 1, "rng.pt": 1},
    unit_s_default=5.0,
    rate_key=_rate_key,
    record=_record,
    tiny=_tiny,
)

__all__ = ["KIND", "is_done", "progress"]
