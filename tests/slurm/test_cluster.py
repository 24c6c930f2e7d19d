"""The test cluster itself: it answers, schedules fake GPUs per array task through submitit, honours afterok
chains (and cancels jobs behind a failed parent), plus a printed latency measurement."""
from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
import submitit
from submitit.helpers import CommandFunction

from easlurm.orchestrate.slurm_state import is_terminal, job_states

if TYPE_CHECKING:
    from .conftest import SlurmCluster

pytestmark = pytest.mark.slurm


def _sbatch(command: str, *options: str) -> str:
    """Submit ``command`` as a batch job on the cluster SLURM_CONF points at; returns the job id."""
    proc = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--chdir=/tmp", *options,
                           f"--wrap={command}"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]


def _wait(ids: list[str], until: Callable[[dict[str, str]], bool], timeout_s: float = 30.0,
          poll_s: float = 0.1) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        states = job_states(ids)
        if until(states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {ids} did not reach the expected states in {timeout_s} s: {states}")
        time.sleep(poll_s)


def _executor(folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # submitit asks for USR2 90 s before the limit and slurmctld checks for due signals every 30 s, so with a
    # 2-minute limit USR2 lands 0-30 s after the start (measured) and kills a job still starting Python.
    # 5 minutes keeps it out of these few-second jobs.
    executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1)
    return executor


def _result(job: submitit.Job[str], timeout_s: float = 60.0) -> str:
    """``job.result()`` that cannot hang: without accounting submitit never learns that a job died resultless."""
    deadline = time.monotonic() + timeout_s
    ended_at = None
    while not job.done():
        state = job_states([job.job_id])[job.job_id]
        if is_terminal(state):
            # The result pickle is written before the job ends; allow the shared filesystem a moment.
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > 5.0:
                raise AssertionError(f"job {job.job_id} ended {state} without a result:\n{job.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.job_id} not done after {timeout_s} s (state {state})")
        time.sleep(0.05)
    return job.result()


def test_cluster_answers_with_four_gpus(slurm_cluster: SlurmCluster) -> None:
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P|%a|%t|%G"], capture_output=True, text=True,
                          timeout=15, check=True)
    partition, avail, node_state, gres = proc.stdout.strip().splitlines()[0].split("|")
    assert partition == "debug*"
    assert avail == "up"
    assert node_state in {"idle", "mix", "alloc"}
    assert gres.startswith("gpu:4"), gres


def test_submitit_array_gives_each_task_its_own_gpu(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path / "submitit")
    executor.update_parameters(slurm_array_parallelism=4, gpus_per_node=1)
    # Each task prints its index, task id, visible GPUs and its start/end times; the sleep makes tasks overlap.
    probe = CommandFunction(["bash", "-c", 'echo "$0|$SLURM_ARRAY_TASK_ID|${CUDA_VISIBLE_DEVICES-unset}|'
                             '$(date +%s.%N)"; sleep 1; date +%s.%N'], verbose=False)
    jobs = executor.map_array(probe, list(range(4)))
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"expected one Slurm array, got {sorted(job.job_id for job in jobs)}"
    seen = []
    for index, job in enumerate(jobs):
        first, end = _result(job).splitlines()[-2:]
        label, task_id, devices, start = first.split("|")
        assert (label, task_id) == (str(index), str(index))
        assert devices.isdigit() and 0 <= int(devices) < 4, f"task {index} sees CUDA_VISIBLE_DEVICES={devices!r}"
        seen.append((int(devices), float(start), float(end)))
    # Tasks that ran at the same time must hold different GPUs.
    for (dev_a, start_a, end_a), (dev_b, start_b, end_b) in itertools.combinations(seen, 2):
        if start_a < end_b and start_b < end_a:
            assert dev_a != dev_b, f"overlapping tasks share GPU {dev_a}: {seen}"
    # The result pickle exists a moment before Slurm marks the task done.
    states = _wait([array_ids.pop()], lambda s: all(map(is_terminal, s.values())))
    assert set(states.values()) == {"COMPLETED"} and len(states) == 5, states


def test_afterok_chain_runs_in_order(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path / "submitit")
    log = tmp_path / "order.log"
    jobs = []
    for name, delay in (("a", 1), ("b", 0), ("c", 0)):
        if jobs:
            executor.update_parameters(slurm_dependency=f"afterok:{jobs[-1].job_id}")
        # Without the dependency b and c would start at once and finish before a (which sleeps first).
        step = CommandFunction(["bash", "-c", f'sleep {delay}; echo "{name} $(date +%s.%N)" >> "{log}"'],
                               verbose=False)
        jobs.append(executor.submit(step))
    _result(jobs[-1])
    lines = log.read_text().split("\n")[:-1]
    assert [line.split()[0] for line in lines] == ["a", "b", "c"]
    states = _wait([job.job_id for job in jobs], lambda s: all(map(is_terminal, s.values())))
    assert states == {job.job_id: "COMPLETED" for job in jobs}


def test_job_behind_failed_parent_is_cancelled(slurm_cluster: SlurmCluster) -> None:
    parent = _sbatch("exit 3")
    child = _sbatch("true", f"--dependency=afterok:{parent}")
    states = _wait([parent, child], lambda s: all(is_terminal(v) for v in s.values()))
    # kill_invalid_depend: without it the child would stay PENDING (DependencyNeverSatisfied) forever.
    assert states == {parent: "FAILED", child: "CANCELLED"}


def test_measure_latency(slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Submit→done latency (printed, not asserted): sbatch and submitit jobs, polled every 50 ms."""
    done = lambda states: all(v == "COMPLETED" for v in states.values())  # noqa: E731
    timings = {}
    start = time.perf_counter()
    _wait([_sbatch("true")], done, poll_s=0.05)
    timings["sbatch, 1 trivial job"] = time.perf_counter() - start
    start = time.perf_counter()
    _wait([_sbatch("true", "--array=0-2")], done, poll_s=0.05)
    timings["sbatch, 3-task array"] = time.perf_counter() - start
    executor = _executor(tmp_path / "submitit")
    start = time.perf_counter()
    _result(executor.submit(CommandFunction(["true"], verbose=False)))
    timings["submitit, 1 trivial job"] = time.perf_counter() - start
    start = time.perf_counter()
    for job in executor.map_array(CommandFunction(["true"], verbose=False), [0, 1, 2]):
        _result(job)
    timings["submitit, 3-task array"] = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[slurm latency, accounting={slurm_cluster.accounting}, {os.cpu_count()} cores] "
              + "; ".join(f"{name}: {secs:.2f} s" for name, secs in timings.items()))
