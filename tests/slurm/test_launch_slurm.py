"""The launcher against real single-node clusters: arrays, afterok chains, faults, resume, production-like settings.

Two clusters (tests/slurm/conftest.py): the lab one (accounting, jobs remembered for a day) and a production-like
one (no accounting, ``MinJobAge`` 10 s). Runs that need "the Slurm commands hidden from the job's PATH, as in the
container" go through a stand-in ``apptainer`` (``fake_container``) that runs the task with a clean environment
and a PATH holding only a python.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from easlurm.store import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: What these tests need of a run: quick polls, one EA generation, no final Adam phase and PSNR/SSIM only (LPIPS
#: and DISTS load two more networks into the evaluation job; their code paths are tested outside Slurm). The
#: end-to-end test turns the final phase back on.
FAST = ("executor.poll_s=0.5", "executor.slurm.array_parallelism=3", "ea.generations=1", "adam.final_phase=false",
        "eval.metrics=[psnr, ssim]")


def _launch(run: Path, env: dict[str, str], *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "easlurm.launch", "--resume", str(run), *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _submissions(run: Path) -> list[dict[str, Any]]:
    return json.loads((run / "state.json").read_text())["submissions"]


def _jobs_of(run: Path, stage: str) -> list[str]:
    return [job for sub in _submissions(run) if sub["stage"] == stage for job in sub["tasks"]]


def _tasks_per_stage(run: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sub in _submissions(run):
        counts[sub["stage"]] = counts.get(sub["stage"], 0) + len(sub["tasks"])
    return counts


def _wait(cond: Callable[[], Any], timeout: float = 300, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _iteration(folder: Path) -> int:
    try:
        return int(json.loads((folder / "meta.json").read_text())["iteration"])
    except (OSError, ValueError, KeyError):
        return -1


def _scontrol_times(job: str, env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout

    def t(name: str) -> float:
        m = re.search(rf"{name}=(\S+)", out)
        assert m, f"{name} missing for {job}: {out[:300]}"
        return time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return t("StartTime"), t("EndTime")


@pytest.fixture
def fake_container(tmp_path: Path) -> tuple[str, ...]:
    """Config overrides that run every task through a stand-in ``apptainer exec``: like the project's image, the
    command sees a clean environment (``APPTAINERENV_*`` and ``--env`` only) and a PATH without Slurm commands."""
    bin_dir = tmp_path / "image-bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    fake = tmp_path / "apptainer"
    fake.write_text(f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
assert args.pop(0) == "exec", sys.argv
clean, extra = False, {{}}
while args[0].startswith("--"):
    opt = args.pop(0)
    if opt == "--cleanenv":
        clean = True
    elif opt == "--env":
        k, _, v = args.pop(0).partition("=")
        extra[k] = v
    elif opt == "--bind":
        args.pop(0)
image = args.pop(0)
env = {{}} if clean else dict(os.environ)
env.update({{k[len("APPTAINERENV_"):]: v for k, v in os.environ.items() if k.startswith("APPTAINERENV_")}})
env.update(extra)
env["PATH"] = {str(bin_dir)!r}
env.setdefault("HOME", "/root")
print("fake-apptainer: PATH=" + env["PATH"], file=sys.stderr, flush=True)
os.execve({str(bin_dir / "python")!r}, ["python", *args[1:]], env) if args[0] == "python" else os.execvpe(
    args[0], args, env)
""")
    fake.chmod(0o755)
    image = tmp_path / "easlurm.sif"
    image.write_bytes(b"")
    return (f"container.image={image}", f"container.binary={fake}", "container.nv=false")


#: Runs a Python snippet in an interpreter where ``import torch`` fails, as on a login node without the GPU stack.
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


