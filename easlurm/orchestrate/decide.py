"""The launcher's choices as one pure function: from a task's files, its latest job's state and its history, decide
whether to wait for it, (re)submit it, adopt it or give up — with the reason, for the log and the report.

Rules (every case has a unit test, tests/test_decide.py):

* **Files first.** A task whose outputs exist and verify is done, whatever Slurm says.
* **Never submitted** → submit.
* **Queued or running** (PENDING, RUNNING, REQUEUED) → wait; on a fresh launcher these are *adopted*.
* **Queued or running** covers every pending reason that clears by itself — Priority, Resources, QOS and
  association limits per user or group, a drained node (ReqNodeNotAvail), a reservation — however long it takes.
* **Held** — held by an admin or user, REQUEUE_HOLD, SPECIAL_EXIT, or pending for a reason it cannot outgrow (bad
  constraints, a request above the partition's or the QOS's per-job limits, a dependency never satisfied) → wait,
  showing Slurm's reason, until held longer than ``executor.hold_timeout_min``; then stop following (the queue is
  left as it is) saying how to release it.
* **Cancelled while it ran** → give up: a person meant it. ``--resume`` resubmits it. **Cancelled before it ran** —
  by this launcher, or by Slurm, which cancels a queued job when a job it waits for is requeued or fails, and
  whose record does not say who cancelled — → resubmit, no retry spent (to stop a run, cancel its running jobs).
* **Unknown** — Slurm has forgotten the job (``MinJobAge``, no accounting) — is judged by the files, never assumed
  running: not done → it ended without finishing → like a failure below.
* **Preempted, timed out, or ended by the pre-timeout signal after committing a checkpoint** (exit 140 = 128 +
  SIGUSR2) → resubmit without spending a retry: the task continues from its checkpoint.
* **Failed** (FAILED, OUT_OF_MEMORY, NODE_FAIL, COMPLETED without outputs, unknown) → resubmit while the task's
  retries last (``executor.max_retries``, counted per task and reset whenever the task made progress — committed a
  later checkpoint — since its previous attempt); then give up. A failure the job recorded as **permanent** (a
  missing or corrupt input, a bad config: :attr:`easlurm.errors.EaslurmError.permanent`) is given up on at once —
  a retry would fail the same way.
* **The query failed** (controller down, timeout) → wait (the executor gives up after repeated failures).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..engine.preempt import PREEMPTED_RC, TERMINATED_RC

#: Exit status of a stage that committed a checkpoint after SIGUSR2 (128 + 12) or SIGTERM (128 + 15).
PREEMPTED_EXIT = (PREEMPTED_RC, TERMINATED_RC)
QUERY_FAILED = "QUERY_FAILED"

_ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED"})
_RESUMABLE = frozenset({"TIMEOUT", "PREEMPTED"})
_FAILED = frozenset({"FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "COMPLETED", "UNKNOWN"})
#: Pending reasons that no amount of waiting cures without a person (Slurm's reason codes): a hold, a request the
#: partition or the QOS will never grant, a dependency that can never be satisfied. Everything else a pending job
#: shows — Priority, Resources, Dependency, QOS*/Assoc* group and per-user limits, ReqNodeNotAvail (a drained node,
#: maintenance), reservations, BeginTime, a partition that is down — clears by itself and is waited for without bound.
HELD_REASONS = frozenset({"JobHeldAdmin", "JobHeldUser", "BadConstraints", "PartitionConfig", "PartitionTimeLimit",
                          "PartitionNodeLimit", "InvalidQOS", "InvalidAccount", "AccountNotAllowed", "QOSNotAllowed",
                          "DependencyNeverSatisfied"})


def is_hold_reason(reason: str) -> bool:
    """Whether a pending job's ``reason`` needs a person: :data:`HELD_REASONS`, or a request above a *per-job*
    maximum of the QOS or the association (``QOSMaxWallDurationPerJobLimit``, ``AssocMaxCpuPerJobLimit``, …),
    which the job can never get (its per-user and group limits, by contrast, free up as other jobs end)."""
    word = reason.split(",")[0].strip()
    return word in HELD_REASONS or (word.startswith(("QOSMax", "AssocMax")) and "PerJob" in word)


class Verdict(str, Enum):
    DONE = "done"
    WAIT = "wait"
    ADOPT = "adopt"
    SUBMIT = "submit"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class TaskView:
    """Everything the decision needs about one task (built by the executor from files, Slurm and its memory)."""
    done: bool                      # the stage's own is_done
    job: str | None = None          # latest job id, None when never submitted
    state: str | None = None        # normalised Slurm state of that job, "UNKNOWN" when forgotten, QUERY_FAILED
    reason: str = ""                # Slurm's reason while waiting
    exit_code: int | None = None
    cancelled_by_us: bool = False   # this launcher cancelled the job (its dependency had failed)
    never_ran: bool = False         # Slurm says it never started (cancelled while queued)
    held_for_s: float = 0.0         # how long the job has been seen held
    retries: int = 0                # retries spent on this task since its last progress
    progressed: bool = False        # committed a later checkpoint than at its previous attempt
    permanent_error: str | None = None  # the job recorded an error a retry cannot fix (missing/corrupt input)
    adopting: bool = False          # first look of a freshly started launcher (its jobs are adopted)
    resuming: bool = False          # first look of a launcher started with --resume: earlier cancels are overridden


@dataclass(frozen=True)
class Policy:
    max_retries: int
    hold_timeout_s: float


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    spends_retry: bool = False
    resets_retries: bool = False    # the task made progress since its last attempt: its retry count starts over
    cancel_queued: bool = True      # on GIVE_UP: cancel this run's queued jobs (they could never start)


def is_held(view: TaskView) -> bool:
    """Held (REQUEUE_HOLD, SPECIAL_EXIT, a user or admin hold) or pending for a reason only a person can clear."""
    return view.state == "HELD" or (view.state == "PENDING" and is_hold_reason(view.reason))


def decide(view: TaskView, policy: Policy) -> Decision:
    """What to do with one task (see the module docstring)."""
    if view.done:
        return Decision(Verdict.DONE, "outputs exist and verify")
    if view.job is None:
        return Decision(Verdict.SUBMIT, "not submitted yet")
    state, job = view.state, view.job
    if state == QUERY_FAILED:
        return Decision(Verdict.WAIT, f"job {job}: Slurm did not answer; asking again")
    if is_held(view):
        why = view.reason or state
        if view.held_for_s > policy.hold_timeout_s:
            return Decision(Verdict.GIVE_UP, f"job {job} held ({why}) for {view.held_for_s / 60:.0f} min, longer "
                                             f"than executor.hold_timeout_min; the jobs stay queued: release it "
                                             f"(scontrol release {job}) and follow again with --resume",
                            cancel_queued=False)
        return Decision(Verdict.WAIT, f"job {job} held: {why}")
    if state in _ACTIVE:
        verb = Verdict.ADOPT if view.adopting else Verdict.WAIT
        return Decision(verb, f"job {job} {state.lower()}{f' ({view.reason})' if view.reason else ''}")
    if state == "CANCELLED":
        if view.cancelled_by_us:
            return Decision(Verdict.SUBMIT, f"job {job} was cancelled by this launcher (its dependency failed)")
        if view.resuming:
            return Decision(Verdict.SUBMIT, f"job {job} was cancelled; resubmitting on --resume")
        if view.never_ran:
            # Slurm itself cancels a queued job whose dependency can no longer be satisfied (kill_invalid_depend),
            # e.g. once an admin requeued the job it waits for, and the record does not say who cancelled: a queued
            # job is resubmitted; a person stops a run by cancelling its running jobs.
            return Decision(Verdict.SUBMIT, f"job {job} was cancelled before it ran (Slurm does so when a job it "
                                            f"waits for is requeued or fails); resubmitting it")
        return Decision(Verdict.GIVE_UP, f"job {job} was cancelled by a user; not resubmitted (launch again with "
                                         f"--resume to continue the run)")
    if state in _RESUMABLE or view.exit_code in PREEMPTED_EXIT:
        what = "timed out" if state == "TIMEOUT" else ("was preempted" if state == "PREEMPTED"
                                                      else "stopped at the pre-timeout signal")
        return Decision(Verdict.SUBMIT, f"job {job} {what}; continuing from its checkpoint (no retry spent)")
    if state in _FAILED:
        how = {"COMPLETED": "ended without its outputs", "UNKNOWN": "is no longer known to Slurm and its outputs "
               "are missing"}.get(state, f"ended {state}" + (f" (exit {view.exit_code})" if view.exit_code else ""))
        if view.permanent_error:
            return Decision(Verdict.GIVE_UP, f"job {job} {how} with an error a retry cannot fix (not retried): "
                                             f"{view.permanent_error}")
        if view.progressed:
            return Decision(Verdict.SUBMIT, f"job {job} {how} after progress; retrying from its checkpoint (retry "
                                            f"count reset)", resets_retries=True)
        if view.retries < policy.max_retries:
            return Decision(Verdict.SUBMIT, f"job {job} {how}; retry {view.retries + 1}/{policy.max_retries}",
                            spends_retry=True)
        return Decision(Verdict.GIVE_UP, f"job {job} {how}; no retries left ({view.retries}/{policy.max_retries})")
    return Decision(Verdict.WAIT, f"job {job} in state {state}")


__all__ = ["PREEMPTED_EXIT", "QUERY_FAILED", "HELD_REASONS", "Verdict", "TaskView", "Policy", "Decision",
           "is_hold_reason", "is_held", "decide"]
