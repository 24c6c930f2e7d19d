"""The population's records: preferences, per-slot roles, phase lengths and the member ``meta.json`` (one owner).

Every member folder — a cycle's start population (``cycles/C/start/I``) and its trained population
(``cycles/C/members/I``) — is a checkpoint folder (:mod:`easlurm.store`) whose ``meta.json`` is a
:class:`MemberMeta`. This module is the only reader and writer of that record: stages call :func:`read_member` and
:func:`write_member`, never ``json`` on it.

Cycles: ``run.cycles`` EA phases (0 … cycles-1) and one Adam phase per cycle, plus — with ``adam.final_phase`` —
a last Adam phase in cycle ``run.cycles`` after the last EA phase (the reference's final 10 epochs). The final
population, which fusion and evaluation read, is that last phase's trained population, or the last EA phase's
output without a final phase.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from .errors import CheckpointError
from .evo.selection import uniform_preferences
from .records import StageRecord
from .checkpoints import FileRef, checkpoint_intact, commit_checkpoint, file_ref, read_checkpoint_meta
from .store import RunDir

if TYPE_CHECKING:
    from .config import Config

#: Version of the member ``meta.json`` schema this code reads and writes.
MEMBER_SCHEMA = 1


def preferences(n: int) -> list[tuple[float, float]]:
    """(w_dist, w_perc) of members 0..n-1, uniform on the simplex from (1, 0) to (0, 1)
    (:func:`easlurm.evo.selection.uniform_preferences`, as Python floats)."""
    return [(float(a), float(b)) for a, b in uniform_preferences(n)]


def slot_mode(cfg: Config, slot: int) -> str:
    """``trained`` (Adam-trained, EA may replace), ``ea_only`` (never Adam-trained, EA may replace) or ``frozen``
    (never trained nor replaced) — only slot 0 can differ from ``trained`` (``population.member0``)."""
    return cfg.population.member0 if slot == 0 else "trained"


def is_adam_trained(cfg: Config, slot: int) -> bool:
    return slot_mode(cfg, slot) == "trained"


def is_replaceable(cfg: Config, slot: int) -> bool:
    """Whether the EA may put another genome into ``slot``."""
    return slot_mode(cfg, slot) != "frozen"


def adam_cycles(cfg: Config) -> list[int]:
    """Cycles that have an Adam phase: 0 … run.cycles-1, plus run.cycles with ``adam.final_phase``."""
    return list(range(cfg.run.cycles + (1 if cfg.adam.final_phase else 0)))


def phase_iters(cfg: Config, cycle: int) -> int:
    """Generator updates of cycle ``cycle``'s Adam phase (first and final phases may differ, DESIGN.md §2)."""
    a = cfg.adam
    if cycle == 0 and a.first_phase_iters is not None:
        return a.first_phase_iters
    if cycle == cfg.run.cycles and a.final_phase_iters is not None:
        return a.final_phase_iters
    return a.iters_per_cycle


def final_cycle(cfg: Config) -> int:
    """The cycle whose population fusion and evaluation read (``run.cycles`` in both layouts)."""
    return cfg.run.cycles


def after_adam(cfg: Config, run: RunDir, cycle: int, slot: int) -> tuple[Path, str]:
    """Where ``slot``'s state after cycle ``cycle``'s Adam phase is, and that record's kind: its trained member
    entry, or — for a slot that is not Adam-trained (``population.member0``: ``ea_only``, ``frozen``) — its start
    entry, which no job of the phase touches (so no GPU job is queued for it). Runs made by easlurm before this also
    hold a member entry referencing that start entry: the same files."""
    if is_adam_trained(cfg, slot):
        return run.member(cycle, slot), "member"
    return run.start(cycle, slot), "start"


def final_folder(cfg: Config, run: RunDir, slot: int) -> Path:
    """Folder of final member ``slot``: the final Adam phase's output, or the last EA phase's without one."""
    c = final_cycle(cfg)
    return after_adam(cfg, run, c, slot)[0] if cfg.adam.final_phase else run.start(c, slot)


