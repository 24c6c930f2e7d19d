"""What every compute stage needs around its math: the device, CPU copies of states, finiteness checks, TensorBoard.

Kept apart from the stages so that training, the EA, fusion and evaluation share one implementation and none of
them imports another stage.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from .errors import TrainingError
from .store import make_dirs


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested`` or CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_state(module_or_state: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with every tensor copied to CPU (checkpoints are device-independent)."""
    sd = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in sd.items()}


def optimizer_state_cpu(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's state dict with its tensors on CPU."""
    sd = opt.state_dict()
    return {"state": {k: {n: (t.cpu() if torch.is_tensor(t) else t) for n, t in s.items()}
                      for k, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def nonfinite_parameters(modules: Mapping[str, nn.Module]) -> list[str]:
    """``module.parameter`` names holding NaN/Inf (empty when all finite; one host sync when they are)."""
    named = [(f"{m}.{n}", p) for m, mod in modules.items() for n, p in mod.named_parameters()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(flags.all()):
        return []
    return [name for (name, _), ok in zip(named, flags.tolist()) if not ok]


def check_finite_weights(where: str, iteration: int, modules: Mapping[str, nn.Module]) -> None:
    """Refuse to go on (and so to commit) when any weight is NaN/Inf: a poisoned checkpoint would make every
    retry fail the same way. The error names the stage/member, the iteration and the first bad tensors."""
    bad = nonfinite_parameters(modules)
    if bad:
        raise TrainingError(f"{where}: non-finite weights at iteration {iteration} in {', '.join(bad[:3])}"
                            f"{' …' if len(bad) > 3 else ''}; not committed, the last checkpoint is kept")


def tb_writer(folder: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``folder``; ``purge_step`` drops the events at or after that step (those a
    resumed run will rewrite): pass the first step the writer will log, i.e. the committed step + 1 — the committed
    step itself was logged before its commit and is not logged again."""
    from torch.utils.tensorboard import SummaryWriter

    make_dirs(folder)  # sticky and group-owned in a shared run, like every run folder
    _wait_to_sort_after_earlier_event_files(folder)
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


def _wait_to_sort_after_earlier_event_files(folder: Path, max_wait_s: float = 3.0) -> None:
    """Sleep until the clock's second is past every event file's creation second in ``folder`` (at most
    ``max_wait_s``).

    Why: TensorBoard reads a folder's event files in name order, and a name is the creation second (10 digits)
    followed by host, pid and a per-process counter compared as text ('10' sorts before '9'). A writer created in
    the same second as the previous one (a retry straight after a failure; tests) can sort before it, and its
    ``purge_step`` then drops the wrong steps — the resumed run's own. A later second sorts after. A file dated
    further ahead (another host's clock) is not waited for."""
    import time

    # The 10-digit second leads the name, so the last name in sorted order holds the newest second.
    names = sorted(p.name for p in folder.glob("events.out.tfevents.*"))
    stamp = names[-1].split(".")[3] if names else ""
    wait = int(stamp) + 1 - time.time() if stamp.isdigit() else 0.0
    if 0 < wait <= max_wait_s:
        time.sleep(wait)


class AttemptLog:
    """When and where a stage ran, for ``status`` and the bill: one entry per attempt (a process that worked on the
    stage), kept in the stage's record as ``attempts``.

    Entry: ``started`` (process start, Unix s), ``loop_started`` (first iteration), ``updated`` (latest commit),
    ``first``/``last`` (progress units — iterations or generations — at its start and at ``updated``), ``host``,
    ``job`` (Slurm job id or null), ``device``, ``gpus`` (CUDA devices the process could see).
    """

    def __init__(self, previous: list[dict[str, Any]] | None, first: int, device: torch.device | str,
                 started: float | None = None):
        import os
        import socket
        import time

        self._time = time.time
        self.previous = list(previous or [])
        self.entry: dict[str, Any] = {
            "started": started or time.time(), "loop_started": None, "first": int(first), "host": socket.gethostname(),
            "job": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID")),
            "device": str(device), "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
        if os.environ.get("SLURM_ARRAY_TASK_ID") and os.environ.get("SLURM_ARRAY_JOB_ID"):
            self.entry["job"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"

    def loop_started(self) -> None:
        if self.entry["loop_started"] is None:
            self.entry["loop_started"] = self._time()

    def entries(self, last: int) -> list[dict[str, Any]]:
        """Every attempt so far, this one updated to ``last`` units now."""
        now = self._time()
        return [*self.previous, {**self.entry, "loop_started": self.entry["loop_started"] or now, "updated": now,
                                 "last": int(last)}]


__all__ = ["pick_device", "cpu_state", "optimizer_state_cpu", "nonfinite_parameters", "check_finite_weights",
           "tb_writer", "AttemptLog"]


@contextlib.contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN without benchmark mode and with deterministic algorithms inside the block (restored afterwards):
    benchmark mode may pick different conv algorithms run to run, which would break byte-identical reruns (the EA
    phase's evaluations)."""
    old = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old