def test_end_to_end_arrays_chain_and_results(slurm_cluster, make_run):
    """The launcher and ``status`` run where torch cannot be imported; the jobs run in the environment that has it.
    Two members per Adam task (``adam.members_per_task: 2``): three members are two array tasks."""
    run = make_run([*FAST, "run.cycles=1", "adam.final_phase=true", "adam.members_per_task=2"])
    env = slurm_cluster.env()
    res = subprocess.run([sys.executable, "-c", NO_TORCH + "from easlurm.launch import main; sys.exit(main(["
                          f"'--resume', {str(run)!r}, '--executor', 'slurm']))"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "# disk: not sized here" in res.stdout  # the launcher really had no torch
    status = subprocess.run([sys.executable, "-c", NO_TORCH + "from easlurm.status import main; sys.exit(main(["
                             f"{str(run)!r}, '--json']))"], capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["complete"]
    assert (run / "eval" / "results.md").is_file() and (run / "fusion" / "fused.pt").is_file()
    assert [s["stage"] for s in _submissions(run)] == ["pretrain", "init", "adam/000", "ea/000", "adam/001",
                                                        "fuse", "eval"]  # one chain, submitted at once
    for c in ("000", "001"):
        ids = _jobs_of(run, f"adam/{c}")
        array = ids[0].split("_")[0]
        assert ids == [f"{array}_{k}" for k in range(2)]  # one array: task _0 = members 0, 1; _1 = member 2
        log = (run / "slurm" / f"adam-{c}" / f"{ids[0]}.out").read_text()
        assert "member 00: starting" in log and "member 01: starting" in log and "member 02" not in log
        for m in range(3):
            assert json.loads((run / "cycles" / c / "members" / f"{m:02d}" / "meta.json").read_text())["done"]
    last_task_end = max(_scontrol_times(j, env)[1] for j in _jobs_of(run, "adam/000"))
    ea_start, _ = _scontrol_times(_jobs_of(run, "ea/000")[0], env)
    assert ea_start >= last_task_end  # the EA job started only after the members ended
    assert _submissions(run)[3]["dependency"] == _jobs_of(run, "adam/000")


def test_detached_run_cancelled_and_forgotten_by_slurm_resumes_on_slurm(slurm_cluster_noacct, make_run):
    """Production-like: no accounting, MinJobAge 10 s. The config says local; the run was launched on Slurm."""
    run = make_run([*FAST, "run.cycles=1", "executor.kind=local"])
    env = slurm_cluster_noacct.env()
    res = _launch(run, env, "--executor", "slurm", "--detach")
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = [j.split("_")[0] for s in _submissions(run) for j in s["tasks"]]
    subprocess.run(["scancel", *sorted(set(jobs))], check=True, env=env)
    # Wait until slurmctld has forgotten every job (no accounting: nobody can say what happened to them).
    _wait(lambda: subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(sorted(set(jobs)))],
                                 capture_output=True, text=True, env=env).stdout.strip() == "", 120,
          "Slurm to forget the cancelled jobs")
    res = _launch(run, env)  # no --executor: the run's own (slurm), not the config's (local)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(executor: slurm)" in res.stdout and (run / "eval" / "results.md").is_file()
    assert len(_submissions(run)) > 6  # the chain again, resubmitted


def test_user_cancel_stops_the_launcher_and_a_requeued_task_resumes(slurm_cluster, make_run):
    """A person's `scancel` of a running member: the launcher stops (it does not undo a person's decision).
    `--resume` resubmits it (it continues from its checkpoint); an admin's `scontrol requeue` of that task: it
    commits, runs again as the same job and resumes from its checkpoint, and the queued EA job, which Slurm cancels
    because its dependency was requeued, is resubmitted — the run finishes."""
    run = make_run([*FAST, "run.cycles=1", "adam.iters_per_cycle=150", "adam.checkpoint_every=10",
                    "adam.log_every=150", "adam.image_every=1000"])
    env = slurm_cluster.env()
    folder = RunDir(run).member(0, 1)
    res = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor", "slurm"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait(lambda: _iteration(folder) >= 10, what="member 1 at iteration 10")
        first = _jobs_of(run, "adam/000")[1]
        subprocess.run(["scancel", first], check=True, env=env)
        out, _ = res.communicate(timeout=300)
    finally:
        if res.poll() is None:
            res.kill()
    assert res.returncode == 2, out
    assert f"job {first} was cancelled by a user; not resubmitted" in out
    resume = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        second = _wait(lambda: next((j for j in _jobs_of(run, "adam/000") if j.startswith(first.split("_")[0]) is False
                                     and j.endswith("_1")), None), what="member 1 resubmitted")
        log = run / "slurm" / "adam-000" / f"{second}.out"
        _wait(lambda: log.is_file() and "member 01: resuming at iteration" in log.read_text(), what="its start")
        start = int(re.findall(r"member 01: resuming at iteration (\d+)/150", log.read_text())[0])
        _wait(lambda: _iteration(folder) >= start + 10, what="member 1 ten iterations further")
        reached = _iteration(folder)
        subprocess.run(["scontrol", "requeue", second], check=True, env=env)
        out, _ = resume.communicate(timeout=600)
    finally:
        if resume.poll() is None:
            resume.kill()
    assert resume.returncode == 0, out
    assert start >= 10  # --resume: the cancelled member continued from its checkpoint
    restarts = [int(m) for m in re.findall(r"member 01: resuming at iteration (\d+)/150", log.read_text())]
    assert len(restarts) >= 2 and restarts[-1] >= reached  # the same job ran again, from its checkpoint
    assert (run / "eval" / "results.md").is_file()


def test_killed_launcher_resumes_and_adopts_without_rerunning_finished_stages(slurm_cluster, make_run):
    run = make_run([*FAST, "run.cycles=1", "adam.iters_per_cycle=60", "adam.checkpoint_every=10"])
    env = slurm_cluster.env()
    launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                 "slurm"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait(lambda: _iteration(RunDir(run).member(0, 0)) >= 10, what="member 0 at iteration 10")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    res = _launch(run, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "adopting" in res.stdout and (run / "eval" / "results.md").is_file()
    assert _tasks_per_stage(run) == {"pretrain": 1, "init": 1, "adam/000": 3, "ea/000": 1, "fuse": 1, "eval": 1}


def test_a_drained_node_is_waited_out_and_a_held_job_stops_the_launcher(slurm_cluster, make_run):
    """An ordinary wait (the only node drained for maintenance: ReqNodeNotAvail) lasts as long as it lasts; a hold
    (``scontrol hold``) stops the launcher after ``executor.hold_timeout_min`` (here 6 s), naming the release."""
    run = make_run([*FAST, "run.cycles=1", "executor.hold_timeout_min=0.1"])
    env = slurm_cluster.env()
    node = subprocess.run(["sinfo", "-h", "-o", "%n"], capture_output=True, text=True, env=env).stdout.split()[0]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=maintenance"], check=True,
                   env=env)
    try:
        launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                     "slurm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _wait(lambda: (run / "state.json").is_file() and _jobs_of(run, "ea/000"), what="the chain submitted")
        first = _jobs_of(run, "pretrain")[0]
        why = lambda: json.loads(subprocess.run(  # noqa: E731
            [sys.executable, "-m", "easlurm.status", str(run), "--json"], capture_output=True, text=True,
            env=env).stdout)["stages"][0]["job_states"].get(first, {}).get("reason", "")
        reason = _wait(why, 60, "Slurm's reason for the waiting job")  # what status shows
        assert "DRAINED" in reason or "ReqNodeNotAvail" in reason, reason  # Slurm words it either way
        time.sleep(12)  # twice the hold bound: a drained node is a wait, not a hold
        assert launcher.poll() is None, launcher.communicate()
        ea = _jobs_of(run, "ea/000")[0]
        subprocess.run(["scontrol", "hold", ea], check=True, env=env)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True, env=env)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 2, out + err
    assert f"job {ea} held (JobHeld" in err and f"scontrol release {ea}" in err
    subprocess.run(["scontrol", "release", ea], check=True, env=env)
    res = _launch(run, env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_lost_sbatch_answer_does_not_submit_twice(slurm_cluster, tmp_path):
    """sbatch submits but its answer is lost (a stand-in reports 'Socket timed out' after the real sbatch ran): the
    client finds the job by its comment and adopts it instead of submitting again."""
    from easlurm.orchestrate.client import CommandClient

    env = slurm_cluster.env()
    real = shutil.which("sbatch", path=env["PATH"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/bash
if [ ! -e {tmp_path}/lost-once ]; then
    touch {tmp_path}/lost-once
    {real} "$@" > /dev/null
    echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
    exit 1
fi
exec {real} "$@"
""")
    (bin_dir / "sbatch").chmod(0o755)
    key = f"easlurm:test-{uuid.uuid4().hex[:12]}:lost:000"  # the accounting cluster remembers earlier sessions' jobs
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --comment={key}\n#SBATCH --time=3\n#SBATCH --output={tmp_path}/%j.out\n"
                      f"sleep 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}:{env['PATH']}")
        mp.setenv("SLURM_CONF", env["SLURM_CONF"])
        ids = CommandClient(sleep=lambda s: None).submit(script, None, cwd=tmp_path, what="test", key=key)
    listed = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%k"], capture_output=True, text=True,
                            env=env).stdout.split()
    assert [line for line in listed if line.endswith("|" + key)] == [f"{ids[0]}|{key}"]  # exactly one job


def test_killed_member_task_retry_takes_the_lease_without_slurm(slurm_cluster_noacct, make_run, fake_container):
    """kill -9 of a member's process inside its (container-like, Slurm-less) job: the resubmitted task takes the
    dead holder's lease over without asking Slurm and the run finishes."""
    run = make_run([*FAST, *fake_container, "run.cycles=1", "adam.iters_per_cycle=120", "adam.checkpoint_every=10"])
    env = slurm_cluster_noacct.env()
    launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                 "slurm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        folder = RunDir(run).member(0, 1)
        _wait(lambda: _iteration(folder) >= 10, what="member 1 at iteration 10")
        holder = json.loads((folder / ".lease").read_text())
        os.kill(holder["pid"], signal.SIGKILL)
        out, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out
    assert "after progress; retrying from its checkpoint" in out and (run / "eval" / "results.md").is_file()
    retry = [s for s in _submissions(run) if s["stage"] == "adam/000"][1]
    assert list(retry["tasks"].values()) == [1]
    log = (run / "slurm" / "adam-000" / f"{next(iter(retry['tasks']))}.out").read_text()
    assert "fake-apptainer: PATH=" in log and re.search(r"member 01: resuming at iteration [1-9]\d*/120", log)


def _calibrate(make_run: Callable[..., Path], shape: tuple[str, ...]) -> tuple[float, float]:
    """Seconds per member iteration and per EA generation of the tiny config of the given ``shape`` (population) on
    this machine, right now, start-up excluded (the difference of a short and a longer run; long enough — about a
    second each — that timer noise and the odd unevaluated "copy" child do not dominate)."""
    import shutil

    from easlurm.config import load_run_config, write_config
    from easlurm.evo.job import run_ea
    from easlurm.store import RunDir
    from easlurm.train.init import init_population
    from easlurm.train.member import train_member
    from easlurm.train.pretrain import pretrain

    run = make_run([*shape, "run.cycles=1", "adam.iters_per_cycle=40", "adam.checkpoint_every=1000",
                    "adam.log_every=1000", "adam.image_every=1000", "ea.generations=4"], name="calibration")
    pretrain(run)
    init_population(run)
    train_member(run, 0, 0)  # warm-up: the first member pays the start-up (VGG weights, caches)
    t1 = time.perf_counter()
    train_member(run, 0, 1)
    s_iter = (time.perf_counter() - t1) / 40
    times = []
    for gens in (10, 50):
        cfg = load_run_config(run)
        cfg.ea.generations = gens
        write_config(cfg, run, argv=["calibration"])
        shutil.rmtree(RunDir(run).ea(0), ignore_errors=True)
        shutil.rmtree(RunDir(run).cycle(1), ignore_errors=True)
        t = time.perf_counter()
        run_ea(run, 0)
        times.append(time.perf_counter() - t)
    return s_iter, max(times[1] - times[0], 0.0) / 40


def test_time_limits_checkpoint_and_continue_without_spending_a_retry(slurm_cluster_noacct, make_run,
                                                                     fake_container):
    """A 3-minute limit: the member gets Slurm's warning signal (lead 100 s), commits, is requeued from the host (the
    task itself has no Slurm commands) and continues from its checkpoint; the EA stage, sent the same signal while
    it runs, commits after its current generation, is requeued and resumes there. No retry is spent."""
    # Member 0 is not Adam-trained (the RRDB paper setting), so one member computes: its time is what was measured.
    shape = ("population.size=2", "ea.neighbourhood=2", "ea.p_crossover=1")
    s_iter, s_gen = _calibrate(make_run, shape)
    # Member: more computing than one allocation holds before its warning signal (sent 50-80 s after it starts).
    iters = max(200, int(120.0 / s_iter))
    # EA: long enough to be signalled while it runs, short enough that a mis-measured generation costs little.
    gens = min(3000, max(300, int(30.0 / max(s_gen, 1e-3))))
    run = make_run([*FAST, *fake_container, *shape, "population.member0=ea_only", "run.cycles=1",
                    f"adam.iters_per_cycle={iters}", f"adam.checkpoint_every={10 * iters}",
                    "adam.log_every=50", "adam.image_every=100000", f"ea.generations={gens}",
                    f"ea.checkpoint_every={10 * gens}", "executor.slurm.adam.time_min=3",
                    "executor.slurm.adam.signal_lead_s=100", "executor.max_retries=0"], name="limits")
    env = slurm_cluster_noacct.env()
    report = run.parent / "launcher.out"
    with report.open("w") as sink:
        launcher = subprocess.Popen([sys.executable, "-m", "easlurm.launch", "--resume", str(run), "--executor",
                                     "slurm"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        ea_job = _wait(lambda: (run / "state.json").is_file() and _jobs_of(run, "ea/000"), 900,
                       "the EA job's submission")[0]
        ea_out = run / "slurm" / "ea-000" / f"{ea_job}.out"
        _wait(lambda: ea_out.is_file() and re.search(r"generation [3-9]\d*/", ea_out.read_text()), 900,
              "the EA's third generation")
        subprocess.run(["scancel", "--signal=USR2", "--batch", ea_job], check=True, env=env)
        launcher.wait(timeout=900)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, report.read_text()
    assert all(len(s["tasks"]) for s in _submissions(run)) and len(_submissions(run)) == 6  # nothing resubmitted
    (member_job,) = _jobs_of(run, "adam/000")  # slot 0 is not Adam-trained: no job for it
    assert member_job.endswith("_1")
    member_log = (run / "slurm" / "adam-000" / f"{member_job}.out").read_text()
    assert "checkpoint committed at the pre-timeout signal; requeueing" in member_log
    resumed = [int(m) for m in re.findall(rf"member 01: resuming at iteration (\d+)/{iters}", member_log)]
    assert resumed and resumed[0] > 0, member_log[-3000:]
    assert "restart 1" in member_log
    ea_log = ea_out.read_text()
    assert "checkpoint committed at the pre-timeout signal; requeueing" in ea_log
    m = re.search(r"resuming after generation (\d+)", ea_log)
    assert m and 3 <= int(m.group(1)) < gens, ea_log[-3000:]
    # p_crossover=1: every child is evaluated, once: two per generation plus the starting population (a generation
    # run again after the requeue would add two).
    assert json.loads((run / "cycles" / "000" / "ea" / "fitness.json").read_text())["evaluations"] == 2 * gens + 2


def test_plain_sbatch_scripts_run_a_whole_run_and_forward_the_warning_signal(slurm_cluster, make_run):
    """jobs/*.sh, chained by hand as the README shows: the same tasks as the launcher's; the batch shell forwards
    the pre-timeout signal (sent here at once with scancel --signal=USR2 --batch) to the member, which commits and
    is requeued from the host, continuing from its checkpoint."""
    run = make_run(["run.cycles=1", "adam.iters_per_cycle=200", "adam.checkpoint_every=100000",
                    "adam.log_every=100000", "adam.image_every=100000", "ea.generations=1",
                    "adam.final_phase_iters=4", "eval.metrics=[psnr, ssim]"], name="plain")
    env = {**slurm_cluster.env(), "EASLURM_JOBS": str(REPO / "jobs"), "EASLURM_PYTHON": sys.executable}
    small = ["--mem=2G", "--cpus-per-task=1", f"--chdir={run}"]

    def sbatch(*args: str) -> str:
        res = subprocess.run(["sbatch", "--parsable", *small, *args], capture_output=True, text=True, env=env,
                             check=True)
        return res.stdout.strip().split(";")[0]

    pre = sbatch(str(REPO / "jobs" / "pretrain.sh"), str(run))
    init = sbatch(f"--dependency=afterok:{pre}", str(REPO / "jobs" / "init.sh"), str(run))
    adam = sbatch("--array=0-2", f"--dependency=afterok:{init}", str(REPO / "jobs" / "adam.sh"), str(run), "0")
    log0 = run / f"slurm-easlurm-adam-{adam}_0.out"
    _wait(lambda: log0.is_file() and "member 00: starting at iteration 0/200" in log0.read_text(), 300,
          "member 0 to start")
    time.sleep(3)  # a few iterations in
    subprocess.run(["scancel", "--signal=USR2", "--batch", f"{adam}_0"], check=True, env=env)
    ea = sbatch(f"--dependency=afterok:{adam}", str(REPO / "jobs" / "ea.sh"), str(run), "0")
    final = sbatch("--array=0-2", f"--dependency=afterok:{ea}", str(REPO / "jobs" / "adam.sh"), str(run), "1")
    fuse = sbatch(f"--dependency=afterok:{final}", str(REPO / "jobs" / "fuse.sh"), str(run))
    sbatch(f"--dependency=afterok:{fuse}", str(REPO / "jobs" / "eval.sh"), str(run))
    _wait(lambda: (run / "eval" / "results.md").is_file(), 600, "the evaluation")
    text = log0.read_text()
    assert "checkpoint committed at the pre-timeout signal; requeueing" in text, text[-3000:]
    resumed = [int(m) for m in re.findall(r"member 00: resuming at iteration (\d+)/200", text)]
    assert resumed and 0 < resumed[0] < 200, text[-3000:]
