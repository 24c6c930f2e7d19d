"""One prepared GPU check (issues 13 and 17): member step, loader, EA, fusion, k members per GPU and a short real run.

Run through ``bash bench/gpu_check.sh`` (which installs the carried wheels and weights first); see its header for
how the lead runs it on a lent machine. Sections, each with its own time limit, each saved to the results files the
moment it ends (a run stopped at the call's time limit keeps every finished section):

0. device: name, datasheet bf16 peak, measured bf16 matrix-product rate, versions;
1. member step: ``MemberStep`` vs the bare loop of bench/_adam_sides.py (RRDB 64×23 and MSRResNet 64×16, batch 16,
   128² HR; fp32, TF32, bf16 autocast, and two cheap fixes), ms/it, ratio, TFLOP/s, MFU, host syncs (in the step,
   and per iteration of the real training loop around it: log and checkpoint steps only), peak memory;
2. loader: HDF5 shard samples/s through the trainer's loader vs what the bf16 RRDB step consumes;
3. EA: one generation of N = 5 RRDB children (the job's ``Objectives`` and ``evolve``/``make_child``) vs a bare
   G + VGG forward, and the projected EA phase next to one Adam phase;
4. fusion: one ``fusion_step`` with 5 RRDB experts and ``average_attention``: seconds, peak memory;
5. a short real run: configs/srresnet.yaml through ``python -m easlurm.launch --executor local`` on the GPU with the
   overrides in :data:`REAL_RUN_OVERRIDES`, wall time per stage and the results table;
6. with the time left: RRDB bf16 with ``adam.channels_last`` and with cuDNN autotuning on top (cheap fixes), and the
   whole ``train_member`` job for 40 iterations next to its MemberStep alone;
7. k members on one GPU: the grouped-convolution gate and k = 4 RRDB members in turn vs one batched step;
8. the captured step: eager vs one CUDA graph (``adam.cuda_graph``), speed and equality (run right after section 1);
9. k = 4 member processes on one GPU, time-sliced vs under CUDA MPS (run before section 5);
10. TF32 vs bf16: three short MSRResNet trainings (TF32 twice for the seed noise, bf16 once) scored on the demo val
    photos — last, so in practice a call of its own (``--only device,bf16``).

    python bench/gpu_check.py [--cpu-smoke] [--out DIR ...] [--budget-s S] [--demo DIR] [--only a,b]

Outputs: ``gpu.md`` + ``gpu.json`` in every ``--out`` folder (default: ``$OUT`` when set, and bench/results/ unless
--cpu-smoke), plus ``real_run_results.md``, ``real_run_launch.log`` and ``real_run_pareto.png`` there.
Exit status: 0 when every section is ok, 1 otherwise (the files are written either way), 3 when it cannot start.
"""
from __future__ import annotations