@dataclass(kw_only=True)
class MemberMeta(StageRecord):
    """The record of one member folder (its ``meta.json``; the store adds ``sha256``/``size``/``refs``).

    ``kind``: ``start`` (a cycle's start population, complete when committed) or ``member`` (a trained member,
    complete when ``done``). ``origin``: where the generator came from — ``pretrain:<sha256>``,
    ``pretrained:<path>``, ``ea:<child id>`` (an EA child) or ``carried:<path of the member it continues>``.
    ``ea_objectives``: (mean L1, mean perceptual) measured by the EA phase that wrote a start entry — not the
    objectives of the member after its Adam phase. ``reset_g_optimizer``: the next Adam phase starts with fresh
    generator Adam moments (the reference resets them after every EA phase). ``attempts``: when and where the
    Adam phase ran (:class:`easlurm.runtime.AttemptLog`).
    """

    KINDS: ClassVar[tuple[str, ...]] = ("start", "member")
    SCHEMA: ClassVar[int] = MEMBER_SCHEMA

    cycle: int
    slot: int
    preference: tuple[float, float]
    mode: str
    origin: str
    sample_index: int = 0
    ea_objectives: tuple[float, float] | None = None
    reset_g_optimizer: bool = True
    trained_from: str | None = None

    @classmethod
    def _convert(cls, kw: dict[str, Any], where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        def pair(name: str, value: Any, what: str) -> tuple[float, float]:
            if not (len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in value)):
                raise CheckpointError(f"{where}: {name} must be {what}, got {value!r}")
            return float(value[0]), float(value[1])

        kw["preference"] = pair("preference", kw["preference"], "[w_dist, w_perc]")
        if kw.get("ea_objectives") is not None:
            kw["ea_objectives"] = pair("ea_objectives", kw["ea_objectives"], "[f1, f2] (two numbers) or null")
        return kw

    @property
    def complete(self) -> bool:
        return self.kind == "start" or self.done


def read_member(folder: Path, *, recover: bool = False) -> MemberMeta | None:
    """The member record in ``folder`` or None when nothing is committed there (``recover``: owner only, see
    :func:`easlurm.checkpoints.read_checkpoint_meta`)."""
    raw = read_checkpoint_meta(folder, recover=recover)
    return None if raw is None else MemberMeta.from_dict(raw, str(folder / "meta.json"))


def write_member(folder: Path, meta: MemberMeta, files: Mapping[str, bytes] | None = None,
                 refs: Mapping[str, FileRef] | None = None, fence: Callable[[], None] | None = None) -> MemberMeta:
    """Commit ``files``/``refs`` and the record to ``folder`` (one atomic journal commit); return what is on disk.
    ``fence``: the writer's lease check, called right before the commit point (see
    :func:`easlurm.checkpoints.commit_checkpoint`)."""
    raw = commit_checkpoint(folder, dict(files or {}), meta.to_dict(), refs, fence=fence)
    return MemberMeta.from_dict(raw, str(folder / "meta.json"))


def member_file(folder: Path, meta: MemberMeta, name: str) -> FileRef:
    """Where ``name`` of a member really lives (its own file or a referenced one)."""
    return file_ref(folder, name, meta.store)


def load_member_file(folder: Path, meta: MemberMeta, name: str) -> Any:
    """Load ``name`` of a member after checking its sha256 (``torch.load(weights_only=True)``; needs torch)."""
    from .tensor_files import load_verified

    return load_verified(folder, name, meta.store)


def member_complete(folder: Path, kind: str) -> bool:
    """Cheap completion check used by the stages' ``is_done``: a committed record of ``kind`` that is complete and
    whose files exist with their recorded sizes (readers verify sha256 when they load)."""
    try:
        meta = read_member(folder)
    except CheckpointError:
        return False
    return (meta is not None and meta.kind == kind and meta.complete
            and checkpoint_intact(folder, meta.store))


def require_member(folder: Path, kind: str, needed: tuple[str, ...], hint: str) -> MemberMeta:
    """The complete record in ``folder`` listing ``needed`` files, or one :class:`CheckpointError` naming the
    folder and ``hint`` (which stage writes it)."""
    meta = read_member(folder)
    if meta is None:
        raise CheckpointError(f"{folder}: not found ({hint})")
    if meta.kind != kind or not meta.complete:
        raise CheckpointError(f"{folder}: not complete ({hint}; iteration {meta.iteration} of "
                              f"{meta.iters_target})")
    missing = [f for f in needed if f not in meta.files.get("sha256", {})]
    if missing:
        raise CheckpointError(f"{folder / 'meta.json'}: lists no {', '.join(missing)}")
    if not checkpoint_intact(folder, meta.store):
        raise CheckpointError(f"{folder}: a file it lists is missing or has the wrong size (corrupt, pruned or "
                              f"replaced)")
    return meta


def final_members(cfg: Config, run: RunDir) -> list[tuple[Path, MemberMeta]]:
    """The final population, slot order, each checked complete. Raises :class:`CheckpointError` naming the first
    missing member and the stage that writes it."""
    c = final_cycle(cfg)
    out = []
    for i in range(cfg.population.size):
        folder = final_folder(cfg, run, i)
        trained = cfg.adam.final_phase and is_adam_trained(cfg, i)
        hint = (f"written by the final Adam phase, cycle {c}" if trained
                else f"written by the EA phase of cycle {c - 1}")
        out.append((folder, require_member(folder, "member" if trained else "start", ("G.pt",), hint)))
    return out


__all__ = [
    "MEMBER_SCHEMA", "MemberMeta", "preferences", "slot_mode", "is_adam_trained", "is_replaceable", "adam_cycles",
    "phase_iters", "final_cycle", "after_adam", "final_folder", "read_member", "write_member", "member_file",
    "load_member_file", "member_complete", "require_member", "final_members",
]
