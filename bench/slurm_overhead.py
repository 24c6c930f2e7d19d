"""Per-cycle scheduling overhead of the Slurm chain: last array task end → EA start → next array start.

Runs the tiny pipeline through ``python -m easlurm.launch --executor slurm`` on the cluster that ``SLURM_CONF``
points at (start one with ``bash tests/slurm/cluster.sh start``), with very short stages so the gaps dominate, then
reads every job's StartTime/EndTime from ``scontrol show job`` (1 s resolution, Slurm's own clock; job ids from
``RUN/state.json``'s submissions) and, for a finer view that includes Python start-up, the job logs written by
easlurm's own sbatch scripts (``RUN/slurm/<stage>/<job id>.out``): a task starts at the first line its Python
process logs (``logging`` timestamps, ms resolution; the runner turns logging on before the stage starts) and
ends at the log file's last modification.

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
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from _common import RESULTS_DIR, ROOT, now_iso, publish


def scontrol_times(job: str) -> tuple[float, float]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    get = lambda k: time.mktime(time.strptime(re.search(rf"{k}=(\S+)", out).group(1), "%Y-%m-%dT%H:%M:%S"))  # noqa
    return get("StartTime"), get("EndTime")


def job_log(run: Path, stage: str, job: str) -> Path:
    """``RUN/slurm/adam-003/123_4.out``: the log of one job of ``stage`` (easlurm.orchestrate.sbatch.log_path)."""
    return run / "slurm" / stage.replace("/", "-") / f"{job}.out"


_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


_SHELL = re.compile(r"^\[easlurm\] (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) job ", re.M)


def task_start(run: Path, stage: str, job: str) -> float | None:
    """Wall time of the first ``logging`` line of the job's task (ms resolution); else the batch script's own
    start line (``[easlurm] <date> job …``, 1 s resolution); None when the log has neither."""
    text = job_log(run, stage, job).read_text(errors="replace")
    if (m := _LOGGED.search(text)):
        return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    if (m := _SHELL.search(text)):
        return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").timestamp()
    return None


def task_end(run: Path, stage: str, job: str) -> float:
    """Last write to the job's log: the end of its task (the batch shell writes nothing after a clean exit)."""
    return job_log(run, stage, job).stat().st_mtime


def stage_jobs(run: Path) -> dict[str, list[str]]:
    """Job ids of each stage, from ``RUN/state.json`` (``submissions[].stage`` and ``.tasks`` = {job id: task})."""
    subs = json.loads((run / "state.json").read_text())["submissions"]
    out: dict[str, list[str]] = defaultdict(list)
    for s in subs:
        out[s["stage"]] += sorted(s["tasks"])
    return dict(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "slurm_overhead.md")
    args = ap.parse_args()
    if "SLURM_CONF" not in os.environ:
        print("set SLURM_CONF (e.g. eval \"$(bash tests/slurm/cluster.sh env)\")", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="easlurm-overhead-"))
    run = tmp / "run"
    cmd = [sys.executable, "-m", "easlurm.launch", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--executor", "slurm", "--run-dir", str(run), "--set", f"run.cycles={args.cycles}",
           "--set", f"data.demo_dir={tmp / 'demo'}", "--set", "model.num_feat=8", "--set", "model.num_block=1",
           "--set", "adam.iters_per_cycle=5", "--set", "adam.checkpoint_every=5", "--set", "pretrain.iters=5",
           "--set", "ea.generations=1", "--set", "fusion.iters=2", "--set", "executor.poll_s=1"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    stages = stage_jobs(run)
    rows = []
    for c in range(args.cycles):
        arr = stages[f"adam/{c:03d}"]
        ea = stages[f"ea/{c:03d}"][0]
        arr_end = max(scontrol_times(j)[1] for j in arr)
        ea_start, ea_end = scontrol_times(ea)
        nxt = stages.get(f"adam/{c + 1:03d}")
        next_start = min(scontrol_times(j)[0] for j in nxt) if nxt else None
        fine_arr_end = max(task_end(run, f"adam/{c:03d}", j) for j in arr)
        fine_ea_start = task_start(run, f"ea/{c:03d}", ea)
        fine_ea_end = task_end(run, f"ea/{c:03d}", ea)
        starts = [task_start(run, f"adam/{c + 1:03d}", j) for j in nxt] if nxt else []
        fine_next = min(t for t in starts if t is not None) if any(t is not None for t in starts) else None
        rows.append({
            "cycle": c,
            "slurm_gap_array_to_ea": ea_start - arr_end,
            "slurm_gap_ea_to_next": (next_start - ea_end) if next_start else None,
            "fine_gap_array_to_ea": (fine_ea_start - fine_arr_end) if fine_ea_start else None,
            "fine_gap_ea_to_next": (fine_next - fine_ea_end) if fine_next else None,
        })
    per_cycle_slurm = [r["slurm_gap_array_to_ea"] + r["slurm_gap_ea_to_next"] for r in rows
                       if r["slurm_gap_ea_to_next"] is not None]
    per_cycle_fine = [r["fine_gap_array_to_ea"] + r["fine_gap_ea_to_next"] for r in rows
                      if r["fine_gap_ea_to_next"] is not None and r["fine_gap_array_to_ea"] is not None]
    lines = [
        "# Slurm chain scheduling overhead",
        "",
        f"- command: `python bench/slurm_overhead.py --cycles {args.cycles}` (cluster: `tests/slurm/cluster.sh "
        "start`, single node, 2 cores, Slurm 22.05, batch_sched_delay=0)",
        f"- date: {now_iso()}; load average at end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; whole run wall time {wall:.0f} s",
        "- *Slurm gap*: from Slurm's StartTime/EndTime (1 s resolution). *Task gap*: from the last write to the "
        "previous stage's job log (RUN/slurm/<stage>/<job>.out) to the first logging line of the next stage's task "
        "(includes process start-up and imports up to the stage's first log line).",
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
        fine = (f"task clock median {statistics.median(per_cycle_fine):.2f} s (max {max(per_cycle_fine):.2f} s)"
                if per_cycle_fine else "task clock: no task logged a start line")
        lines += ["", f"Per-cycle overhead (both gaps): Slurm clock median {statistics.median(per_cycle_slurm):.1f} s "
                      f"(max {max(per_cycle_slurm):.1f} s); {fine}. Target: ≤ 5 s per cycle."]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
