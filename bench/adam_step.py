"""Adam-phase step benchmark: the member trainer's iteration (MemberStep) vs a bare PyTorch loop, and the whole job.

Two questions, one run:

1. Does ``easlurm.train.member.MemberStep`` — the exact object ``train_member`` calls every iteration — cost more
   than the same math written as a bare loop? The bare loop (bench/_adam_sides.py) is written independently of the
   package: same networks (built by ``easlurm.train.member.build_member`` from one seed, then deep-copied so each
   side owns its G, D, VGG and Adam states), sr = G(lr), L1, VGG pre-ReLU feature L1 (through the same frozen
   ``VGGFeatureExtractor``), vanilla or relativistic GAN, two ``torch.autograd.grad`` passes, the per-tensor
   normalised mix, an Adam step on G and one D step — with no gradient-norm bookkeeping (MemberStep returns ‖g1‖,
   ‖g2‖ and the losses as device tensors; neither side syncs with the host: the training loop reads the losses at
   log steps only). Both sides run on the same fixed in-memory batches (real patches drawn once through the
   project's loader), interleaved in blocks whose order alternates every repetition, after a warm-up. Before
   timing, one step of each side from identical states must agree (Adam first moments of G and D), so the two
   really do the same math. **ratio = bare time / MemberStep time** (1 = no overhead; the target is >= 0.95).
2. What does the job around the step cost? ``train_member`` (loader, the training loop's loss watch, TensorBoard
   scalars and images, atomic checkpoints, lease, preemption handler) is run on a throw-away run directory
   (1-iteration L1 pretrain, then the init stage, as its starting point) with a first Adam phase of
   ``--job-iters`` iterations and the config's log/image/checkpoint cadence, timed per iteration, interleaved with
   the step blocks (bench/_adam_job.py). ``MemberStep.__call__`` is wrapped (in this process only) to clock the
   steps inside the job (CUDA events on a GPU, so the wrapper adds no host sync), and so are the loader, the
   TensorBoard writer and the checkpoint serialisation and writes, to say where the rest goes. **job ratio =
   MemberStep alone / job per iteration** (steady state: after the first step; "whole" adds start-up: models, VGG
   weights, member init, data, TensorBoard writer). Each job run is compared with MemberStep alone in the
   repetitions just before and after it (same machine load).

Timing is per iteration, median and inter-quartile range over repetitions, read on two clocks: wall time and this
process's CPU time. On a shared CPU machine the wall clock also counts time spent waiting for a core, which swings
by 2× within seconds with other people's work; CPU time does not, so it is the headline there. On CUDA (a
dedicated GPU) the wall clock is the measure and every timed block is synchronised.
The FLOPs of one iteration are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products of G, D and VGG, forward and both backward passes, D step) to report achieved TFLOP/s.

    OMP_NUM_THREADS=1 python bench/adam_step.py           # CPU: tiny.yaml, num_feat 32, 4 blocks, 64 px, batch 4
    OMP_NUM_THREADS=1 python bench/adam_step.py --quick   # smoke run (prints only, unless --out)
    python bench/adam_step.py --device cuda               # GPU: rrdb.yaml (RRDB 64×23, batch 16, 128 px), fp32 + bf16
    python bench/adam_step.py --device cuda --set adam.bf16=true --reps 6
    python bench/adam_step.py --config configs/srresnet.yaml --set adam.batch_size=8

Images are NCHW RGB float in [0, 1] throughout. Only the results table is written (``--out``; bench/_adam_report.py);
the job runs in a temporary directory that is removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _adam_job import make_job_run, prepare_job_run, run_job
from _adam_report import pick, report
from _adam_sides import bookkeeping_cost, build_sides, check_same_math, count_flops, fixed_batches, timed_block
from _common import RESULTS_DIR, ROOT, demo_train_shards, med_iqr, peak_gib, publish, reset_peak, sync

from easlurm import factory
from easlurm.config import Config, load_config
from easlurm.errors import ConfigError
from easlurm.population import preferences
from easlurm.train.member import MemberStep

RESULTS = RESULTS_DIR / "adam_step.md"
CPU_CONFIG = ROOT / "configs" / "tiny.yaml"
CUDA_CONFIG = ROOT / "configs" / "rrdb.yaml"
# "Tiny-ish" on CPU: big enough that convolutions dominate, small enough for a shared 2-core machine.
CPU_SIZE = ("model.num_feat=32", "model.num_block=4", "data.patch_size=64", "adam.batch_size=4")


def resolve_shards(cfg: Config, explicit: Path | None, scratch: Path) -> Path:
    """The training shard folder: ``--shards``, else the config's, else the demo photos built into ``scratch``."""
    if explicit is not None:
        return explicit
    try:
        train: Path | None = factory.data_dirs(cfg).train
    except ConfigError:
        train = None
    if train is not None and (train / "manifest.json").is_file():
        return train
    print(f"[bench] no shards at {train}; building the demo photos into {scratch}", flush=True)
    return demo_train_shards(scratch / "demo", cfg.data.scale)


