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

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import Config
from ..config_checks import forbidden_char, shown
from ..engine.preempt import PREEMPTED_RC
from ..errors import ConfigError
from ..store import RunDir, atomic_write_text, make_dirs, sha256_bytes
from . import container
from .client import SlurmClient
from .plan import Stage, stage_slug

_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
#: The warning lead of a stage kind the launcher computed none for (seconds): enough for a commit of several GiB.
DEFAULT_LEAD_S = 180


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
    """One sbatch submission: ``tasks`` of ``stage`` (array indices = task indices), after ``dependency``;
    ``key``: the submission's idempotency key, written as the job's ``--comment`` (:func:`submission_key`)."""
    stage: Stage
    tasks: tuple[int, ...]
    dependency: tuple[str, ...] = ()
    key: str = ""


def submission_key(run: RunDir, stage: Stage, number: int) -> str:
    """``easlurm:<run token>:<stage>:<n>``: names one submission of one run for good (the run token is a hash of
    the run directory's path), so that after an sbatch call whose answer was lost the launcher can find out
    whether the job exists before it submits again."""
    token = sha256_bytes(str(run.root).encode("utf-8"))[:12]
    return f"easlurm:{token}:{stage_slug(stage)}:{number:03d}"


def directives(cfg: Config, run: RunDir, sub: Submission, lead: int = DEFAULT_LEAD_S) -> list[tuple[str, str]]:
    """The ``#SBATCH`` options of a submission, in order; ``lead``: seconds of warning before the time limit."""
    s = cfg.executor.slurm
    res = s.resources(sub.stage.kind.name)
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
        opts.append({"gres": ("gres", f"gpu:{res.gpus}"), "gpus-per-node": ("gpus-per-node", str(res.gpus)),
                     "gpus": ("gpus", str(res.gpus))}[s.gpu_request])
    opts += [("signal", f"B:USR2@{lead}"), ("requeue", "")]
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            opts.append((key, str(getattr(s, key))))
    if sub.dependency:
        opts += [("dependency", "afterok:" + ":".join(sub.dependency)), ("kill-on-invalid-dep", "yes")]
    if sub.key:
        opts.append(("comment", sub.key))
    opts += [(k, str(v)) for k, v in sorted(res.extra.items())]
    return opts


def supervise(command: str) -> list[str]:
    """The shell lines that run ``command`` as a child of the batch shell, forward the warning and SIGTERM to it,
    and requeue the job (``$me``) from the host when the task exits :data:`PREEMPTED_RC` after its commit. The
    launcher's scripts and ``jobs/common.sh`` hold exactly these lines (a test compares them)."""
    return [
        f"{command} &",
        "child=$!",
        "trap 'kill -USR2 \"$child\" 2>/dev/null' USR2",
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM",
        "set +e",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; rc=$?',
        f'if [ "$rc" -eq {PREEMPTED_RC} ] && [ -n "$me" ]; then',
        '    echo "[easlurm] $(date +%FT%T) checkpoint committed at the pre-timeout signal; requeueing $me"',
        '    scontrol requeue "$me" && exit 0',
        '    echo "[easlurm] requeue refused or scontrol missing: the launcher resubmits this task (or relaunch with'
        ' --resume)"',
        "fi",
        'exit "$rc"',
    ]


def render(cfg: Config, run: RunDir, sub: Submission, python: str = "python", lead: int = DEFAULT_LEAD_S) -> str:
    """The sbatch script text of ``sub`` (see the module docstring); ``lead``: the warning's seconds."""
    lines = ["#!/bin/bash"]
    for k, v in directives(cfg, run, sub, lead):
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
        'else me="${SLURM_JOB_ID:-}"; fi',
        'echo "[easlurm] $(date +%FT%T) job $me task $task on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
        *(f"module load {shlex.quote(m)}" for m in cfg.executor.slurm.modules),
        "export PYTHONUNBUFFERED=1",
        *supervise(command),
    ]
    for n, line in enumerate(lines, 1):
        # Every value was checked where it entered (config, --run-dir); this is the last line of defence: one raw
        # newline inside a directive would end sbatch's directive parsing and start a shell command.
        if forbidden_char(line) is not None:
            raise ConfigError(f"sbatch script of stage {sub.stage.key}: line {n} holds a control character "
                              f"({shown(line)[:120]}); refusing to write or submit it")
    return "\n".join(lines) + "\n"


def submit(cfg: Config, run: RunDir, sub: Submission, client: SlurmClient, python: str = "python",
           lead: int = DEFAULT_LEAD_S) -> list[str]:
    """Write the script to ``RUN/slurm/<stage>/submit-NNN.sh`` and submit it through ``client``; return the job ids
    (``A_T`` per array task)."""
    folder = stage_folder(run, sub.stage)
    make_dirs(folder)
    n = len(sorted(folder.glob("submit-*.sh")))
    script = folder / f"submit-{n:03d}.sh"
    sub = dataclasses.replace(sub, key=submission_key(run, sub.stage, n))
    atomic_write_text(script, render(cfg, run, sub, python, lead))
    return client.submit(script, sub.tasks if sub.stage.is_array else None, cwd=run.root,
                         what=f"stage {sub.stage.key}", key=sub.key)


def leads_for(leads: Mapping[str, int] | None, kind: str) -> int:
    """The warning lead of stage ``kind`` from the launcher's ``leads`` (:data:`DEFAULT_LEAD_S` without one)."""
    return int(leads.get(kind, DEFAULT_LEAD_S)) if leads else DEFAULT_LEAD_S


__all__ = ["DEFAULT_LEAD_S", "Submission", "submission_key", "job_name", "stage_folder", "log_path", "directives",
           "supervise", "render", "submit", "leads_for"]
