"""The shell around every resumable stage: :func:`stage_context`, :func:`train` and :func:`resume`.

A stage's job is the same sequence whatever it computes (members, pretraining, fusion; the EA phase and evaluation
use the context alone)::

    with stage_context(run, cfg, folder, where, device) as ctx:   # preemption, lease, device, attempts, writer
        record = read its record (the folder is ours: recover an interrupted commit)
        done → return it
        build the trainee; fresh → load the start files and seed, else resume(trainee, loader(folder, record))
        return train(ctx, trainee, record, save, cadence, tb_folder=…)   # the loop, committing the record

:func:`train` runs :func:`~easlurm.engine.loop.run_loop` and, at every checkpoint, checks the lease, puts the
iteration and the attempts into the record and hands record and files to the stage's ``save`` (which writes them in
one atomic commit). :func:`resume` is the mirror of a checkpoint: the trainee's :meth:`load_files` and the RNG
states the loop committed with them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Mapping, TypeVar

import torch

from .. import rng
from ..leases import Lease, held
from ..records import StageRecord
from ..runtime import AttemptLog, pick_device, tb_writer
from .loop import Cadence, Trainee, loop_steps
from .preempt import PreemptFlag, Preemption

if TYPE_CHECKING:
    from ..config import Config
    from ..store import RunDir

R = TypeVar("R", bound=StageRecord)


@dataclass
class StageContext:
    """What a running stage holds: its config and run, the folder it owns (``lease``), what it is called in errors
    (``where``), the signal flag (``preempt``), its ``device`` and when the process started (its attempt's start)."""
    run: RunDir
    cfg: Config
    folder: Path
    where: str
    preempt: PreemptFlag
    lease: Lease
    device: torch.device
    started: float
    _writers: list[Any] = field(default_factory=list, repr=False)

    def writer(self, folder: Path, purge_step: int | None) -> Any:
        """A TensorBoard writer on ``folder`` (closed when the context ends; see :func:`easlurm.runtime.tb_writer`
        for ``purge_step``)."""
        tb = tb_writer(folder, purge_step=purge_step)
        self._writers.append(tb)
        return tb

    def attempt_log(self, previous: list[dict[str, Any]] | None, first: int) -> AttemptLog:
        """This process's attempt, after ``previous`` ones, starting at ``first`` units."""
        return AttemptLog(previous, first, self.device, self.started)


@contextlib.contextmanager
def stage_context(run: RunDir, cfg: Config, folder: Path, where: str, device: str | None = None,
                  started: float | None = None, preemptible: bool = True,
                  preempt: PreemptFlag | None = None) -> Iterator[StageContext]:
    """Enter a stage: the preemption handlers first (a warning during start-up must not kill the task before its
    next commit), then the lease on ``folder`` (one live writer), then the device. ``started``: when the process
    began (default: now). ``preemptible=False``: a short stage that does not checkpoint keeps the default signal
    handling (SIGTERM ends it at once). ``preempt``: a flag the caller already installed and shares between the
    stages of one process (several members of one task); it is used as it is."""
    t0 = started if started is not None else time.time()
    signals = (contextlib.nullcontext(preempt) if preempt is not None
               else Preemption() if preemptible else contextlib.nullcontext(Preemption()))
    with signals as pre, held(folder, where, cfg.executor.lease_s) as lease:
        ctx = StageContext(run, cfg, folder, where, pre, lease, pick_device(device), t0)
        try:
            yield ctx
        finally:
            for tb in ctx._writers:
                tb.close()


def loader(folder: Path, record: StageRecord, drop: Mapping[str, tuple[str, ...]] | None = None
           ) -> Callable[[str], Any]:
    """``load(name)``: the file ``name`` of the checkpoint ``record`` describes (its own or referenced), verified
    against its sha256; None when the record lists no such file. ``drop``: entries left out of a loaded mapping
    (``{"optim.pt": ("g",)}`` starts the generator's Adam moments afresh)."""
    from ..tensor_files import load_verified

    listed = record.files.get("sha256", {})

    def load(name: str) -> Any:
        if name not in listed:
            return None
        obj = load_verified(folder, name, record.store)
        if drop and name in drop and isinstance(obj, dict):
            obj = {k: (None if k in drop[name] else v) for k, v in obj.items()}
        return obj

    return load


def load_optimizers(state: Mapping[str, Any] | None, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Load saved optimizer states (keys of an ``optim.pt``; a missing or None entry means fresh moments). Adam
    casts the loaded states to its parameters' device."""
    for key, opt in optimizers.items():
        if state and state.get(key):
            opt.load_state_dict(state[key])


def resume(trainee: Trainee, load: Callable[[str], Any]) -> None:
    """Restore what the loop committed: the trainee's files, then the RNG states (last: building networks draws
    from the RNG, and a resumed run must continue the exact stream)."""
    trainee.load_files(load)
    rng.restore(load("rng.pt"))


def train(ctx: StageContext, trainee: Trainee, record: R, save: Callable[[R, dict[str, bytes]], R],
          cadence: Cadence, *, tb_folder: Path, tb_step0: int = 0,
          extra_scalars: Callable[[], Mapping[str, float]] | None = None, tb: Any = None,
          attempt: AttemptLog | None = None) -> R:
    """Run the loop from ``record.iteration`` to ``cadence.total``; at every checkpoint call ``save(record, files)``
    with the record's ``iteration`` and ``attempts`` brought up to date (``save`` sets ``done`` as its stage
    defines it and commits). Returns the last record ``save`` returned. TensorBoard steps are ``tb_step0`` +
    iterations; ``tb``/``attempt``: a writer and attempt log the stage keeps using afterwards (default: new ones)."""
    steps = train_steps(ctx, trainee, record, save, cadence, tb_folder=tb_folder, tb_step0=tb_step0,
                        extra_scalars=extra_scalars, tb=tb, attempt=attempt)
    return drain(steps)


T = TypeVar("T")


def drain(steps: Generator[Any, None, T]) -> T:
    """Run a stage generator (:func:`train_steps`) to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result


def train_steps(ctx: StageContext, trainee: Trainee, record: R, save: Callable[[R, dict[str, bytes]], R],
                cadence: Cadence, *, tb_folder: Path, tb_step0: int = 0,
                extra_scalars: Callable[[], Mapping[str, float]] | None = None, tb: Any = None,
                attempt: AttemptLog | None = None) -> Generator[int, None, R]:
    """:func:`train` one iteration at a time: yields after each iteration, returns (``StopIteration.value``) the
    last record ``save`` returned (for :func:`easlurm.engine.group.interleave`)."""
    it0 = record.iteration
    tb = tb if tb is not None else ctx.writer(tb_folder, purge_step=tb_step0 + it0 + 1)
    attempt = attempt if attempt is not None else ctx.attempt_log(record.attempts, it0)
    current = record

    def commit(done: int, files: dict[str, bytes]) -> None:
        nonlocal current
        ctx.lease.check()
        current = save(dataclasses.replace(current, iteration=done, attempts=attempt.entries(done)), files)

    yield from loop_steps(trainee, start=it0, cadence=cadence, commit=commit, tb=tb, tb_step0=tb_step0,
                          preempt=ctx.preempt, extra_scalars=extra_scalars, attempt=attempt)
    return current


__all__ = ["StageContext", "stage_context", "loader", "load_optimizers", "resume", "train", "train_steps", "drain"]
