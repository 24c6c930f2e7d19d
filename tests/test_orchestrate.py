"""The plan, the local and debug executors, the launcher (resume, executor record, lock) and the dry run.

No Slurm here (tests/slurm/ has the cluster tests)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from easlurm.config import load_config, load_run_config
from easlurm.orchestrate.base import StageFailed
from easlurm.orchestrate.local import DebugExecutor, LocalExecutor
from easlurm.orchestrate.plan import build_plan, pending_stages
from easlurm.store import RunDir
from fake_stages import marker_stage

REPO = Path(__file__).resolve().parents[1]


def _probe(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter: argv = [probe, -m, easlurm.orchestrate.runner, RUN, STAGE, I]."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"#!{sys.executable}\nimport os, sys, time, json\n{body}\n")
    probe.chmod(0o755)
    return str(probe)




def test_plan_order_tasks_and_their_own_done_checks(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "run.cycles=2"])
    run = RunDir(tmp_path / "run")
    plan = build_plan(cfg, run)
    assert [s.key for s in plan] == ["pretrain", "init", "adam/000", "ea/000", "adam/001", "ea/001", "adam/002",
                                     "fuse", "eval"]
    adam = plan[2]
    assert adam.is_array and len(adam.tasks) == 3
    t = adam.tasks[2]
    assert t.kind.name == "adam" and t.kind.entry == "easlurm.train.member:train_member"
    assert t.arguments == {"cycle": 0, "member": 2} and t.run == run
    no_final = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "run.cycles=2",
                                                            "model.pretrained=/x/g.pth", "adam.final_phase=false"])
    assert [s.key for s in build_plan(no_final, run)] == ["init", "adam/000", "ea/000", "adam/001", "ea/001",
                                                          "fuse", "eval"]


def test_local_executor_caps_concurrency_and_assigns_gpus_round_robin(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "executor.local.max_parallel=2",
                                                       "executor.local.gpus=[0, 1, 2]"])
    run = RunDir(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    # Each task records its GPU and the number of tasks alive at its start, then lingers a little.
    probe = _probe(tmp_path, f"""
