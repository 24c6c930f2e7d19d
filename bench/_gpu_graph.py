"""Section 8 of bench/gpu_check.py: the member step eager against one captured CUDA graph (``adam.cuda_graph``,
issue 17 step B; easlurm.train.graphed).

Per variant, two members built from the same seed through the trainer's own ``build_member`` — one eager, one with
``adam.cuda_graph: true`` (fused, capturable Adam; 3 eager warm-ups on a side stream, then capture and replay) —
run the same real training batches:

* **same math**: after ``EQUAL_ITERS`` iterations (warm-ups, capture, replays) the relative difference of the two
  generators' weights and discriminators' weights, against the eager run's own noise floor (a second eager member:
  cuDNN's algorithms are not bit-deterministic on the GPU), and the last iteration's losses;
* **speed**: ms per iteration (medians of synchronised blocks, order rotated), the host's CPU time issuing them as
  a share of the wall time (``time.process_time``, all threads, so above 100 % with several torch threads on a
  CPU) and peak memory;
* it/s and MFU (with section 1's FLOP count when it ran for the same variant label).

Under --cpu-smoke there is no CUDA graph: the graphed member uses :class:`easlurm.train.graphed.Rerun` (the same
warm-up/capture/replay code, recomputed), so the section's code paths run in CI; its times mean nothing.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from _adam_sides import fixed_batches, rel_diff
from _common import peak_gib, reset_peak, sync
from _gpu_common import cudnn_benchmark, free_memory, note_failure, tf32
from _gpu_ctx import Ctx, flags


@dataclass(frozen=True)
class GraphVariant:
    label: str
    config: str
    overrides: tuple[str, ...]
    tf32: bool | None
    flops_from: str  #: section 1's variant whose FLOP count per iteration is this one's (precision adds none)


GRAPH_VARIANTS = (
    GraphVariant("RRDB TF32", "rrdb", ("adam.bf16=false",), True, "RRDB TF32"),
    GraphVariant("RRDB bf16 + channels_last", "rrdb", ("adam.bf16=true", "adam.channels_last=true"), None,
                 "RRDB bf16"),
    GraphVariant("MSRResNet TF32", "srresnet", ("adam.bf16=false",), True, "MSRResNet TF32"),
)
SMOKE_GRAPH_VARIANTS = ("RRDB TF32",)
#: Iterations both members run before their weights are compared: 3 warm-ups, the captured one, 2 replays.
EQUAL_ITERS = 6


def _trainee(cfg: Any, device: torch.device, perceptual: torch.nn.Module, graphed: bool) -> Any:
    import dataclasses

    from easlurm.population import preferences
    from easlurm.train.graphed import GraphedStep, Rerun
    from easlurm.train.member import build_member

    n = cfg.population.size
    cfg = dataclasses.replace(cfg, adam=dataclasses.replace(cfg.adam, cuda_graph=graphed))
    torch.manual_seed(0)  # the same initial G and D on every side
    tr = build_member(cfg, tuple(preferences(n)[n // 2]), device, "gpu_check", perceptual)
    if graphed and tr.graph is None:  # no CUDA here: the CPU stand-in, same code around it
        tr.graph = GraphedStep(tr.s, Rerun)
    return tr


def _weights(tr: Any) -> list[torch.Tensor]:
    return [p.detach() for m in (tr.s.g, tr.s.d) for p in m.parameters()]


def _block_s(tr: Any, data: list[Any], iters: int, device: torch.device) -> tuple[float, float]:
    """Wall seconds per iteration of ``iters`` synchronised iterations, and the host CPU seconds per iteration spent
    issuing them (the final wait is left out: ``cuda.synchronize`` may spin a core while it waits)."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(iters):
        lr, hr = data[i % len(data)]
        (tr.graph or tr.s)(lr, hr)
    c1 = time.process_time()
    sync(device)
    return (time.perf_counter() - w0) / iters, (c1 - c0) / iters


