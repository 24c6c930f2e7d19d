"""The whole member job for bench/adam_step.py (and bench/gpu_check.py's extras): ``train_member`` on a throw-away
run directory, timed per iteration and split into its parts by :class:`JobClock`."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from _common import stamp, sync

from easlurm.config import load_config, write_config
from easlurm.engine import context as context_mod
from easlurm.engine import loop as loop_mod
from easlurm.errors import EaslurmError
from easlurm.store import RunDir
from easlurm.train import member as member_mod
from easlurm.train.init import init_population
from easlurm.train.member import MemberStep, train_member
from easlurm.train.pretrain import pretrain


def make_job_run(root: Path, config: Path, overrides: Sequence[str], shards: Path, iters: int) -> Path:
    """A run directory whose members train ``iters`` iterations in cycle 0's Adam phase, starting from a
    1-iteration L1 pretrain (:func:`prepare_job_run` runs it and the init stage)."""
    base = load_config(config, overrides)
    cfg = load_config(config, [*overrides, "model.pretrained=null", f"data.train={shards}", "data.val=null",
                               "pretrain.iters=1", f"pretrain.batch_size={base.adam.batch_size}",
                               "pretrain.checkpoint_every=1", f"adam.iters_per_cycle={iters}",
                               f"adam.first_phase_iters={iters}"])
    write_config(cfg, root, argv=["bench/adam_step.py"])
    return root


def prepare_job_run(root: Path, device: torch.device) -> None:
    """The stages before a member's first Adam phase: the L1 pretrain and the init stage (cycle 0's start
    population)."""
    pretrain(root, device=str(device))
    init_population(root)


class JobClock:
    """Times the parts of ``train_member`` (this process only) by wrapping what it calls through module globals.

    ``MemberStep.__call__`` (every step), ``batches`` (each ``next`` on the loader), the TensorBoard writer's
    methods (the writer the stage context opens), and ``torch_bytes`` + ``write_member`` (serialising and
    committing checkpoints; the training loop's ``rng.pt`` included). Only time after the first step has ended is
    booked (start-up is reported separately).

    On CUDA a step's wall time is read from CUDA events recorded around it (summed after the job), so the wrapper
    adds no host sync to the job — except one after the first step, which ends the start-up. The step's CPU time is
    always the host's.
    """

    PARTS = ("step", "loader", "tensorboard", "checkpoint")
    #: The module globals the job calls that are wrapped while the clock is installed: (module, name).
    WRAPPED = ((member_mod, "batches"), (context_mod, "tb_writer"), (member_mod, "torch_bytes"),
               (member_mod, "write_member"), (loop_mod, "torch_bytes"))

    def __init__(self, device: torch.device):
        self.device = device
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.booked = {k: np.zeros(2) for k in self.PARTS}
        self.events: list[tuple[Any, Any]] = []  # CUDA: (start, end) of each steady step

    def _book(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = stamp()
            try:
                return fn(*a, **k)
            finally:
                if self.ends:  # after the first step: steady state
                    self.booked[part] += stamp() - t0
        return timed

    def _step_call(self, original: Callable[..., Any]) -> Callable[..., Any]:
        cuda = self.device.type == "cuda"

        def step_call(step_self: MemberStep, *a: Any, **k: Any) -> Any:
            steady = bool(self.ends)
            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda and steady \
                else None
            t0 = stamp()
            self.starts.append(t0)
            if ev:
                ev[0].record()
            out = original(step_self, *a, **k)
            if ev:
                ev[1].record()
                self.events.append(ev)
            elif not steady:
                sync(self.device)  # the first step ends the start-up: once, so the steady clock starts there
            t1 = stamp()
            if steady:
                self.booked["step"] += t1 - t0  # wall part replaced by the events' time on CUDA (finish())
            self.ends.append(t1)
            return out

        return step_call

    def _wrapper(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        if name == "batches":
            def batches(*a: Any, **k: Any) -> Any:
                inner = original(*a, **k)
                take = self._book("loader", lambda: next(inner))
                while True:
                    try:
                        yield take()
                    except StopIteration:
                        return
            return batches
        if name == "tb_writer":
            def tb_writer(*a: Any, **k: Any) -> Any:
                writer = original(*a, **k)
                for method in ("add_scalar", "add_image", "flush", "close"):
                    setattr(writer, method, self._book("tensorboard", getattr(writer, method)))
                return writer
            return tb_writer
        return self._book("checkpoint", original)

    @contextlib.contextmanager
    def installed(self) -> Any:
        saved = [(mod, name, getattr(mod, name)) for mod, name in self.WRAPPED]
        original_call = MemberStep.__call__
        MemberStep.__call__ = self._step_call(original_call)  # type: ignore[method-assign]
        for mod, name, fn in saved:
            setattr(mod, name, self._wrapper(name, fn))
        try:
            yield self
        finally:
            MemberStep.__call__ = original_call  # type: ignore[method-assign]
            for mod, name, fn in saved:
                setattr(mod, name, fn)

    def finish(self) -> None:
        """After the job (and a sync): on CUDA, the steady steps' wall time from their events."""
        if self.events:
            self.booked["step"][0] = sum(a.elapsed_time(b) for a, b in self.events) / 1e3


def run_job(run: Path, member: int, device: torch.device, iters: int) -> dict[str, np.ndarray]:
    """Train ``member`` of cycle 0 from scratch once: [wall, CPU] seconds per iteration (whole, steady, parts)
    and of start-up."""
    rd = RunDir(run)
    shutil.rmtree(rd.member(0, member), ignore_errors=True)
    shutil.rmtree(rd.tb / f"member_{member:02d}", ignore_errors=True)
    clock = JobClock(device)
    with clock.installed():
        t0 = stamp()
        meta = train_member(run, 0, member, device=str(device))
        sync(device)
        t1 = stamp()
    clock.finish()
    if meta.iteration != iters or not meta.done or len(clock.starts) != iters:
        raise EaslurmError(f"bench: the job stopped at iteration {meta.iteration} of {iters} "
                           f"({len(clock.starts)} steps seen; member {member} must be Adam-trained)")
    if iters < 2:
        raise EaslurmError("bench: --job-iters must be >= 2 (the first iteration is start-up)")
    rest = iters - 1
    out = {"whole": (t1 - t0) / iters, "steady": (t1 - clock.ends[0]) / rest, "startup": clock.starts[0] - t0}
    out.update({k: v / rest for k, v in clock.booked.items()})
    out["other"] = out["steady"] - sum(clock.booked.values()) / rest
    return out
