"""The Slurm launcher's follow loop against an in-memory Slurm (tests/fake_slurm.py): chaining, the queue window,
retries, holds, forgotten jobs, silent controllers, adoption and giving up — every rule in seconds. The same
executor against real clusters: tests/slurm/test_launch_slurm.py."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest

from easlurm import stages
from easlurm.config import load_config
from easlurm.orchestrate.base import StageFailed
from easlurm.orchestrate.decide import Verdict
from easlurm.orchestrate.plan import Stage, build_plan
from easlurm.orchestrate.slurm import MAX_QUERY_FAILURES, SlurmExecutor
from easlurm.orchestrate.slurm_state import SlurmQueryError
from easlurm.store import RunDir
from fake_slurm import FakeSlurm, counted, marker, set_progress

REPO = Path(__file__).resolve().parents[1]


class World:
    """A run of four test kinds — ``prep`` (once), ``work`` (2 array tasks per cycle), ``judge`` (1 per cycle),
    ``wrap`` (once) — two cycles, on a fake Slurm, with a clock the test moves."""

    def __init__(self, tmp_path: Path, overrides: tuple[str, ...]):
        self.out = tmp_path / "markers"
        self.calls: list[str] = []
        two = lambda cfg: [0, 1]  # noqa: E731
        self.kinds = [counted("prep", 1, self.out, calls=self.calls),
                      counted("work", 2, self.out, cycles=two, array=True, calls=self.calls),
                      counted("judge", 1, self.out, cycles=two, calls=self.calls),
                      counted("wrap", 1, self.out, calls=self.calls)]
        self.stack = contextlib.ExitStack()
        for k in self.kinds:  # registered: the config and the sbatch renderer learn their resources from there
            self.stack.enter_context(stages.registered(k))
        self.cfg = load_config(REPO / "configs" / "tiny.yaml", [
            f"data.demo_dir={tmp_path}", "run.cycles=2", "executor.max_retries=1", "executor.hold_timeout_min=1",
            "executor.slurm.work.time_min=5", *overrides])
        self.run = RunDir(tmp_path / "run")
        self.run.root.mkdir()
        self.plan: list[Stage] = build_plan(self.cfg, self.run, self.kinds)
        self.slurm = FakeSlurm()
        self.now = [1000.0]
        self.lines: list[str] = []

    def executor(self, resuming: bool = False) -> SlurmExecutor:
        return SlurmExecutor(self.cfg, self.run, echo=self.lines.append, python="python", resuming=resuming,
                             leads={"work": 120}, client=self.slurm, clock=lambda: self.now[0], sleep=self.tick)

    def job(self, ex: SlurmExecutor, key: str, index: int = 0) -> str:
        return ex.book.latest()[(key, index)][0]

    def finish(self, ex: SlurmExecutor, key: str, index: int = 0) -> None:
        """The task's job runs and commits its outputs."""
        name, _, cyc = key.partition("/")
        marker(self.out / name, index, int(cyc) if cyc else None).write_text("")
        self.slurm.set(self.job(ex, key, index), "COMPLETED", exit_code=0)

    def tick(self, seconds: float) -> None:
        """What passes while the launcher sleeps: every job whose dependencies completed runs and finishes."""
        self.now[0] += seconds
        ex_book = {job: key for key, (job, _) in self._latest().items()}
        ready = [j for sub in self.slurm.submitted
                 if all(self.slurm.jobs.get(d) and self.slurm.jobs[d].state == "COMPLETED" for d in sub.dependency)
                 for j in sub.ids if self.slurm.jobs[j].state == "PENDING" and j in ex_book]
        for j in ready:  # one layer of the chain per poll
            key, index = ex_book[j]
            name, _, cyc = key.partition("/")
            marker(self.out / name, index, int(cyc) if cyc else None).write_text("")
            self.slurm.set(j, "COMPLETED", exit_code=0)

    def _latest(self) -> dict[tuple[str, int], tuple[str, list[str]]]:
        from easlurm.orchestrate.state import SubmissionBook

        return SubmissionBook(self.run).latest()


@pytest.fixture
def world(tmp_path: Path, request: Any) -> Iterator[World]:
    w = World(tmp_path, getattr(request, "param", ()))
    with w.stack:
        yield w


