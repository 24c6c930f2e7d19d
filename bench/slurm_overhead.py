"""Per-cycle scheduling overhead of the Slurm chain: last array task end → EA start → next array start.

Runs the tiny pipeline through ``python -m easlurm.launch --executor slurm`` on the cluster that ``SLURM_CONF``
points at (start one with ``bash tests/slurm/cluster.sh start``), with very short stages so the gaps dominate, then
reads every job's StartTime/EndTime from ``scontrol show job`` (1 s resolution, Slurm's own clock) and, for a
finer view that includes Python start-up, the submitit log timestamps and result-pickle times.

    python bench/slurm_overhead.py [--cycles 4] [--out bench/results/slurm_overhead.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scontrol_times(job: str) -> tuple[float, float]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    get = lambda k: time.mktime(time.strptime(re.search(rf"{k}=(\S+)", out).group(1), "%Y-%m-%dT%H:%M:%S"))  # noqa
    return get("StartTime"), get("EndTime")


def submitit_start(folder: Path, job: str) -> float:
    """Wall time at which submitit logged the task's start (ms resolution)."""
    text = (folder / f"{job}_0_log.out").read_text()
    m = re.search(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - Starting", text)
    assert m, f"no start line in {folder / (job + '_0_log.out')}"
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def result_time(folder: Path, job: str) -> float:
    return (folder / f"{job}_0_result.pkl").stat().st_mtime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "slurm_overhead.md"))
    args = ap.parse_args()
    if "SLURM_CONF" not in os.environ:
        print("set SLURM_CONF (e.g. eval \"$(bash tests/slurm/cluster.sh env)\")", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="easlurm-overhead-"))
    run = tmp / "run"
    cmd = [sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--executor", "slurm", "--run-dir", str(run), "--set", f"run.cycles={args.cycles}",
           "--set", f"data.demo_dir={tmp / 'demo'}", "--set", "model.num_feat=8", "--set", "model.num_block=1",
           "--set", "adam.iters_per_cycle=5", "--set", "adam.checkpoint_every=5", "--set", "pretrain.iters=5",
           "--set", "ea.generations=1", "--set", "fusion.iters=2", "--set", "executor.poll_s=1"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    subs = json.loads((run / "state.json").read_text())["submissions"]
    stages = {k: v for s in subs for k, v in s["stages"].items()}
    rows = []
    for c in range(args.cycles):
        arr = stages[f"adam/{c:03d}"]
        ea = stages[f"ea/{c:03d}"][0]
        arr_end = max(scontrol_times(j)[1] for j in arr)
        ea_start, ea_end = scontrol_times(ea)
        nxt = stages.get(f"adam/{c + 1:03d}")
        next_start = min(scontrol_times(j)[0] for j in nxt) if nxt else None
        fa = run / "slurm" / f"adam-{c:03d}"
        fe = run / "slurm" / f"ea-{c:03d}"
        fine_arr_end = max(result_time(fa, j) for j in arr)
        fine_ea_start = submitit_start(fe, ea)
        fine_ea_end = result_time(fe, ea)
        fine_next = (min(submitit_start(run / "slurm" / f"adam-{c + 1:03d}", j) for j in nxt) if nxt else None)
        rows.append({
            "cycle": c,
            "slurm_gap_array_to_ea": ea_start - arr_end,
            "slurm_gap_ea_to_next": (next_start - ea_end) if next_start else None,
            "fine_gap_array_to_ea": fine_ea_start - fine_arr_end,
            "fine_gap_ea_to_next": (fine_next - fine_ea_end) if fine_next else None,
        })
    per_cycle_slurm = [r["slurm_gap_array_to_ea"] + r["slurm_gap_ea_to_next"] for r in rows
                       if r["slurm_gap_ea_to_next"] is not None]
    per_cycle_fine = [r["fine_gap_array_to_ea"] + r["fine_gap_ea_to_next"] for r in rows
                      if r["fine_gap_ea_to_next"] is not None]
    lines = [
        "# Slurm chain scheduling overhead",
        "",
        f"- command: `python bench/slurm_overhead.py --cycles {args.cycles}` (cluster: `tests/slurm/cluster.sh "
        "start`, single node, 2 cores, Slurm 22.05, batch_sched_delay=0)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; load average at end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; whole run wall time {wall:.0f} s",
        "- *Slurm gap*: from Slurm's StartTime/EndTime (1 s resolution). *Task gap*: from the previous stage's "
        "result pickle to submitit's start log line of the next (includes process start-up, excludes torch import).",
        "",
        "| cycle | array end → EA start, Slurm (s) | EA end → next array start, Slurm (s) | "
        "array end → EA start, task (s) | EA end → next array start, task (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['cycle']} | {fmt(r['slurm_gap_array_to_ea'])} | {fmt(r['slurm_gap_ea_to_next'])} | "
                     f"{fmt(r['fine_gap_array_to_ea'])} | {fmt(r['fine_gap_ea_to_next'])} |")
    if per_cycle_slurm:
        lines += ["", f"Per-cycle overhead (both gaps): Slurm clock median {statistics.median(per_cycle_slurm):.1f} s "
                      f"(max {max(per_cycle_slurm):.1f} s); task clock median {statistics.median(per_cycle_fine):.2f} s "
                      f"(max {max(per_cycle_fine):.2f} s). Target: ≤ 5 s per cycle."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
