"""``adam.members_per_task``: k members trained side by side in one task commit exactly what k single-member tasks
commit; the plan, done check, progress, status and bill see the tasks; one member's failure stops it alone; the
warning makes every member commit before the process ends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import stage_done, stage_progress
from easlurm.checkpoints import verify_checkpoint_dir
from easlurm.config import load_config, load_run_config
from easlurm.errors import ConfigError, TrainingError
from easlurm.orchestrate.plan import build_plan
from easlurm.population import read_member
from easlurm.stages import adam as adam_stage
from easlurm.store import RunDir
from easlurm.train import member as member_stage
from easlurm.train.init import init_population
from easlurm.train.member import train_member
from easlurm.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHORT = ("adam.iters_per_cycle=6", "adam.checkpoint_every=3", "adam.log_every=2", "adam.image_every=1000")
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"OMP_NUM_THREADS": "1"}


def _started(make_run, overrides=(), name="run") -> Path:
    run = make_run([*SHORT, *overrides], name)
    pretrain(run)
    init_population(run)
    return run


def _state(run: Path, cycle: int, member: int) -> dict[str, object]:
    """What a member committed: its record's file hashes (G, D, optimizer states) and its torch RNG stream."""
    folder = RunDir(run).member(cycle, member)
    meta = read_member(folder)
    assert meta is not None and meta.done
    hashes = dict(meta.files["sha256"])
    rng_state = torch.load(folder / "rng.pt", weights_only=True)["torch"]
    return {"files": {k: v for k, v in hashes.items() if k != "rng.pt"}, "torch_rng": rng_state.tolist(),
            "iteration": meta.iteration, "sample_index": meta.sample_index}


def test_k_members_in_one_task_commit_what_single_member_tasks_commit(make_run):
    alone = _started(make_run, name="alone")
    for m in (0, 1, 2):
        train_member(alone, 0, m)
    grouped = _started(make_run, ["adam.members_per_task=2"], name="grouped")
    cfg = load_run_config(grouped)
    assert adam_stage.groups(cfg) == [(0, 1), (2,)]
    records = train_member(grouped, 0, members=(0, 1))
    assert isinstance(records, list) and [r.iteration for r in records] == [6, 6]
    assert train_member(grouped, 0, 2).done  # the last task holds one member: the single-member path
    for m in (0, 1, 2):
        assert _state(grouped, 0, m) == _state(alone, 0, m), f"member {m}"  # G, D and both Adam states, to the bit
    # A finished task is a no-op.
    folder = RunDir(grouped).member(0, 1)
    before = {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}
    train_member(grouped, 0, members=(0, 1))
    assert {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} == before


def test_plan_done_check_progress_and_status_see_the_grouped_tasks(make_run):
    run = _started(make_run, ["population.size=5", "population.member0=ea_only", "adam.members_per_task=3"])
    cfg = load_run_config(run)
    adam0 = next(s for s in build_plan(cfg, RunDir(run)) if s.key == "adam/000")
    assert [t.label for t in adam0.tasks] == ["members 01,02,03", "members 04"]
    assert [t.arguments["members"] for t in adam0.tasks] == [(1, 2, 3), (4,)]
    assert [adam_stage.task_of(cfg, m) for m in range(5)] == [None, 0, 0, 0, 1]
    assert not stage_done(run, "adam", cycle=0, members=(1, 2, 3))
    train_member(run, 0, 1)  # one member of the task finished alone (e.g. before a crash of its group)
    assert not stage_done(run, "adam", cycle=0, members=(1, 2, 3))
    assert stage_progress(run, "adam", cycle=0, members=(1, 2, 3)) == 0  # the least of its members
    train_member(run, 0, members=(1, 2, 3))  # member 1 is done already: only 2 and 3 train
    assert stage_done(run, "adam", cycle=0, members=(1, 2, 3))
    assert stage_progress(run, "adam", cycle=0, members=(1, 2, 3)) == 6

    from easlurm.status import collect

    report = collect(run, slurm=False)
    row = next(r for r in report["stages"] if r["stage"] == "adam/000")
    assert row["tasks"] == 2 and row["done"] == 1
    members = report["members"][0]["members"]
    assert [m["done"] for m in members] == [True, True, True, True, False]
    assert all(members[i]["finished_at"] is not None for i in (1, 2, 3)) and members[4]["finished_at"] is None


