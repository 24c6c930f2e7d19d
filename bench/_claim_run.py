"""Running the arms of bench/paper_claim.py through easlurm's launcher, and reading back what the runs wrote.

Nothing here trains, evolves or scores by itself: a run directory is created with ``easlurm.launch.prepare_run``
(the bench config + ``--set`` overrides), its plan (``easlurm.orchestrate.plan.build_plan``) is run by the
launcher's executor (``local``: one subprocess per task; ``debug``: in-process) under the launcher's lease, and the
results are read from the run's own files: ``eval/results.csv``, ``cycles/C/ea/fitness.json`` and
``lineage.jsonl``, the members' records (``easlurm.population``). The only model the bench scores itself is the
seed's pretrained start (a reference row), with the product's scoring API (``easlurm.evaluate.score_entries``).

Work folder: ``WORK/seed<S>/pretrain_run`` (a run directory of which only the pretrain stage runs),
``WORK/seed<S>/<arm>`` (one complete run per arm), ``WORK/seed<S>/pretrained_score.json`` (the start's scores and
the sha256 of the G.pt they belong to) and ``WORK/seed<S>/<arm>.seconds.json`` (compute time spent on the arm).
Rerunning resumes: every stage's own ``is_done`` decides what is left.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _claim_arms import ARMS, Arm, BenchError, arm_overrides, planned_updates, recorded_updates

from easlurm.config import Config, load_run_config
from easlurm.errors import EaslurmError
from easlurm.checkpoints import read_checkpoint_meta
from easlurm.store import RunDir, atomic_write_json, read_json

Echo = Callable[[str], None]

__all__ = ["ArmResult", "PretrainResult", "launch", "run_pretrain", "run_arm", "run_benchmark", "read_rows",
           "lineage_children", "final_duplicates"]


@dataclass
class PretrainResult:
    """A seed's pretraining run: its generator (``pretrain/G.pt``) and that generator's scores (one row per set)."""

    seed: int
    run_dir: Path
    generator: Path
    rows: list[dict[str, Any]]


@dataclass
class ArmResult:
    """One arm of one seed, after it ran: its rows of results.csv, update counts, EA records and compute time."""

    seed: int
    arm: Arm
    run_dir: Path
    rows: list[dict[str, Any]]
    planned: int
    recorded: int
    seconds: float
    ea_stats: dict[str, Any] = field(default_factory=dict)
    worked: bool = False  # this invocation ran a stage (not a pure re-report)


class _Echo:
    """Thread-safe echo with a per-job prefix (arms run side by side)."""

    def __init__(self, echo: Echo):
        self.echo, self.lock = echo, threading.Lock()

    def __call__(self, prefix: str) -> Echo:
        def say(msg: str) -> None:
            with self.lock:
                self.echo(f"[{prefix}] {msg}")
        return say


def _prepare(config: Path, run_dir: Path, overrides: Sequence[str], executor: str, echo: Echo,
             argv: Sequence[str]) -> tuple[Config, RunDir]:
    from easlurm.launch import prepare_run

    return prepare_run(str(config), str(run_dir), None, list(overrides), executor, argv, echo)


def launch(cfg: Config, run: RunDir, stages: Sequence[Any], echo: Echo, argv: Sequence[str]) -> bool:
    """Run the unfinished ``stages`` of ``run`` with the executor of ``cfg.executor.kind``, as ``python -m
    easlurm.launch`` does: under the run's launcher lease, recording the launch in ``run.json``. Returns whether
    any stage was left to run."""
    from easlurm.launch import make_executor
    from easlurm.run_record import record_launch
    from easlurm.leases import held
    from easlurm.orchestrate.plan import pending_stages

    todo = pending_stages(list(stages))
    if not todo:
        return False
    with held(run.root / ".launcher", "launcher", cfg.executor.lease_s):
        record_launch(run, cfg.executor.kind, argv)
        make_executor(cfg, run, echo).run(todo)  # type: ignore[attr-defined]
    return True


def _bench_argv(config: Path, overrides: Sequence[str]) -> list[str]:
    return ["python", "bench/paper_claim.py", "--config", str(config), *(f"--set={o}" for o in overrides)]


def run_pretrain(config: Path, work: Path, seed: int, executor: str, demo_dir: Path, extra: Sequence[str],
                 echo: Echo) -> PretrainResult:
    """The seed's L1 pretraining (the pretrain stage of a run of the bench config) and the scores of its result."""
    from easlurm.orchestrate.plan import build_plan

    overrides = arm_overrides(None, seed, None, demo_dir, extra)
    cfg, run = _prepare(config, work / f"seed{seed}" / "pretrain_run", overrides, executor, echo,
                        _bench_argv(config, overrides))
    stage = build_plan(cfg, run)[0]
    if stage.kind.name != "pretrain":
        raise BenchError(f"{config}: model.pretrained must be null in the bench config (each seed pretrains)")
    launch(cfg, run, [stage], echo, _bench_argv(config, overrides))
    if not stage.tasks[0].is_done():
        raise BenchError(f"{run.pretrain}: pretraining did not finish")
    return PretrainResult(seed, run.root, run.pretrain / "G.pt", _pretrained_rows(cfg, run, work / f"seed{seed}"))


