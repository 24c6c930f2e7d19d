"""The sbatch script of a stage, rendered by easlurm itself, and its submission.

Each stage is one ``sbatch`` submission — an Adam phase one job *array* whose array indices are the member slots
still to train (``--array=0,2,3%P``), any other stage one job. The script runs the task through
``python -m easlurm.orchestrate.runner RUN STAGE INDEX`` (inside the container when one is configured) as a
**background child of the batch shell** so that the shell can act on signals:

* ``--signal=B:USR2@LEAD``: Slurm signals the batch shell ``LEAD`` seconds before the time limit; the shell forwards
  USR2 to the task, which commits a checkpoint after its current iteration and exits with 140 (128 + SIGUSR2);
  the shell then requeues the job (``scontrol requeue`` runs here, on the host, where the Slurm commands exist
  even when the task runs in a container without them) and the task continues from its checkpoint in its next
  allocation — the same job id, no retry spent. Where requeueing is not allowed the job ends with 140 and the
  launcher resubmits it, also without spending a retry.
* SIGTERM (``scancel``, or the limit itself) is forwarded too: the task commits and stops.

A process started directly by a batch script never receives ``--signal=USR2@T`` (only SIGTERM at the limit), and a
batch shell without a trap dies of ``B:USR2`` at once (measured on Slurm 22.05); this script avoids both.
Values reach ``#SBATCH`` lines only after config validation (no control characters, sbatch option syntax), and
every value is shell-quoted where sbatch's own parser needs it.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import Config, StageResources
from ..errors import EaslurmError
from ..store import RunDir, atomic_write_text
from . import container
from .plan import Stage, stage_slug


class SubmissionError(EaslurmError):
    """sbatch refused a stage (no controller, bad partition/account, …); the message carries sbatch's error."""


#: The exit status a stage uses after committing its checkpoint on SIGUSR2 (see easlurm.train.preempt).
PREEMPTED_RC = 140
_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def job_name(cfg: Config, stage: Stage) -> str:
    return f"easlurm-{cfg.run.name}-{stage_slug(stage)}"


def stage_folder(run: RunDir, stage: Stage) -> Path:
    """``RUN/slurm/<stage>/``: the stage's sbatch scripts and job logs."""
    return run.slurm / stage_slug(stage)


def log_path(run: RunDir, stage: Stage, job_id: str) -> Path:
    """The log of one job (array tasks ``123_4`` → ``123_4.out``)."""
    return stage_folder(run, stage) / f"{job_id}.out"


def _value(v: object) -> str:
    text = str(v)
    return text if _SAFE.match(text) else shlex.quote(text)


@dataclass(frozen=True)
class Submission:
    """One sbatch submission: ``tasks`` of ``stage`` (array indices = task indices), after ``dependency``."""
    stage: Stage
    tasks: tuple[int, ...]
    dependency: tuple[str, ...] = ()


#: Shared-filesystem write rate assumed for a checkpoint commit (bytes/s; plus sha256 at ~500 MB/s), conservative.
_WRITE_BPS = 100e6
#: Seconds of one unit of work (an iteration; an EA generation) assumed when the run has measured none.
_UNIT_S = {"pretrain": 5.0, "adam": 5.0, "fuse": 5.0, "ea": 60.0}


