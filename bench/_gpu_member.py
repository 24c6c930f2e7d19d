"""Sections 1 and 6 of bench/gpu_check.py: the member step (``MemberStep`` vs the bare loop of bench/_adam_sides.py,
per variant: precision, TF32, cheap fixes), the host syncs of the real training loop around it, and the whole
``train_member`` job (bench/_adam_job.py) next to its step alone."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _adam_job import JobClock, make_job_run, prepare_job_run, run_job
from _adam_sides import Side, build_sides, count_flops, fixed_batches, make_optimizers, moment_diff, timed_block
from _common import median, peak_gib, reset_peak, spread
from _gpu_common import cudnn_benchmark, free_memory, note_failure, tf32
from _gpu_ctx import CONFIGS, Ctx, flags
from _gpu_flatmix import FlatMixBare
from _gpu_syncs import SyncProbe, count_ops, count_syncs


@dataclass(frozen=True)
class Variant:
    label: str
    config: str
    overrides: tuple[str, ...]
    tf32: bool | None          # None: torch's defaults (cuDNN TF32 on, cuBLAS off), which is what the trainer gets
    benchmark: bool
    budget_s: float
    flat_mix: bool = False     # also time the bare loop with the flat normalised mix (bench/_gpu_flatmix.py)
    loop_syncs: bool = False   # also count host syncs per iteration of the real training loop (run_loop)


VARIANTS = (
    Variant("RRDB fp32", "rrdb", ("adam.bf16=false",), False, False, 24),
    Variant("RRDB TF32", "rrdb", ("adam.bf16=false",), True, False, 18),
    Variant("RRDB bf16", "rrdb", ("adam.bf16=true",), None, False, 24, flat_mix=True, loop_syncs=True),
    Variant("MSRResNet fp32", "srresnet", ("adam.bf16=false",), False, False, 12, loop_syncs=True),
    Variant("MSRResNet TF32", "srresnet", ("adam.bf16=false",), True, False, 10),
    Variant("MSRResNet bf16", "srresnet", ("adam.bf16=true",), None, False, 12, flat_mix=True),
    Variant("SwinIR-light TF32", "swinir", ("adam.bf16=false",), True, False, 12),
)
#: Cheap fixes to try (a config field, then one flag), measured after the real run when time is left.
EXTRA_VARIANTS = (
    Variant("RRDB bf16 + channels_last", "rrdb", ("adam.bf16=true", "adam.channels_last=true"), None, False, 15),
    Variant("RRDB bf16 + channels_last + cudnn.benchmark", "rrdb", ("adam.bf16=true", "adam.channels_last=true"),
            None, True, 15),
)

#: Under --cpu-smoke only these run: on CPU the others are the same computation (bf16 autocast, TF32,
#: channels_last and cuDNN flags act on CUDA only), so they would add minutes and no coverage.
SMOKE_VARIANTS = ("RRDB bf16", "MSRResNet fp32", "SwinIR-light TF32")


def _third_side(cfg: Any, bare: Side) -> Side:
    """A :class:`FlatMixBare` side from deep copies of the (not yet stepped) bare side: identical start states."""
    b: Any = bare.step
    g, d, vgg = copy.deepcopy(b.g), copy.deepcopy(b.d), copy.deepcopy(b.vgg)
    opt_g, opt_d = make_optimizers(cfg, g, d)
    step = FlatMixBare(g, d, vgg, dict(b.layer_weights), b.l2, b.gan, (b.w_dist, b.w_perc), b.eps, b.pw, b.gw,
                       opt_g, opt_d, b.bf16, b.channels_last)
    return Side("bare, flat mix", step, opt_g, opt_d)


def _same_math(sides: list[Side], tol: float) -> dict[str, Any]:
    """After one step of every side from identical states: relative difference of each side's Adam first moments
    (∝ its update direction) from the first side's, for G and D; ``ok`` when all are within ``tol``."""
    out: dict[str, Any] = {}
    for side in sides[1:]:
        for which in ("opt_g", "opt_d"):
            diff = moment_diff(sides[0], side, which)
            out[f"{side.name} {which}"] = float("inf") if diff is None else diff
    out["ok"] = all(v <= tol for k, v in out.items() if k != "ok")
    out["tolerance"] = tol
    return out


