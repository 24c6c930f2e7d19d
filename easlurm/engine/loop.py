"""The one resumable training loop: member Adam phases, L1 pretraining and fusion plug their step into it.

The loop owns what every trainer needs and nothing stage-specific:

* **cadence** — TensorBoard scalars every ``log_every`` iterations, a sample image every ``image_every``, a checkpoint
  every ``checkpoint_every``, at the end and on preemption;
* **finiteness** — loss terms are checked on the device without a host sync per iteration (the first iteration at
  which each term went non-finite is kept in a device tensor and read at the next log or checkpoint step); weights
  are checked before every commit, so a poisoned checkpoint is never written;
* **preemption** — SIGUSR2/SIGTERM (:class:`~easlurm.engine.preempt.Preemption`) → commit after the current iteration,
  then hand the signal on;
* **exact resume** — the caller starts the loop at the committed iteration with the committed RNG states; the loop
  adds ``rng.pt`` to every commit.

A stage supplies a :class:`Trainee` (its step, its state files and how to load them back) and a
``commit(iteration, files)`` callback that writes its own record; :func:`easlurm.engine.context.train` is that
callback for a stage with a :class:`~easlurm.records.StageRecord`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch
import torch.nn as nn

from ..errors import TrainingError
from ..runtime import AttemptLog, check_finite_weights
from ..tensor_files import torch_bytes
from .. import rng
from .preempt import PreemptFlag


@dataclass(frozen=True)
class Cadence:
    """How often the loop logs, samples and checkpoints (iterations; ``image_every`` None → never)."""
    total: int
    checkpoint_every: int
    log_every: int
    image_every: int | None = None


class Trainee(Protocol):
    """What a stage plugs into :func:`run_loop`."""

    where: str  #: names the stage in errors, e.g. "Adam phase of cycle 3, member 02"

    def step(self, iteration: int) -> Mapping[str, torch.Tensor]:
        """One iteration; returns its scalars (0-d tensors, left on the device: the loop syncs only to log)."""

    def modules(self) -> Mapping[str, nn.Module]:
        """The trained modules, checked finite before every commit."""

    def checkpoint_files(self) -> dict[str, bytes]:
        """The state files to commit (the loop adds ``rng.pt``)."""

    def load_files(self, load: Callable[[str], Any]) -> None:
        """The mirror of :meth:`checkpoint_files`: restore from ``load(name)`` (the loaded file, or None when the
        checkpoint has no such file — e.g. a start entry without optimizer state)."""

    def sample_image(self) -> torch.Tensor | None:
        """A CHW RGB [0, 1] picture of the last step for TensorBoard, or None."""


class _LossWatch:
    """First iteration at which each loss term went non-finite, tracked on the device (no per-step host sync)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.first_bad: torch.Tensor | None = None

    def update(self, iteration: int, scalars: Mapping[str, torch.Tensor]) -> None:
        if not scalars:
            return
        if self.first_bad is None:
            self.names = list(scalars)
            device = next(iter(scalars.values())).device
            self.first_bad = torch.full((len(self.names),), -1, dtype=torch.int64, device=device)
        finite = torch.stack([torch.isfinite(scalars[n].detach()).all() for n in self.names])
        fresh = (~finite) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, iteration), self.first_bad)

    def check(self, where: str) -> None:
        if self.first_bad is None:
            return
        bad = self.first_bad.tolist()
        # Earliest iteration first; within it, the trainee's order (loss terms before derived values such as
        # gradient norms, which a non-finite loss poisons in the same iteration).
        hits = [(it, k, name) for k, (it, name) in enumerate(zip(bad, self.names)) if it >= 0]
        if hits:
            it, _, name = min(hits)
            raise TrainingError(f"{where}: {name} loss is not finite at iteration {it}; stopped, the last "
                                f"checkpoint is kept")


def run_loop(trainee: Trainee, *, start: int, cadence: Cadence, commit: Callable[[int, dict[str, bytes]], Any],
             tb: Any, tb_step0: int = 0, preempt: PreemptFlag | None = None,
             extra_scalars: Callable[[], Mapping[str, float]] | None = None,
             attempt: AttemptLog | None = None) -> None:
    """Run iterations ``start`` … ``cadence.total - 1`` of ``trainee``.

    ``commit(iteration, files)`` is called with the number of finished iterations and the state files (plus
    ``rng.pt``) at every checkpoint step; TensorBoard steps are ``tb_step0 + finished iterations``.
    ``extra_scalars()`` adds values (e.g. learning rates) to each log step; ``attempt`` is told when the loop starts
    (the commit callback reads it for the stage record). Raises :class:`TrainingError` on a
    non-finite loss (at the next log/checkpoint step, naming the first bad iteration) or non-finite weights (before
    the commit), leaving the last checkpoint as it was.
    """
    for _ in loop_steps(trainee, start=start, cadence=cadence, commit=commit, tb=tb, tb_step0=tb_step0,
                        preempt=preempt, extra_scalars=extra_scalars, attempt=attempt):
        pass


def loop_steps(trainee: Trainee, *, start: int, cadence: Cadence, commit: Callable[[int, dict[str, bytes]], Any],
               tb: Any, tb_step0: int = 0, preempt: PreemptFlag | None = None,
               extra_scalars: Callable[[], Mapping[str, float]] | None = None,
               attempt: AttemptLog | None = None) -> Iterator[int]:
    """:func:`run_loop` one iteration at a time: yields the number of finished iterations after each (its log and
    commit done), so a caller can interleave several trainees' loops in one process
    (:func:`easlurm.engine.group.interleave`)."""
    watch = _LossWatch()
    if attempt is not None:
        attempt.loop_started()
    t_last, it_last = time.perf_counter(), start
    for it in range(start, cadence.total):
        scalars = trainee.step(it)
        watch.update(it, scalars)
        done = it + 1
        last = done == cadence.total
        requested = preempt is not None and preempt.requested
        to_log = done % cadence.log_every == 0 or last
        to_save = done % cadence.checkpoint_every == 0 or last or requested
        if to_log or to_save:
            watch.check(trainee.where)
        if to_log:
            now = time.perf_counter()
            values = {f"loss/{k}": float(v) for k, v in scalars.items()}
            values.update(extra_scalars() if extra_scalars else {})
            values["speed/iters_per_s"] = (done - it_last) / max(now - t_last, 1e-9)
            for tag, val in values.items():
                tb.add_scalar(tag, val, tb_step0 + done)
            t_last, it_last = now, done
        if cadence.image_every and (done % cadence.image_every == 0 or last):
            img = trainee.sample_image()
            if img is not None:
                tb.add_image("samples/lr_sr_hr", img, tb_step0 + done)
        if to_save:
            check_finite_weights(trainee.where, done, trainee.modules())
            files = trainee.checkpoint_files()
            files["rng.pt"] = torch_bytes(rng.capture())
            tb.flush()
            commit(done, files)
        if requested:
            assert preempt is not None
            tb.close()
            preempt.finish()
        yield done


__all__ = ["Cadence", "Trainee", "run_loop", "loop_steps"]
