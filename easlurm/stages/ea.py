"""The EA phases (``ea/CCC``): one task per cycle, after the cycle's Adam phase.

Its job (:func:`easlurm.evo.job.run_ea`) reads ``cycles/C/members`` and writes ``cycles/C+1/start`` and
``cycles/C/ea`` (``fitness.json``, ``lineage.jsonl``, ``front.png``), then ``cycles/C/ea/done.json``
(:class:`EADone`), the commit point. While it runs it checkpoints every ``ea.checkpoint_every`` generations into
``cycles/C/ea/progress/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CheckpointError
from ..population import member_complete
from ..records import StageRecord
from ..checkpoints import read_checkpoint_meta
from ..store import sha256_file
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir

#: The EA phase's record files in ``cycles/C/ea/`` (listed with their sha256 and size in done.json).
RECORD_FILES = ("fitness.json", "front.png", "lineage.jsonl")


@dataclass(kw_only=True)
class EADone(StageRecord):
    """``cycles/C/ea/done.json``: the EA phase's commit record. ``outputs``/``sizes``: sha256 and bytes of each
    record file; ``starts``: ``"JJ"`` → sha256 of ``cycles/C+1/start/JJ/meta.json``."""
    KINDS: ClassVar[tuple[str, ...]] = ("ea",)
    RENAMED: ClassVar[dict[str, str]] = {"files": "outputs"}  # records before the stage registry
    kind: str = "ea"
    done: bool = True
    cycle: int
    outputs: dict[str, str]
    sizes: dict[str, int] = field(default_factory=dict)
    starts: dict[str, str]
    hypervolume_initial: float
    hypervolume_final: float
    distinct_final: int
    evaluations: int


def read_done(run: RunDir, cycle: int) -> EADone | None:
    """The phase's done record as written (None when absent or unreadable; nothing verified)."""
    try:
        return EADone.read(run.ea(cycle) / "done.json")
    except CheckpointError:
        return None


def done_record(cfg: Config, run: RunDir, cycle: int, *, full: bool = False) -> EADone | None:
    """The done record when it and everything it lists are intact, else None. Cheap by default (record files by
    size; the start entries' small meta.json by sha256); ``full``: record files by sha256 too (the job itself)."""
    done = read_done(run, cycle)
    n = cfg.population.size
    if done is None or done.cycle != cycle or sorted(done.starts) != [f"{j:02d}" for j in range(n)]:
        return None
    for name, sha in sorted(done.outputs.items()):
        p = run.ea(cycle) / name
        try:
            size = p.stat().st_size
        except OSError:
            return None
        if name in done.sizes and size != done.sizes[name]:
            return None
        if (full or name not in done.sizes) and sha256_file(p) != sha:
            return None
    for key, sha in sorted(done.starts.items()):
        folder = run.start(cycle + 1, int(key))
        meta = folder / "meta.json"
        if not meta.is_file() or sha256_file(meta) != sha or not member_complete(folder, "start"):
            return None
    return done


def is_done(cfg: Config, run: RunDir, cycle: int) -> bool:
    """Whether the EA phase of ``cycle`` is complete (the job verifies the same record by sha256 before skipping)."""
    return done_record(cfg, run, cycle) is not None


def progress(cfg: Config, run: RunDir, cycle: int) -> int:
    """Generations committed in the phase's last generation checkpoint (0 without one)."""
    try:
        meta = read_checkpoint_meta(run.ea(cycle) / "progress")
    except CheckpointError:
        return 0
    return int(meta.get("generation", 0)) if meta else 0


def _record(cfg: Config, run: RunDir, cycle: int) -> StageRecord | None:
    """The done record, or — while the phase runs — its last generation checkpoint's progress."""
    done = read_done(run, cycle)
    if done is not None:
        return done
    try:
        meta = read_checkpoint_meta(run.ea(cycle) / "progress")
    except CheckpointError:
        return None
    if not meta:
        return None
    return StageRecord(kind="ea", iteration=int(meta.get("generation", 0)), iters_target=cfg.ea.generations,
                       attempts=list(meta.get("attempts", [])))


def _rate_key(cfg: Config) -> dict[str, Any]:
    d, ea = cfg.data, cfg.ea
    return {**_keys.network(cfg), **_keys.perceptual(cfg), **_keys.hardware(cfg, "ea"),
            "population": cfg.population.size, "tile": d.fitness_tile, "images": d.fitness_images,
            "tiles": d.fitness_max_tiles, "eval_batch": ea.eval_batch, "operators": [ea.p_crossover, ea.p_mutation],
            **({"batch_children": True} if ea.batch_children else {})}


KIND = StageKind(
    name="ea",
    summary="an EA phase: SBX crossover, mutation and multi-objective selection on the members' generators",
    entry="easlurm.evo.job:run_ea",
    tasks=lambda cfg, cycle: [TaskSpec(f"ea cycle {cycle}", (("cycle", cycle),))],
    is_done=is_done,
    unit="generation",
    resources=StageResources(time_min=4 * 60),
    cycles=lambda cfg: list(range(cfg.run.cycles)),
    progress=progress,
    units=lambda cfg, cycle: cfg.ea.generations,
    commits=lambda cfg: {"G.pt": cfg.population.size, "rng.pt": 1},
    unit_s_default=60.0,
    rate_key=_rate_key,
    record=_record,
    tiny=lambda cfg: {"ea.generations": 2, "data.fitness_images": 2, "data.fitness_max_tiles": 2},
)

__all__ = ["KIND", "EADone", "RECORD_FILES", "read_done", "done_record", "is_done", "progress"]
