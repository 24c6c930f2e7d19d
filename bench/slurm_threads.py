"""Threads from the allocation: a tiny member's s/it inside Slurm array tasks against the same members run locally.

Three arms train the same three tiny members (cycle 0 of ``configs/tiny.yaml``, ``--iters`` iterations each, side
by side), from the same start population:

* ``local`` — ``python -m easlurm.orchestrate.runner`` for each member under the local executor's rule (as
  ``make demo`` runs them: ``OMP_NUM_THREADS`` = usable cores / members, at least 1);
* ``slurm, node threads`` — ``sbatch --array=0-2 --cpus-per-task=1 jobs/adam.sh`` with ``OMP_NUM_THREADS`` set to
  the node's core count and forwarded into the job: what every task did before threads were sized from the
  allocation (torch's default is one thread per core of the node, whatever the task was given);
* ``slurm, allocated threads`` — the same array with nothing set: the runner sizes torch's threads from
  ``SLURM_CPUS_PER_TASK`` and the CPU affinity (:func:`easlurm.runtime.configure_threads`).

Seconds per iteration come from each member's recorded attempt (loop start → last commit, start-up excluded). Run
on a cluster that ``SLURM_CONF`` names (``bash tests/slurm/cluster.sh start``; the test cluster declares 8 CPUs and
binds none, as many small sites do):

    python bench/slurm_threads.py [--iters 100] [--out bench/results/slurm_threads.md]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, ROOT, command_line, machine, now_iso, publish, usable_cpus


def _member_rates(run: Path, members: int) -> list[float]:
    """Seconds per iteration of each member's last attempt (loop start to its last commit)."""
    out = []
    for m in range(members):
        meta = json.loads((run / "cycles" / "000" / "members" / f"{m:02d}" / "meta.json").read_text())
        a = meta["attempts"][-1]
        loop = a.get("loop_started") or a["start"]
        out.append((a["updated"] - loop) / max(1, a["last"] - a["first"]))
    return out


def _prepare(root: Path, name: str, iters: int, shards: Path) -> Path:
    from easlurm.config import load_config, write_config
    from easlurm.train.init import init_population
    from easlurm.train.pretrain import pretrain

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.demo_dir={shards}", f"adam.iters_per_cycle={iters}",
                                                       f"adam.checkpoint_every={iters}", f"adam.log_every={iters}",
                                                       f"adam.image_every={iters}", "run.cycles=1"])
    run = root / name
    write_config(cfg, run, argv=["bench/slurm_threads.py"])
    pretrain(run)
    init_population(run)
    return run


def _local(run: Path, members: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // members))
    logs = [(run / f"local-{m}.out").open("w") for m in range(members)]
    procs = [subprocess.Popen([sys.executable, "-m", "easlurm.orchestrate.runner", str(run), "adam/000", str(m)],
                              env=env, stdout=log) for m, log in enumerate(logs)]
    failed = [p.wait() for p in procs]
    for log in logs:
        log.close()
    if any(failed):
        raise SystemExit("a local member failed")


def _slurm(run: Path, members: int, omp: str | None) -> None:
    env = {**os.environ, "EASLURM_JOBS": str(ROOT / "jobs"), "EASLURM_PYTHON": sys.executable}
    env.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    job = subprocess.run(["sbatch", "--parsable", f"--array=0-{members - 1}", "--cpus-per-task=1", "--mem=2G",
                          f"--chdir={run}", "--output=slurm-%A_%a.out", str(ROOT / "jobs" / "adam.sh"), str(run),
                          "0"], env=env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(2)
    raise SystemExit(f"job {job} did not finish within an hour")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "slurm_threads.md")
    args = ap.parse_args(argv)
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        raise SystemExit("no Slurm here: start one with `bash tests/slurm/cluster.sh start` and export SLURM_CONF")
    from _common import build_demo

    members, node = 3, str(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slurm-threads-") as tmp:
        root = Path(tmp)
        shards = root / "demo"
        build_demo(shards, 4)
        arms = [("local (as make demo: OMP_NUM_THREADS = cores / members)", "local", None),
                (f"slurm, node threads (OMP_NUM_THREADS={node}, the node's cores: before)", "slurm", node),
                ("slurm, allocated threads (nothing set: from SLURM_CPUS_PER_TASK=1 and the affinity)", "slurm", None)]
        for label, kind, omp in arms:
            run = _prepare(root, f"run{len(rows)}", args.iters, shards)
            t0 = time.perf_counter()
            _local(run, members) if kind == "local" else _slurm(run, members, omp)
            wall = time.perf_counter() - t0
            rates = _member_rates(run, members)
            threads = sorted({line.split("(")[-1].split(" ")[0] for p in run.rglob("*.out")
                              for line in p.read_text().splitlines() if line.startswith("[task]")})
            rows.append((label, sum(rates) / len(rates), max(rates), wall, threads))
    base = rows[0][1]
    lines = ["# Threads from the allocation: tiny member s/it in Slurm array tasks vs local", "",
             f"- command: `{command_line('slurm_threads.py', argv)}`", f"- date: {now_iso()}",
             f"- machine: {machine()}", f"- {members} tiny members of configs/tiny.yaml side by side, "
             f"{args.iters} iterations each; Slurm: the project's test cluster (tests/slurm/cluster.sh: 8 CPUs "
             f"declared on this machine, no CPU binding), `sbatch --array=0-2 --cpus-per-task=1 jobs/adam.sh`", "",
             "| arm | mean s/it | slowest member s/it | ratio to local | wall s (incl. start-up) | threads per task "
             "([task] line) |", "|---|---:|---:|---:|---:|---|"]
    for label, mean, worst, wall, threads in rows:
        lines.append(f"| {label} | {mean:.3f} | {worst:.3f} | {mean / base:.2f} | {wall:.1f} | "
                     f"{', '.join(threads) or '-'} |")
    lines += ["", "Ratio = mean seconds per iteration / the local arm's, measured in this run. s/it from each "
              "member's recorded attempt (loop start to its last commit; start-up excluded)."]
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
