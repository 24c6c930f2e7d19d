"""Does EA-Adam beat Adam? The paper's claim, tested at CPU scale on the built-in demo photos.

Claim (Sun et al., TIP 2024): with the same backbone and budget, the EA-Adam population covers the
perception–distortion plane better than Adam-trained models, and the fused model has better LPIPS at higher PSNR
than its competitors.

Every arm is an ordinary easlurm run of the bench config (``configs/bench/paper_claim.yaml``) with a few ``--set``
overrides, run by easlurm's own launcher and executors and read back from the run's own files (``eval/results.csv``,
``cycles/C/ea/fitness.json`` and ``lineage.jsonl``, the members' records). The bench trains, evolves and scores
nothing by itself, except the seed's pretrained start, which it scores with ``easlurm.evaluate.score_entries`` as a
reference row. Per seed, one pretraining run (its pretrain stage only) makes the L1-pretrained start, and every arm
loads it through ``model.pretrained``. The arms share ``run.seed``, so discriminator initialisation and the data
stream of every (cycle, slot) are the same. The arms' configs differ ONLY in ``ea.selection`` and ``adam.mix``:

``ea_moead``      EA-Adam as in the reference: ``ea.selection: moead``, ``adam.mix: normalised``.
``ea_nsga2``      EA-Adam with NSGA-II selection.
``adam_only``     ``ea.selection: identity``: the EA job passes the population through (no child, every slot carries
                  its own generator, with generator Adam moments reset as after a real EA phase). The EA operators and
                  selection are then the only difference from the EA-Adam arms. ``ea.p_crossover = ea.p_mutation = 0``
                  would not switch the EA off: a "copy" child still competes in selection.
``weighted_sum``  ``ea.selection: identity`` and ``adam.mix: weighted_sum``: the ESRGAN-style arm. Each member
                  follows the gradient of one raw weighted loss, w_dist·L1 + w_perc·(perceptual + 0.005·GAN), with its
                  own preference, instead of EA-Adam's per-tensor normalised mix.

Why the ESRGAN-style arm is a population and not one ESRGAN model given the whole budget: easlurm's preferences are
uniform on the simplex ((1, 0) … (0, 1)) and a population has at least 2 members. So no member can be trained with
ESRGAN's exact 0.01·L1 + 1·perceptual + 0.005·GAN: the nearest single-model form (population 2, member 0
frozen, the (0, 1) member trained for N times the iterations) would drop the L1 term. It would also carry the frozen
start and a "fused" start+model that ESRGAN does not have. The weighted-sum population instead is the fair
counterpart of ``adam_only``: the same N models, the same preferences, the same updates per model and per arm, with
only the gradient mix changed. It answers the question the paper's mix is about: do raw weighted losses cover the
plane as well as normalised gradients? ESRGAN's weighting (L1 : perceptual = 0.01 : 1) lies between its last two
members. Reintroducing the single model exactly would need a product setting for explicit preferences (see
BENCHMARKS.md).

Generator updates = Adam steps applied to generator weights: Σ over Adam phases (the final phase included) of the
phase's iterations × Adam-trained slots. They are planned from the config and recorded from every trained member's
record, and must be equal for every arm of a seed (the benchmark fails otherwise). Fusion trains only attention
branches (``fusion.iters``, the same for every arm) and is not counted; EA evaluations are gradient-free.

Evaluation: the evaluation stage of each run scores bicubic (one row per run; they must agree and count once),
every final member and the fused model on the held-out demo images (PSNR-Y, SSIM-Y, LPIPS-alex; ``eval.metrics``
of the bench config). Hypervolume in the (−PSNR, LPIPS) plane (both minimised) uses **one reference point shared
by all arms and seeds**: the worst −PSNR and worst LPIPS over every arm's models (members and fused) of every seed,
pushed out by 10 % of each objective's span. So every model counts and areas are comparable across arms and seeds.
An arm's "members" hypervolume uses its final population; "members + fused" adds the fused model.

    python bench/paper_claim.py                       # 3 seeds, configs/bench/paper_claim.yaml → bench/results
    python bench/paper_claim.py --seeds 5 --out /tmp/pc
    python bench/paper_claim.py --quick               # smoke run (minutes): paper_claim_quick.* files

Work directories (one run directory per seed and arm) go to ``runs/bench/<stem>`` and are resumed when the
benchmark is rerun with the same config (``--fresh`` starts over). Results: ``<out>/<stem>.md`` (tables and
explanation), ``<stem>.csv`` (every model, every seed), ``<stem>_summary.csv`` (hypervolumes, update counts and EA
children per arm and seed), ``<stem>.png`` (all arms in one PSNR–LPIPS plot).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from _claim_arms import (
    ARM_BY_NAME, ARM_KEYS, ARMS, Arm, BenchError, arm_overrides, planned_updates, recorded_updates,
)
from _claim_report import (
    HV_MARGIN, collect, front_hypervolume, outcome_lines, shared_reference, to_min_plane, write_results,
)
from _claim_run import (
    ArmResult, PretrainResult, arm_config, final_duplicates, lineage_children, perceptual_net, read_rows,
    run_benchmark as _run_benchmark, stored_seconds,
)
from _common import RESULTS_DIR, ROOT, cpu_name

from easlurm.errors import EaslurmError
from easlurm.store import atomic_write_json

CONFIG_FULL = ROOT / "configs" / "bench" / "paper_claim.yaml"
CONFIG_QUICK = ROOT / "configs" / "bench" / "paper_claim_quick.yaml"
DEMO_DIR = ROOT / "data" / "demo"

__all__ = [
    "BenchError", "Arm", "ARMS", "ARM_BY_NAME", "ARM_KEYS", "ArmResult", "PretrainResult", "arm_overrides",
    "planned_updates", "recorded_updates", "read_rows", "lineage_children", "final_duplicates", "to_min_plane",
    "shared_reference", "front_hypervolume", "HV_MARGIN", "collect", "outcome_lines", "write_results",
    "run_benchmark", "main", "CONFIG_FULL", "CONFIG_QUICK",
]


def run_benchmark(config: Path, seeds: Sequence[int], work: Path, *, executor: str = "local", max_parallel: int = 2,
                  demo_dir: Path = DEMO_DIR, overrides: Sequence[str] = (),
                  echo: Callable[[str], None] = print) -> tuple[list[PretrainResult], list[ArmResult]]:
    """Pretrain once per seed, then run every arm of every seed (see :func:`_claim_run.run_benchmark`)."""
    return _run_benchmark(config, seeds, work, executor=executor, max_parallel=max_parallel, demo_dir=demo_dir,
                          overrides=overrides, echo=echo)


def _wall_seconds(path: Path, seconds: float, worked: bool) -> float:
    """Wall time summed over the invocations that did work (a pure re-report adds nothing)."""
    if not worked:
        return stored_seconds(path)
    total = stored_seconds(path) + seconds
    atomic_write_json(path, {"seconds": round(total, 3)})
    return total


def _meta(args: argparse.Namespace, config: Path, n_seeds: int, results: Sequence[ArmResult], wall: float
          ) -> dict[str, object]:
    from easlurm.population import adam_cycles, phase_iters, preferences

    cfg = arm_config(results[0])
    cmd = "python bench/paper_claim.py" + (" --quick" if args.quick else "") + \
          (f" --seeds {n_seeds}" if args.seeds is not None else "")
    phases = [phase_iters(cfg, c) for c in adam_cycles(cfg)]
    return {"quick": args.quick, "command": cmd,
            "config": config.resolve().relative_to(ROOT).as_posix() if config.resolve().is_relative_to(ROOT)
            else str(config),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores", "max_parallel": args.max_parallel,
            "omp": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "perceptual_net": perceptual_net(results[0].run_dir), "wall_s": wall,
            "date": dt.date.today().isoformat(), "scale": cfg.data.scale,
            "num_feat": cfg.model.options.num_feat, "num_block": cfg.model.options.num_block,
            "pretrain_iters": cfg.pretrain.iters, "population": cfg.population.size,
            "prefs": ", ".join(f"{w[0]:.3g}" for w in preferences(cfg.population.size)), "cycles": cfg.run.cycles,
            "phases": " + ".join(map(str, phases)), "generations": cfg.ea.generations,
            "fusion_iters": cfg.fusion.iters, "batch": cfg.adam.batch_size, "patch": cfg.data.patch_size,
            "lr": cfg.adam.lr}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/paper_claim.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 3; --quick: 1)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--quick", action="store_true", help="smoke run with configs/bench/paper_claim_quick.yaml")
    ap.add_argument("--config", type=Path, default=None, help="bench config (default by --quick)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default runs/bench/<stem>)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first instead of resuming")
    ap.add_argument("--max-parallel", type=int, default=2, help="processes at a time (default 2)")
    ap.add_argument("--executor", choices=["local", "debug"], default="local")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (repeatable; not ea.selection or adam.mix)")
    ap.add_argument("--notes", type=Path, default=None,
                    help="Markdown included as the Discussion (default <out>/<stem>_notes.md when present)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        if args.max_parallel < 1:
            raise BenchError(f"--max-parallel: must be >= 1, got {args.max_parallel}")
        config = args.config or (CONFIG_QUICK if args.quick else CONFIG_FULL)
        stem = "paper_claim_quick" if args.quick else "paper_claim"
        if args.config is not None and not args.quick:
            stem = f"paper_claim_{config.stem}" if config.resolve() != CONFIG_FULL else stem
        n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
        if n_seeds < 1:
            raise BenchError(f"--seeds: must be >= 1, got {n_seeds}")
        work = args.work or ROOT / "runs" / "bench" / stem
        if args.fresh and work.exists():
            shutil.rmtree(work)
        t0 = time.monotonic()
        pretrains, results = run_benchmark(config, list(range(n_seeds)), work, executor=args.executor,
                                           max_parallel=args.max_parallel, overrides=args.overrides)
        wall = _wall_seconds(work / f"bench_seconds_{n_seeds}seeds.json", time.monotonic() - t0,
                             any(r.worked for r in results))
        notes_path = args.notes or args.out / f"{stem}_notes.md"
        notes = notes_path.read_text(encoding="utf-8") if notes_path.is_file() else None
        data = write_results(pretrains, results, args.out, stem, _meta(args, config, n_seeds, results, wall), notes)
        print(f"results: {args.out / (stem + '.md')} ({wall / 60:.1f} min)")
        for line in outcome_lines(data):
            print(line)
        if not data["updates_equal"]:
            raise BenchError("generator update counts differ between arms (see the summary csv)")
    except EaslurmError as exc:
        print(f"paper_claim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
