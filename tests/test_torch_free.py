"""The host side works where torch cannot be imported (a login node without the GPU stack): the launcher's dry
run of a paper config, ``status --json`` and ``prune``. Each runs in a fresh interpreter with torch blocked; the
Slurm test of a whole run launched that way is in tests/slurm/test_launch_slurm.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_runs import finished_run

REPO = Path(__file__).resolve().parents[1]
#: Makes ``import torch`` (and torchvision) raise ImportError in the interpreter that runs it.
BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


def _no_torch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_the_host_modules_import_no_torch():
    res = subprocess.run([sys.executable, "-c", "import sys; import easlurm.launch, easlurm.status, easlurm.prune, "
                          "easlurm.bill, easlurm.leads, easlurm.preflight, easlurm.orchestrate.slurm, "
                          "easlurm.orchestrate.local, easlurm.orchestrate.runner, easlurm.data.resolve; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', "
                          "'lpips')))"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_dry_run_of_a_paper_config(tmp_path):
    res = _no_torch("from easlurm.launch import main; sys.exit(main(['--config', 'configs/rrdb.yaml', '--dry-run', "
                    f"'--run-dir', {str(tmp_path / 'rrdb')!r}]))")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    # Member 0 is ea_only: nothing to train, no job — the array holds the trained slots (array index = slot).
    assert "# ---- sbatch script: adam/000 ----" in out and "#SBATCH --array=1,2,3,4%5" in out
    assert "# bill: 117 jobs, 450.0 GPU-h requested" in out
    assert "# disk: not sized here (the networks are sized with torch" in out
    assert not (tmp_path / "rrdb").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    return finished_run(tmp_path_factory, demo_shards)


def test_status_and_prune(run: Path):
    res = _no_torch(f"from easlurm.status import main; sys.exit(main([{str(run)!r}, '--json', '--no-slurm']))")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["complete"] and {r["state"] for r in report["stages"]} == {"COMPLETED"}
    res = _no_torch(f"from easlurm.prune import main; sys.exit(main([{str(run)!r}, '--keep', '1', '--dry-run']))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("would delete ") and "member folder(s)" in res.stdout