def signal_lead(cfg: Config, run: RunDir, kind: str) -> int:
    """Seconds before the time limit at which stage ``kind`` is warned (``executor.slurm.<kind>.signal_lead_s``, or
    when null: derived from what the stage must still do after the warning). The warning is acted on after the
    current unit of work (an iteration, or an EA generation) and then costs one checkpoint commit, and slurmctld
    sends due signals only every ~30 s; so: 45 s + 2 × (one unit + one commit), rounded up to 10 s, at least 60 s,
    at most a third of the time limit. A unit's time comes from the run's own records when it measured one
    (RUN's stage attempts), else a conservative default; the commit's size from the configured networks."""
    res: StageResources = getattr(cfg.executor.slurm, kind)
    if res.signal_lead_s is not None:
        return res.signal_lead_s
    if kind not in _UNIT_S:
        return 60
    from ..footprint import checkpoint_sizes

    sizes = checkpoint_sizes(cfg)
    commit = {"adam": sizes["G.pt"] + sizes["D.pt"] + sizes["optim.pt"],
              "pretrain": sizes["G.pt"] + sizes["pretrain optim.pt"],
              "fuse": sizes["fusion attention.pt"] + sizes["D.pt"] + sizes["fusion optim.pt"],
              "ea": cfg.population.size * sizes["G.pt"]}[kind] + sizes["rng.pt"]
    unit = _UNIT_S[kind]
    try:
        from ..bill import measured_rates

        rate = measured_rates(run, cfg).stages.get(kind)
        if rate is not None and rate.seconds_per_unit > 0:
            unit = rate.seconds_per_unit
    except Exception:  # noqa: BLE001 - no records yet (a new run, a dry run): the default stands
        pass
    lead = 45 + 2 * (unit + commit / _WRITE_BPS + commit / 500e6)
    lead = max(60, int(-(-lead // 10) * 10))
    return min(lead, max(60, res.time_min * 60 // 3))


def directives(cfg: Config, run: RunDir, sub: Submission) -> list[tuple[str, str]]:
    """The ``#SBATCH`` options of a submission, in order."""
    s = cfg.executor.slurm
    res: StageResources = getattr(s, sub.stage.kind)
    folder = stage_folder(run, sub.stage)
    opts: list[tuple[str, str]] = [("job-name", job_name(cfg, sub.stage))]
    if sub.stage.is_array:
        opts.append(("array", ",".join(str(t) for t in sub.tasks) + f"%{s.array_parallelism}"))
        opts.append(("output", str(folder / "%A_%a.out")))
    else:
        opts.append(("output", str(folder / "%j.out")))
    opts += [("open-mode", "append"), ("time", str(res.time_min)), ("ntasks", "1"),
             ("cpus-per-task", str(res.cpus)), ("mem", f"{res.mem_gb}G")]
    if res.gpus:
        opts.append(("gres", f"gpu:{res.gpus}"))
    opts += [("signal", f"B:USR2@{signal_lead(cfg, run, sub.stage.kind)}"), ("requeue", "")]
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            opts.append((key, str(getattr(s, key))))
    if sub.dependency:
        opts += [("dependency", "afterok:" + ":".join(sub.dependency)), ("kill-on-invalid-dep", "yes")]
    opts += [(k, str(v)) for k, v in sorted(res.extra.items())]
    return opts


def render(cfg: Config, run: RunDir, sub: Submission, python: str = "python") -> str:
    """The sbatch script text of ``sub`` (see the module docstring)."""
    lines = ["#!/bin/bash"]
    for k, v in directives(cfg, run, sub):
        lines.append(f"#SBATCH --{k}" + (f"={_value(v)}" if v != "" else ""))
    argv = container.wrap(cfg, run.root, [python, "-u", "-m", "easlurm.orchestrate.runner", str(run.root),
                                          sub.stage.key])
    command = " ".join(shlex.quote(w) for w in argv) + ' "$task"'
    index = "${SLURM_ARRAY_TASK_ID}" if sub.stage.is_array else str(sub.tasks[0])
    lines += [
        "set -u",
        "# easlurm: the task runs as a child of this shell, which forwards the pre-timeout signal (B:USR2) and",
        "# requeues the job from the host once the task has committed its checkpoint (see easlurm.orchestrate.sbatch).",
        f"task={index}",
        'if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then me="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; '
        'else me="${SLURM_JOB_ID}"; fi',
        'echo "[easlurm] $(date +%FT%T) job $me task $task on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
        "export PYTHONUNBUFFERED=1",
        f"{command} &",
        "child=$!",
        "trap 'kill -USR2 $child 2>/dev/null' USR2",
        "trap 'kill -TERM $child 2>/dev/null' TERM",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; rc=$?',
        f'if [ "$rc" -eq {PREEMPTED_RC} ]; then',
        '    echo "[easlurm] $(date +%FT%T) checkpoint committed at the pre-timeout signal; requeueing $me"',
        '    scontrol requeue "$me" && exit 0',
        '    echo "[easlurm] requeue refused or scontrol missing; the launcher resubmits this task"',
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def clean_env() -> dict[str, str]:
    """os.environ without the SLURM_*/SBATCH_* variables of a job the launcher may itself run in (they would leak
    into the new job), keeping SLURM_CONF (which cluster to talk to)."""
    return {k: v for k, v in os.environ.items() if k == "SLURM_CONF" or not k.startswith(("SLURM_", "SBATCH_"))}


def submit(cfg: Config, run: RunDir, sub: Submission, python: str = "python") -> list[str]:
    """Write the script to ``RUN/slurm/<stage>/`` and submit it; return the job ids (``A_T`` per array task)."""
    folder = stage_folder(run, sub.stage)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(sorted(folder.glob("submit-*.sh")))
    script = folder / f"submit-{n:03d}.sh"
    atomic_write_text(script, render(cfg, run, sub, python))
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120,
                              env=clean_env(), cwd=str(run.root))
    except FileNotFoundError as exc:
        raise SubmissionError(f"submitting stage {sub.stage.key}: sbatch not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise SubmissionError(f"submitting stage {sub.stage.key}: sbatch timed out") from exc
    if proc.returncode != 0:
        raise SubmissionError(f"submitting stage {sub.stage.key} failed: "
                              f"{(proc.stderr or proc.stdout).strip()[:500]} (script {script})")
    job = proc.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SubmissionError(f"submitting stage {sub.stage.key}: unexpected sbatch answer {proc.stdout!r}")
    return [f"{job}_{t}" for t in sub.tasks] if sub.stage.is_array else [job]


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs (best effort: a job that already ended is not an error)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, env=clean_env(), check=False)


__all__ = ["PREEMPTED_RC", "SubmissionError", "Submission", "job_name", "stage_folder", "log_path", "directives",
           "render", "submit", "scancel", "clean_env"]
