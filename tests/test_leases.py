"""Leases (easlurm.leases): one live writer per stage folder, a dead holder taken over without any Slurm command."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from easlurm import leases
from easlurm.leases import LEASE_NAME, LeaseBusy, LeaseLost, acquire, held, holder_of
from easlurm.population import read_member
from easlurm.checkpoints import verify_checkpoint_dir
from easlurm.store import RunDir
from easlurm.train.init import init_population
from easlurm.train.member import train_member
from easlurm.train.pretrain import pretrain

# No Slurm identity in the tasks started here: a lease held by "this job" counts as ours (a requeued task).
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"OMP_NUM_THREADS": "1"}
SLURM_COMMANDS = ("squeue", "sacct", "scontrol", "sinfo", "sbatch", "scancel", "srun")


@pytest.fixture(autouse=True)
def no_slurm_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)


def _started(make_run, overrides: list[str]) -> Path:
    run = make_run(overrides)
    pretrain(run)
    init_population(run)
    return run


def _train_cli(run: Path, member: int) -> list[str]:
    return [sys.executable, "-m", "easlurm.orchestrate.runner", str(run), "adam/000", str(member)]


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the task ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _foreign_lease(folder: Path, age_s: float, **extra) -> Path:
    """A lease written by a task on another node (pid meaningless here), last renewed ``age_s`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEASE_NAME
    path.write_text(json.dumps({"host": "node-elsewhere-17", "pid": 4242, "job": "9001", "token": "theirs",
                                "what": "test", **extra}))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


@pytest.mark.slow
def test_a_live_second_task_refuses_and_a_kill9_retry_takes_over_without_any_slurm_command(make_run, tmp_path):
    run = _started(make_run, ["adam.iters_per_cycle=30", "adam.checkpoint_every=2", "adam.log_every=1000",
                              "adam.image_every=1000"])
    folder = RunDir(run).member(0, 2)
    first = subprocess.Popen(_train_cli(run, 2), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=_ENV)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("[task] adam/000 member 02: ")  # the runner names the task
        assert "starting at iteration 0" in first.stdout.readline()  # printed while holding the lease
        # Two live tasks on one member: the second refuses, naming the first.
        with pytest.raises(LeaseBusy, match=rf"^Adam phase of cycle 0, member 02: {folder} is being worked on by "
                                            rf"pid {first.pid} on {socket.gethostname()} \(lease "):
            train_member(run, 0, 2)
        assert first.poll() is None and holder_of(folder)["pid"] == first.pid  # the holder is untouched
        _wait(lambda: (m := read_member(folder)) is not None and 2 <= m.iteration < 30, first, "a checkpoint")
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert holder_of(folder)["pid"] == first.pid  # the dead task's lease is still there

    # As inside the container: no Slurm command on PATH — only python, and tripwires that record any call.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    calls = tmp_path / "slurm-calls.txt"
    for name in SLURM_COMMANDS:
        (bindir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 1\n")
        (bindir / name).chmod(0o755)
    retry = subprocess.run(_train_cli(run, 2), capture_output=True, text=True, env=_ENV | {"PATH": str(bindir)},
                           timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert not calls.exists(), calls.read_text()
    subprocess.run(["squeue", "--me"], env={"PATH": str(bindir)}, check=False)  # the tripwires do fire
    assert calls.read_text() == "squeue --me\n"
    meta = read_member(folder)
    assert meta is not None and meta.done and meta.iteration == 30 and verify_checkpoint_dir(folder)
    assert "resuming at iteration" in retry.stdout
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".lease")) == []  # released, no leftovers


def test_silent_lease_on_another_host_is_taken_over_after_lease_s(make_run):
    run = _started(make_run, ["executor.lease_s=30", "adam.iters_per_cycle=2"])
    folder = RunDir(run).member(0, 0)
    _foreign_lease(folder, age_s=60)  # not renewed for longer than executor.lease_s: its holder is gone
    assert train_member(run, 0, 0).done
    assert not (folder / LEASE_NAME).exists()


def test_fresh_but_silent_foreign_lease_goes_stale_after_ttl(tmp_path):
    _foreign_lease(tmp_path, age_s=0)
    t0 = time.monotonic()
    with held(tmp_path, "test", ttl=1.0) as lease:
        waited = time.monotonic() - t0
        assert holder_of(tmp_path)["token"] == lease.token and holder_of(tmp_path)["pid"] == os.getpid()
    assert waited >= 0.5  # it watched for a renewal before judging the holder gone
    assert not (tmp_path / LEASE_NAME).exists()


def test_lease_renewed_by_a_live_holder_on_another_host_refuses(tmp_path):
    path = _foreign_lease(tmp_path, age_s=0)
    stop = threading.Event()

    def renew() -> None:  # the remote holder's renewal thread, as the file server sees it
        while not stop.wait(0.1):
            os.utime(path, None)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        with pytest.raises(LeaseBusy, match=r"^EA phase: .* is being worked on by job 9001, pid 4242 on "
                                            r"node-elsewhere-17 \(lease .*, renewed \d+ s ago\); a second task "
                                            r"must not write it$"):
            acquire(tmp_path, "EA phase", ttl=5.0)
    finally:
        stop.set()
        renewer.join()
    assert holder_of(tmp_path)["token"] == "theirs"  # left alone


def test_the_holder_renews_its_lease_so_another_host_refuses(tmp_path, monkeypatch):
    lease = acquire(tmp_path, "fusion", ttl=0.8)  # renewed every 0.2 s by its thread
    try:
        path = tmp_path / LEASE_NAME
        old = time.time() - 100
        os.utime(path, (old, old))
        deadline = time.monotonic() + 10  # a loaded CI machine may run the renewer late: wait for it, bounded
        while path.stat().st_mtime < old + 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > old + 50  # renewed
        # A contender on another node (same file server): the renewals prove the holder alive.
        monkeypatch.setattr(leases, "identity", lambda: {"job": None, "host": "node-other", "pid": 1})
        with pytest.raises(LeaseBusy, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            acquire(tmp_path, "fusion", ttl=0.8)
    finally:
        lease.release()
    assert not (tmp_path / LEASE_NAME).exists()


def test_a_requeued_slurm_job_takes_its_own_lease_over(tmp_path, monkeypatch):
    _foreign_lease(tmp_path, age_s=0, job="123_4")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "123")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "130")
    t0 = time.monotonic()
    with held(tmp_path, "member", ttl=60) as lease:
        assert time.monotonic() - t0 < 5  # no waiting for a renewal: it was ours
        rec = holder_of(tmp_path)
        assert rec is not None and rec["job"] == "123_4" and rec["token"] == lease.token


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LEASE_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "job": None,
                                                   "token": "old"}))
    t0 = time.monotonic()
    with held(tmp_path, "pretrain", ttl=60):
        assert time.monotonic() - t0 < 5


def test_a_lease_taken_over_is_lost_and_its_holder_writes_no_more(tmp_path):
    lease = acquire(tmp_path, "member", ttl=0.4)
    lease.check()
    (tmp_path / LEASE_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "new-holder"}))
    deadline = time.monotonic() + 10
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(LeaseLost, match=r"^member: lease .* was taken over by another process; stopping without "
                                        r"writing$"):
        lease.check()
    lease.release()
    assert holder_of(tmp_path)["token"] == "new-holder"  # not removed: it is someone else's now


def test_stage_refuses_a_live_holder_before_touching_its_folder(make_run):
    """The member stage takes the lease before it reads or recovers anything in the folder."""
    run = _started(make_run, [])
    folder = RunDir(run).member(0, 1)
    folder.mkdir(parents=True)
    parent = os.getppid()  # a live process on this host that is not us
    (folder / LEASE_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": parent, "job": None,
                                                 "token": "x"}))
    (folder / ".staging").mkdir()
    (folder / ".staging" / "G.pt").write_bytes(b"being written")
    with pytest.raises(LeaseBusy, match=rf"pid {parent} on "):
        train_member(run, 0, 1)
    assert (folder / ".staging" / "G.pt").read_bytes() == b"being written"


def test_a_live_process_of_the_same_slurm_job_on_this_host_is_not_taken_over(tmp_path, monkeypatch):
    """Two processes of one allocation (two launchers in one salloc shell, two tasks of a job step) share
    SLURM_JOB_ID: "the holder is this very job" must not override "the holder is alive here"."""
    code = ("import sys, time; from pathlib import Path; from easlurm.leases import acquire; "
            "acquire(Path(sys.argv[1]), 'launcher', ttl=60); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=_ENV | {"SLURM_JOB_ID": "555"})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setenv("SLURM_JOB_ID", "555")
        with pytest.raises(LeaseBusy, match=rf"launcher: {tmp_path} is being worked on by job 555, pid "
                                            rf"{holder.pid} on {socket.gethostname()}"):
            acquire(tmp_path, "launcher", ttl=60)
        assert holder_of(tmp_path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # Once that process is gone, the same job takes the lease at once (a requeued task).
    t0 = time.monotonic()
    with held(tmp_path, "launcher", ttl=60):
        assert time.monotonic() - t0 < 5