def _pretrained_rows(cfg: Config, run: RunDir, seed_dir: Path) -> list[dict[str, Any]]:
    """The pretrained start's scores on the run's test sets (``easlurm.evaluate.score_entries``, the evaluation
    stage's own scoring), cached in ``seed_dir/pretrained_score.json`` for that exact G.pt."""
    from easlurm import factory
    from easlurm.evaluate import ModelEntry, check_test_sets, score_entries
    from easlurm.tensor_files import load_verified

    meta = read_checkpoint_meta(run.pretrain)
    if meta is None:
        raise BenchError(f"{run.pretrain}: no pretrained generator")
    sha = meta["sha256"]["G.pt"]
    cache = seed_dir / "pretrained_score.json"
    if cache.is_file():
        rec = read_json(cache)
        if rec.get("G.pt") == sha:
            return list(rec["rows"])
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(run.pretrain, "G.pt", meta), strict=True)
    rows, _ = score_entries(cfg, [ModelEntry("pretrained", None, g.eval())], check_test_sets(cfg))
    out = [{"set": r.set, "model": r.model, "preference": "", **r.metrics, "n_images": r.n_images} for r in rows]
    atomic_write_json(cache, {"G.pt": sha, "rows": out})
    return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an evaluation ``results.csv``; metric columns as floats (empty → nan)."""
    if not path.is_file():
        raise BenchError(f"{path}: no evaluation results")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in list(r):
            if k not in ("set", "model", "preference", "n_images"):
                r[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    return rows


def lineage_children(run: RunDir, cycle: int) -> int:
    """Children the EA phase of ``cycle`` created (rows of its ``lineage.jsonl``; 0 under ``identity``)."""
    path = run.ea(cycle) / "lineage.jsonl"
    if not path.is_file():
        raise BenchError(f"{path}: missing (the EA phase of cycle {cycle} did not finish)")
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def final_duplicates(cfg: Config, run: RunDir) -> int:
    """Final-population slots whose generator is byte-identical to a lower slot's (the EA copied a genome)."""
    from easlurm.population import final_members, member_file

    shas = [member_file(folder, meta, "G.pt").sha256 for folder, meta in final_members(cfg, run)]
    return len(shas) - len(set(shas))


