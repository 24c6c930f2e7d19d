"""``python -m easlurm.status RUN``: where a run stands — stage by stage, member by member.

The run directory is the truth (a stage is done when its outputs exist and verify); Slurm job states (from
``state.json``'s job ids, through sacct or, without accounting, squeue/scontrol) say what is queued or running.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .config import load_run_config
from .errors import EaslurmError
from .store import RunDir, read_checkpoint_meta, read_json


def _job_states(run: RunDir) -> tuple[dict[str, list[str]], dict[str, str], dict[str, int]]:
    if not run.state.is_file():
        return {}, {}, {}
    state = read_json(run.state)
    latest: dict[str, list[str]] = {}
    tasks: dict[str, int] = {}
    for sub in state.get("submissions", []):
        latest.update(sub.get("stages", {}))
        tasks.update(sub.get("tasks", {}))
    ids = sorted({j for v in latest.values() for j in v})
    states: dict[str, str] = {}
    if ids:
        try:
            from .orchestrate.slurm_state import job_states

            states = job_states(ids)
        except EaslurmError as exc:  # no Slurm here (e.g. looking at a run dir copied to a laptop)
            states = {j: f"? ({exc})"[:40] for j in ids}
    return latest, states, tasks


def collect(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per stage: key, state, job ids, and per-member details for Adam phases."""
    from .orchestrate.plan import build_plan, stage_done, task_done

    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    latest, states, tasks = _job_states(run)
    rows: list[dict[str, Any]] = []
    for stage in build_plan(cfg, run):
        ids = latest.get(stage.key, [])
        done = stage_done(stage, run)
        job_state = sorted({states.get(j, "UNKNOWN") for j in ids})
        row: dict[str, Any] = {"stage": stage.key, "done": done, "jobs": ids,
                               "state": "COMPLETED" if done else (",".join(job_state) if ids else "not submitted")}
        if stage.kind == "adam" and stage.cycle is not None:
            members = []
            by_task = {tasks.get(j): j for j in ids}
            for i in range(len(stage.tasks)):
                meta = None
                try:
                    meta = read_checkpoint_meta(run.member(stage.cycle, i))
                except EaslurmError:
                    pass
                job = by_task.get(i)
                members.append({"member": i, "iteration": meta.get("iteration") if meta else None,
                                "target": cfg.adam.iters_per_cycle, "done": task_done(stage, i, run),
                                "objectives": meta.get("objectives") if meta else None,
                                "job": job, "job_state": states.get(job) if job else None,
                                "mtime": (run.member(stage.cycle, i) / "meta.json").stat().st_mtime
                                if meta else None})
            row["members"] = members
        rows.append(row)
    return rows


def _eta(rows: list[dict[str, Any]], run: RunDir) -> str:
    """Remaining time from the average duration of finished Adam+EA cycles (rough, from file times)."""
    done_cycles = [r for r in rows if r["stage"].startswith("ea/") and r["done"]]
    total_cycles = [r for r in rows if r["stage"].startswith("ea/")]
    if not done_cycles or len(done_cycles) == len(total_cycles):
        return "n/a"
    t_start = run.config.stat().st_mtime
    last = run.ea(int(done_cycles[-1]["stage"].split("/")[1])) / "done.json"
    per_cycle = (last.stat().st_mtime - t_start) / len(done_cycles)
    remaining = per_cycle * (len(total_cycles) - len(done_cycles))
    return time.strftime("%H:%M:%S", time.gmtime(remaining)) + " (cycles only)"


def format_table(rows: list[dict[str, Any]], run: RunDir) -> str:
    lines = [f"run: {run.root}", f"{'stage':<10} {'state':<22} jobs", f"{'-' * 10} {'-' * 22} {'-' * 30}"]
    for r in rows:
        jobs = " ".join(r["jobs"][:4]) + (" …" if len(r["jobs"]) > 4 else "")
        lines.append(f"{r['stage']:<10} {r['state']:<22} {jobs}")
        for m in r.get("members", []):
            if r["done"] and not m.get("objectives"):
                continue
            it = "-" if m["iteration"] is None else f"{m['iteration']}/{m['target']}"
            obj = "" if not m.get("objectives") else " f=(" + ", ".join(f"{v:.4f}" for v in m["objectives"]) + ")"
            job = f" job {m['job']} {m['job_state']}" if m.get("job") else ""
            lines.append(f"    member {m['member']:02d}  iter {it:<12}{'done' if m['done'] else ''}{job}{obj}")
    lines.append(f"ETA: {_eta(rows, run)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.status", description=__doc__)
    ap.add_argument("run", help="run directory")
    args = ap.parse_args(argv)
    try:
        rows = collect(args.run)
    except EaslurmError as exc:
        print(f"easlurm.status: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows, RunDir(args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
