"""The test cluster itself: it answers, schedules fake GPUs per array task, honours afterok chains (and cancels
jobs behind a failed parent), plus a printed latency measurement."""
from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

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


def test_cluster_answers_with_four_gpus(slurm_cluster: SlurmCluster) -> None:
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P|%a|%t|%G"], capture_output=True, text=True,
                          timeout=15, check=True)
    partition, avail, node_state, gres = proc.stdout.strip().splitlines()[0].split("|")
    assert partition == "debug*"
    assert avail == "up"
    assert node_state in {"idle", "mix", "alloc"}
    assert gres.startswith("gpu:4"), gres


def test_array_gives_each_task_its_own_gpu(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # Each task writes its task id, visible GPUs and its start/end times; the sleep makes tasks overlap.
    out = tmp_path / "task_%a.txt"
    array = _sbatch('echo "$SLURM_ARRAY_TASK_ID|${CUDA_VISIBLE_DEVICES-unset}|$(date +%s.%N)" > ' + str(out).replace(
        "%a", "$SLURM_ARRAY_TASK_ID") + '; sleep 1; date +%s.%N >> ' + str(out).replace("%a", "$SLURM_ARRAY_TASK_ID"),
        "--array=0-3%4", "--gres=gpu:1", "--time=5")
    _wait([array], lambda s: s.get(array) == "COMPLETED", timeout_s=60)
    seen = []
    for index in range(4):
        first, end = (tmp_path / f"task_{index}.txt").read_text().splitlines()[-2:]
        task_id, devices, start = first.split("|")
        assert task_id == str(index)
        assert devices.isdigit() and 0 <= int(devices) < 4, f"task {index} sees CUDA_VISIBLE_DEVICES={devices!r}"
        seen.append((int(devices), float(start), float(end)))
    # Tasks that ran at the same time must hold different GPUs.
    for (dev_a, start_a, end_a), (dev_b, start_b, end_b) in itertools.combinations(seen, 2):
        if start_a < end_b and start_b < end_a:
            assert dev_a != dev_b, f"overlapping tasks share GPU {dev_a}: {seen}"


def test_afterok_chain_runs_in_order(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    jobs: list[str] = []
    for name, delay in (("a", 1), ("b", 0), ("c", 0)):
        dep = [f"--dependency=afterok:{jobs[-1]}"] if jobs else []
        # Without the dependency b and c would start at once and finish before a (which sleeps first).
        jobs.append(_sbatch(f'sleep {delay}; echo "{name} $(date +%s.%N)" >> "{log}"', *dep))
    states = _wait(jobs, lambda s: all(map(is_terminal, s.values())), timeout_s=60)
    assert states == {job: "COMPLETED" for job in jobs}
    lines = log.read_text().split("\n")[:-1]
    assert [line.split()[0] for line in lines] == ["a", "b", "c"]


def test_job_behind_failed_parent_is_cancelled(slurm_cluster: SlurmCluster) -> None:
    parent = _sbatch("exit 3")
    child = _sbatch("true", f"--dependency=afterok:{parent}")
    states = _wait([parent, child], lambda s: all(is_terminal(v) for v in s.values()))
    # kill_invalid_depend: without it the child would stay PENDING (DependencyNeverSatisfied) forever.
    assert states == {parent: "FAILED", child: "CANCELLED"}


def test_measure_latency(slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Submit→done latency (printed, not asserted): sbatch jobs, polled every 50 ms."""
    done = lambda states: all(v == "COMPLETED" for v in states.values())  # noqa: E731
    timings = {}
    start = time.perf_counter()
    _wait([_sbatch("true")], done, poll_s=0.05)
    timings["sbatch, 1 trivial job"] = time.perf_counter() - start
    start = time.perf_counter()
    _wait([_sbatch("true", "--array=0-2")], done, poll_s=0.05)
    timings["sbatch, 3-task array"] = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[slurm latency, accounting={slurm_cluster.accounting}, {os.cpu_count()} cores] "
              + "; ".join(f"{name}: {secs:.2f} s" for name, secs in timings.items()))
