"""The launcher against the real single-node cluster: arrays, afterok chains, faults, resume, no accounting."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from easlurm.store import RunDir

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
FAST = ("executor.poll_s=0.5", "executor.slurm.array_parallelism=3", "ea.generations=1")


def _launch(run: Path, env: dict[str, str], *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "slurm",
                           *extra], capture_output=True, text=True, env=env, timeout=timeout)


def _submissions(run: Path) -> list[dict]:
    return json.loads((run / "state.json").read_text())["submissions"]


def _jobs_per_stage(run: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sub in _submissions(run):
        for key, ids in sub["stages"].items():
            counts[key] = counts.get(key, 0) + len(ids)
    return counts


def _scontrol_times(job: str, env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    def t(name: str) -> float:
        m = re.search(rf"{name}=(\S+)", out)
        assert m, f"{name} missing for {job}: {out[:300]}"
        return time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return t("StartTime"), t("EndTime")


def _wait_iteration(folder: Path, at_least: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            it = json.loads((folder / "meta.json").read_text())["iteration"]
            if it >= at_least:
                return it
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{folder}: iteration {at_least} never reached")


def test_end_to_end_arrays_chain_and_results(slurm_cluster, make_run):
    run = make_run([*FAST, "run.cycles=2"])
    env = slurm_cluster.env()
    res = _launch(run, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / "eval" / "results.md").is_file() and (run / "fusion" / "fused.pt").is_file()
    subs = _submissions(run)
    assert len(subs) == 1, subs  # one chain, submitted at once
    stages = subs[0]["stages"]
    assert sorted(stages) == sorted(["pretrain", "adam/000", "ea/000", "adam/001", "ea/001", "fuse", "eval"])
    for c in ("000", "001"):
        ids = stages[f"adam/{c}"]
        array = ids[0].split("_")[0]
        assert ids == [f"{array}_{k}" for k in range(3)]  # one array, tasks _0.._2
        last_task_end = max(_scontrol_times(j, env)[1] for j in ids)
        ea_start, ea_end = _scontrol_times(stages[f"ea/{c}"][0], env)
        assert ea_start >= last_task_end  # the EA job started only after its array ended
    out = subprocess.run([sys.executable, "-m", "easlurm.status", str(run)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0 and re.search(r"eval\s+COMPLETED", out.stdout), out.stdout


def test_scancelled_task_is_retried_and_requeued_task_resumes(slurm_cluster, make_run):
    """One run, two faults in the same Adam phase: member 1's task is scancelled (the launcher resubmits it) and
    member 2's task is requeued by Slurm (it continues from its checkpoint, not from iteration 0)."""
    run = make_run([*FAST, "run.cycles=1", "adam.iters_per_cycle=100", "adam.checkpoint_every=10",
                    "adam.log_every=100", "adam.image_every=1000"])
    env = slurm_cluster.env()
    launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                 "slurm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_iteration(RunDir(run).member(0, 1), 10)
        tasks = _submissions(run)[0]["stages"]["adam/000"]
        subprocess.run(["scancel", tasks[1]], check=True, env=env)
        reached = _wait_iteration(RunDir(run).member(0, 2), 20)
        subprocess.run(["scontrol", "requeue", tasks[2]], check=True, env=env)
        out, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out
    assert (run / "eval" / "results.md").is_file()
    # scancel: the launcher resubmitted exactly the unfinished member.
    assert f"job {tasks[1]} ended CANCELLED; resubmitting" in out
    retry = _submissions(run)[1]
    assert retry["reason"].startswith("retry 1") and len(retry["stages"]["adam/000"]) == 1
    assert retry["tasks"][retry["stages"]["adam/000"][0]] == 1
    # requeue: the same Slurm task ran again and resumed from its last checkpoint.
    log = (run / "slurm" / "adam-000" / f"{tasks[2]}_0_log.out").read_text()
    starts = [int(m) for m in re.findall(r"member 2: (?:starting|resuming) at iteration (\d+)/100", log)]
    assert len(starts) >= 2 and starts[0] == 0 and starts[-1] >= reached >= 20, log[-2000:]


def test_killed_launcher_resumes_without_rerunning_finished_stages(slurm_cluster, make_run):
    run = make_run([*FAST, "run.cycles=1", "adam.iters_per_cycle=60", "adam.checkpoint_every=10"])
    env = slurm_cluster.env()
    launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                 "slurm"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_iteration(RunDir(run).member(0, 0), 10)
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    res = _launch(run, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "adopting active jobs" in res.stdout
    assert (run / "eval" / "results.md").is_file()
    counts = _jobs_per_stage(run)
    assert counts == {"pretrain": 1, "adam/000": 3, "ea/000": 1, "fuse": 1, "eval": 1}


def test_without_accounting_the_run_completes_and_status_is_right(slurm_cluster_noacct, make_run):
    """Also exercises executor.window: only one cycle is queued ahead; the launcher submits the next as it goes."""
    run = make_run([*FAST, "run.cycles=2", "executor.window=1"])
    env = slurm_cluster_noacct.env()
    sacct = subprocess.run(["sacct", "-n"], capture_output=True, text=True, env=env)
    assert "accounting storage is disabled" in (sacct.stdout + sacct.stderr).lower()
    res = _launch(run, env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = subprocess.run([sys.executable, "-m", "easlurm.status", str(run)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    for key in ("pretrain", "adam/000", "ea/000", "adam/001", "ea/001", "fuse", "eval"):
        assert re.search(rf"{re.escape(key)}\s+COMPLETED", out.stdout), (key, out.stdout)
    assert os.path.getsize(run / "eval" / "results.csv") > 0
    subs = _submissions(run)
    assert sorted(subs[0]["stages"]) == ["adam/000", "ea/000", "pretrain"]  # the window: cycle 0 only
    assert all(s["reason"] == "window" for s in subs[1:]) and len(subs) >= 2
    assert _jobs_per_stage(run) == {"pretrain": 1, "adam/000": 3, "ea/000": 1, "adam/001": 3, "ea/001": 1,
                                    "fuse": 1, "eval": 1}