@dataclass
class Plan:
    reps: int
    iters: int
    warmup: int
    batches: int
    job_runs: int
    job_iters: int


def plan_for(args: argparse.Namespace, device: torch.device) -> Plan:
    # CPU: one iteration per block, so the two sides alternate every iteration (ABBA…) and the load of a shared
    # machine, which swings by 2× within seconds here, hits both alike. CUDA: a dedicated GPU, so longer
    # synchronised blocks let the bare loop keep its kernel queue full across iterations.
    if args.quick:
        base = Plan(reps=4, iters=1, warmup=1, batches=2, job_runs=1, job_iters=4)
    elif device.type == "cuda":
        base = Plan(reps=8, iters=5, warmup=3, batches=4, job_runs=2, job_iters=100)
    else:
        base = Plan(reps=40, iters=1, warmup=2, batches=4, job_runs=3, job_iters=100)
    for name in ("reps", "iters", "warmup", "batches", "job_runs", "job_iters"):
        v = getattr(args, name)
        if v is not None:
            least = {"warmup": 0, "job_runs": 0, "job_iters": 2}.get(name, 1)
            if v < least:
                raise SystemExit(f"--{name.replace('_', '-')}: must be >= {least}")
            setattr(base, name, v)
    return base


def run_variant(label: str, config: Path, overrides: list[str], device: torch.device, plan: Plan, member: int | None,
                shards_arg: Path | None, scratch: Path, loads: list[float]) -> dict[str, Any]:
    """Everything for one config: equivalence check, FLOPs, interleaved step blocks and job runs."""
    cfg = load_config(config, overrides)
    n = cfg.population.size
    m = n // 2 if member is None else member
    if not 0 <= m < n:
        raise SystemExit(f"--member {m}: the population has members 0..{n - 1}")
    w = preferences(n)[m]
    shards = resolve_shards(cfg, shards_arg, scratch)
    data = fixed_batches(cfg, shards, plan.batches, device)
    trainer, bare = build_sides(cfg, device, w)
    tol = 2e-2 if (device.type == "cuda" and cfg.adam.bf16) else 1e-3
    same = check_same_math(trainer, bare, *data[0], tol)
    for side in (trainer, bare):
        if plan.warmup:
            timed_block(side, data, plan.warmup, device)
    flops = {s.name: count_flops(s, *data[0]) for s in (trainer, bare)}
    sync(device)
    peak: dict[str, float] = {}

    job_root = scratch / f"job-{label}"
    job_root.mkdir(parents=True)
    jobs: list[dict[str, Any]] = []
    if plan.job_runs:
        make_job_run(job_root / "warm", config, overrides, shards, max(2, min(plan.job_iters, 3)))
        prepare_job_run(job_root / "warm", device)
        run_job(job_root / "warm", m, device, max(2, min(plan.job_iters, 3)))  # imports, TensorBoard, h5py
        make_job_run(job_root / "run", config, overrides, shards, plan.job_iters)
        prepare_job_run(job_root / "run", device)
    # Job runs spread evenly between the step repetitions, so both measurements see the same machine load.
    job_after = [min(plan.reps - 1, round((j + 1) * plan.reps / (plan.job_runs + 1)) - 1) for j in range(plan.job_runs)]
    for r in range(plan.reps):
        order = (trainer, bare) if r % 2 == 0 else (bare, trainer)
        for side in order:
            reset_peak(device)
            side.times.append(timed_block(side, data, plan.iters, device, first=r * plan.iters))
            pk = peak_gib(device)
            if pk is not None:
                peak[side.name] = max(peak.get(side.name, 0.0), pk)
        loads.append(os.getloadavg()[0])
        t, b = trainer.times[-1] * 1e3, bare.times[-1] * 1e3
        print(f"[{label}] rep {r + 1}/{plan.reps}: MemberStep {t[0]:.1f} ms/it wall ({t[1]:.1f} CPU), bare "
              f"{b[0]:.1f} ({b[1]:.1f}), ratio {b[0] / t[0]:.3f} ({b[1] / t[1]:.3f}), load {loads[-1]:.2f}", flush=True)
        for _ in range(job_after.count(r)):
            jobs.append({**run_job(job_root / "run", m, device, plan.job_iters), "after": r})
            loads.append(os.getloadavg()[0])
            j = jobs[-1]
            print(f"[{label}] job {len(jobs)}/{plan.job_runs}: {j['whole'][0]:.3f} s/it whole, {j['steady'][0]:.3f} "
                  f"s/it steady ({j['steady'][1]:.3f} CPU), {j['step'][0]:.3f} s/it in MemberStep "
                  f"({j['step'][1]:.3f} CPU), start-up {j['startup'][0]:.2f} s, load {loads[-1]:.2f}", flush=True)
    shutil.rmtree(job_root, ignore_errors=True)
    # MemberStep alone in the repetitions just before and after each job (>= 4 iterations on each side of it):
    # the closest in time, so the same machine load.
    k = max(1, -(-4 // plan.iters))
    for job in jobs:
        near = trainer.times[max(0, job["after"] + 1 - k):job["after"] + 1 + k]
        job["alone"] = np.array([med_iqr(pick(near, c))[0] for c in range(2)])

    ms = trainer.step
    assert isinstance(ms, MemberStep)
    return {"label": label, "cfg": cfg, "member": m, "w": w, "shards": shards, "same": same, "flops": flops,
            "trainer": trainer.times, "bare": bare.times, "jobs": jobs, "peak": peak,
            "extra": bookkeeping_cost(ms.g, device),
            "g_params": sum(p.numel() for p in ms.g.parameters()),
            "d_params": sum(p.numel() for p in ms.d.parameters()),
            "vgg": getattr(ms.perceptual, "net", "?"), "layers": dict(cfg.loss.perceptual.layers)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    ap.add_argument("--config", type=Path, default=None,
                    help="config YAML (default: configs/tiny.yaml with num_feat 32, 4 blocks, 64 px, batch 4 on "
                         "CPU; configs/rrdb.yaml on CUDA)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. adam.bf16=true")
    ap.add_argument("--precision", choices=("config", "fp32", "bf16", "both"), default=None,
                    help="CUDA: fp32, bf16 autocast, or both (default on CUDA unless --set adam.bf16=… is given)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 reps × 1 iteration, one 4-iteration job")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per side (default 40 CPU, 8 CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="iterations per timed block (default 1 CPU, 5 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations per side")
    ap.add_argument("--batches", type=int, default=None, help="fixed in-memory batches to cycle through")
    ap.add_argument("--job-runs", type=int, default=None, help="whole train_member runs (0 = skip; default 3/2)")
    ap.add_argument("--job-iters", type=int, default=None, help="iterations per job run (default 100)")
    ap.add_argument("--member", type=int, default=None, help="population slot (default: the middle one)")
    ap.add_argument("--shards", type=Path, default=None, help="training shard folder (default: the config's, else "
                                                              "the demo photos)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default OMP_NUM_THREADS or 1)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"results file (default {RESULTS.relative_to(ROOT)}; --quick prints only)")
    args = ap.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    load_start = os.getloadavg()[0]
    plan = plan_for(args, device)

    if args.config is None:
        config = CUDA_CONFIG if device.type == "cuda" else CPU_CONFIG
        base = [] if device.type == "cuda" else list(CPU_SIZE)
    else:
        config, base = args.config, []
    overrides = [*base, *args.overrides]
    bf16_set = any(o.split("=", 1)[0].strip() == "adam.bf16" for o in args.overrides)
    precision = args.precision or ("both" if device.type == "cuda" and not bf16_set else "config")
    if precision == "config":
        variants = [("bf16" if load_config(config, overrides).adam.bf16 and device.type == "cuda" else "fp32",
                     overrides)]
    else:
        names = ["fp32", "bf16"] if precision == "both" else [precision]
        variants = [(v, [*overrides, f"adam.bf16={'true' if v == 'bf16' else 'false'}"]) for v in names]
    if device.type != "cuda" and any(v == "bf16" for v, _ in variants):
        raise SystemExit("--precision bf16: bf16 autocast is CUDA-only in the trainer (adam.bf16 is ignored on CPU)")

    loads: list[float] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="adam_step_") as tmp:
        for label, over in variants:
            results.append(run_variant(label, config, over, device, plan, args.member, args.shards, Path(tmp),
                                       loads))
    text = report(results, argv_used, device, plan, load_start, loads or [load_start], threads)
    publish(text, args.out if args.out is not None else (None if args.quick else RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