def _member_variant(ctx: Ctx, v: Variant, budget_end: float) -> dict[str, Any]:
    from easlurm.population import preferences

    dev = ctx.device
    cfg = ctx.cfg(v.config, v.overrides)
    n = cfg.population.size
    m = n // 2
    w = preferences(n)[m]
    bf16 = dev.type == "cuda" and cfg.adam.bf16
    row: dict[str, Any] = {
        "label": v.label, "arch": cfg.model.arch, "options": dataclasses.asdict(cfg.model.options),
        "num_feat": getattr(cfg.model.options, "num_feat", None),
        "num_block": getattr(cfg.model.options, "num_block", None),
        "batch": cfg.adam.batch_size, "patch": cfg.data.patch_size, "bf16_autocast": bf16,
        "channels_last": dev.type == "cuda" and cfg.adam.channels_last, "member": m, "preference": list(w),
        "gan": cfg.loss.gan_type, "layers": dict(cfg.loss.perceptual.layers),
    }
    data = fixed_batches(cfg, Path(cfg.data.train), 2 if ctx.smoke else 4, dev)
    trainer, bare = build_sides(cfg, dev, w)
    sides = [trainer, bare] + ([_third_side(cfg, bare)] if v.flat_mix else [])
    ms: Any = trainer.step  # the MemberStep object
    row["perceptual_net"] = getattr(ms.perceptual, "net", "?")
    row["g_params"] = sum(p.numel() for p in ms.g.parameters())
    row["g_tensors"] = len(ms.params)
    row["flags"] = flags()

    first: dict[str, float] = {}
    for s in sides:  # one step each from identical states: the cold first iteration, and the check of the math
        first[s.name] = ctx.timed(partial(s.step, *data[0]))
    row["first_iteration_s"] = first
    row["same_math"] = _same_math(sides, 2e-2 if bf16 else 1e-3)

    warm = 1 if ctx.smoke else 2
    per_it = max(float(timed_block(s, data, warm, dev)[0]) for s in sides)
    row["warm_s_per_it"] = per_it
    row["flops_per_it"] = {s.name: count_flops(s, *data[0]) for s in sides[:2]}
    row["syncs_per_it"] = {s.name: count_syncs(partial(s.step, *data[1 % len(data)]), dev).as_dict()
                           for s in sides}
    row["aten_ops_per_it"] = {s.name: count_ops(partial(s.step, *data[0])) for s in sides}

    iters = 1 if ctx.smoke else 5
    avail = budget_end - time.time() - 1.0
    reps = max(1, min(2 if ctx.smoke else 8, int(avail / (len(sides) * iters * per_it))))
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu: dict[str, list[float]] = {s.name: [] for s in sides}
    peak: dict[str, float] = {}
    for r in range(reps):
        k = r % len(sides)  # rotate the order, so no side always runs first
        for s in sides[k:] + sides[:k]:
            reset_peak(dev)
            wall_cpu = timed_block(s, data, iters, dev, first=r * iters)
            times[s.name].append(float(wall_cpu[0]))
            cpu[s.name].append(float(wall_cpu[1]))
            pk = peak_gib(dev)
            if pk is not None:
                peak[s.name] = max(peak.get(s.name, 0.0), pk)
    row.update(reps=reps, iters_per_rep=iters, s_per_it=times, peak_gib=peak,
               host_cpu_s_per_it={k: median(x) for k, x in cpu.items()})
    t_tr, t_bare = median(times["MemberStep"]), median(times["bare"])
    paired = [b / t for b, t in zip(times["bare"], times["MemberStep"], strict=True)]
    flops = row["flops_per_it"]["MemberStep"]
    peak_rate = ctx.shared.get("peak")
    row.update(
        ms_per_it={k: median(x) * 1e3 for k, x in times.items()},
        spread={k: spread(x) for k, x in times.items()},
        ratio=t_bare / t_tr, ratio_paired=median(paired),
        its_per_s={k: 1 / median(x) for k, x in times.items()},
        samples_per_s=cfg.adam.batch_size / t_tr,
        tflops={"MemberStep": flops / t_tr / 1e12, "bare": row["flops_per_it"]["bare"] / t_bare / 1e12},
        mfu=(flops / t_tr / 1e12 / peak_rate) if peak_rate else None,
    )
    if "bare, flat mix" in times:
        row["flat_mix_speedup"] = t_bare / median(times["bare, flat mix"])
    if v.loop_syncs:
        row["loop_syncs"] = _loop_syncs(ctx, cfg, ms, data)
    return row


