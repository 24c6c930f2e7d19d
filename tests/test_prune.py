"""The prune command: frees D/optimizer/RNG states of old cycles, keeps what resume, lineage, fusion and evaluation
need, and the run still counts as finished."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from easlurm.config import load_run_config
from easlurm.errors import CheckpointError
from easlurm.orchestrate.plan import build_plan, pending_stages
from easlurm.population import after_adam, load_member_file, read_member
from easlurm.prune import plan_prune, prune
from easlurm.store import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pruned_copy(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    from hpc_runs import finished_run

    src = finished_run(tmp_path_factory, demo_shards)
    dst = tmp_path_factory.mktemp("prune") / "run"
    shutil.copytree(src, dst)
    return dst


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prune_keeps_generators_and_the_last_cycles_and_the_run_stays_finished(pruned_copy):
    run = RunDir(pruned_copy)
    cfg = load_run_config(run.root)
    last = cfg.run.cycles  # the final Adam phase
    planned = plan_prune(run.root, keep=1)
    assert planned and {p.name for p in planned} <= {"D.pt", "optim.pt", "rng.pt"}
    assert {int(p.folder.parent.parent.name) for p in planned} <= set(range(last))  # never the newest phase
    res = subprocess.run([sys.executable, "-m", "easlurm.prune", str(run.root), "--keep", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"deleted {len(planned)} file(s)" in res.stdout
    for p in planned:
        assert not (p.folder / p.name).exists()
        assert json.loads((p.folder / ".pruned").read_text())[p.name]["sha256"] == p.sha256
    # Every generator any lineage row names is still there and intact.
    for lineage in sorted(run.root.glob("cycles/*/ea/lineage.jsonl")):
        for line in lineage.read_text().splitlines():
            row = json.loads(line)
            for ref in row["parents"]:
                if "checkpoint" in ref:
                    assert _sha(run.root / ref["checkpoint"]) == ref["sha256"]
    # The newest phase keeps everything (fusion warm-starts from its D); the run needs nothing redone.
    for i in range(cfg.population.size):
        folder, _ = after_adam(cfg, run, last, i)  # a slot that is not Adam-trained: its start entry
        assert (folder / "D.pt").exists() or read_member(folder).files.get("refs")
    assert pending_stages(build_plan(cfg, run)) == []
    # A pruned file says so when read.
    folder = planned[0].folder
    with pytest.raises(CheckpointError, match="deleted by `python -m easlurm.prune`"):
        load_member_file(folder, read_member(folder), planned[0].name)


def test_prune_is_idempotent_and_refuses_keep_zero(pruned_copy):
    prune(pruned_copy, keep=1)
    assert plan_prune(pruned_copy, keep=1) == []
    res = subprocess.run([sys.executable, "-m", "easlurm.prune", str(pruned_copy), "--keep", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "keep at least the last cycle" in res.stderr


def test_evaluation_reruns_on_a_pruned_run(pruned_copy):
    from easlurm.evaluate import evaluate_run

    prune(pruned_copy, keep=1)
    shutil.rmtree(RunDir(pruned_copy).eval)
    evaluate_run(pruned_copy)
    assert (RunDir(pruned_copy).eval / "results.md").is_file()
