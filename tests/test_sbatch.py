"""The launcher's own sbatch scripts: the warning lead, the signal trap and requeue, array indices = members, and
the plain jobs/*.sh scripts holding the same supervising lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from easlurm import stages
from easlurm.config import load_config
from easlurm.leads import UNSIZED_FILE_BYTES, signal_lead, signal_leads
from easlurm.orchestrate.plan import build_plan
from easlurm.orchestrate.sbatch import Submission, directives, render, supervise
from easlurm.store import RunDir

REPO = Path(__file__).resolve().parents[1]


def _cfg(name: str, *overrides: str):
    return load_config(REPO / "configs" / name, list(overrides))


def _lead(cfg, kind: str) -> int:
    return signal_leads(cfg)[kind]


def test_the_warning_lead_follows_the_checkpoint_cost(tmp_path):
    rrdb, tiny = _cfg("rrdb.yaml"), _cfg("tiny.yaml", f"data.demo_dir={tmp_path}")
    # A bigger checkpoint (RRDB: G + D + Adam states ≈ 375 MB) needs a longer lead than a tiny one ...
    assert _lead(rrdb, "adam") > _lead(tiny, "adam") >= 60
    # ... an EA generation is a longer unit of work than an iteration ...
    assert _lead(rrdb, "ea") > _lead(rrdb, "adam")
    # ... a stage without checkpoints gets the minimum, and a configured lead always wins.
    assert _lead(rrdb, "eval") == 60
    assert _lead(_cfg("rrdb.yaml", "executor.slurm.adam.signal_lead_s=300"), "adam") == 300
    # Never more than a third of the time limit.
    short = _cfg("rrdb.yaml", "executor.slurm.ea.time_min=3")
    assert _lead(short, "ea") == 60
    # A run's own measured step time replaces the default unit; a host that cannot size the networks (no torch)
    # assumes large files, so its leads are never shorter.
    adam = stages.get("adam")
    assert signal_lead(rrdb, adam, None, unit_s=120.0) > signal_lead(rrdb, adam, None)
    sized = _lead(tiny, "adam")
    unsized = signal_lead(tiny, adam, None)
    assert unsized > sized
    # 45 s + 2 × (5 s + 4 files of UNSIZED_FILE_BYTES written at 100 MB/s and hashed at 500 MB/s), to 10 s
    assert unsized == -(-(45 + 2 * (5 + 4 * UNSIZED_FILE_BYTES * (1 / 100e6 + 1 / 500e6))) // 10) * 10


def test_member_array_script_traps_the_signal_and_requeues_from_the_host(tmp_path):
    cfg = _cfg("tiny.yaml", f"data.demo_dir={tmp_path}")
    run = RunDir(tmp_path / "run")
    adam = next(s for s in build_plan(cfg, run) if s.key == "adam/001")
    sub = Submission(adam, (0, 2), ("12_0", "12_2"))
    opts = dict(directives(cfg, run, sub))
    assert opts["array"] == "0,2%3"  # the unfinished members themselves: SLURM_ARRAY_TASK_ID is the member slot
    assert opts["signal"].startswith("B:USR2@") and "requeue" in opts
    assert opts["dependency"] == "afterok:12_0:12_2" and opts["kill-on-invalid-dep"] == "yes"
    script = render(cfg, run, sub)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    body = script.split("set -u", 1)[1]
    # The task is a background child the shell waits on, so a trapped signal runs at once and is forwarded.
    assert "easlurm.orchestrate.runner" in body and body.index("&\nchild=$!") < body.index("trap 'kill -USR2")
    assert 'if [ "$rc" -eq 140 ]' in body and 'scontrol requeue "$me"' in body


def test_the_trap_forwards_the_warning_and_the_shell_requeues_after_exit_140(tmp_path):
    """The script's own shell logic, run with bash: a stand-in task that commits on USR2 and exits 140, and a
    stand-in scontrol that records the requeue (no Slurm needed)."""
    cfg = _cfg("tiny.yaml", f"data.demo_dir={tmp_path}")
    run = RunDir(tmp_path / "run")
    stage = next(s for s in build_plan(cfg, run) if s.key == "ea/000")
    script = render(cfg, run, Submission(stage, (0,)), python=str(tmp_path / "python"))
    (tmp_path / "python").write_text("#!/bin/bash\ntrap 'echo committed; exit 140' USR2\necho started\n"
                                     "while :; do sleep 0.1; done\n")
    (tmp_path / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/requeued\n")
    for f in ("python", "scontrol"):
        (tmp_path / f).chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_ID": "77"}
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    while "started" not in proc.stdout.readline():
        pass
    proc.send_signal(12)  # SIGUSR2, what --signal=B:USR2@LEAD sends to the batch shell
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "committed" in out and "requeueing 77" in out
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "77"]


def test_the_plain_scripts_supervise_the_task_with_the_renderer_s_lines():
    """jobs/common.sh holds exactly the lines the launcher's scripts run the task with (one definition, checked)."""
    text = (REPO / "jobs" / "common.sh").read_text()
    block = text.split("# >>> supervise", 1)[1].split("\n", 1)[1].split("    # <<< supervise", 1)[0]
    lines = [line[4:] for line in block.splitlines()]
    assert lines == supervise('"${CMD[@]}" -u -m easlurm.orchestrate.runner "$run_dir" "$stage" "$index"')


@pytest.mark.parametrize("kind", ["adam", "ea", "fuse"])
def test_the_rendered_lead_is_the_one_the_launcher_computed(tmp_path, kind):
    cfg = _cfg("rrdb.yaml")
    run = RunDir(tmp_path / "run")
    stage = next(s for s in build_plan(cfg, run) if s.kind.name == kind)
    leads = signal_leads(cfg)
    script = render(cfg, run, Submission(stage, (0,)), sys.executable, leads[kind])
    assert f"#SBATCH --signal=B:USR2@{leads[kind]}\n" in script


def test_the_plain_scripts_ask_for_their_gpu_as_the_launcher_does(tmp_path):
    cfg = _cfg("tiny.yaml", f"data.demo_dir={tmp_path}", "executor.slurm.adam.gpus=1")
    adam = next(s for s in build_plan(cfg, RunDir(tmp_path / "run")) if s.key == "adam/000")
    launcher = dict(directives(cfg, RunDir(tmp_path / "run"), Submission(adam, (0,))))
    assert launcher["gres"] == "gpu:1"
    for script in ("adam", "ea", "fuse", "eval", "pretrain"):
        lines = (REPO / "jobs" / f"{script}.sh").read_text().splitlines()
        gpu = [line for line in lines if "gpu" in line and line.startswith("#SBATCH")]
        assert gpu == ["#SBATCH --gres=gpu:1"], script
