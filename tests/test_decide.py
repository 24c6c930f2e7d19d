"""The launcher's decision function, one test per case (no Slurm, no files: a pure function)."""
from __future__ import annotations

import pytest

from easlurm.orchestrate.decide import QUERY_FAILED, Policy, TaskView, Verdict, decide, is_held

POLICY = Policy(max_retries=2, hold_timeout_s=600)


def verdict(**kw: object) -> tuple[Verdict, str, bool]:
    d = decide(TaskView(**{"done": False, **kw}), POLICY)  # type: ignore[arg-type]
    return d.verdict, d.reason, d.spends_retry


def test_files_win_over_any_job_state():
    for state in ("RUNNING", "FAILED", "CANCELLED", "UNKNOWN", QUERY_FAILED):
        v, _, _ = verdict(done=True, job="7", state=state)
        assert v is Verdict.DONE


def test_never_submitted_is_submitted():
    assert verdict()[0] is Verdict.SUBMIT


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "REQUEUED"])
def test_active_jobs_are_waited_for_and_adopted_by_a_fresh_launcher(state):
    assert verdict(job="7", state=state)[0] is Verdict.WAIT
    v, reason, _ = verdict(job="7", state=state, adopting=True)
    assert v is Verdict.ADOPT and "7" in reason


def test_a_job_slurm_forgot_is_judged_by_its_files_not_assumed_running():
    v, reason, spends = verdict(job="7", state="UNKNOWN")
    assert v is Verdict.SUBMIT and spends and "no longer known to Slurm" in reason
    assert verdict(job="7", state="UNKNOWN", done=True)[0] is Verdict.DONE


@pytest.mark.parametrize("reason", ["JobHeldAdmin", "JobHeldUser", "BadConstraints", "PartitionTimeLimit",
                                    "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit",
                                    "AssocMaxCpuPerJobLimit"])
def test_held_jobs_wait_with_their_reason_then_give_up_after_the_bound(reason):
    v, why, _ = verdict(job="7", state="PENDING", reason=reason, held_for_s=10)
    assert v is Verdict.WAIT and reason in why
    v, why, _ = verdict(job="7", state="PENDING", reason=reason, held_for_s=601)
    d = decide(TaskView(done=False, job="7", state="PENDING", reason=reason, held_for_s=601), POLICY)
    assert v is Verdict.GIVE_UP and "scontrol release 7" in why and "hold_timeout_min" in why
    assert not d.cancel_queued  # the queue is left for the admin to release


@pytest.mark.parametrize("state", ["HELD"])
def test_requeue_hold_and_special_exit_count_as_held(state):
    assert verdict(job="7", state=state, reason="")[0] is Verdict.WAIT
    assert verdict(job="7", state=state, held_for_s=1e9)[0] is Verdict.GIVE_UP


@pytest.mark.parametrize("reason", ["Resources", "Priority", "Dependency", "QOSJobLimit", "QOSMaxJobsPerUserLimit",
                                    "QOSGrpGRES", "AssocGrpGRESMinutes", "AssocMaxJobsLimit", "ReqNodeNotAvail",
                                    "ReqNodeNotAvail, UnavailableNodes:node1", "Reservation", "BeginTime",
                                    "PartitionDown"])
def test_ordinary_waits_are_never_a_hold(reason):
    """Reasons that clear by themselves — a busy queue, QOS and association limits per user or group, a drained
    node, a maintenance reservation — are waited for without bound, however long."""
    view = TaskView(done=False, job="7", state="PENDING", reason=reason, held_for_s=1e9)
    assert not is_held(view)
    assert verdict(job="7", state="PENDING", reason=reason, held_for_s=1e9)[0] is Verdict.WAIT


def test_a_job_cancelled_by_a_user_is_not_resubmitted_except_on_resume():
    v, why, _ = verdict(job="7", state="CANCELLED", never_ran=False)
    assert v is Verdict.GIVE_UP and "cancelled by a user" in why and "--resume" in why
    v, _, spends = verdict(job="7", state="CANCELLED", resuming=True)
    assert v is Verdict.SUBMIT and not spends


def test_a_job_this_launcher_cancelled_is_resubmitted_without_a_retry():
    v, _, spends = verdict(job="7", state="CANCELLED", cancelled_by_us=True)
    assert v is Verdict.SUBMIT and not spends


@pytest.mark.parametrize("state,exit_code", [("TIMEOUT", None), ("PREEMPTED", None), ("FAILED", 140),
                                             ("COMPLETED", 140)])
def test_time_limits_and_preemption_continue_without_spending_a_retry(state, exit_code):
    v, why, spends = verdict(job="7", state=state, exit_code=exit_code, retries=2)
    assert v is Verdict.SUBMIT and not spends and "checkpoint" in why


@pytest.mark.parametrize("state", ["FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "COMPLETED"])
def test_failures_spend_retries_then_give_up(state):
    v, why, spends = verdict(job="7", state=state, exit_code=1, retries=0)
    assert v is Verdict.SUBMIT and spends and "retry 1/2" in why
    v, why, _ = verdict(job="7", state=state, exit_code=1, retries=2)
    assert v is Verdict.GIVE_UP and "no retries left (2/2)" in why


def test_progress_resets_the_retry_count():
    v, why, spends = verdict(job="7", state="OUT_OF_MEMORY", retries=2, progressed=True)
    assert v is Verdict.SUBMIT and not spends and "reset" in why


@pytest.mark.parametrize("state", ["FAILED", "COMPLETED", "UNKNOWN"])
def test_a_permanent_error_is_given_up_on_at_once_even_after_progress(state):
    v, why, spends = verdict(job="7", state=state, retries=0, progressed=True,
                             permanent_error="ConfigError: data.train: not a shard folder")
    assert v is Verdict.GIVE_UP and not spends
    assert "a retry cannot fix (not retried): ConfigError: data.train" in why


def test_a_failed_state_query_waits():
    v, why, _ = verdict(job="7", state=QUERY_FAILED)
    assert v is Verdict.WAIT and "did not answer" in why


def test_completed_without_outputs_is_a_failure():
    v, why, spends = verdict(job="7", state="COMPLETED", exit_code=0)
    assert v is Verdict.SUBMIT and spends and "without its outputs" in why


def test_a_queued_job_cancelled_before_it_ran_is_resubmitted():
    """Slurm cancels a queued job whose dependency was requeued or failed (kill_invalid_depend)."""
    v, why, spends = verdict(job="7", state="CANCELLED", never_ran=True)
    assert v is Verdict.SUBMIT and not spends and "before it ran" in why