# =====================================================================================================================
# Section 5, the short real run: ALL its settings are here: the SRResNet paper config (member 0 frozen, MOEA/D,
# vanilla GAN, a final Adam phase) shrunk in length only. "{demo}" becomes the demo shard folder this script builds
# (9 small train photos, 3 val photos). Stage wall times are read from the local executor's "[local] <stage>: done
# in N s" lines.
REAL_RUN_CONFIG = "configs/srresnet.yaml"
REAL_RUN_OVERRIDES: list[str] = [
    "run.name=gpu-check",
    "data.train={demo}/train",
    "data.val={demo}/val",
    "data.num_workers=2",                 # 5 members x 2 loader workers on the machine's 16 cores
    "data.fitness_images=4",              # the demo has 9 train photos (the paper uses 16 of Flickr2K)
    "fusion.average_set=null",            # attention averaged over the (demo) training photos
    "eval.sets={{}}",                     # no benchmark sets offline: evaluate on the demo val photos
    "model.pretrained=null",              # no BasicSR checkpoint offline: a short L1 pretraining stage instead
    "pretrain.iters=300",
    "pretrain.batch_size=16",
    "pretrain.checkpoint_every=300",
    "loss.perceptual.net=vgg16",          # VGG19 weights exist nowhere offline (DESIGN.md §5)
    "population.size=5",
    "run.cycles=2",
    "adam.iters_per_cycle=300",
    "adam.first_phase_iters=300",
    "adam.final_phase_iters=300",
    "adam.checkpoint_every=300",
    "adam.log_every=50",
    "adam.image_every=300",
    "ea.generations=3",
    "fusion.iters=100",
    "fusion.checkpoint_every=100",
    "executor.kind=local",
    "executor.max_retries=0",             # a failure should show, not be retried inside the time limit
    "executor.local.max_parallel=5",      # the members of an Adam phase run side by side ...
    "executor.local.gpus=[0]",            # ... all on the one GPU
]
#: Appended under --cpu-smoke: tiny networks, one cycle, CPU; the same launcher, executor and stages.
REAL_RUN_SMOKE: list[str] = [
    "model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "data.patch_size=32",
    "data.fitness_tile=32", "data.fitness_images=2", "data.fitness_max_tiles=2", "data.num_workers=0",
    "pretrain.iters=2", "pretrain.batch_size=2", "pretrain.checkpoint_every=2",
    "run.cycles=1", "adam.batch_size=2", "adam.iters_per_cycle=2", "adam.checkpoint_every=2",
    "adam.log_every=1", "adam.image_every=2", "ea.generations=1", "ea.eval_batch=2",
    "fusion.iters=2", "fusion.batch_size=2", "fusion.att_channels=4", "fusion.checkpoint_every=2",
    "loss.perceptual.layers={conv1_2: 1.0}", "population.size=2", "ea.neighbourhood=2",
    "adam.first_phase_iters=2", "adam.final_phase_iters=2", "fusion.average_images=2",
    "executor.local.max_parallel=2", "executor.local.gpus=[]",
]
# =====================================================================================================================
# ruff: noqa: E402  (the settings above come first on purpose, so the imports follow them)

import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from _common import RESULTS_DIR, ROOT, build_demo, now_iso
from _gpu_common import Clock, Results, run_section
from _gpu_report import render
from _gpu_sections import (
    Ctx, section_device, section_ea, section_extras, section_fusion, section_graph, section_loader,
    section_bf16, section_member_step, section_mps, section_population,
)

#: (name, title, GPU budget s, smoke budget s, GPU minimum s kept for it by earlier sections, section function).
#: Section 6 only gets what the real run leaves. The smoke's limits are loose on purpose: it checks that every
#: section runs, on a CPU that may be shared (about 2 min on 2 idle cores).
SECTIONS: tuple[tuple[str, str, float, float, float, Any], ...] = (
    ("device", "0. Device", 20, 60, 10, section_device),
    ("member_step", "1. Member step: MemberStep vs bare loop", 125, 300, 60, section_member_step),
    ("graph", "8. Captured step: eager vs one CUDA graph (adam.cuda_graph)", 60, 120, 30, section_graph),
    ("loader", "2. Loader: HDF5 shards vs the bf16 RRDB step", 20, 60, 10, section_loader),
    ("ea", "3. EA: one generation of N = 5 RRDB children", 50, 120, 25, section_ea),
    ("fusion", "4. Fusion: 5 RRDB experts", 45, 120, 20, section_fusion),
    ("population", "7. k members on one GPU: grouped-convolution gate, in turn vs batched", 60, 120, 25,
     section_population),
    ("mps", "9. k member processes on one GPU: time-sliced vs CUDA MPS", 75, 120, 30, section_mps),
    ("real_run", "5. Short real run: SRResNet paper config, local executor", 330, 300, 120, None),
    ("extras", "6. Cheap fixes (channels_last, cudnn.benchmark) and the whole member job", 90, 120, 0,
     section_extras),
    ("bf16", "10. TF32 vs bf16: a short training run each (run it with --only device,bf16)", 150, 120, 0,
     section_bf16),
)


# ----------------------------------------------------------------------------------------------------------------
# 5. The short real run


