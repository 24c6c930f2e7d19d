"""The results table of bench/adam_step.py: MemberStep vs the bare loop, and the whole job, per variant."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from _adam_job import JobClock
from _common import command_line, generator_line, machine, med_iqr, report_head

if TYPE_CHECKING:
    from adam_step import Plan


def pick(xs: Sequence[np.ndarray], c: int) -> list[float]:
    """Clock ``c`` (0 wall, 1 CPU) of each [wall, CPU] pair."""
    return [float(x[c]) for x in xs]


def fmt_ms(xs: Sequence[float]) -> str:
    m, q1, q3 = med_iqr(xs)
    return f"{m * 1e3:.1f} [{q1 * 1e3:.1f}–{q3 * 1e3:.1f}]"


def fmt_ratio(xs: Sequence[float]) -> str:
    m, q1, q3 = med_iqr(xs)
    return f"{m:.3f} [{q1:.3f}–{q3:.3f}]"


def report(results: list[dict[str, Any]], argv: Sequence[str] | None, device: torch.device, plan: Plan,
           load_start: float, loads: list[float], threads: int) -> str:
    if device.type == "cuda":
        dev = (f"{torch.cuda.get_device_name(device)}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
               f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
        unit, scale = "TFLOP/s", 1e12
        clocks = [("wall", 0)]  # the GPU is the resource; host CPU time says little
    else:
        dev = "CPU only (no GPU in this environment)"
        unit, scale = "GFLOP/s", 1e9
        clocks = [("CPU time", 1), ("wall", 0)]
    cfg0, r0 = results[0]["cfg"], results[0]
    lines = [
        *report_head("# Adam-phase iteration: MemberStep vs a bare PyTorch loop, and the whole train_member job",
                     command_line("adam_step.py", argv, env=("OMP_NUM_THREADS",)),
                     machine(f"{threads} torch thread(s); device: {dev}")),
        f"- load (1-min average, other engineers share the cores): {load_start:.2f} at start, "
        f"{min(loads):.2f}–{max(loads):.2f} during, {os.getloadavg()[0]:.2f} at end",
        f"- model: {generator_line(cfg0)} ({r0['g_params']:,} parameters); D {cfg0.discriminator.arch} num_feat "
        f"{cfg0.discriminator.num_feat} ({r0['d_params']:,} parameters); perceptual {r0['vgg']} {r0['layers']}; "
        f"GAN {cfg0.loss.gan_type}",
        f"- batch {cfg0.adam.batch_size} × {cfg0.data.patch_size}² HR RGB patches (real photos, {plan.batches} fixed "
        f"in-memory batches); member {r0['member']}, preference w = ({r0['w'][0]:g}, {r0['w'][1]:g}) (both gradient "
        f"passes run)",
        f"- protocol: one equivalence step, {plan.warmup} warm-up iteration(s) per side, then {plan.reps} "
        f"repetitions × {plan.iters} iteration(s) per side, order alternating (ABBA…); {plan.job_runs} whole-job "
        f"run(s) of {plan.job_iters} iterations (after one short warm-up job) spread between the repetitions; job "
        f"cadence: log every {cfg0.adam.log_every}, image every {cfg0.adam.image_every}, checkpoint every "
        f"{cfg0.adam.checkpoint_every} (and at the end), data.num_workers {cfg0.data.num_workers}",
        "",
        "## MemberStep vs bare loop (same math, same batches)",
        "",
        f"| variant | clock | MemberStep ms/it, median [IQR] | bare ms/it, median [IQR] | ratio bare/MemberStep "
        f"(medians) | paired ratio per rep, median [IQR] | GFLOP/it | MemberStep {unit} | bare {unit} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ft, fb = r["flops"]["MemberStep"], r["flops"]["bare"]
        flop_note = f"{ft / 1e9:.2f}" if ft == fb else f"{ft / 1e9:.2f} / {fb / 1e9:.2f}"
        for name, c in clocks:
            tt, bt = pick(r["trainer"], c), pick(r["bare"], c)
            mt, mb = med_iqr(tt)[0], med_iqr(bt)[0]
            lines.append(f"| {r['label']} | {name} | {fmt_ms(tt)} | {fmt_ms(bt)} | {mb / mt:.3f} | "
                         f"{fmt_ratio([b / t for b, t in zip(bt, tt)])} | {flop_note} | {ft / mt / scale:.2f} | "
                         f"{fb / mb / scale:.2f} |")
    for r in results:
        name, c = clocks[0]
        tt, bt = pick(r["trainer"], c), pick(r["bare"], c)
        paired, medians = med_iqr([b / t for b, t in zip(bt, tt)])[0], med_iqr(bt)[0] / med_iqr(tt)[0]
        ok = min(paired, medians) >= 0.95
        lines += ["", f"**Verdict ({r['label']}, {name}):** bare/MemberStep = {medians:.3f} (medians), {paired:.3f} "
                  f"(paired) — {'meets' if ok else 'BELOW'} the 0.95 target."]
    lines += ["", "Equivalence (one step of each side from identical states, relative difference of the Adam first "
              "moments of G / D): " + "; ".join(f"{r['label']}: {r['same']['opt_g']:.1e} / {r['same']['opt_d']:.1e}"
                                                for r in results) + "."]
    lines += ["", "MemberStep's extra work over the bare loop (the two global gradient norms it returns for "
              "logging, as device tensors; no host reads), timed alone: " + "; ".join(
                  f"{r['label']}: {r['extra'][0] * 1e3:.2f} ms/it wall = "
                  f"{r['extra'][0] / med_iqr(pick(r['trainer'], 0))[0]:.2%} of a MemberStep iteration"
                  for r in results) + "."]
    if any(r["peak"] for r in results):
        lines += ["", "Peak GPU memory per side (GiB): " + "; ".join(
            f"{r['label']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["peak"].items()) for r in results)]
    if any(r["jobs"] for r in results):
        lines += [
            "",
            "## Whole job (train_member: loader + TensorBoard + checkpoints) vs MemberStep alone",
            "",
            "| variant | clock | job s/it whole (incl. start-up) | job s/it steady | MemberStep alone s/it (adjacent "
            "reps) | ratio alone/steady, median [IQR] | ratio alone/whole, median [IQR] | start-up s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            js = r["jobs"]
            for name, c in clocks if js else ():
                lines.append(f"| {r['label']} | {name} | {med_iqr([j['whole'][c] for j in js])[0]:.3f} | "
                             f"{med_iqr([j['steady'][c] for j in js])[0]:.3f} | "
                             f"{med_iqr([j['alone'][c] for j in js])[0]:.3f} | "
                             f"{fmt_ratio([j['alone'][c] / j['steady'][c] for j in js])} | "
                             f"{fmt_ratio([j['alone'][c] / j['whole'][c] for j in js])} | "
                             f"{med_iqr([j['startup'][c] for j in js])[0]:.2f} |")
        lines += [
            "",
            "Where a steady job iteration goes (ms per iteration, median over job runs; share of the steady time):",
            "",
            "| variant | clock | MemberStep | loader | TensorBoard | checkpoint (serialise + commit) | other |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            js = r["jobs"]
            for name, c in clocks if js else ():
                cells = []
                for part in (*JobClock.PARTS, "other"):
                    ms = med_iqr([j[part][c] for j in js])[0] * 1e3
                    share = med_iqr([j[part][c] / j["steady"][c] for j in js])[0]
                    cells.append(f"{ms:.1f} ({share:.1%})")
                lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios: 1 = no overhead, lower = slower than the reference; the target for bare/MemberStep is >= 0.95.",
        "\"CPU time\" is this process's CPU time (all its threads; DataLoader worker processes, if any, are not",
        "counted): on a shared machine the wall clock also counts time spent waiting for a core, which swings",
        "with other people's work. \"Paired\" divides the two sides' times of the same repetition (adjacent in",
        "time, so load mostly cancels); each job run is compared with MemberStep alone in the repetitions just",
        "before and after it (median of >= 4 iterations on each side). \"Steady\" job time runs from the end of",
        "the first step to the end of the job, per iteration; \"whole\" adds start-up (building G, D and VGG,",
        "loading weights, member init, loader and TensorBoard writer; process start and imports excluded). The",
        "breakdown wraps, in this process only, MemberStep.__call__, the loader's next(), the TensorBoard writer's",
        "methods and torch_bytes + write_member as train_member and its loop call them; \"other\" is the rest (the",
        "loop: the on-device loss watch, float() of the scalars and the loss check at log steps, the weight check",
        "before a commit; cpu_state copies, the sample grid, host-to-device copies). MemberStep has no host sync; the",
        "loop syncs at log and checkpoint steps only. FLOPs: torch.utils.flop_counter.FlopCounterMode",
        "over one iteration (conv and matmul only; elementwise work is not counted).",
        "",
    ]
    if device.type != "cuda":
        lines += ["The `--device cuda` path (RRDB 64×23, batch 16, 128² HR, fp32 and `--set adam.bf16=true`, "
                  "TFLOP/s) exists but was not run: no GPU was available for this run.", ""]
    return "\n".join(lines)