out = {str(out)!r}
assert sys.argv[1:4] == ['-m', 'easlurm.orchestrate.runner', {str(run.root)!r}], sys.argv
me = sys.argv[-1]
open(os.path.join(out, me + '.start'), 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', ''))
names = sorted(os.listdir(out))
alive = len([f for f in names if f.endswith('.start')]) - len([f for f in names if f.endswith('.end')])
open(os.path.join(out, me + '.alive'), 'w').write(str(alive))
time.sleep(0.5)
open(os.path.join(out, me + '.end'), 'w').write('')
""")
    ex = LocalExecutor(cfg, run, echo=lambda m: None, python=probe)
    ex.run_stage(marker_stage("adam/000", 5, out, cfg, run))
    gpus = [(out / f"{i}.start").read_text() for i in range(5)]
    assert gpus == ["0", "1", "2", "0", "1"]
    assert max(int((out / f"{i}.alive").read_text()) for i in range(5)) <= 2
    assert (run.root / "logs" / "adam-000" / "task-04.log").is_file()


def test_local_executor_shares_the_cores_between_the_tasks_that_run_together(tmp_path, monkeypatch):
    """Threads per task = cores / tasks side by side: a stage of one task gets every core, the members of an Adam
    phase share them (an OMP_NUM_THREADS set by the user wins)."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "executor.local.max_parallel=2"])
    run = RunDir(tmp_path / "run")
    probe = _probe(tmp_path, f"""
folder = os.path.join({str(tmp_path)!r}, sys.argv[-2].replace('/', '-'))
open(os.path.join(folder, 'threads.' + sys.argv[-1]), 'w').write(os.environ.get('OMP_NUM_THREADS', 'unset'))
open(os.path.join(folder, sys.argv[-1] + '.end'), 'w').write('')
""")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    ex = LocalExecutor(cfg, run, echo=lambda m: None, python=probe)

    def threads(key: str, n: int) -> list[str]:
        folder = tmp_path / key.replace("/", "-")
        folder.mkdir()
        ex.run_stage(marker_stage(key, n, folder, cfg, run))
        return [(folder / f"threads.{i}").read_text() for i in range(n)]

    assert threads("fuse", 1) == ["8"]
    assert threads("adam/000", 3) == ["4", "4", "4"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads("eval", 1) == ["3"]


def test_local_executor_retries_per_task_then_names_the_failed_task(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}", "executor.max_retries=1"])
    run = RunDir(tmp_path / "run")
    counter = tmp_path / "count"
    probe = _probe(tmp_path, f"""
p = {str(counter)!r}
n = int(open(p).read()) if os.path.exists(p) else 0
open(p, 'w').write(str(n + 1))
print('attempt', n + 1)
sys.exit(3)
""")
    ex = LocalExecutor(cfg, run, echo=lambda m: None, python=probe)
    with pytest.raises(StageFailed, match=r"stage ea/000, member 00 failed: exit code 3 after 2 attempt\(s\)"
                                          r"\n  log: .*ea-000/task-00.log"):
        ex.run_stage(marker_stage("ea/000", 1, tmp_path, cfg, run))
    assert counter.read_text() == "2"
    assert "attempt 2" in (run.root / "logs" / "ea-000" / "task-00.log").read_text()


def test_debug_executor_reports_the_stage_s_own_error(tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={tmp_path}"])
    run = RunDir(tmp_path / "run")
    stage = marker_stage("init", 1, tmp_path, cfg, run, entry="fake_stages:fail_with_message")
    with pytest.raises(StageFailed, match=r"stage init, member 00 failed: raised\n  EaslurmError: "
                                          r"cycles/000/start/00: not found \(written by the init stage\)"):
        DebugExecutor(cfg, run, echo=lambda m: None).run([stage])
    rec = json.loads((run.root / "logs" / "errors" / "init-00.json").read_text())
    assert rec["message"] == "cycles/000/start/00: not found (written by the init stage)" and rec["easlurm_error"]


@pytest.mark.slow
def test_a_failing_stage_s_message_reaches_the_local_launcher_s_report_and_a_permanent_one_runs_once(make_run,
                                                                                                       tmp_path):
    """A pretrained start that exists (so the launch's input check passes) but is not a checkpoint: the init
    stage's CheckpointError cannot change on a retry, so it runs once although executor.max_retries allows two
    more, and the report carries the stage's own words."""
    bad = tmp_path / "g.pth"
    bad.write_bytes(b"not a checkpoint")
    run = make_run([f"model.pretrained={bad}", "executor.max_retries=2"], name="bad")
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "local"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "stage init, start population failed: exit code 2, with an error a retry cannot fix (not retried)" in \
        res.stderr
    assert f"CheckpointError: {bad}: cannot load checkpoint" in res.stderr  # the stage's words, not "exit 2"
    assert "log: " in res.stderr and "init/task-00.log" in res.stderr
    assert "retrying" not in res.stdout
    assert (RunDir(run).logs / "init" / "task-00.log").read_text().count("[task] init") == 1


#: Two members (the fewest an EA needs): whole-pipeline tests of the executors need no third.
PAIR = ("population.size=2", "ea.neighbourhood=2")


@pytest.mark.slow
def test_debug_executor_runs_the_whole_pipeline_and_resume_reruns_nothing(make_run):
    run = make_run(["run.cycles=2", "ea.generations=1", *PAIR])
    cfg = load_run_config(run)
    ex = DebugExecutor(cfg, RunDir(run), echo=lambda m: None)
    ex.run(build_plan(cfg, RunDir(run)))
    keys = [k for k, _ in ex.calls]
    assert keys == ["pretrain", "init", *["adam/000"] * 2, "ea/000", *["adam/001"] * 2, "ea/001",
                    *["adam/002"] * 2, "fuse", "eval"]
    assert (RunDir(run).eval / "results.md").is_file() and (RunDir(run).fusion / "fused.pt").is_file()
    assert pending_stages(build_plan(cfg, RunDir(run))) == []
    again = DebugExecutor(cfg, RunDir(run), echo=lambda m: None)
    again.run(build_plan(cfg, RunDir(run)))
    assert again.calls == []


@pytest.mark.slow
def test_launch_local_completes_records_its_executor_and_a_relaunch_reruns_nothing(make_run):
    run = make_run(["run.cycles=1", "ea.generations=1", "executor.kind=slurm", *PAIR, "adam.final_phase=false"],
                   name="r")
    first = subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "local"],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "| fused |" in first.stdout and "pareto.png" in first.stdout
    assert json.loads((run / "run.json").read_text())["executor"] == "local"
    # Resumed without --executor: the run's own executor (local), not the config's (slurm); nothing runs again.
    second = subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(run)], capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "(executor: local)" in second.stdout and "[local]" not in second.stdout


def _wait_for(cond, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_one_launcher_per_run_and_a_dead_launcher_s_lock_is_taken_over(make_run):
    run = make_run(["run.cycles=1", "ea.generations=1", "adam.iters_per_cycle=40", "adam.checkpoint_every=10",
                    *PAIR, "adam.final_phase=false"], name="locked")
    cmd = [sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "local"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        _wait_for(lambda: (run / ".launcher" / ".lease").is_file(), what="the first launcher's lock")
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"pid {first.pid} on " in second.stderr and "launcher" in second.stderr
        _wait_for(lambda: (RunDir(run).member(0, 0) / "meta.json").is_file(), what="a member checkpoint")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and its task processes: a crashed login session
        first.wait()
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout + third.stderr
    assert (run / "eval" / "results.md").is_file()


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
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--run-dir", str(tmp_path / "a\nb")], capture_output=True, text=True)
    assert res.returncode == 2 and "--run-dir" in res.stderr and "control characters" in res.stderr


GOLDEN = REPO / "tests" / "golden" / "dry_run_tiny_slurm.txt"


def test_dry_run_sbatch_scripts_match_golden_file(tmp_path):
    """The exact sbatch text, with a run dir whose path has spaces and quotes (shell-quoted safely)."""
    run_dir = "/scratch/it's my run/tiny \"x\""
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--executor", "slurm", "--dry-run", "--run-dir", run_dir, "--set", "run.cycles=2",
                          "--set", "executor.slurm.partition=gpu a100", "--set", "executor.slurm.account=proj1",
                          "--set", "executor.slurm.adam.extra={constraint: 'a100&ib'}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = res.stdout.replace(sys.executable, "PYTHON")
    assert not Path(run_dir).exists()  # nothing written
    # The bill follows the scripts (it may mention this machine's Slurm partitions): the golden file holds the
    # plan and the scripts; the bill has its own tests (tests/test_bill.py).
    assert "\n# bill: " in text
    text = text[: text.index("\n# bill: ") + 1]
    if os.environ.get("EASLURM_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    # Every quoted path round-trips through the shell.
    for line in text.splitlines():
        if line.startswith("#SBATCH --output="):
            assert shlex.split(line.split("=", 1)[1])[0].startswith(run_dir + "/slurm/")
