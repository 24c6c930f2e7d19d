"""Several resumable stages in one process, one iteration each in turn (``adam.members_per_task``).

Each *lane* is one stage's :func:`~easlurm.engine.context.train_steps` generator (its own folder, lease, record,
data and commits). :func:`interleave` advances the lanes round-robin, one iteration per lane per round, so k
members share one GPU and one process (and what they can share, e.g. a frozen perceptual net) while each commits
exactly what it would have committed alone:

* **RNG** — every lane has its own RNG states (Python, numpy, torch CPU and CUDA): restored before its iteration,
  captured after it, so no lane's draws depend on the others' (a lane's ``rng.pt`` is its own stream);
* **preemption** — the task's one signal flag is read once per round (:class:`RoundPreemption`): every lane that is
  still training commits in the same round, then the caller ends the process (exit 140/143 as a single stage);
* **failures** — a lane that raises (non-finite loss or weights, a lost lease) stops alone; its last commit stays,
  the other lanes go on. :func:`interleave` returns every lane's result or error; the caller decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

from .. import rng
from ..errors import EaslurmError
from .preempt import Preemption


class LaneStopped(Exception):
    """A lane committed after the pre-timeout warning and stopped (the process ends once every lane did)."""


class RoundPreemption:
    """The preemption flag as the lanes' loops see it: the task's flag as it stood when the current round began (so
    all lanes commit in the same round), and a :meth:`finish` that stops the one lane instead of the process."""

    def __init__(self, outer: Preemption) -> None:
        self.outer = outer
        self._requested = False

    @property
    def requested(self) -> bool:
        return self._requested

    @property
    def signum(self) -> int | None:
        return self.outer.signum

    def begin_round(self) -> None:
        self._requested = self.outer.requested

    def finish(self) -> None:
        raise LaneStopped()


@dataclass
class Lane:
    """One stage run as a generator: ``name`` (its ``where``) and its steps (returning the stage's final record)."""
    name: str
    steps: Generator[int, None, Any]
    rng_state: dict[str, Any] | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """What became of a lane: ``result`` (the stage's final record) when it finished, ``preempted`` when it
    committed on the warning and stopped, ``error`` when it failed (its last commit is kept)."""
    name: str
    result: Any = None
    preempted: bool = False
    error: EaslurmError | None = None


def interleave(lanes: Sequence[Lane], preempt: RoundPreemption) -> list[Outcome]:
    """Advance ``lanes`` round-robin until each finished, stopped on the warning or failed; outcomes in lane order.
    A lane's RNG states start as the process's when this is called (each lane seeds or restores its own before
    drawing, as a stage alone does)."""
    start = rng.capture()
    for lane in lanes:
        lane.rng_state = lane.rng_state or start
    outcome = {lane.name: Outcome(lane.name) for lane in lanes}
    active = list(lanes)
    while active:
        preempt.begin_round()
        for lane in list(active):
            assert lane.rng_state is not None
            rng.restore(lane.rng_state)
            try:
                next(lane.steps)
            except StopIteration as stop:
                outcome[lane.name].result = stop.value
            except LaneStopped:
                outcome[lane.name].preempted = True
            except EaslurmError as exc:
                outcome[lane.name].error = exc
            else:
                lane.rng_state = rng.capture()
                continue
            active.remove(lane)
    return [outcome[lane.name] for lane in lanes]


__all__ = ["Lane", "LaneStopped", "Outcome", "RoundPreemption", "interleave"]
