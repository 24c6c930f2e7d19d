"""Fixtures for tests against a real single-node Slurm cluster (tests/slurm/cluster.sh).

``slurm_cluster`` (session): the cluster ``SLURM_CONF`` points at when that one answers (``.ci/run`` starts it),
else the one already running in the default state dir, else one started here with accounting (slurmdbd + MariaDB)
and stopped at the end of the session. It sets ``os.environ["SLURM_CONF"]`` for the whole session.

``slurm_cluster_noacct`` (session): a production-like cluster: no accounting (``sacct`` says "accounting storage is
disabled") and a short ``MinJobAge`` (finished jobs are forgotten after 10 s). When ``slurm_cluster`` itself has no
accounting it is reused; otherwise a second cluster runs beside it in its own state dir on other ports (slurmctld
6827, slurmd 6828) — starting one takes about 3 s, which is cheaper and less fragile than restarting the main
cluster in the other mode and back. Tests switch to it with
``monkeypatch.setenv("SLURM_CONF", str(cluster.conf))``.

Skips (with the reason) only when Slurm cannot be installed (no apt-get, not root); a cluster that is installed
but fails to start is a test error showing the daemons' log tails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

CLUSTER_SH = Path(__file__).resolve().with_name("cluster.sh")
MAIN_STATE = Path(os.environ.get("EASLURM_SLURM_STATE", "/tmp/easlurm-slurm"))
NOACCT_STATE = Path(os.environ.get("EASLURM_SLURM_NOACCT_STATE", "/tmp/easlurm-slurm-noacct"))
NOACCT_PORT_BASE = 6827
#: The production-like cluster forgets finished jobs after this many seconds (Slurm's default is 300).
NOACCT_MIN_JOB_AGE = 10
_BINARIES = ("slurmctld", "slurmd", "sinfo", "squeue", "sacct", "sbatch", "munged")


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its slurm.conf, whether sacct works, and whether this session started it."""

    conf: Path
    accounting: bool
    started_here: bool

    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster (for subprocesses)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env


def _answers(conf: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True,
                              timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _has_accounting(conf: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    proc = subprocess.run(["sacct", "--noheader", "--parsable2", "--format=JobID", "--starttime=now",
                           "--endtime=now"], env=env, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def _script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(CLUSTER_SH), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ensure_installed() -> None:
    if all(shutil.which(b) for b in _BINARIES):
        return
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("Slurm is not installed and cluster.sh install needs root on Linux")
    if not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it (tests/slurm/cluster.sh install)")
    proc = _script("install", timeout=900)
    if proc.returncode != 0 or not all(shutil.which(b) for b in _BINARIES):
        pytest.skip(f"could not install the Slurm packages: {(proc.stderr or proc.stdout).strip()[-800:]}")


def _start(state: Path, *extra: str) -> SlurmCluster:
    """Use the cluster running in ``state`` or start one; ``started_here`` says whether to stop it later."""
    conf = state / "etc" / "slurm.conf"
    running = _script("status", "--state", str(state))
    if running.returncode == 0 and _answers(conf):
        return SlurmCluster(conf, _has_accounting(conf), started_here=False)
    proc = _script("start", "--state", str(state), *extra)
    if proc.returncode != 0:
        _script("stop", "--state", str(state))
        pytest.fail(f"cluster.sh start {' '.join(extra)} failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return SlurmCluster(conf, _has_accounting(conf), started_here=True)


def _stop(cluster: SlurmCluster) -> None:
    if cluster.started_here:
        _script("stop", "--state", str(cluster.conf.parent.parent))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The main test cluster (with accounting when this session starts it); sets SLURM_CONF for the session."""
    previous = os.environ.get("SLURM_CONF")
    if previous and _answers(Path(previous)):
        cluster = SlurmCluster(Path(previous), _has_accounting(Path(previous)), started_here=False)
    else:
        _ensure_installed()
        cluster = _start(MAIN_STATE)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        _stop(cluster)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def slurm_cluster_noacct(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """A cluster without accounting (the main one if it has none, else a second one on ports 6827/6828)."""
    if not slurm_cluster.accounting:
        yield slurm_cluster
        return
    cluster = _start(NOACCT_STATE, "--no-accounting", "--min-job-age", str(NOACCT_MIN_JOB_AGE), "--port-base",
                     str(NOACCT_PORT_BASE))
    if cluster.accounting:
        _stop(cluster)
        pytest.fail(f"{cluster.conf} was expected to run without accounting, but sacct answers", pytrace=False)
    try:
        yield cluster
    finally:
        _stop(cluster)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/slurm runs in one pytest-xdist worker (``--dist loadgroup``): they share the session's
    clusters and would only queue behind each other on them anyway."""
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.xdist_group("slurm"))
