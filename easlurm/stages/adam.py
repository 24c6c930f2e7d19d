"""The Adam phases (``adam/CCC``): one task per population slot, submitted as one job array per cycle.

Member I's task of cycle C (:func:`easlurm.train.member.train_member`) reads ``cycles/C/start/I`` and writes
``cycles/C/members/I`` — ``G.pt``, ``D.pt``, ``optim.pt``, ``rng.pt`` and ``meta.json``
(:class:`easlurm.population.MemberMeta`) — committed every ``adam.checkpoint_every`` iterations, at the end and on
the pre-timeout warning. A slot that is not Adam-trained (``population.member0``: ``ea_only``, ``frozen``) has no
work: its task is done from the start, no job is queued for it (the array holds the trained slots only, array
index = slot), and readers take its start entry (:func:`easlurm.population.after_adam`).

``adam.members_per_task`` k > 1: a task trains k trained slots side by side in one process
(:func:`easlurm.train.member.train_members`; arguments ``members=(I, J, …)``, array index = task); its members'
folders, records and commits are exactly those of single-member tasks, so the EA, resume, lineage, prune and
status read them unchanged. The task is done when all its members are; its progress is their minimum. Its unit
is a round (one iteration of each of its members), so the rate key holds k: a rate measured with one k is not
used for another.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import CheckpointError
from ..population import MemberMeta, adam_cycles, is_adam_trained, member_complete, phase_iters, read_member
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir


def slots(member: int | None = None, members: Sequence[int] | None = None) -> list[int]:
    """The member slots of one task's arguments (``member=I``, or ``members=(I, J, …)`` when
    ``adam.members_per_task`` > 1)."""
    return [int(m) for m in members] if members is not None else [] if member is None else [int(member)]


def is_done(cfg: Config, run: RunDir, cycle: int, member: int | None = None,
            members: Sequence[int] | None = None) -> bool:
    """Every member of the task has a record that says done and its files with their recorded sizes (a slot that is
    not Adam-trained: always — there is nothing to do, and the stage before wrote its start entry)."""
    return all(not is_adam_trained(cfg, m) or member_complete(run.member(cycle, m), "member")
               for m in slots(member, members))


def _records(run: RunDir, cycle: int, member: int | None, members: Sequence[int] | None
             ) -> list[MemberMeta | None]:
    """The task's members' records (None for one not written yet or unreadable)."""
    out: list[MemberMeta | None] = []
    for m in slots(member, members):
        try:
            out.append(read_member(run.member(cycle, m)))
        except CheckpointError:
            out.append(None)
    return out


def _record(cfg: Config, run: RunDir, cycle: int, member: int | None = None,
            members: Sequence[int] | None = None) -> MemberMeta | None:
    """The task's record: its member's (with several members, the one that is least far: its attempts are the
    task's, as they ran side by side)."""
    recs = _records(run, cycle, member, members)
    known = [r for r in recs if r is not None]
    return min(known, key=lambda r: r.iteration) if known and len(known) == len(recs) else None


def progress(cfg: Config, run: RunDir, cycle: int, member: int | None = None,
             members: Sequence[int] | None = None) -> int:
    """Committed iterations of the task's Adam phase: its member's, or the least of its members' (0 before the first
    checkpoint)."""
    return min((0 if r is None else r.iteration for r in _records(run, cycle, member, members)), default=0)


def groups(cfg: Config) -> list[tuple[int, ...]]:
    """The trained slots in tasks of ``adam.members_per_task`` (slot order; the last task may hold fewer)."""
    k = cfg.adam.members_per_task
    trained = [i for i in range(cfg.population.size) if is_adam_trained(cfg, i)]
    return [tuple(trained[j:j + k]) for j in range(0, len(trained), k)]


def _tasks(cfg: Config, cycle: int | None) -> list[TaskSpec]:
    if cfg.adam.members_per_task == 1:  # one task per slot: array index = slot
        return [TaskSpec(f"member {i:02d}", (("cycle", cycle), ("member", i))) for i in range(cfg.population.size)]
    return [TaskSpec("members " + ",".join(f"{i:02d}" for i in g), (("cycle", cycle), ("members", g)))
            for g in groups(cfg)]


def task_of(cfg: Config, slot: int) -> int | None:
    """The Adam-phase task index that trains ``slot`` (None: the slot is not Adam-trained, or has no task)."""
    for i, spec in enumerate(_tasks(cfg, 0)):
        if slot in slots(**{k: v for k, v in spec.args if k != "cycle"}):
            return i if is_adam_trained(cfg, slot) else None
    return None


def _busy(cfg: Config, args: Mapping[str, Any]) -> bool:
    return any(is_adam_trained(cfg, m) for m in slots(args.get("member"), args.get("members")))


def _per_task(cfg: Config) -> int:
    """Members one task trains (and commits together on the warning)."""
    g = groups(cfg)
    return max((len(x) for x in g), default=1)


def _rate_key(cfg: Config) -> dict[str, Any]:
    d, a = cfg.discriminator, cfg.adam
    return {**_keys.network(cfg), **_keys.perceptual(cfg), **_keys.hardware(cfg, "adam"), "d": [d.arch, d.num_feat],
            "patch": cfg.data.patch_size, "batch": a.batch_size, "bf16": a.bf16, "channels_last": a.channels_last,
            "gan": cfg.loss.gan_type, **({"members_per_task": a.members_per_task} if a.members_per_task > 1 else {}),
            **({"cuda_graph": True} if a.cuda_graph else {})}


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
    summary="an Adam phase: every member trains its generator and discriminator (one array task per trained "
            "slot, or per adam.members_per_task of them)",
    entry="easlurm.train.member:train_member",
    tasks=_tasks,
    is_done=is_done,
    unit="iteration",
    resources=StageResources(time_min=12 * 60),
    cycles=adam_cycles,
    array=True,
    progress=progress,
    units=lambda cfg, cycle: phase_iters(cfg, cycle or 0),
    busy=_busy,
    commits=lambda cfg: {name: _per_task(cfg) for name in ("G.pt", "D.pt", "optim.pt", "rng.pt")},
    unit_s_default=5.0,
    rate_key=_rate_key,
    record=_record,
    tiny=_tiny,
)

__all__ = ["KIND", "is_done", "progress", "groups", "slots", "task_of"]