class _NullBoard:
    """Stands in for the TensorBoard writer: the loop still converts every logged scalar to a float (the host sync
    being counted); only the event file is not written."""

    def add_scalar(self, *a: Any, **k: Any) -> None:
        pass

    def add_image(self, *a: Any, **k: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


#: The loop cadence whose syncs are counted: 4 iterations, log every 2, checkpoint at the end.
LOOP_CADENCE = (4, 2)


def _loop_syncs(ctx: Ctx, cfg: Any, ms: Any, data: list[Any]) -> dict[str, Any]:
    """Host syncs per iteration of the real training loop (``easlurm.engine.loop.run_loop``) driving the member
    stage's trainee (``easlurm.train.member.MemberTrainee``) around this MemberStep, on the fixed batches: inside
    the step, and in the loop's own work after it (the on-device loss watch; float() of the scalars and the loss
    check at log steps; the weight check and state serialisation at the checkpoint step, whose commit here writes
    nothing). The networks go on training for these iterations, after every timing."""
    from easlurm.engine.loop import Cadence, run_loop
    from easlurm.train.member import MemberTrainee

    total, log_every = LOOP_CADENCE
    probe = SyncProbe(ctx.device)
    trainee = MemberTrainee("gpu_check", ms, itertools.cycle(data), ctx.device)
    inner = trainee.step

    def step(it: int) -> Any:
        probe.mark(f"step {it}")
        out = inner(it)
        probe.mark(f"loop {it}")
        return out

    trainee.step = step  # type: ignore[method-assign]
    with probe.counting():
        run_loop(trainee, start=0, cadence=Cadence(total, total, log_every, None),
                 commit=lambda done, files: None, tb=_NullBoard())
    iters: list[dict[str, Any]] = []
    for label, reads, cuda in probe.intervals():
        kind, _, num = label.partition(" ")
        if kind not in ("step", "loop"):
            continue
        it = int(num)
        if kind == "step":
            done = it + 1
            iters.append({"iteration": it, "log": done % log_every == 0 or done == total,
                          "checkpoint": done == total})
        iters[-1][f"{kind}_reads"] = reads
        iters[-1][f"{kind}_cuda"] = cuda
    return {"iterations": total, "log_every": log_every, "checkpoint_every": total, "per_iteration": iters,
            "read_sites": dict(sorted(probe.reads.sites.items()))}


def _run_variants(ctx: Ctx, record: dict[str, Any], variants: tuple[Variant, ...], name: str) -> None:
    record.setdefault("rows", [])
    record["peak_tflops"] = ctx.shared.get("peak")
    for v in variants:
        if ctx.smoke and v.label not in SMOKE_VARIANTS:
            record.setdefault("not_in_smoke", []).append(v.label)
            continue
        left = ctx.clock.left()
        if left < min(v.budget_s, 8.0):
            record.setdefault("skipped", []).append(f"{v.label}: {left:.0f} s left in the section")
            continue
        print(f"[gpu_check] member step: {v.label}", flush=True)
        try:
            with tf32(v.tf32) if v.tf32 is not None else contextlib.nullcontext(), cudnn_benchmark(v.benchmark):
                row = _member_variant(ctx, v, time.time() + min(v.budget_s, left - 1.0))
            record["rows"].append(row)
            ctx.shared.setdefault("member_rows", {})[v.label] = row
            print(f"[gpu_check]   ms/it {', '.join(f'{k} {x:.1f}' for k, x in row['ms_per_it'].items())}; "
                  f"ratio {row['ratio']:.3f}, "
                  f"{row['tflops']['MemberStep']:.2f} TFLOP/s, syncs/it "
                  f"{row['syncs_per_it']['MemberStep']['host_reads']:.0f} reads / "
                  f"{row['syncs_per_it']['MemberStep']['cuda_syncs']} CUDA, peak {row['peak_gib']}", flush=True)
        except Exception as exc:  # noqa: BLE001
            note_failure(record, v.label, exc)
        free_memory(ctx.device)
        ctx.results.put(name, record)


def section_member_step(ctx: Ctx, record: dict[str, Any]) -> None:
    _run_variants(ctx, record, VARIANTS, "member_step")


def section_extras(ctx: Ctx, record: dict[str, Any]) -> None:
    """After the real run, with what time is left: the cheap fixes, then the whole member job."""
    _run_variants(ctx, record, EXTRA_VARIANTS, "extras")
    if ctx.clock.left() < (5 if ctx.smoke else 30):
        record.setdefault("skipped", []).append(f"whole-job run: {ctx.clock.left():.0f} s left in the section")
        return
    try:
        record["job"] = _member_job(ctx, "RRDB bf16")
    except Exception as exc:  # noqa: BLE001
        note_failure(record, "whole-job run", exc)
    ctx.results.put("extras", record)


def _member_job(ctx: Ctx, label: str) -> dict[str, Any]:
    """The real ``train_member`` (loader workers, host-to-device copies, TensorBoard, the final checkpoint) for a
    few iterations of one variant, timed by bench/_adam_job.py's JobClock, next to that variant's MemberStep."""
    v = next(v for v in VARIANTS + EXTRA_VARIANTS if v.label == label)
    alone = ctx.shared.get("member_rows", {}).get(label)
    iters = 3 if ctx.smoke else 40
    root = ctx.scratch / "member_job"
    cfg = ctx.cfg(v.config, v.overrides)
    make_job_run(root, CONFIGS[v.config], ctx.overrides(v.config, v.overrides), Path(cfg.data.train), iters)
    with tf32(v.tf32) if v.tf32 is not None else contextlib.nullcontext(), cudnn_benchmark(v.benchmark):
        t0 = time.perf_counter()
        prepare_job_run(root, ctx.device)  # 1-iteration pretrain + the init stage
        pre_s = time.perf_counter() - t0
        job = run_job(root, cfg.population.size // 2, ctx.device, iters)
    out: dict[str, Any] = {"label": label, "iters": iters, "num_workers": cfg.data.num_workers,
                           "pretrain_and_init_s": pre_s,
                           **{k: float(job[k][0]) for k in ("whole", "steady", "startup", *JobClock.PARTS,
                                                            "other")}}
    if alone:
        out["memberstep_alone_s"] = alone["ms_per_it"]["MemberStep"] / 1e3
        out["ratio_alone_to_steady"] = out["memberstep_alone_s"] / out["steady"]
    return out