def _ea_stats(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Per EA phase: children created and accepted, and the fitness-set hypervolume before → after (fitness.json,
    lineage.jsonl); plus duplicate slots in the final population."""
    accepted, hv0, hv1, children = [], [], [], []
    for c in range(cfg.run.cycles):
        rec = read_json(run.ea(c) / "fitness.json")
        accepted.append(int(sum(rec["accepted"])))
        hv0.append(float(rec["hypervolume_initial"]))
        hv1.append(float(rec["hypervolume"][-1]) if rec["hypervolume"] else float(rec["hypervolume_initial"]))
        children.append(lineage_children(run, c))
    return {"accepted": accepted, "children": children, "hv_initial": hv0, "hv_final": hv1,
            "final_duplicates": final_duplicates(cfg, run)}


def _add_seconds(path: Path, seconds: float) -> float:
    """Add ``seconds`` to the total kept in ``path`` (JSON); return the new total. Resumed runs add only the
    time of invocations that did work, so reported times are compute times, not the time of the last rerun."""
    total = float(read_json(path)["seconds"]) if path.is_file() else 0.0
    total += seconds
    atomic_write_json(path, {"seconds": round(total, 3)})
    return total


def stored_seconds(path: Path) -> float:
    return float(read_json(path)["seconds"]) if path.is_file() else 0.0


def run_arm(arm: Arm, config: Path, work: Path, seed: int, pretrained: Path, executor: str, demo_dir: Path,
            extra: Sequence[str], echo: Echo) -> ArmResult:
    """Run (or resume) one arm of one seed to its evaluation; return its results and update counts."""
    from easlurm.orchestrate.plan import build_plan

    t0 = time.monotonic()
    overrides = arm_overrides(arm, seed, pretrained, demo_dir, extra)
    cfg, run = _prepare(config, work / f"seed{seed}" / arm.name, overrides, executor, echo,
                        _bench_argv(config, overrides))
    try:
        worked = launch(cfg, run, build_plan(cfg, run), echo, _bench_argv(config, overrides))
    except EaslurmError as exc:
        raise BenchError(f"seed {seed} arm {arm.name} ({run.root}): {exc}") from exc
    rows = read_rows(run.eval / "results.csv")
    recorded = recorded_updates(run.root)
    stats = _ea_stats(cfg, run)
    timing = work / f"seed{seed}" / f"{arm.name}.seconds.json"
    seconds = _add_seconds(timing, time.monotonic() - t0) if worked else stored_seconds(timing)
    echo(f"done ({seconds:.0f} s of work in total, {recorded} generator updates)")
    return ArmResult(seed, arm, run.root, rows, planned_updates(cfg), recorded, seconds, stats, worked)


def run_benchmark(config: Path, seeds: Sequence[int], work: Path, *, executor: str = "local", max_parallel: int = 2,
                  demo_dir: Path, overrides: Sequence[str] = (), echo: Echo = print
                  ) -> tuple[list[PretrainResult], list[ArmResult]]:
    """Pretrain once per seed, then run every arm of every seed; return the pretrainings (seed order) and the arm
    results (seed, arm order).

    ``executor``: ``local`` — every stage task a subprocess; up to ``max_parallel`` arms (or pretrainings) at once,
    each arm's tasks one at a time, so at most ``max_parallel`` training processes run. ``debug`` — everything in
    this process, one after another (tests). A failure stops the benchmark with :class:`BenchError` (finished
    stages stay done; rerun to resume).
    """
    if executor not in ("local", "debug"):
        raise BenchError(f"--executor {executor!r}: use local or debug")
    from easlurm.data.samples import build_samples

    say = _Echo(echo)
    work.mkdir(parents=True, exist_ok=True)
    build_samples(demo_dir)  # once, before any thread: concurrent first builds would race on the same folder
    if executor == "debug":
        pres = [run_pretrain(config, work, s, executor, demo_dir, overrides, say(f"seed {s} pretrain")) for s in seeds]
        results = [run_arm(arm, config, work, p.seed, p.generator, executor, demo_dir, overrides,
                           say(f"seed {p.seed} {arm.name}")) for p in pres for arm in ARMS]
        return pres, results
    with cf.ThreadPoolExecutor(max_workers=max_parallel) as pool:
        # Pretrainings are queued first: an arm thread then waits for at most a running one, never a queued one.
        pre = {s: pool.submit(run_pretrain, config, work, s, executor, demo_dir, overrides, say(f"seed {s} pretrain"))
               for s in seeds}

        def arm_job(arm: Arm, s: int) -> ArmResult:
            return run_arm(arm, config, work, s, pre[s].result().generator, executor, demo_dir, overrides,
                           say(f"seed {s} {arm.name}"))

        futures = [pool.submit(arm_job, arm, s) for s in seeds for arm in ARMS]
        try:
            return [pre[s].result() for s in seeds], [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def perceptual_net(run_dir: Path) -> str:
    """The perceptual net the run's first EA phase used (its fitness.json), or ``?``."""
    path = RunDir(run_dir).ea(0) / "fitness.json"
    return str(read_json(path).get("perceptual", {}).get("net")) if path.is_file() else "?"


def arm_config(result: ArmResult) -> Config:
    return load_run_config(result.run_dir)
