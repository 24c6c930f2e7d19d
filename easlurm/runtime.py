"""What every compute stage needs around its math: the device, CPU copies of states, finiteness checks, TensorBoard.

Kept apart from the stages so that training, the EA, fusion and evaluation share one implementation and none of
them imports another stage.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from .errors import TrainingError
from .store import make_dirs


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested`` or CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def allocated_cpus() -> int:
    """CPUs this task may use: the CPUs it may run on (its affinity mask: a Slurm task with CPU binding sees only
    its own), capped by ``SLURM_CPUS_PER_TASK`` (what it was allocated, which a node without binding does not
    enforce), never the node's core count."""
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(mine, int(slurm))) if slurm.isdigit() and int(slurm) > 0 else max(1, mine)


def configure_threads() -> int:
    """Size torch's threads for this task and return the count: ``OMP_NUM_THREADS`` when set (the local executor
    sets cores / tasks side by side; a person may set it), else :func:`allocated_cpus`. Also exported as
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for child processes."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    n = int(given) if given.isdigit() and int(given) > 0 else allocated_cpus()
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    return n


def loader_workers(requested: int) -> int:
    """``data.num_workers`` capped at the CPUs this task was allocated (workers beyond them only contend)."""
    return min(requested, allocated_cpus())


def cpu_state(module_or_state: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with every tensor copied to CPU (checkpoints are device-independent)."""
    sd = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in sd.items()}


#: Parameter dtypes torch's fused Adam implements (on CPU and CUDA).
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adam(params: Iterable[torch.Tensor], lr: float, betas: Sequence[float], fused: bool = True,
         capturable: bool = False) -> torch.optim.Adam:
    """Adam as every stage builds it (members, pretraining, fusion).

    ``fused`` (the default where torch has a fused kernel for the parameters' device and dtype): one kernel per
    parameter group instead of the default implementation's ~10 operators per tensor, and no host read of a
    per-tensor CPU step counter (bench/adam_fused.py; BENCHMARKS.md). Same update up to float rounding. The choice
    survives ``load_state_dict`` of a state saved by the other implementation (a run resumed across versions): the
    loaded groups' flags are set back and the step counters moved where this implementation keeps them.

    ``capturable``: safe to capture in a CUDA graph (step counters on the device; :mod:`easlurm.train.graphed`).
    Only for CUDA parameters: elsewhere a ValueError.
    """
    params = list(params)
    devices = {p.device.type for p in params}
    if capturable and devices != {"cuda"}:
        raise ValueError(f"adam(capturable=True): only for CUDA parameters, got {sorted(devices)}")
    use_fused = bool(fused and params and devices <= {"cpu", "cuda"} and len(devices) == 1
                     and all(p.dtype in _FUSED_DTYPES for p in params))
    opt = torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])),
                           **({"fused": True} if use_fused else {}), **({"capturable": True} if capturable else {}))
    flags = {k: opt.param_groups[0][k] for k in ("fused", "foreach", "capturable")}
    if capturable:  # the eager warm-up steps before a capture are intended: no "capturable but not captured" warning
        opt._warned_capturable_if_run_uncaptured = True

    def keep_implementation(o: torch.optim.Optimizer) -> None:
        for group in o.param_groups:
            group.update(flags)
            for p in group["params"]:
                state = o.state.get(p)
                if state and torch.is_tensor(state.get("step")):
                    on_device = flags["fused"] or flags["capturable"]
                    state["step"] = state["step"].to(dtype=torch.float32,
                                                     device=p.device if on_device else torch.device("cpu"))

    opt.register_load_state_dict_post_hook(keep_implementation)
    if use_fused:
        opt.register_step_pre_hook(_grads_strided_as_params)
    return opt


def _grads_strided_as_params(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Give every gradient its parameter's memory layout before a fused step. torch's fused Adam (2.14, CPU at
    least) reads a gradient whose strides differ from its parameter's as if they were the same, so it applies a
    permuted update; such gradients are rare (a conv fed a transposed view, as SwinIR's convs after its token
    layout: its conv-weight gradients come out channels-last) and copying them costs one copy each."""
    for group in opt.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is not None and g.stride() != p.stride():
                aligned = torch.empty_like(p, memory_format=torch.preserve_format)
                aligned.copy_(g)
                p.grad = aligned


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
