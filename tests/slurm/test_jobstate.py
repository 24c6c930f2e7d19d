"""easlurm.orchestrate.slurm_state against real clusters with and without accounting.

The cluster tests run once on a cluster with slurmdbd (sacct answers, merged with slurmctld's view) and once on one
without (sacct says "accounting storage is disabled" → squeue/scontrol fallback). The first block needs no cluster.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from easlurm.errors import EaslurmError
from easlurm.orchestrate.slurm_state import (
    STATES,
    SlurmQueryError,
    accounting_available,
    is_terminal,
    job_states,
    normalise_state,
)

# ---------------------------------------------------------------- no cluster needed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("cancelled", "CANCELLED"),
        ("COMPLETING", "RUNNING"),
        ("CONFIGURING", "RUNNING"),
        ("BOOT_FAIL", "NODE_FAIL"),
        ("DEADLINE", "TIMEOUT"),
        ("REQUEUE_HOLD", "HELD"),
        ("SPECIAL_EXIT", "HELD"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
        ("CD", "UNKNOWN"),
        ("", "UNKNOWN"),
        ("SOMETHING_NEW", "UNKNOWN"),
    ],
)
def test_normalise_state(raw: str, expected: str) -> None:
    assert normalise_state(raw) == expected


def test_normalised_states_are_fixed_points() -> None:
    assert {normalise_state(s) for s in STATES} == set(STATES)


def test_is_terminal() -> None:
    assert {s for s in STATES if is_terminal(s)} == {
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"}
    assert is_terminal("CANCELLED by 1000")
    assert not is_terminal("COMPLETING")


@pytest.mark.parametrize("bad", ["12a", "1_2_3", "", "_4", "-1", 3.0, None])
def test_bad_job_id_is_named(bad: object) -> None:
    with pytest.raises(SlurmQueryError, match="invalid Slurm job id") as info:
        job_states([bad])  # type: ignore[list-item]
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, EaslurmError)


def test_single_string_is_rejected() -> None:
    with pytest.raises(SlurmQueryError, match="sequence of ids"):
        job_states("123")


def test_empty_request_runs_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # any Slurm call would fail
    assert job_states([]) == {}


def test_missing_binaries_raise_clear_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmQueryError, match="'squeue' not found"):
        job_states(["1"], use_sacct=False)
    with pytest.raises(SlurmQueryError, match="'sacct' not found"):
        accounting_available(refresh=True)


# ---------------------------------------------------------------- real clusters


@pytest.fixture(params=["accounting", "no_accounting"])
def cluster_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Points SLURM_CONF at the cluster of the given mode for one test; returns the mode."""
    if request.param == "accounting":
        cluster = request.getfixturevalue("slurm_cluster")
        if not cluster.accounting:
            pytest.skip(f"the main cluster ({cluster.conf}) runs without accounting; no sacct to test")
    else:
        cluster = request.getfixturevalue("slurm_cluster_noacct")
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return str(request.param)


def _sbatch(command: str, *options: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--chdir=/tmp", *options,
                           f"--wrap={command}"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
    return proc.stdout.strip().split(";")[0]


def _scancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=True, timeout=30)


def _wait(ids: list[str], until: Callable[[dict[str, str]], bool], *, use_sacct: bool | None = None,
          timeout_s: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        states = job_states(ids, use_sacct=use_sacct)
        if until(states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"{ids} (use_sacct={use_sacct}) not as expected after {timeout_s} s: {states}")
        time.sleep(0.1)


@pytest.mark.slurm
def test_accounting_probe(cluster_mode: str) -> None:
    assert accounting_available(refresh=True) is (cluster_mode == "accounting")


@pytest.mark.slurm
def test_completed_failed_cancelled(cluster_mode: str) -> None:
    ok, bad, long = _sbatch("true"), _sbatch("exit 3"), _sbatch("sleep 300")
    _wait([long], lambda s: s[long] == "RUNNING")
    _scancel(long)
    expected = {ok: "COMPLETED", bad: "FAILED", long: "CANCELLED"}
    # slurmctld's own view settles first; both the default and the squeue-only path must agree with it.
    assert _wait(list(expected), lambda s: all(map(is_terminal, s.values()))) == expected
    assert job_states(list(expected), use_sacct=False) == expected
    if cluster_mode == "accounting":
        # The database lags slurmctld by a second or two: poll sacct alone until it catches up.
        assert _wait(list(expected), lambda s: s == expected, use_sacct=True) == expected
    else:
        with pytest.raises(SlurmQueryError, match="accounting storage is disabled"):
            job_states([ok], use_sacct=True)


@pytest.mark.slurm
def test_held_array_is_expanded_then_cancelled(cluster_mode: str) -> None:
    # Held, the array stays one unexpanded record ("A_[0-3%2]") in every source: the parser must expand it.
    array = _sbatch("true", "--array=0-3%2", "--hold")
    tasks = [f"{array}_{t}" for t in range(4)]
    pending = {array: "PENDING", **{t: "PENDING" for t in tasks}}
    assert job_states([array]) == pending
    assert job_states([array], use_sacct=False) == pending
    assert job_states([tasks[2]]) == {tasks[2]: "PENDING"}
    if cluster_mode == "accounting":
        assert _wait([array], lambda s: s == pending, use_sacct=True) == pending
    _scancel(array)
    cancelled = {key: "CANCELLED" for key in pending}
    assert _wait([array], lambda s: s == cancelled) == cancelled
    assert job_states([tasks[2]], use_sacct=False) == {tasks[2]: "CANCELLED"}
    if cluster_mode == "accounting":
        assert _wait([array], lambda s: s == cancelled, use_sacct=True) == cancelled


@pytest.mark.slurm
def test_running_array_mixes_task_states(cluster_mode: str) -> None:
    # Task 0 fails, task 1 completes, task 2 keeps running: the array as a whole is still RUNNING.
    array = _sbatch('case $SLURM_ARRAY_TASK_ID in 0) exit 1;; 1) true;; *) sleep 300;; esac', "--array=0-2")
    want = {f"{array}_0": "FAILED", f"{array}_1": "COMPLETED", f"{array}_2": "RUNNING", array: "RUNNING"}
    assert _wait([array], lambda s: s == want) == want
    _scancel(array)
    states = _wait([array], lambda s: is_terminal(s[array]))
    # Once everything ended, the failed task outranks the cancelled one in the array's overall state.
    assert states == {**want, f"{array}_2": "CANCELLED", array: "FAILED"}


@pytest.mark.slurm
def test_unknown_job_id(cluster_mode: str) -> None:
    assert job_states(["987654", "987654_3"]) == {"987654": "UNKNOWN", "987654_3": "UNKNOWN"}
