"""A task sizes its threads and loader workers from what Slurm allocated, never from the node (issue 17)."""
from __future__ import annotations

import os

import pytest
import torch

from easlurm import runtime


@pytest.fixture
def node(monkeypatch):
    """A node with 64 cores on which this task may run on ``mask`` of them."""
    def make(mask: int, cpus_per_task: str | None, omp: str | None = None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(mask)))
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        for name, value in (("SLURM_CPUS_PER_TASK", cpus_per_task), ("OMP_NUM_THREADS", omp)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    yield make
    torch.set_num_threads(old)


@pytest.mark.parametrize("mask,per_task,omp,threads", [
    (64, "8", None, 8),     # no CPU binding: the allocation, not the node's 64
    (8, "8", None, 8),      # bound to its 8 CPUs
    (2, "8", None, 2),      # a node that declares more CPUs than it has (the test cluster): what it may run on
    (16, None, None, 16),   # outside Slurm: the affinity mask
    (64, "8", "3", 3),      # set by the local executor or a person: kept
])
def test_threads_come_from_the_allocation(node, mask, per_task, omp, threads):
    node(mask, per_task, omp)
    assert runtime.configure_threads() == threads
    assert torch.get_num_threads() == threads and os.environ["OMP_NUM_THREADS"] == str(threads)
    assert runtime.loader_workers(16) == min(16, runtime.allocated_cpus())
    assert runtime.loader_workers(0) == 0