def _variant(ctx: Ctx, v: GraphVariant) -> dict[str, Any]:
    from easlurm import factory

    dev = ctx.device
    cfg = ctx.cfg(v.config, v.overrides)
    row: dict[str, Any] = {"label": v.label, "arch": cfg.model.arch, "batch": cfg.adam.batch_size,
                           "patch": cfg.data.patch_size, "bf16": dev.type == "cuda" and cfg.adam.bf16,
                           "channels_last": dev.type == "cuda" and cfg.adam.channels_last,
                           "backend": "CUDA graph" if dev.type == "cuda" else "Rerun (CPU stand-in)"}
    perceptual = factory.build_perceptual(cfg).to(dev)
    data = fixed_batches(cfg, Path(cfg.data.train), 2 if ctx.smoke else 4, dev)
    with tf32(v.tf32) if v.tf32 is not None else contextlib.nullcontext(), cudnn_benchmark(True):
        row["flags"] = flags()
        sides = {"eager": _trainee(cfg, dev, perceptual, False), "eager again": _trainee(cfg, dev, perceptual, False),
                 "graph": _trainee(cfg, dev, perceptual, True)}
        last: dict[str, dict[str, float]] = {}
        t_first: dict[str, float] = {}
        for name, tr in sides.items():
            for i in range(EQUAL_ITERS):
                lr, hr = data[i % len(data)]
                sync(dev)
                t0 = time.perf_counter()
                res, _ = (tr.graph or tr.s)(lr, hr)
                if i == 3:  # the graphed member captures and replays here
                    sync(dev)
                    t_first[name] = time.perf_counter() - t0
            last[name] = {k: float(x) for k, x in res.scalars().items()}
        g = sides["graph"].graph
        row["captures"], row["replays"] = g.captures, g.replays
        row["capture_iteration_s"] = t_first
        row["same_math"] = {
            "graph_vs_eager": rel_diff(_weights(sides["graph"]), _weights(sides["eager"])),
            "eager_vs_eager": rel_diff(_weights(sides["eager again"]), _weights(sides["eager"])),
            "last_losses": last}
        del sides["eager again"]
        free_memory(dev)
        iters, reps = (2, 2) if ctx.smoke else (10, 5)
        times: dict[str, list[float]] = {k: [] for k in sides}
        host: dict[str, list[float]] = {k: [] for k in sides}
        peak: dict[str, float] = {}
        names = list(sides)
        for r in range(reps):
            for name in names[r % 2:] + names[:r % 2]:
                reset_peak(dev)
                wall, cpu = _block_s(sides[name], data, iters, dev)
                times[name].append(wall)
                host[name].append(cpu)
                pk = peak_gib(dev)
                if pk is not None:
                    peak[name] = max(peak.get(name, 0.0), pk)
    ms = {k: 1e3 * statistics.median(x) for k, x in times.items()}
    row.update(ms_per_it=ms, its_per_s={k: 1e3 / x for k, x in ms.items()}, peak_gib=peak,
               host_cpu_share={k: statistics.median(host[k]) / statistics.median(times[k]) for k in times},
               speedup=ms["eager"] / ms["graph"], reps=reps, iters_per_rep=iters)
    flops = (ctx.shared.get("member_rows", {}).get(v.flops_from) or {}).get("flops_per_it", {}).get("MemberStep")
    peak_rate = ctx.shared.get("peak")
    if flops and peak_rate:
        row["mfu"] = {k: flops / (x / 1e3) / 1e12 / peak_rate for k, x in ms.items()}
    return row


def section_graph(ctx: Ctx, record: dict[str, Any]) -> None:
    rows = record["rows"] = []
    for v in GRAPH_VARIANTS:
        if ctx.smoke and v.label not in SMOKE_GRAPH_VARIANTS:
            continue
        try:
            rows.append(_variant(ctx, v))
        except Exception as exc:  # noqa: BLE001 - the other variants still run
            note_failure(record, v.label, exc)
        free_memory(ctx.device)
        ctx.results.put("graph", record)
