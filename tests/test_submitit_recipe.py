"""easlurm.contrib.submitit: the plan run by submitit's own executor (the local one here, as in CI)."""
from __future__ import annotations

import pytest

from easlurm.store import RunDir

submitit = pytest.importorskip("submitit")


@pytest.mark.slow
def test_a_run_finishes_through_submitit_s_local_executor(make_run, tmp_path):
    from easlurm.contrib.submitit import run_plan

    run = make_run(["run.cycles=1", "ea.generations=1", "adam.final_phase=false", "population.size=2",
                    "ea.neighbourhood=2", "eval.metrics=[psnr, ssim]"])
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=30)
    lines: list[str] = []
    run_plan(run, executor, echo=lines.append)
    assert (RunDir(run).eval / "results.md").is_file() and (RunDir(run).fusion / "fused.pt").is_file()
    assert lines[0] == "[submitit] pretrain: 1 task(s)" and "[submitit] adam/000: 2 task(s)" in lines
    # A finished plan has nothing left to run.
    again: list[str] = []
    run_plan(run, executor, echo=again.append)
    assert again == []


def test_a_failing_task_reports_the_stage_s_own_error(make_run, tmp_path):
    from easlurm.contrib.submitit import run_plan
    from easlurm.orchestrate.base import StageFailed

    bad = tmp_path / "g.pth"
    bad.write_bytes(b"not a checkpoint")
    run = make_run([f"model.pretrained={bad}"])
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    with pytest.raises(StageFailed, match=r"stage init, start population failed: submitit job .* failed\n  "
                                          r"CheckpointError: .*g\.pth: cannot load checkpoint"):
        run_plan(run, executor, echo=lambda m: None)