def test_the_whole_chain_is_queued_at_once_each_stage_after_the_exact_jobs_before_it(world):
    ex = world.executor()
    assert not ex.round(world.plan, adopting=True, window=False)
    subs = world.slurm.submitted
    assert [s.stage for s in subs] == ["prep", "work-000", "judge-000", "work-001", "judge-001", "wrap"]
    prep, work0, judge0 = subs[0], subs[1], subs[2]
    assert prep.dependency == [] and work0.dependency == [prep.job]
    assert judge0.dependency == work0.ids == [f"{work0.job}_0", f"{work0.job}_1"]  # task by task
    assert "#SBATCH --array=0,1%" in work0.script and "#SBATCH --signal=B:USR2@120\n" in work0.script
    assert "#SBATCH --time=5\n" in work0.script  # executor.slurm.work: the kind's section of the config
    assert "--signal=B:USR2@180\n" in judge0.script  # a kind the launcher computed no lead for: the default
    # Nothing more to do while they wait: no second submission.
    assert not ex.round(world.plan) and len(world.slurm.submitted) == 6


def test_follow_runs_to_completion(world):
    ex = world.executor()
    ex.run(world.plan)
    assert all(t.is_done() for s in world.plan for t in s.tasks)
    assert len(world.slurm.submitted) == 6 and world.lines[-1] == "[slurm] run complete"
    # One progress line per stage as it becomes the current one.
    assert [line.split(":")[0] for line in world.lines if "task(s) done" in line] == [
        "[slurm] prep", "[slurm] work/000", "[slurm] judge/000", "[slurm] work/001", "[slurm] judge/001",
        "[slurm] wrap"]


def test_each_round_asks_every_task_s_done_check_once(world):
    ex = world.executor()
    for _ in range(3):
        world.calls.clear()
        ex.round(world.plan)
        assert sorted(world.calls) == sorted(set(world.calls)) and len(world.calls) == 8  # 1 + 2×(2 + 1) + 1