def test_the_bill_counts_one_job_per_task(tmp_path):
    from easlurm.bill import make_bill

    k1 = load_config(REPO / "configs" / "rrdb.yaml")
    k2 = load_config(REPO / "configs" / "rrdb.yaml", ["adam.members_per_task=2"])
    b1, b2 = make_bill(k1), make_bill(k2)
    adam1, adam2 = (next(s for s in b.stages if s.kind == "adam") for b in (b1, b2))
    phases = len([s for s in build_plan(k1, RunDir(tmp_path / "x")) if s.kind.name == "adam"])
    assert adam1.tasks == 4 * phases and adam2.tasks == 2 * phases  # 4 trained slots (member 0 is ea_only)
    assert b1.jobs - b2.jobs == 2 * phases
    # The dry run's bill sets the configured k beside k = 1.
    from easlurm.bill import render

    text = render(k2, RunDir(tmp_path / "run"))
    assert f"# bill: {b2.jobs} jobs" in text and f"# with adam.members_per_task=1 instead: {b1.jobs} jobs" in text
    assert "without adam" in text.splitlines()[0]  # no rate measured for k = 2: not invented
    assert "members_per_task=1 instead" not in render(k1, RunDir(tmp_path / "run"))


def test_one_members_failure_stops_it_alone_and_keeps_the_others(make_run, monkeypatch):
    run = _started(make_run, ["adam.iters_per_cycle=8", "adam.members_per_task=3"])
    real_step = member_stage.MemberTrainee.step

    def poison_member_02(self, iteration):
        out = real_step(self, iteration)
        if self.where.endswith("member 02") and iteration == 5:  # ends at 6 finished: that commit is refused
            with torch.no_grad():
                self.s.g.conv_first.weight[0, 0, 0, 0] = float("inf")
        return out

    monkeypatch.setattr(member_stage.MemberTrainee, "step", poison_member_02)
    with pytest.raises(TrainingError, match=r"^Adam phase of cycle 0, member 02: non-finite weights at iteration 6 "
                                            r"in G\.conv_first\.weight; not committed, the last checkpoint is kept "
                                            r"\(1 of 3 members failed: 02; member\(s\) 00, 01 kept their commits\)$"):
        train_member(run, 0, members=(0, 1, 2))
    for m in (0, 1):
        meta = read_member(RunDir(run).member(0, m))
        assert meta is not None and meta.done and meta.iteration == 8
    bad = RunDir(run).member(0, 2)
    meta = read_member(bad)
    assert meta is not None and meta.iteration == 3 and not meta.done and verify_checkpoint_dir(bad)
    monkeypatch.setattr(member_stage.MemberTrainee, "step", real_step)
    assert [r.done for r in train_member(run, 0, members=(0, 1, 2))] == [True, True, True]


def test_bad_member_lists_are_refused(make_run):
    run = _started(make_run, ["adam.members_per_task=2"])
    with pytest.raises(ConfigError, match="distinct"):
        train_member(run, 0, members=(1, 1))
    with pytest.raises(ConfigError, match="member 7: the population has members 0..2"):
        train_member(run, 0, members=(1, 7))
    with pytest.raises(ConfigError, match="member or members, not both"):
        train_member(run, 0, 1, members=(1, 2))


@pytest.mark.slow
def test_the_warning_makes_every_member_commit_then_the_task_exits_140_and_resumes(make_run):
    run = _started(make_run, ["adam.iters_per_cycle=400", "adam.checkpoint_every=1000", "adam.log_every=1000",
                              "adam.members_per_task=2"], name="warned")
    proc = subprocess.Popen([sys.executable, "-m", "easlurm.orchestrate.runner", str(run), "adam/000", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("[task] adam/000 members 00,01: ")
        for _ in range(2):
            assert "starting at iteration 0/400" in proc.stdout.readline()
        proc.send_signal(signal.SIGUSR2)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 140, err
    metas = [read_member(RunDir(run).member(0, m)) for m in (0, 1)]
    assert all(m is not None and 0 < m.iteration < 400 and not m.done for m in metas)
    assert metas[0].iteration == metas[1].iteration  # both committed in the same round
    again = subprocess.run([sys.executable, "-m", "easlurm.orchestrate.runner", str(run), "adam/000", "0"],
                           capture_output=True, text=True, env=_ENV, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(f"resuming at iteration {metas[0].iteration}/400") == 2
    assert stage_done(run, "adam", cycle=0, members=(0, 1))