_DONE = re.compile(r"^\[local\] (\S+): done in ([0-9.]+) s")
_START = re.compile(r"^\[local\] (\S+): (\d+) task")


def _reader(stream: Any, q: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        q.put(line)
    q.put(None)


def section_real_run(ctx: Ctx, record: dict[str, Any], out_dirs: list[Path]) -> None:
    run_dir = ctx.scratch / "real_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [o.format(demo=ctx.demo) for o in REAL_RUN_OVERRIDES] + (REAL_RUN_SMOKE if ctx.smoke else [])
    argv = [sys.executable, "-m", "easlurm.launch", "--config", str(ROOT / REAL_RUN_CONFIG), "--executor", "local",
            "--run-dir", str(run_dir)]
    for o in overrides:
        argv += ["--set", o]
    record.update(config=REAL_RUN_CONFIG, overrides=overrides, run_dir=str(run_dir))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if ctx.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU even on a machine that has a GPU
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    stages: dict[str, dict[str, Any]] = {}
    record["stages"] = stages
    log_lines: list[str] = []
    deadline = time.time() + max(5.0, ctx.clock.left() - 8.0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ctx.scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    q: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    try:
        while True:
            try:
                line = q.get(timeout=max(0.1, min(5.0, deadline - time.time())))
            except queue.Empty:
                if time.time() > deadline:
                    record["error"] = "stopped at the section's time limit"
                    break
                continue
            if line is None:
                break
            log_lines.append(line)
            print(f"[real run {time.perf_counter() - t0:6.1f} s] {line}", end="", flush=True)
            if (m := _START.match(line)):
                stages[m.group(1)] = {"tasks": int(m.group(2)), "started_at_s": time.perf_counter() - t0}
            elif (m := _DONE.match(line)):
                stages.setdefault(m.group(1), {})["seconds"] = float(m.group(2))
                ctx.results.put("real_run", record)
            elif line.startswith("finished in "):
                record["launcher_total_s"] = float(line.split()[2])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        record["wall_s"] = time.perf_counter() - t0
        record["exit_code"] = proc.returncode
        text = "".join(log_lines)
        for d in out_dirs:
            (d / "real_run_launch.log").write_text(text, encoding="utf-8")
    results_md = run_dir / "eval" / "results.md"
    if results_md.is_file():
        record["results_md"] = results_md.read_text(encoding="utf-8")
        for d in out_dirs:
            shutil.copyfile(results_md, d / "real_run_results.md")
            if (run_dir / "eval" / "pareto.png").is_file():
                shutil.copyfile(run_dir / "eval" / "pareto.png", d / "real_run_pareto.png")
    alone = ctx.shared.get("member_rows", {}).get("MSRResNet TF32")
    if alone:  # the run's config trains in fp32 with torch's default TF32 convolutions: section 1's TF32 row
        record["alone_iters_per_s"] = {"label": "MSRResNet TF32 MemberStep (section 1)",
                                       "its_per_s": alone["its_per_s"]["MemberStep"]}
    try:
        record["member_iters_per_s"] = _member_speeds(run_dir)
    except Exception as exc:  # noqa: BLE001 - a missing number, not a failed run
        record["member_iters_per_s"] = f"unreadable: {type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        logs = sorted((run_dir / "logs").glob("*/task-*.log"), key=lambda p: p.stat().st_mtime)
        if logs:
            record["last_task_log"] = {"path": str(logs[-1].relative_to(run_dir)),
                                       "tail": "".join(logs[-1].read_text(errors="replace").splitlines(True)[-40:])}
        raise RuntimeError(f"the launcher exited with {proc.returncode}"
                           f"{' (killed at the time limit)' if record.get('error') else ''}")


def _member_speeds(run_dir: Path) -> dict[str, list[float]]:
    """Each member's logged ``speed/iters_per_s`` (TensorBoard scalars of the run), in step order: the Adam phase's
    rate while the population shares the GPU."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in sorted((run_dir / "tb").glob("member_*")):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        if "speed/iters_per_s" in acc.Tags().get("scalars", []):
            out[folder.name] = [round(e.value, 2) for e in acc.Scalars("speed/iters_per_s")]
    return out


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, through the same code paths")
    ap.add_argument("--out", type=Path, action="append", default=None,
                    help="results folder (repeatable; default $OUT when set, plus bench/results unless --cpu-smoke)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="whole-run limit in seconds, counted from GPU_CHECK_T0 when set (default 530; smoke 900)")
    ap.add_argument("--demo", type=Path, default=None, help="existing demo shard folder (train/, val/)")
    ap.add_argument("--scratch", type=Path, default=None, help="work folder (default /tmp/gpu_check-<mode>)")
    ap.add_argument("--only", default=None, help="comma-separated section names to run (default: all)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
    budget = args.budget_s or (900.0 if smoke else 530.0)
    clock = Clock(t0, budget)

    if smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check: no CUDA device here; use --cpu-smoke for the CPU run", file=sys.stderr)
        return 3
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    outs = list(args.out or [])
    if not outs:
        if os.environ.get("OUT"):
            outs.append(Path(os.environ["OUT"]))
        if not smoke:
            outs.append(RESULTS_DIR)
    if not outs:
        print("gpu_check: --cpu-smoke needs --out DIR or $OUT (it never writes bench/results)", file=sys.stderr)
        return 3
    for d in outs:
        d.mkdir(parents=True, exist_ok=True)
    scratch = args.scratch or Path(f"/tmp/gpu_check-{'smoke' if smoke else 'gpu'}-{os.getpid()}")
    scratch.mkdir(parents=True, exist_ok=True)

    meta = {"command": "bash bench/gpu_check.sh" + (" --cpu-smoke" if smoke else ""),
            "argv": sys.argv[1:] if argv is None else argv, "mode": "cpu-smoke" if smoke else "gpu",
            "started": now_iso(), "budget_s": budget, "real_run_config": REAL_RUN_CONFIG}
    results = Results(outs, meta, render)
    results.flush()
    print(f"[gpu_check] {meta['mode']} on {device}; results -> {', '.join(map(str, outs))}; budget {budget:.0f} s, "
          f"{clock.total_left():.0f} s left", flush=True)

    demo = args.demo
    demo_info: dict[str, Any] = {}
    if demo is None:
        demo = scratch / "demo"
        try:
            demo_info = build_demo(demo, scale=4)
        except Exception as exc:  # noqa: BLE001 - every section will then say what is missing
            demo_info = {"error": f"{type(exc).__name__}: {exc}"}
    ctx = Ctx(device, smoke, demo, clock, results, scratch, shared={"demo_info": demo_info})

    only = set(args.only.split(",")) if args.only else None
    for k, (name, title, gpu_budget, smoke_budget, _, fn) in enumerate(SECTIONS):
        if only is not None and name not in only:
            continue
        later = [s for s in SECTIONS[k + 1:] if only is None or s[0] in only]
        reserve = 0.0 if smoke else sum(s[4] for s in later)  # GPU: keep each later section's minimum
        budget_s = smoke_budget if smoke else gpu_budget
        body = partial(section_real_run, ctx, out_dirs=outs) if fn is None else partial(fn, ctx)
        run_section(results, clock, name, title, budget_s, reserve, body, device)
    results.data["meta"]["finished"] = now_iso()
    results.data["meta"]["elapsed_s"] = time.time() - t0
    results.flush()
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    md = (outs[0] / "gpu.md").read_text(encoding="utf-8")
    print("\n" + md, flush=True)
    # The device tool returns only the end of the output: the summary table once more, last.
    summary = md[md.find("## Summary"):]
    print(summary[:summary.find("\n## ", 5)].rstrip() + "\n", flush=True)
    statuses = {n: r.get("status") for n, r in results.data["sections"].items()}
    print(f"[gpu_check] done in {time.time() - t0:.0f} s: " + ", ".join(f"{n} {s}" for n, s in statuses.items()),
          flush=True)
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
