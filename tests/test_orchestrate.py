"""The plan, the local and debug executors, resume, status and the dry run (no Slurm needed)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from easlurm.config import load_config, load_run_config
from easlurm.orchestrate.local import DebugExecutor, LocalExecutor, StageFailed
from easlurm.orchestrate.plan import Stage, Task, build_plan, pending_stages
from easlurm.store import RunDir

REPO = Path(__file__).resolve().parents[1]


def _probe(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter: argv = [probe, -m, module, args...]."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"#!{sys.executable}\nimport os, sys, time, json\n{body}\n")
    probe.chmod(0o755)
    return str(probe)


def test_plan_order_and_tasks(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "run.cycles=2"])
    plan = build_plan(cfg, RunDir(tmp_path / "run"))
    assert [s.key for s in plan] == ["pretrain", "adam/000", "ea/000", "adam/001", "ea/001", "fuse", "eval"]
    adam = plan[1]
    assert adam.is_array and len(adam.tasks) == 3
    assert adam.tasks[2].argv("py") == ["py", "-m", "easlurm.train", "--run", str((tmp_path / "run").resolve()),
                                        "--cycle", "0", "--member", "2"]
    with_pretrained = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}",
                                                                    "model.pretrained=/x/g.pth"])
    assert build_plan(with_pretrained, RunDir(tmp_path))[0].key == "adam/000"


def test_local_executor_caps_concurrency_and_assigns_gpus_round_robin(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "executor.local.max_parallel=2",
                                                       "executor.local.gpus=[0, 1, 2]"])
    run = RunDir(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    # Each task records its GPU and the number of tasks alive at its start, then lingers a little.
    probe = _probe(tmp_path, f"""
out = {str(out)!r}
me = sys.argv[-1]
open(os.path.join(out, me + '.start'), 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', ''))
names = sorted(os.listdir(out))
alive = len([f for f in names if f.endswith('.start')]) - len([f for f in names if f.endswith('.end')])
open(os.path.join(out, me + '.alive'), 'w').write(str(alive))
time.sleep(0.5)
open(os.path.join(out, me + '.end'), 'w').write('')
""")
    stage = Stage("adam/000", "adam", 0, [Task("x", (str(i),), f"member {i}") for i in range(5)])
    done = lambda s, i, r: (out / f"{i}.end").exists()  # noqa: E731
    ex = LocalExecutor(cfg, run, echo=lambda m: None, done=done, python=probe)
    ex.run_stage(stage)
    gpus = [(out / f"{i}.start").read_text() for i in range(5)]
    assert gpus == ["0", "1", "2", "0", "1"]
    assert max(int((out / f"{i}.alive").read_text()) for i in range(5)) <= 2
    assert (run.root / "logs" / "adam-000" / "task-04.log").is_file()


def test_local_executor_retries_then_names_the_failed_task(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "executor.max_retries=1"])
    run = RunDir(tmp_path / "run")
    counter = tmp_path / "count"
    probe = _probe(tmp_path, f"""
p = {str(counter)!r}
n = int(open(p).read()) if os.path.exists(p) else 0
open(p, 'w').write(str(n + 1))
print('attempt', n + 1)
sys.exit(3 if sys.argv[-1] == '1' else 0)
""")
    stage = Stage("ea/000", "ea", 0, [Task("x", ("1",), "ea cycle 0")])
    ex = LocalExecutor(cfg, run, echo=lambda m: None, done=lambda s, i, r: False, python=probe)
    with pytest.raises(StageFailed, match=r"stage ea/000, ea cycle 0 failed: exit code 3 after 2 attempt\(s\); "
                                          r"log: .*ea-000/task-00.log"):
        ex.run_stage(stage)
    assert counter.read_text() == "2"
    assert "attempt 2" in (run.root / "logs" / "ea-000" / "task-00.log").read_text()


@pytest.mark.slow
def test_debug_executor_runs_the_whole_pipeline_and_resume_reruns_nothing(make_run):
    run = make_run(["run.cycles=2", "ea.generations=1"])
    cfg = load_run_config(run)
    ex = DebugExecutor(cfg, RunDir(run), echo=lambda m: None)
    ex.run(build_plan(cfg, RunDir(run)))
    keys = [k for k, _ in ex.calls]
    assert keys == ["pretrain", *["adam/000"] * 3, "ea/000", *["adam/001"] * 3, "ea/001", "fuse", "eval"]
    assert (RunDir(run).eval / "results.md").is_file() and (RunDir(run).fusion / "fused.pt").is_file()
    assert pending_stages(build_plan(cfg, RunDir(run)), RunDir(run)) == []
    again = DebugExecutor(cfg, RunDir(run), echo=lambda m: None)
    again.run(build_plan(cfg, RunDir(run)))
    assert again.calls == []
    # status reads it all back from the files.
    res = subprocess.run([sys.executable, "-m", "easlurm.status", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert re.search(r"ea/001\s+COMPLETED", res.stdout) and re.search(r"eval\s+COMPLETED", res.stdout)


@pytest.mark.slow
def test_launch_local_completes_then_a_relaunch_reruns_nothing(make_run, tmp_path):
    run = make_run(["run.cycles=1", "ea.generations=1"], name="r")
    cmd = [sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "local"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "| fused |" in first.stdout and "pareto.png" in first.stdout
    # Nothing to do the second time: no stage runs again.
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "[local]" not in second.stdout


def test_launch_rejects_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--set", "adam.lrr=1", "--run-dir", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2 and "--set adam.lrr: unknown key (did you mean 'lr'?)" in res.stderr
    assert not (tmp_path / "r").exists()
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--set", f"data.train={tmp_path}", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "is not a shard folder" in res.stderr and not (tmp_path / "r").exists()
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(tmp_path)], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "no config.yaml there" in res.stderr


GOLDEN = REPO / "tests" / "golden" / "dry_run_tiny_slurm.txt"


def test_dry_run_sbatch_scripts_match_golden_file(tmp_path):
    """The exact sbatch text, with a run dir whose path has spaces and quotes (shell-quoted safely)."""
    run_dir = "/scratch/it's my run/tiny \"x\""
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--executor", "slurm", "--dry-run", "--run-dir", run_dir, "--set", "run.cycles=2",
                          "--set", "executor.slurm.partition=gpu a100", "--set", "executor.slurm.account=proj1",
                          "--set", "executor.slurm.adam.extra={constraint: 'a100&ib'}"],
                         capture_output=True, text=True, env={**os.environ, "EASLURM_GOLDEN": "1"})
    assert res.returncode == 0, res.stderr
    text = res.stdout.replace(sys.executable, "PYTHON")
    assert not Path(run_dir).exists()  # nothing written
    if os.environ.get("EASLURM_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    # Every quoted path round-trips through the shell.
    for line in text.splitlines():
        if line.startswith("#SBATCH --output="):
            import shlex
            assert shlex.split(line.split("=", 1)[1])[0].startswith(run_dir + "/slurm/")