def test_a_failed_task_is_retried_alone_and_the_queued_stages_behind_it_are_chained_again(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.finish(ex, "prep")
    first = world.job(ex, "work/000", 1)
    world.slurm.set(world.job(ex, "work/000", 0), "RUNNING")
    world.slurm.set(first, "FAILED", exit_code=1)
    queued_later = [j for s in world.slurm.submitted[2:] for j in s.ids]
    ex.round(world.plan)
    decisions = {(k, i): d for k, i, d in ex.decisions}
    assert decisions[("work/000", 1)].verdict is Verdict.SUBMIT and decisions[("work/000", 1)].spends_retry
    assert ex.memory.retries[("work/000", 1)] == 1
    assert sorted(world.slurm.cancelled) == sorted(queued_later)  # their afterok could never be satisfied
    again = world.slurm.submitted[6:]
    assert [s.stage for s in again] == ["work-000", "judge-000", "work-001", "judge-001", "wrap"]
    assert "#SBATCH --array=1%" in again[0].script and again[0].dependency == []  # prep is done
    retried = world.job(ex, "work/000", 1)
    assert retried != first and again[1].dependency == sorted([world.job(ex, "work/000", 0), retried])
    # The retry fails too: no retries left → give up, and this run's queued jobs are cancelled.
    world.slurm.set(retried, "FAILED", exit_code=1)
    cancelled_before = len(world.slurm.cancelled)
    with pytest.raises(StageFailed, match=r"stage work/000, work 1 \(job \d+_1\) failed: job \d+_1 ended FAILED "
                                          r"\(exit 1\); no retries left \(1/1\)"):
        ex.round(world.plan)
    assert sorted(world.slurm.cancelled[cancelled_before:]) == sorted(j for s in again[1:] for j in s.ids)


def test_a_task_that_recorded_a_permanent_error_is_not_retried(world, monkeypatch):
    from easlurm.errors import CheckpointError, TrainingError
    from easlurm.orchestrate.base import record_error

    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.finish(ex, "prep")
    work = next(s for s in world.plan if s.key == "work/000")
    job0, job1 = world.job(ex, "work/000", 0), world.job(ex, "work/000", 1)
    for job, index, exc in ((job0, 0, TrainingError("member 00: NaN loss")),  # may pass on a retry
                            (job1, 1, CheckpointError("cycles/000/start/01/G.pt: sha256 mismatch"))):
        array_job, task = job.split("_")
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", array_job)
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        record_error(world.run, work, index, exc)  # what the job wrote before it exited 2
        world.slurm.set(job, "FAILED", exit_code=2)
    with pytest.raises(StageFailed, match=r"work 1 .*with an error a retry cannot fix \(not retried\): "
                                          r"CheckpointError: .*sha256 mismatch"):
        ex.round(world.plan)
    decisions = {(k, i): d for k, i, d in ex.decisions}
    assert decisions[("work/000", 0)].verdict is Verdict.SUBMIT and decisions[("work/000", 0)].spends_retry
    assert decisions[("work/000", 1)].verdict is Verdict.GIVE_UP
    assert [s.stage for s in world.slurm.submitted].count("work-000") == 1  # the hopeless one never went back


def test_progress_since_the_last_attempt_gives_a_task_its_retries_back(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.finish(ex, "prep")
    world.slurm.set(world.job(ex, "work/000", 0), "FAILED", exit_code=1)
    ex.round(world.plan)
    assert ex.memory.retries[("work/000", 0)] == 1
    set_progress(world.out, "work", 0, 0, 5)  # the retry committed checkpoints before it failed as well
    world.slurm.set(world.job(ex, "work/000", 0), "OUT_OF_MEMORY", exit_code=0)
    ex.round(world.plan)
    d = {(k, i): d for k, i, d in ex.decisions}[("work/000", 0)]
    assert d.verdict is Verdict.SUBMIT and d.resets_retries and not d.spends_retry
    assert ex.memory.retries[("work/000", 0)] == 0


@pytest.mark.parametrize("world", [("executor.window=1",)], indirect=True)
def test_the_window_keeps_one_cycle_queued_and_moves_on(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True)
    assert [s.stage for s in world.slurm.submitted] == ["prep", "work-000", "judge-000"]
    for key, n in (("prep", 1), ("work/000", 2), ("judge/000", 1)):
        for i in range(n):
            world.finish(ex, key, i)
    ex.round(world.plan)
    # Cycle 1 is the last: the stage after the cycles joins it in the window.
    assert [s.stage for s in world.slurm.submitted[3:]] == ["work-001", "judge-001", "wrap"]


def test_a_held_job_is_waited_for_then_given_up_on_without_touching_the_queue(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.slurm.set(world.job(ex, "prep"), "PENDING", reason="JobHeldAdmin", elapsed_s=0.0)
    ex.round(world.plan)
    d = {(k, i): d for k, i, d in ex.decisions}[("prep", 0)]
    assert d.verdict is Verdict.WAIT and "held: JobHeldAdmin" in d.reason
    world.now[0] += 61  # executor.hold_timeout_min=1
    with pytest.raises(StageFailed, match=r"held \(JobHeldAdmin\) for 1 min.*scontrol release"):
        ex.round(world.plan)
    assert world.slurm.cancelled == []


def test_a_job_slurm_forgot_is_judged_by_the_files_and_a_warned_job_continues_free(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.finish(ex, "prep")
    # Finished but forgotten: the files say done, nothing is resubmitted for it.
    world.slurm.forget(world.job(ex, "prep"))
    # Forgotten without outputs: it ended without finishing — a failure, retried.
    world.slurm.forget(world.job(ex, "work/000", 0))
    # Stopped at the warning after committing (exit 140): continues without spending a retry.
    world.slurm.set(world.job(ex, "work/000", 1), "FAILED", exit_code=140)
    ex.round(world.plan)
    d = {(k, i): d for k, i, d in ex.decisions}
    assert ("prep", 0) not in d  # done stages are not even looked at
    assert d[("work/000", 0)].spends_retry and "no longer known to Slurm" in d[("work/000", 0)].reason
    assert d[("work/000", 1)].verdict is Verdict.SUBMIT and not d[("work/000", 1)].spends_retry
    assert "pre-timeout signal" in d[("work/000", 1)].reason


def test_a_silent_controller_is_waited_out_then_reported(world):
    ex = world.executor()
    ex.round(world.plan, adopting=True, window=False)
    world.slurm.down = 3
    for _ in range(3):
        assert not ex.round(world.plan)
        assert all(d.verdict is Verdict.WAIT for _, _, d in ex.decisions)
    assert ex.memory.query_failures == 3
    ex.round(world.plan)
    assert ex.memory.query_failures == 0  # it answered again
    world.slurm.down = MAX_QUERY_FAILURES + 1
    with pytest.raises(SlurmQueryError, match=f"did not answer {MAX_QUERY_FAILURES + 1} times in a row"):
        for _ in range(MAX_QUERY_FAILURES + 1):
            ex.round(world.plan)
    assert len(world.slurm.submitted) == 6  # nothing was resubmitted blind


def test_a_new_launcher_adopts_the_queue_and_resume_overrides_an_earlier_cancel(world):
    first = world.executor()
    first.round(world.plan, adopting=True, window=False)
    second = world.executor()
    second.round(world.plan, adopting=True, window=False)
    assert len(world.slurm.submitted) == 6
    assert {d.verdict for _, _, d in second.decisions} == {Verdict.ADOPT}
    # A person cancelled the running prep job: the launcher gives up (a person meant it) ...
    cancelled = world.job(first, "prep")
    world.slurm.set(cancelled, "CANCELLED", elapsed_s=30.0)
    with pytest.raises(StageFailed, match="cancelled by a user"):
        world.executor().round(world.plan, adopting=True, window=False)
    # ... and --resume resubmits it.
    resumed = world.executor(resuming=True)
    resumed.round(world.plan, adopting=True, window=False)
    assert world.slurm.submitted[-6].stage == "prep" and world.job(resumed, "prep") != cancelled
