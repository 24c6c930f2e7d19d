"""``python -m easlurm.status RUN [--json]``: where a run stands and what it cost — stage by stage, member by member.

The run directory is the truth: a task is done when its stage's own ``is_done`` says so (the launcher's check).
Slurm says what is queued or running: job ids from ``state.json``, their states and, for waiting or held jobs,
Slurm's reason (:func:`easlurm.orchestrate.slurm_state.job_infos`).

Cost report (times from :mod:`easlurm.timings`: the stages' records, job logs, TensorBoard, file times):

* per stage: wall time (first task start → last task end), task-hours and GPU-hours (each attempt's duration ×
  the GPUs its stage holds), refined by ``sacct`` (elapsed time × allocated GPUs) when accounting exists;
* queue wait: a task's start minus the later of its submission (``state.json``) and the end of the stage before it
  (time waiting for resources, not for the dependency); ``sacct``'s Start − Eligible when accounting exists;
* barrier cost per cycle: time from the first to the last Adam-trained member finishing — how long the EA phase
  waited for the slowest member after the fastest was done.

Objectives are shown for what they are: a start entry's ``ea_objectives`` were measured by the EA phase that wrote
it (before this cycle's Adam phase); a trained member's are those the next EA phase measured when it read the member
(``cycles/C/ea/fitness.json`` "initial"). Both are (mean L1, mean perceptual loss) on the fitness set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from .config import Config, load_run_config
from .errors import EaslurmError
from .orchestrate.client import CommandClient
from .orchestrate.plan import build_plan, snapshot
from .orchestrate.slurm_state import sacct_usage
from .orchestrate.state import SubmissionBook
from .population import adam_cycles, is_adam_trained, read_member, slot_mode
from .run_record import recorded_executor
from .stages import adam as adam_stage
from .store import RunDir, read_json
from .timings import TaskTime, parse_local_time, task_times

__all__ = ["collect", "format_report", "main"]


# ----------------------------------------------------------------------------------------------------------------
# Slurm


def _submissions(run: RunDir) -> dict[tuple[str, int], list[tuple[str, float | None]]]:
    """(stage key, task) → [(job id, submission time)] in submission order, from ``state.json``."""
    return {key: [(job, parse_local_time(t)) for job, t in subs]
            for key, subs in SubmissionBook(run).history().items()}


def _job_infos(jobs: list[str]) -> tuple[dict[str, Any], str | None]:
    if not jobs:
        return {}, None
    try:
        return CommandClient().job_infos(jobs), None
    except EaslurmError as exc:  # no Slurm here (e.g. a run directory copied to a laptop)
        return {}, str(exc).splitlines()[0][:120]


# ----------------------------------------------------------------------------------------------------------------
# Collection


def _gpus(cfg: Config, executor: str, kind: str) -> int:
    if executor == "slurm":
        return int(cfg.executor.slurm.resources(kind).gpus)
    if executor == "local":
        return 1 if cfg.executor.local.gpus else 0
    return 0


def _fitness(run: RunDir, cycle: int) -> dict[str, Any] | None:
    try:
        d = read_json(run.ea(cycle) / "fitness.json")
    except EaslurmError:
        return None
    return d if isinstance(d, dict) else None


def _pair(v: Any) -> list[float] | None:
    return [float(v[0]), float(v[1])] if isinstance(v, (list, tuple)) and len(v) == 2 else None


def _members(cfg: Config, run: RunDir, cycle: int, times: Mapping[tuple[str, int], TaskTime],
             jobs: Mapping[tuple[str, int], str], infos: Mapping[str, Any]) -> dict[str, Any]:
    key = f"adam/{cycle:03d}"
    fit = _fitness(run, cycle) if cycle < cfg.run.cycles else None
    rows = []
    for i in range(cfg.population.size):
        row: dict[str, Any] = {"slot": i, "mode": slot_mode(cfg, i)}
        trained = is_adam_trained(cfg, i)
        try:
            start = read_member(run.start(cycle, i))
            meta = read_member(run.member(cycle, i)) if trained else None
        except EaslurmError as exc:
            start = meta = None
            row["error"] = str(exc)
        row["origin"] = start.origin if start else None
        row["objectives_start"] = list(start.ea_objectives) if start and start.ea_objectives else None
        row["objectives_trained"] = _pair(fit["initial"][i]) if fit and i < len(fit.get("initial", [])) else None
        row["iteration"] = meta.iteration if meta else 0
        # A slot that is not Adam-trained has nothing to do in the phase: target 0, done once its start exists.
        row["target"] = (meta.iters_target if meta else None) if trained else 0
        row["done"] = bool(meta and meta.done) if trained else start is not None
        task = adam_stage.task_of(cfg, i)  # the slot's task (several slots share one with adam.members_per_task)
        tt = times.get((key, task)) if task is not None else None
        row["finished_at"] = tt.done_at if tt else None
        job = jobs.get((key, task)) if task is not None else None
        info = infos.get(job) if job else None
        row["job"], row["job_state"] = job, info.state if info else None
        row["reason"] = info.reason if info and info.reason and info.reason != "None" else None
        rows.append(row)
    ends = [r["finished_at"] for r in rows if r["finished_at"] is not None and r["mode"] == "trained"]
    n_trained = sum(1 for r in rows if r["mode"] == "trained")
    barrier = max(ends) - min(ends) if ends and len(ends) == n_trained else None
    return {"cycle": cycle, "members": rows, "barrier_s": barrier,
            "first_member_done": min(ends) if ends else None, "last_member_done": max(ends) if ends else None}


def collect(run_dir: str | Path, *, slurm: bool = True) -> dict[str, Any]:
    """Everything ``status`` shows, JSON-ready (times in Unix seconds, durations in seconds). ``slurm=False``:
    ask Slurm nothing (job states and sacct left out)."""

    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    executor = recorded_executor(run) or cfg.executor.kind
    plan = build_plan(cfg, run)
    done = snapshot(plan)
    subs = _submissions(run)
    latest = {k: v[-1][0] for k, v in subs.items()}
    all_jobs = sorted({j for v in subs.values() for j, _ in v})
    infos, slurm_note = _job_infos(sorted(set(latest.values()))) if slurm else ({}, None)
    usage = sacct_usage(all_jobs) if slurm and all_jobs else None
    times = {(t.stage, t.index): t for t in task_times(cfg, run, plan, done)}
    stages: list[dict[str, Any]] = []
    prev_end: float | None = None
    for s in plan:
        # An Adam phase's slot that is not Adam-trained is no task (no job, no time): count the busy ones only.
        idx = [i for i, t in enumerate(s.tasks) if (s.key, i) in times]
        tts = [times[(s.key, i)] for i in idx]
        n_done = sum(done[(s.key, i)] for i in idx)
        gpus = _gpus(cfg, executor, s.kind.name)
        starts = [t.start for t in tts if t.start is not None]
        ends = [t.end for t in tts if t.end is not None]
        busy = sum(t.busy_s for t in tts)
        row: dict[str, Any] = {
            "stage": s.key, "kind": s.kind.name, "cycle": s.cycle, "tasks": len(idx), "done": n_done,
            "start": min(starts) if starts else None, "end": max(ends) if n_done == len(idx) and ends else None,
            "task_s": busy, "gpus_per_task": gpus, "gpu_h": busy * gpus / 3600, "gpu_h_source": "files",
            "time_source": sorted({t.source for t in tts if t.source != "none"}),
            "jobs": [latest[(s.key, i)] for i in idx if (s.key, i) in latest],
        }
        row["wall_s"] = row["end"] - row["start"] if row["start"] is not None and row["end"] is not None else None
        waits = []
        for i, t in zip(idx, tts):
            first = subs.get((s.key, i), [("", None)])[0][1]
            if first is not None and t.start is not None:
                waits.append(max(0.0, t.start - max(first, prev_end or first)))
        row["queue_wait_s"] = max(waits) if waits else None
        if usage:
            jobs = [j for i in idx for j, _ in subs.get((s.key, i), [])]
            known = [usage[j] for j in jobs if j in usage]
            if known:
                row["gpu_h"] = sum(u["gpu_s"] for u in known) / 3600
                row["task_s"] = sum(u["elapsed_s"] for u in known)
                row["queue_wait_s"] = max(u["queue_s"] for u in known)
                row["gpu_h_source"] = "sacct"
        row["job_states"] = {j: {"state": infos[j].state, "reason": infos[j].reason}
                             for j in row["jobs"] if j in infos}
        if s.kind.name == "ea" and s.cycle is not None:
            fit = _fitness(run, s.cycle)
            counts = fit.get("distinct_genomes") if fit else None
            row["distinct_genomes"] = counts[-1] if counts else (cfg.population.size if fit else None)
        row["state"] = _stage_state(row, infos)
        stages.append(row)
        prev_end = row["end"] if row["end"] is not None else prev_end
    cycles = [_members(cfg, run, c, times, latest, infos) for c in adam_cycles(cfg)]
    for cyc in cycles:
        ea = next((r for r in stages if r["stage"] == f"ea/{cyc['cycle']:03d}"), None)
        cyc["ea_start_gap_s"] = (ea["start"] - cyc["last_member_done"] if ea and ea["start"] is not None
                                 and cyc["last_member_done"] is not None else None)
    starts = [r["start"] for r in stages if r["start"] is not None]
    ends = [r["end"] for r in stages if r["end"] is not None]
    return {
        "run": str(run.root), "executor": executor, "cycles": cfg.run.cycles, "final_phase": cfg.adam.final_phase,
        "population": cfg.population.size, "member0": cfg.population.member0, "stages": stages,
        "members": cycles, "slurm_note": slurm_note, "accounting": usage is not None,
        "complete": all(done.values()),
        "totals": {"wall_s": (max(ends) - min(starts)) if starts and ends else None,
                   "task_s": float(sum(r["task_s"] for r in stages)), "gpu_h": sum(r["gpu_h"] for r in stages),
                   "queue_wait_s": (sum(r["queue_wait_s"] for r in stages if r["queue_wait_s"] is not None)
                                    if any(r["queue_wait_s"] is not None for r in stages) else None),
                   "barrier_s": sum(c["barrier_s"] or 0.0 for c in cycles)},
        "generated": time.time(),
    }


def _stage_state(row: Mapping[str, Any], infos: Mapping[str, Any]) -> str:
    if row["done"] == row["tasks"]:
        return "COMPLETED"  # Slurm's word, as the other states in this column
    states = sorted({(infos[j].state, infos[j].reason) for j in row["jobs"] if j in infos})
    if states:
        return ", ".join(st + (f" ({why})" if why and why != "None" and st != "RUNNING" else "")
                         for st, why in states)
    if row["done"] or row["start"] is not None:
        return f"{row['done']}/{row['tasks']} done"
    return "not started"


# ----------------------------------------------------------------------------------------------------------------
# Text


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _jobs(ids: list[str]) -> str:
    """``123_0 123_1 123_2 456`` → ``123_[0-2] 456`` (array tasks folded)."""
    arrays: dict[str, list[int]] = {}
    plain: list[str] = []
    for j in ids:
        a, sep, t = j.partition("_")
        if sep and t.isdigit():
            arrays.setdefault(a, []).append(int(t))
        else:
            plain.append(j)
    out = plain[:]
    for a, ts in arrays.items():
        ts = sorted(set(ts))
        contiguous = ts == list(range(ts[0], ts[-1] + 1))
        body = f"{ts[0]}-{ts[-1]}" if contiguous and len(ts) > 1 else ",".join(map(str, ts))
        out.append(f"{a}_[{body}]" if len(ts) > 1 else f"{a}_{ts[0]}")
    return " ".join(out) or "-"


def _f(v: list[float] | None) -> str:
    return "-" if v is None else f"({v[0]:.5g}, {v[1]:.5g})"


def _origin(origin: str | None) -> str:
    """``carried:cycles/001/members/00/G.pt`` → ``carried from member 1/00``; ``ea:c1-g3-s2`` → ``EA child
    c1-g3-s2``; the initial generator's origins → ``pretrain``/``pretrained``."""
    kind, _, rest = (origin or "-").partition(":")
    if kind == "carried":
        parts = rest.split("/")
        if len(parts) >= 4 and parts[0] == "cycles" and parts[1].isdigit():
            return f"carried from {parts[2].rstrip('s')} {int(parts[1])}/{parts[3]}"
        return f"carried from {rest}"
    return f"EA child {rest}" if kind == "ea" else kind


