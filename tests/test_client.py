"""The Slurm client's submissions (easlurm.orchestrate.client.CommandClient) against stand-in sbatch/squeue
commands: a lost answer is retried with backoff, but never twice for a job that was in fact submitted."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from easlurm.orchestrate.client import CommandClient, SubmissionError

KEY = "easlurm:0123456789ab:adam-000:003"


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins on PATH: ``sbatch`` follows the plan in ``plan`` (one word per call: ``ok`` submits, ``lost``
    submits and then reports a timeout, ``timeout`` reports one without submitting, ``bad`` refuses), keeping its
    "queue" in ``queue`` (``id|comment`` lines); ``squeue`` prints that queue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/bash
d={tmp_path}
step=$(head -n 1 "$d/plan"); sed -i 1d "$d/plan"; echo x >> "$d/calls"
comment=$(grep -o -- '--comment=.*' "$2" | cut -d= -f2)
id=$((700 + $(wc -l < "$d/calls")))
case $step in
  ok) echo "$id|$comment" >> "$d/queue"; echo "$id";;
  lost) echo "$id|$comment" >> "$d/queue"
        echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1;;
  timeout) echo "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying" >&2; exit 1;;
  bad) echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1;;
esac
""")
    (bin_dir / "squeue").write_text(f"#!/bin/bash\ncat {tmp_path}/queue 2>/dev/null\n")
    for f in ("sbatch", "squeue"):
        (bin_dir / f).chmod(0o755)
    (tmp_path / "script.sh").write_text(f"#!/bin/bash\n#SBATCH --comment={KEY}\ntrue\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def _plan(d: Path, *steps: str) -> None:
    (d / "plan").write_text("".join(f"{s}\n" for s in steps))


def _calls(d: Path) -> int:
    return len((d / "calls").read_text().splitlines()) if (d / "calls").exists() else 0


def _queue(d: Path) -> list[str]:
    return (d / "queue").read_text().split() if (d / "queue").exists() else []


def _client(pauses: list[float]) -> CommandClient:
    return CommandClient(retries=3, backoff_s=2.0, sleep=pauses.append)


def test_a_submission_whose_answer_was_lost_is_found_not_repeated(slurm: Path):
    _plan(slurm, "lost", "ok")
    pauses: list[float] = []
    ids = _client(pauses).submit(slurm / "script.sh", [0, 2], cwd=slurm, what="stage adam/000", key=KEY)
    assert ids == ["701_0", "701_2"] and _calls(slurm) == 1 and pauses == []
    assert _queue(slurm) == [f"701|{KEY}"]  # one job: the call that "failed" had submitted it


def test_a_submission_refused_for_a_moment_is_retried_with_backoff(slurm: Path):
    _plan(slurm, "timeout", "timeout", "ok")
    pauses: list[float] = []
    assert _client(pauses).submit(slurm / "script.sh", None, cwd=slurm, what="stage ea/000", key=KEY) == ["703"]
    assert _calls(slurm) == 3 and pauses == [2.0, 4.0] and _queue(slurm) == [f"703|{KEY}"]


def test_retries_are_bounded_and_a_permanent_refusal_is_not_retried(slurm: Path):
    _plan(slurm, *["timeout"] * 4)
    pauses: list[float] = []
    with pytest.raises(SubmissionError, match=r"stage fuse: .*temporarily unable.*\(4 attempts; no job with comment "):
        _client(pauses).submit(slurm / "script.sh", None, cwd=slurm, what="stage fuse", key=KEY)
    assert _calls(slurm) == 4 and pauses == [2.0, 4.0, 8.0]
    (slurm / "calls").unlink()
    _plan(slurm, "bad", "ok")
    with pytest.raises(SubmissionError, match="Invalid partition name specified"):
        _client([]).submit(slurm / "script.sh", None, cwd=slurm, what="stage fuse", key=KEY)
    assert _calls(slurm) == 1
