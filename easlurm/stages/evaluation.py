"""The evaluation stage (``eval``): bicubic, every final member and the fused model on the test sets.

Its job (:func:`easlurm.evaluate.evaluate_run`) writes ``RUN/eval/`` — ``results.csv``, ``per_image.csv``,
``results.md``, ``pareto.png`` — and then ``RUN/eval/done.json`` (:class:`EvalRecord`: sha256 and size of each,
the sets, when it ran), the commit point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CheckpointError
from ..records import StageRecord
from . import _keys
from .kind import StageKind, StageResources, TaskSpec

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir

#: What the evaluation writes into ``RUN/eval/`` before its record.
OUTPUTS = ("results.csv", "per_image.csv", "results.md", "pareto.png")


@dataclass(kw_only=True)
class EvalRecord(StageRecord):
    """``RUN/eval/done.json``: ``outputs``/``sizes`` (sha256 and bytes of each output), the sets and models
    scored."""
    KINDS: ClassVar[tuple[str, ...]] = ("eval",)
    kind: str = "eval"
    done: bool = True
    outputs: dict[str, str]
    sizes: dict[str, int]
    sets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)


def read_record(run: RunDir) -> EvalRecord | None:
    try:
        return EvalRecord.read(run.eval / "done.json")
    except CheckpointError:
        return None


def is_done(cfg: Config, run: RunDir) -> bool:
    """The record is there and every output it lists has its recorded size."""
    rec = read_record(run)
    if rec is None:
        return False
    for name, size in rec.sizes.items():
        try:
            if (run.eval / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _rate_key(cfg: Config) -> dict[str, Any]:
    return {**_keys.network(cfg), **_keys.hardware(cfg, "eval"), "sets": sorted(cfg.eval.sets),
            "metrics": list(cfg.eval.metrics), "population": cfg.population.size}


KIND = StageKind(
    name="eval",
    summary="evaluation: bicubic, the final members and the fused model on the test sets",
    entry="easlurm.evaluate:evaluate_run",
    tasks=lambda cfg, cycle: [TaskSpec("evaluation")],
    is_done=is_done,
    resources=StageResources(time_min=60),
    rate_key=_rate_key,
    record=lambda cfg, run: read_record(run),
)

__all__ = ["KIND", "EvalRecord", "OUTPUTS", "read_record", "is_done"]