def format_report(s: Mapping[str, Any]) -> str:
    """The text ``status`` prints for :func:`collect`'s result."""
    lines = [f"run: {s['run']}  (executor {s['executor']}; {s['cycles']} cycles"
             f"{' + final Adam phase' if s['final_phase'] else ''}; population {s['population']}, member 0 "
             f"{s['member0']}){'  — complete' if s['complete'] else ''}"]
    if s.get("slurm_note"):
        lines.append(f"(Slurm did not answer: {s['slurm_note']})")
    lines.append(f"{'stage':<10} {'state':<26} {'jobs':<18} {'wall':>9} {'task-h':>8} {'GPU-h':>8} {'queue':>9}")
    for r in s["stages"]:
        src = "" if r["gpu_h_source"] == "files" else " (sacct)"
        lines.append(f"{r['stage']:<10} {r['state'][:26]:<26} {_jobs(r['jobs'])[:18]:<18} {_hms(r['wall_s']):>9} "
                     f"{r['task_s'] / 3600:>8.3f} {r['gpu_h']:>8.3f} {_hms(r['queue_wait_s']):>9}{src}")
    t = s["totals"]
    sources = sorted({x for r in s["stages"] for x in r["time_source"]})
    lines.append(f"{'total':<10} {'':<26} {'':<18} {_hms(t['wall_s']):>9} {t['task_s'] / 3600:>8.3f} "
                 f"{t['gpu_h']:>8.3f} {_hms(t['queue_wait_s']):>9}")
    lines.append(f"(times from {', '.join(sources) or 'nothing yet'}; GPU-h = task time × GPUs per task"
                 f"{', refined by sacct' if s['accounting'] else '; no Slurm accounting to refine them'})")
    distinct = [f"cycle {int(r['stage'][3:])}: {r['distinct_genomes']}/{s['population']}" for r in s["stages"]
                if r.get("distinct_genomes") is not None]
    if distinct:
        lines.append("distinct genomes after each EA phase: " + ", ".join(distinct))
    lines.append("")
    lines.append("barrier cost per cycle (time from the first to the last Adam-trained member finishing):")
    for c in s["members"]:
        gap = "" if c["ea_start_gap_s"] is None else f"; the EA phase started {_hms(c['ea_start_gap_s'])} later"
        lines.append(f"  cycle {c['cycle']}: {_hms(c['barrier_s'])}{gap}")
    lines.append("")
    lines.append("members — objectives (mean L1, mean perceptual) on the fitness set: 'start' = measured by the EA "
                 "phase that wrote the start entry (before this Adam phase), 'trained' = measured by the next EA "
                 "phase after it")
    for c in s["members"]:
        lines.append(f"cycle {c['cycle']}:")
        for m in c["members"]:
            it = f"{m['iteration']}/{m['target']}" if m["target"] is not None else "-"
            job = f"  job {m['job']} {m['job_state'] or ''}" if m.get("job") else ""
            why = f" ({m['reason']})" if m.get("reason") else ""
            lines.append(f"  {m['slot']:02d} {m['mode']:<8} {'done' if m['done'] else 'open':<5} iter {it:<11} "
                         f"start {_f(m['objectives_start']):<20} trained {_f(m['objectives_trained']):<20} "
                         f"{_origin(m['origin'])}{job}{why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    ap.add_argument("--no-slurm", action="store_true", help="ask Slurm nothing (files only)")
    args = ap.parse_args(argv)
    try:
        report = collect(args.run, slurm=not args.no_slurm)
    except EaslurmError as exc:
        print(f"easlurm.status: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
