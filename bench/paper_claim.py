"""Does EA-Adam beat Adam? The paper's claim, tested at CPU scale on the built-in demo photos.

Claim (Sun et al., TIP 2024): with the same backbone and budget, the EA-Adam population covers the
perception–distortion plane better than Adam-trained models, and the fused model has better LPIPS at higher PSNR
than its competitors. Arms, per seed, all from the **same L1-pretrained generator** (one pretraining run per seed;
every arm loads its ``pretrain/G.pt`` — a bare state dict — through ``model.pretrained``), the same data, the same
discriminator initialisation, the same Adam settings and the **same number of generator updates**:

``ea_moead``   EA-Adam as in the reference (MOEA/D selection), then fusion.
``ea_nsga2``   EA-Adam with NSGA-II selection, then fusion.
``adam_only``  the same population, preferences, per-tensor normalised gradient mix, Adam-moment resets and data
               stream per (cycle, slot) — but every EA phase is replaced by an **identity carry** (cycle C's members
               copied unchanged to cycle C+1, generator Adam moments reset as after a real EA phase), then fusion.
               ``ea.p_crossover = ea.p_mutation = 0`` would *not* give this: a "copy" child still competes, so under
               ``moead`` member i's copy replaces neighbour j whenever it has the lower Tchebycheff value for w_j,
               and under ``nsga2`` duplicates of non-dominated members crowd out dominated ones. One long cycle
               (cycles × iters) was rejected too: it would still end with one EA phase (the final population is
               written by the last EA job) and would change the moment resets and data seeds, confounding the
               comparison. With the identity carry the EA operators and selection are the only difference.
``esrgan``     one generator trained with the ESRGAN weighted sum 0.01·L1 + 1·perceptual + 0.005·GAN (raw loss
               weights, no per-tensor normalisation), its own discriminator, the same Adam lr/betas, batch, patches
               and perceptual net, for as many iterations as a population arm has generator updates in total.

Generator updates = Adam steps applied to generator weights, counted per arm: population arms
``(population.size − freeze_first) × run.cycles × adam.iters_per_cycle`` (read back from every member's meta.json),
ESRGAN the steps its loop took. Fusion trains only attention branches (``fusion.iters``, identical for the three
population arms) and is not counted; EA evaluations are gradient-free.

Evaluation: every final member, each fused model, the ESRGAN model and (for reference) the pretrained start and
bicubic upsampling on the held-out demo images (astronaut, china, coffee): PSNR-Y, SSIM-Y, LPIPS-alex through
``easlurm.evaluate`` (single models are scored with the same public functions: bicubic LR, ``super_resolve``,
``psnr_y``/``ssim_y`` with ``crop_border = scale``, ``LPIPSMetric``). Hypervolume in the (−PSNR, LPIPS) plane (both
minimised) with **one reference point shared by all arms and seeds**: the worst −PSNR and worst LPIPS over every
arm's evaluated models (members, fused, ESRGAN) of every seed, pushed out by 10 % of each objective's span — so
every model counts, including each arm's extreme members, and areas are comparable across arms and seeds. An arm's
"members" hypervolume uses its final population (ESRGAN: its single model); "members + fused" adds the fused model.

    python bench/paper_claim.py                       # 3 seeds, configs/bench/paper_claim.yaml → bench/results
    python bench/paper_claim.py --seeds 5 --out /tmp/pc
    python bench/paper_claim.py --quick               # smoke run (< 3 min): paper_claim_quick.* files

Work directories (one run directory per seed and arm) go to ``runs/bench/<stem>`` and are resumed when the
benchmark is rerun with the same config (``--fresh`` starts over). Results: ``<out>/<stem>.md`` (tables and
explanation), ``<stem>.csv`` (every model, every seed), ``<stem>_summary.csv`` (hypervolumes and update counts per
arm and seed), ``<stem>.png`` (all arms in one PSNR–LPIPS plot).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import datetime as dt
import io
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when tests import this file by path
from _machine import cpu_name  # noqa: E402

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from easlurm import factory  # noqa: E402
from easlurm.config import Config, load_run_config  # noqa: E402
from easlurm.errors import EaslurmError  # noqa: E402
from easlurm.report import ResultRow, format_preference, results_csv  # noqa: E402
from easlurm.store import (  # noqa: E402
    RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text, commit_checkpoint, load_verified,
    read_checkpoint_meta, read_json, sha256_bytes, torch_bytes, verify_checkpoint_dir,
)

CONFIG_FULL = ROOT / "configs" / "bench" / "paper_claim.yaml"
CONFIG_QUICK = ROOT / "configs" / "bench" / "paper_claim_quick.yaml"
DEMO_DIR = ROOT / "data" / "demo"

#: ESRGAN's pixel-loss weight; perceptual and GAN weights are the config's loss.perceptual_weight / gan_weight.
ESRGAN_L1_WEIGHT = 0.01
#: The shared hypervolume reference point lies this fraction of each objective's span beyond the worst model.
HV_MARGIN = 0.1
#: Seed tag of the ESRGAN arm (its discriminator, data stream and RNG), apart from the members' (cycle, slot) seeds.
ESRGAN_TAG = 0xE5

__all__ = [
    "BenchError", "Arm", "ARMS", "arm_overrides", "planned_updates", "recorded_updates", "carry_population",
    "train_single", "score_models", "to_min_plane", "shared_reference", "front_hypervolume", "run_benchmark",
    "main",
]


class BenchError(EaslurmError):
    """The benchmark cannot go on (a failed arm, unequal update counts, a corrupt run directory); names the culprit."""


@dataclass(frozen=True)
class Arm:
    """One arm: ``kind`` is ``population`` (an easlurm run) or ``single`` (the ESRGAN-style model)."""

    name: str
    label: str
    kind: str
    overrides: tuple[str, ...] = ()
    identity_ea: bool = False

    @property
    def is_population(self) -> bool:
        return self.kind == "population"


ARMS: tuple[Arm, ...] = (
    Arm("ea_moead", "EA-Adam (MOEA/D)", "population", ("ea.selection=moead",)),
    Arm("ea_nsga2", "EA-Adam (NSGA-II)", "population", ("ea.selection=nsga2",)),
    Arm("adam_only", "Adam only (identity EA)", "population", ("ea.selection=moead",), identity_ea=True),
    Arm("esrgan", "ESRGAN weighted sum", "single"),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
COLOURS = {"ea_moead": "tab:blue", "ea_nsga2": "tab:green", "adam_only": "tab:orange", "esrgan": "tab:red",
           "reference": "0.45"}


# ----------------------------------------------------------------------------------------------------------------
# Configs and update counts


def arm_overrides(arm: Arm | None, seed: int, pretrained: Path | None, demo_dir: Path,
                  extra: Sequence[str] = ()) -> list[str]:
    """``--set`` overrides of one run directory: the seed's pretraining run (``arm=None``) or an arm of that seed.

    Every run of a seed shares ``run.seed`` (hence discriminator initialisation and data streams); arms load the
    seed's pretrained generator. ``extra`` (the user's overrides) comes last, so it wins.
    """
    out = [f"run.seed={seed}", f"data.demo_dir={demo_dir}", "executor.local.max_parallel=1"]
    if arm is not None:
        if pretrained is None:
            raise BenchError(f"arm {arm.name}: needs the seed's pretrained generator")
        out.append(f"model.pretrained={pretrained}")
        out.extend(arm.overrides)
    out.extend(extra)
    return out


def planned_updates(cfg: Config, arm: Arm) -> int:
    """Generator updates an arm gets from ``cfg``: trainable members × cycles × iterations per cycle.

    The ESRGAN arm is given exactly this number of iterations (computed from the same config), so every arm of a
    seed has the same budget; frozen members (``population.freeze_first``) are not trained and not counted.
    """
    trainable = cfg.population.size - (1 if cfg.population.freeze_first else 0)
    return trainable * cfg.run.cycles * cfg.adam.iters_per_cycle


def recorded_updates(run_dir: str | os.PathLike[str], arm: Arm) -> int:
    """Generator updates an arm's run directory records: Σ over cycles and members of meta.json ``iteration``
    (population arms: each member's Adam phase counts its steps there), or the single model's counted steps."""
    run = RunDir(run_dir)
    if not arm.is_population:
        meta = read_checkpoint_meta(run.root / "esrgan")
        if meta is None or not meta.get("done"):
            raise BenchError(f"{run.root / 'esrgan'}: no finished ESRGAN training")
        return int(meta["updates"])
    cfg = load_run_config(run.root)
    total = 0
    for c in range(cfg.run.cycles):
        for i in range(cfg.population.size):
            meta = read_checkpoint_meta(run.member(c, i))
            if meta is None:
                raise BenchError(f"{run.member(c, i)}: member missing")
            total += int(meta.get("iteration", 0))
    return total


# ----------------------------------------------------------------------------------------------------------------
# The adam_only arm's EA phase: an identity


def carry_population(cfg: Config, run: RunDir, cycle: int) -> None:
    """Write cycle ``cycle + 1``'s members as unchanged copies of cycle ``cycle``'s (the ``adam_only`` arm).

    Mirrors what the EA job hands on, minus evolution: G.pt and D.pt bytes unchanged, ``optim.pt`` with the
    generator's Adam state dropped when ``ea.reset_adam`` (as after a real EA phase) and the discriminator's kept,
    a fresh meta.json (iteration 0). ``RUN/cycles/C/ea/done.json`` (kind ``identity``) is written last, so the
    plan sees the phase as done and a rerun after a crash redoes it. Raises :class:`BenchError` naming the folder
    when an input member is missing, unfinished or corrupt, or an output was already trained on.
    """
    n = cfg.population.size
    members: dict[str, Any] = {}
    for j in range(n):
        src = run.member(cycle, j)
        meta = read_checkpoint_meta(src)
        if meta is None or not meta.get("done"):
            raise BenchError(f"{src}: member missing or its Adam phase unfinished")
        if not verify_checkpoint_dir(src):
            raise BenchError(f"{src}: a file fails its sha256 in meta.json")
        g_bytes, d_bytes = (src / "G.pt").read_bytes(), (src / "D.pt").read_bytes()
        if sha256_bytes(g_bytes) != meta["sha256"]["G.pt"] or sha256_bytes(d_bytes) != meta["sha256"]["D.pt"]:
            raise BenchError(f"{src}: G.pt or D.pt changed while being copied")
        old = load_verified(src, "optim.pt", meta)
        optim = {"g": None if cfg.ea.reset_adam else old.get("g"), "d": old.get("d")}
        dst = run.member(cycle + 1, j)
        existing = read_checkpoint_meta(dst, recover=True)
        if existing is not None and (existing.get("iteration", 0) > 0 or existing.get("done")):
            raise BenchError(f"{dst}: already trained on, but the carry that writes it is not marked done")
        origin = src.relative_to(run.root).as_posix()
        new_meta = {"kind": "member", "cycle": cycle + 1, "slot": j, "preference": list(meta["preference"]),
                    "iteration": 0, "sample_index": 0, "iters_target": cfg.adam.iters_per_cycle,
                    "frozen": bool(cfg.population.freeze_first and j == 0), "origin": origin, "done": False}
        written = commit_checkpoint(dst, {"G.pt": g_bytes, "D.pt": d_bytes, "optim.pt": torch_bytes(optim)},
                                    new_meta)
        members[f"{j:02d}"] = {"origin": origin, "G.pt": written["sha256"]["G.pt"]}
    atomic_write_json(run.ea(cycle) / "done.json", {"kind": "identity", "cycle": cycle, "next_cycle": cycle + 1,
                                                    "members": members})


# ----------------------------------------------------------------------------------------------------------------
# The ESRGAN-style single model


def train_single(run_dir: str | os.PathLike[str], iterations: int, device: str | None = None) -> dict[str, Any]:
    """Train the ESRGAN-style generator of ``RUN`` for ``iterations`` steps; return ``RUN/esrgan/meta.json``.

    Start: ``model.pretrained``. Per iteration (batch ``adam.batch_size`` of HR patches, bicubic LR; NCHW RGB in
    [0, 1]): sr = G(lr); L = 0.01·L1 + loss.perceptual_weight·Perceptual + loss.gan_weight·GAN_G (``loss.gan_type``);
    one Adam step on G with ∇L (``adam.lr``/``adam.betas``), then one D step on (hr, sr.detach()). No checkpoints on
    the way: a finished model (meta ``done`` with the same iteration count) is kept, anything else retrains.
    """
    from easlurm import losses
    from easlurm.models.checkpoint_io import load_generator_weights
    from easlurm.train.member import _check_finite, batches, cpu_state, pick_device
    from easlurm.rng import derive_seed

    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    folder = run.root / "esrgan"
    meta = read_checkpoint_meta(folder, recover=True)
    if meta is not None and meta.get("done") and meta.get("iteration") == iterations:
        return meta
    if not cfg.model.pretrained:
        raise BenchError(f"{run.config}: model.pretrained is not set (the ESRGAN arm starts from it)")
    dev = pick_device(device)
    seed = cfg.run.seed
    g = factory.build_generator(cfg)
    load_generator_weights(g, cfg.model.pretrained)
    torch.manual_seed(derive_seed(seed, ESRGAN_TAG, 0xD15C))
    d = factory.build_discriminator(cfg)
    g.to(dev).train()
    d.to(dev).train()
    perceptual = factory.build_perceptual(cfg).to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.adam.lr, betas=tuple(cfg.adam.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr, betas=tuple(cfg.discriminator.betas))
    torch.manual_seed(derive_seed(seed, ESRGAN_TAG))
    batch = cfg.adam.batch_size
    data = batches(factory.data_dirs(cfg)[0], cfg, batch, derive_seed(seed, ESRGAN_TAG, 0xDA7A), start_index=0,
                   total=iterations * batch, num_workers=cfg.data.num_workers)
    kind = cfg.loss.gan_type
    w_l1, w_perc, w_gan = ESRGAN_L1_WEIGHT, cfg.loss.perceptual_weight, cfg.loss.gan_weight
    params = [p for p in g.parameters() if p.requires_grad]
    updates = 0
    t0 = time.perf_counter()
    for it in range(iterations):
        lr_b, hr_b = next(data)
        lr_b, hr_b = lr_b.to(dev), hr_b.to(dev)
        sr = g(lr_b)
        l1 = losses.l1_loss(sr, hr_b)
        per = perceptual(sr, hr_b)
        d_real = d(hr_b).detach() if kind == "relativistic" else None
        gan = losses.gan_g_loss(kind, d(sr), d_real)
        _check_finite("esrgan", it, l1=l1, perceptual=per, gan=gan)
        total = w_l1 * l1 + w_perc * per + w_gan * gan
        # autograd.grad over G only: the G loss must not leave gradients in D's parameters.
        for p, grad in zip(params, torch.autograd.grad(total, params)):
            p.grad = grad
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        updates += 1
        l_d = losses.gan_d_loss(kind, d(hr_b), d(sr.detach()))
        _check_finite("esrgan", it, discriminator=l_d)
        opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        opt_d.step()
    meta = {"kind": "esrgan", "iteration": iterations, "updates": updates, "done": True,
            "origin": f"pretrained:{cfg.model.pretrained}",
            "weights": {"l1": w_l1, "perceptual": w_perc, "gan": w_gan, "gan_type": kind},
            "seconds": round(time.perf_counter() - t0, 3)}
    return commit_checkpoint(folder, {"G.pt": torch_bytes(cpu_state(g))}, meta)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic ×``scale`` upscaling of a uint8 HWC RGB image, rounded half-up to uint8 (a reference row)."""
    from easlurm.data.bicubic import imresize

    h, w = lr.shape[:2]
    out = imresize(lr, float(scale), output_shape=(h * scale, w * scale))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def score_models(cfg: Config, models: Sequence[tuple[str, torch.nn.Module | None]],
                 device: str | None = None) -> list[ResultRow]:
    """Score single models exactly as ``easlurm.evaluate`` scores members: on every test set of ``cfg``.

    ``models``: ``(label, backbone)`` pairs; ``None`` as backbone means bicubic upsampling. This is
    :func:`easlurm.evaluate.score_entries` (bicubic LR, ``super_resolve``, the metrics of ``eval.metrics`` with their
    crops; means per set), so the rows match the stage's ``results.csv`` rows.
    """
    from easlurm.evaluate import ModelEntry, resolve_sets, score_entries
    from easlurm.scoring import open_test_sets

    entries = [ModelEntry(label, None, model) for label, model in models]
    rows, _ = score_entries(cfg, entries, open_test_sets(resolve_sets(cfg)), device)
    return rows


def single_worker(run_dir: str | os.PathLike[str], iterations: int) -> None:
    """The ESRGAN arm's job: train, then score ``esrgan`` plus the references ``pretrained`` and ``bicubic``
    into ``RUN/eval/results.csv`` (same columns as ``easlurm.evaluate``)."""
    from easlurm.models.checkpoint_io import load_generator_weights

    run = RunDir(run_dir)
    meta = train_single(run.root, iterations)
    cfg = load_run_config(run.root)
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(run.root / "esrgan", "G.pt", meta), strict=True)
    start = factory.build_generator(cfg)
    load_generator_weights(start, cfg.model.pretrained)  # type: ignore[arg-type]
    rows = score_models(cfg, [("esrgan", g), ("pretrained", start), ("bicubic", None)])
    atomic_write_text(run.eval / "results.csv", results_csv(rows))
    atomic_write_json(run.eval / "scored.json", {"G.pt": meta["sha256"]["G.pt"]})


def _single_done(run: RunDir, iterations: int) -> bool:
    """The ESRGAN arm finished: trained for ``iterations`` and scored with exactly that G.pt."""
    meta = read_checkpoint_meta(run.root / "esrgan")
    scored = run.eval / "scored.json"
    if meta is None or not meta.get("done") or meta.get("iteration") != iterations or not scored.is_file():
        return False
    return read_json(scored).get("G.pt") == meta["sha256"]["G.pt"] and (run.eval / "results.csv").is_file()


def _add_seconds(path: Path, seconds: float) -> float:
    """Add ``seconds`` to the total kept in ``path`` (JSON); return the new total. Resumed runs add only the
    time of invocations that did work, so reported times are compute times, not the time of the last rerun."""
    total = float(read_json(path)["seconds"]) if path.is_file() else 0.0
    total += seconds
    atomic_write_json(path, {"seconds": round(total, 3)})
    return total


def _stored_seconds(path: Path) -> float:
    return float(read_json(path)["seconds"]) if path.is_file() else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Hypervolume in the (−PSNR, LPIPS) plane


def to_min_plane(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(PSNR dB, LPIPS) pairs → n×2 array of (−PSNR, LPIPS): both objectives minimised."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([-arr[:, 0], arr[:, 1]], axis=1)


def shared_reference(points: Sequence[tuple[float, float]], margin: float = HV_MARGIN) -> tuple[float, float]:
    """Reference point in the (−PSNR, LPIPS) plane for (PSNR, LPIPS) ``points`` (every model of every arm and seed):
    the worst value of each objective plus ``margin`` × that objective's span (1e-6 when all values are equal)."""
    F = to_min_plane(points)
    if F.shape[0] == 0:
        raise BenchError("shared_reference: no points")
    if not np.all(np.isfinite(F)):
        raise BenchError("shared_reference: non-finite PSNR or LPIPS among the points")
    worst, span = F.max(axis=0), F.max(axis=0) - F.min(axis=0)
    span = np.where(span > 0, span, 1e-6)
    ref = worst + margin * span
    return float(ref[0]), float(ref[1])


def front_hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area (dB × LPIPS) of the (−PSNR, LPIPS) plane dominated by ``points`` (PSNR, LPIPS) and bounded by ``ref``
    (a (−PSNR, LPIPS) pair); dominated points and points not strictly better than ``ref`` add nothing."""
    from easlurm.evo.pareto import hypervolume

    return hypervolume(to_min_plane(points), ref)


# ----------------------------------------------------------------------------------------------------------------
# Running the arms


@dataclass
class ArmResult:
    """One arm of one seed, after it ran: its rows of results.csv, update counts and wall time."""

    seed: int
    arm: Arm
    run_dir: Path
    rows: list[dict[str, Any]]
    planned: int
    recorded: int
    seconds: float
    ea_stats: dict[str, Any] = field(default_factory=dict)
    worked: bool = False  # this invocation trained or evaluated something (not a pure re-report)


class _Echo:
    def __init__(self, echo: Callable[[str], None]):
        self.echo, self.lock = echo, threading.Lock()

    def __call__(self, prefix: str) -> Callable[[str], None]:
        def say(msg: str) -> None:
            with self.lock:
                self.echo(f"[{prefix}] {msg}")
        return say


def _run_stage(cfg: Config, run: RunDir, stage: Any, executor: str, echo: Callable[[str], None]) -> None:
    from easlurm.orchestrate.local import DebugExecutor, LocalExecutor

    ex = DebugExecutor(cfg, run, echo) if executor == "debug" else LocalExecutor(cfg, run, echo)
    ex.run([stage])


def _prepare(config: Path, run_dir: Path, overrides: Sequence[str], executor: str, echo: Callable[[str], None]
             ) -> tuple[Config, RunDir]:
    from easlurm.launch import prepare_run

    argv = ["python", "bench/paper_claim.py", "--config", str(config), *(f"--set {o}" for o in overrides)]
    return prepare_run(str(config), str(run_dir), None, list(overrides), executor, argv, echo)


def run_pretrain(config: Path, work: Path, seed: int, executor: str, demo_dir: Path, extra: Sequence[str],
                 echo: Callable[[str], None]) -> Path:
    """The seed's L1 pretraining run; returns the path of its verified ``pretrain/G.pt``."""
    from easlurm.orchestrate.plan import build_plan

    cfg, run = _prepare(config, work / f"seed{seed}" / "pretrain_run", arm_overrides(None, seed, None, demo_dir,
                                                                                       extra), executor, echo)
    stage = build_plan(cfg, run)[0]
    if stage.kind != "pretrain":
        raise BenchError(f"{config}: model.pretrained must be null in the bench config (each seed pretrains)")
    _run_stage(cfg, run, stage, executor, echo)
    meta = read_checkpoint_meta(run.pretrain)
    if meta is None or not meta.get("done") or not verify_checkpoint_dir(run.pretrain):
        raise BenchError(f"{run.pretrain}: pretraining did not finish or fails its checksums")
    return run.pretrain / "G.pt"


def _ea_stats(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Per EA phase: children accepted and the fitness-set hypervolume before → after (from fitness.json)."""
    accepted, hv0, hv1 = [], [], []
    for c in range(cfg.run.cycles):
        path = run.ea(c) / "fitness.json"
        if not path.is_file():
            return {}
        rec = read_json(path)
        accepted.append(int(sum(rec["accepted"])))
        hv0.append(float(rec["hypervolume_initial"]))
        hv1.append(float(rec["hypervolume"][-1]) if rec["hypervolume"] else float(rec["hypervolume_initial"]))
    children = cfg.ea.generations * cfg.population.size
    return {"accepted": accepted, "children_per_phase": children, "hv_initial": hv0, "hv_final": hv1,
            "final_duplicates": _duplicate_slots(cfg, run)}


def _duplicate_slots(cfg: Config, run: RunDir) -> int:
    """Final-population slots whose G.pt is byte-identical to a lower slot's (the EA copied one genome twice)."""
    shas = []
    for i in range(cfg.population.size):
        meta = read_checkpoint_meta(run.member(cfg.run.cycles, i))
        if meta is None:
            raise BenchError(f"{run.member(cfg.run.cycles, i)}: final member missing")
        shas.append(meta["sha256"]["G.pt"])
    return len(shas) - len(set(shas))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BenchError(f"{path}: no evaluation results")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("psnr", "ssim", "lpips"):
            r[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    return rows


def run_arm(arm: Arm, config: Path, work: Path, seed: int, pretrained: Path, executor: str, demo_dir: Path,
            extra: Sequence[str], echo: Callable[[str], None]) -> ArmResult:
    """Run (or resume) one arm of one seed to its evaluation; return its results and update counts."""
    from easlurm.orchestrate.plan import build_plan, stage_done

    t0 = time.monotonic()
    run_dir = work / f"seed{seed}" / arm.name
    cfg, run = _prepare(config, run_dir, arm_overrides(arm, seed, pretrained, demo_dir, extra), executor, echo)
    planned = planned_updates(cfg, arm)
    worked = False
    if arm.is_population:
        for stage in build_plan(cfg, run):
            if stage_done(stage, run):
                continue
            worked = True
            if stage.kind == "ea" and arm.identity_ea:
                echo(f"{stage.key}: identity carry (no EA)")
                carry_population(cfg, run, stage.cycle)
                continue
            _run_stage(cfg, run, stage, executor, echo)
    elif _single_done(run, planned):
        pass
    elif executor == "debug":
        worked = True
        single_worker(run.root, planned)
    else:
        worked = True
        log = run.root / "logs" / "esrgan.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        echo(f"esrgan: {planned} iterations (log {log})")
        with open(log, "a", encoding="utf-8") as fh:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--single-worker", str(run.root),
                                  "--iterations", str(planned)], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL)
        if rc != 0:
            raise BenchError(f"seed {seed} arm esrgan failed with exit code {rc}; log: {log}")
    rows = _read_rows(run.eval / "results.csv")
    recorded = recorded_updates(run.root, arm)
    stats = (_ea_stats(cfg, run) if not arm.identity_ea else {"final_duplicates": _duplicate_slots(cfg, run)}
             ) if arm.is_population else {}
    timing = run.root / "bench_seconds.json"
    seconds = _add_seconds(timing, time.monotonic() - t0) if worked else _stored_seconds(timing)
    echo(f"done ({seconds:.0f} s of work in total, {recorded} generator updates)")
    return ArmResult(seed, arm, run.root, rows, planned, recorded, seconds, stats, worked)


def run_benchmark(config: Path, seeds: Sequence[int], work: Path, *, executor: str = "local", max_parallel: int = 2,
                  demo_dir: Path = DEMO_DIR, overrides: Sequence[str] = (),
                  echo: Callable[[str], None] = print) -> list[ArmResult]:
    """Pretrain once per seed, then run every arm of every seed; return the arm results (seed, arm order).

    ``executor``: ``local`` — every stage task a subprocess; up to ``max_parallel`` arms (or pretrainings) at once,
    each arm's stages in order with one task at a time, so at most ``max_parallel`` training processes run.
    ``debug`` — everything in this process, one after another (tests). A failure stops the benchmark with
    :class:`BenchError` (finished stages stay done; rerun to resume).
    """
    if executor not in ("local", "debug"):
        raise BenchError(f"--executor {executor!r}: use local or debug")
    from easlurm.data.samples import build_samples

    say = _Echo(echo)
    work.mkdir(parents=True, exist_ok=True)
    build_samples(demo_dir)  # once, before any thread: concurrent first builds would race on the same folder
    if executor == "debug":
        results = []
        for s in seeds:
            pre = run_pretrain(config, work, s, executor, demo_dir, overrides, say(f"seed {s} pretrain"))
            for arm in ARMS:
                results.append(run_arm(arm, config, work, s, pre, executor, demo_dir, overrides,
                                       say(f"seed {s} {arm.name}")))
        return results
    with cf.ThreadPoolExecutor(max_workers=max_parallel) as pool:
        # Pretrainings are queued first: an arm thread then waits for at most a running one, never a queued one.
        pre = {s: pool.submit(run_pretrain, config, work, s, executor, demo_dir, overrides, say(f"seed {s} pretrain"))
               for s in seeds}

        def arm_job(arm: Arm, s: int) -> ArmResult:
            return run_arm(arm, config, work, s, pre[s].result(), executor, demo_dir, overrides,
                           say(f"seed {s} {arm.name}"))

        futures = [pool.submit(arm_job, arm, s) for s in seeds for arm in ARMS]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# ----------------------------------------------------------------------------------------------------------------
# Aggregation, tables, plot


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _pm(values: Sequence[float], digits: int) -> str:
    m, s = _mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _hv(value: float) -> str:
    """A hypervolume in units of 10⁻³ dB·LPIPS (the areas at this scale are small)."""
    return f"{value * 1e3:.4g}"


def _hv_pm(values: Sequence[float]) -> str:
    m, s = _mean_std(values)
    return f"{_hv(m)} ± {_hv(s)}" if len(values) > 1 else _hv(m)


def _eval_set(results: Sequence[ArmResult]) -> str:
    for r in results:
        for row in r.rows:
            return str(row["set"])
    raise BenchError("no evaluation rows")


def collect(results: Sequence[ArmResult]) -> dict[str, Any]:
    """Long table of every model (first test set), shared reference, hypervolumes per (seed, arm)."""
    set_name = _eval_set(results)
    models: list[dict[str, Any]] = []
    for r in results:
        for row in r.rows:
            if row["set"] != set_name:
                continue
            model = row["model"]
            arm = "reference" if model in ("pretrained", "bicubic") else r.arm.name
            models.append({"seed": r.seed, "arm": arm, "model": model, "preference": row.get("preference", ""),
                           "psnr": row["psnr"], "ssim": row["ssim"], "lpips": row["lpips"]})
    arm_pts = [(m["psnr"], m["lpips"]) for m in models if m["arm"] != "reference"]
    ref = shared_reference(arm_pts)
    hv: list[dict[str, Any]] = []
    for r in results:
        mine = [m for m in models if m["seed"] == r.seed and m["arm"] == r.arm.name]
        members = [(m["psnr"], m["lpips"]) for m in mine if m["model"] != "fused"]
        everything = [(m["psnr"], m["lpips"]) for m in mine]
        hv.append({"seed": r.seed, "arm": r.arm.name, "hv_members": front_hypervolume(members, ref),
                   "hv_with_fused": front_hypervolume(everything, ref), "planned_updates": r.planned,
                   "recorded_updates": r.recorded, "seconds": r.seconds, "ea": r.ea_stats})
    return {"set": set_name, "models": models, "ref": ref, "hv": hv}


def models_csv(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "seed", "arm", "model", "preference", "psnr", "ssim", "lpips"])
    for m in data["models"]:
        w.writerow([data["set"], m["seed"], m["arm"], m["model"], m["preference"], f"{m['psnr']:.4f}",
                    f"{m['ssim']:.6f}", f"{m['lpips']:.6f}"])
    return buf.getvalue()


def summary_csv(data: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seed", "arm", "hv_members", "hv_with_fused", "ref_neg_psnr", "ref_lpips", "planned_updates",
                "recorded_updates", "seconds"])
    for h in data["hv"]:
        w.writerow([h["seed"], h["arm"], f"{h['hv_members']:.6g}", f"{h['hv_with_fused']:.6g}",
                    f"{data['ref'][0]:.4f}", f"{data['ref'][1]:.6f}", h["planned_updates"], h["recorded_updates"],
                    f"{h['seconds']:.1f}"])
    return buf.getvalue()


def _model_order(models: Sequence[Mapping[str, Any]], arm: str) -> list[str]:
    names = sorted({m["model"] for m in models if m["arm"] == arm},
                   key=lambda s: (s == "fused", int(s.split("_")[1]) if s.startswith("member_") else 0, s))
    return names


def _by(models: Sequence[Mapping[str, Any]], arm: str, model: str) -> list[Mapping[str, Any]]:
    return sorted((m for m in models if m["arm"] == arm and m["model"] == model), key=lambda m: m["seed"])


def _draw_arms(ax: Any, models: Sequence[Mapping[str, Any]], delta: bool) -> None:
    """Per-seed points faint, means over seeds with ±1 std bars, each population arm's mean members joined in slot
    order; fused = star, ESRGAN = diamond, pretrained start = grey X. ``delta``: relative to the seed's start."""
    start = {m["seed"]: m for m in models if m["model"] == "pretrained"}

    def xy(m: Mapping[str, Any]) -> tuple[float, float]:
        if not delta:
            return m["psnr"], m["lpips"]
        s = start[m["seed"]]
        return m["psnr"] - s["psnr"], m["lpips"] - s["lpips"]

    for arm in [a.name for a in ARMS] + ["reference"]:
        colour = COLOURS[arm]
        label_done = False
        member_means = []
        for model in _model_order(models, arm):
            if model == "bicubic" or (delta and model == "pretrained"):
                continue
            pts = [xy(p) for p in _by(models, arm, model)]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            marker, size = {"fused": ("*", 180), "esrgan": ("D", 60), "pretrained": ("X", 70)}.get(model, ("o", 40))
            ax.scatter(xs, ys, marker=marker, s=size * 0.45, color=colour, alpha=0.3, linewidths=0)
            (mx, sx), (my, sy) = _mean_std(xs), _mean_std(ys)
            lab = None
            if arm == "reference":
                lab = "pretrained start (L1)"
            elif not label_done:
                lab, label_done = ARM_BY_NAME[arm].label, True
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.6)
            ax.scatter([mx], [my], marker=marker, s=size, color=colour, edgecolors="black", linewidths=0.5,
                       label=lab, zorder=3)
            if model.startswith("member_"):
                member_means.append((mx, my))
        if len(member_means) > 1:
            ax.plot([p[0] for p in member_means], [p[1] for p in member_means], "-", color=colour, lw=1.0, zorder=2)
    if delta:
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.axvline(0.0, color="0.5", lw=0.6)
    ax.grid(True, alpha=0.3)


def plot_png(data: Mapping[str, Any], title: str) -> bytes:
    """All arms in one figure, PSNR-Y (x, higher is better) vs LPIPS-alex (y, lower is better). Left: absolute
    values with the shared hypervolume reference (+); right: each model relative to its seed's pretrained start,
    which removes the seed-to-seed offset of the start. Bicubic is far off (noted in the left title)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = data["models"]
    fig = Figure(figsize=(13.0, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_abs, ax_rel = fig.subplots(1, 2)
    _draw_arms(ax_abs, models, delta=False)
    ref = data["ref"]
    ax_abs.scatter([-ref[0]], [ref[1]], marker="+", s=90, color="black", label="hypervolume reference")
    bic = [m for m in models if m["model"] == "bicubic"]
    note = (f" (bicubic, off the plot: {np.mean([m['psnr'] for m in bic]):.2f} dB, "
            f"{np.mean([m['lpips'] for m in bic]):.3f})" if bic else "")
    ax_abs.set_title("absolute" + note, fontsize=9)
    ax_abs.set_xlabel("PSNR-Y (dB) ↑")
    ax_abs.set_ylabel("LPIPS-alex ↓")
    ax_abs.legend(fontsize=8, loc="best")
    _draw_arms(ax_rel, models, delta=True)
    ax_rel.set_title("relative to each seed's pretrained start (means ± std over seeds)", fontsize=9)
    ax_rel.set_xlabel("Δ PSNR-Y (dB) ↑")
    ax_rel.set_ylabel("Δ LPIPS-alex ↓")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _paired(hv: Sequence[Mapping[str, Any]], arm: str, base: str, key: str) -> list[float]:
    a = {h["seed"]: h[key] for h in hv if h["arm"] == arm}
    b = {h["seed"]: h[key] for h in hv if h["arm"] == base}
    return [a[s] - b[s] for s in sorted(a) if s in b]


def _fused_vs(models: Sequence[Mapping[str, Any]], arm: str, other_arm: str, other_model: str
              ) -> tuple[int, int, int]:
    """Seeds where ``arm``'s fused model dominates (higher PSNR and lower LPIPS) ``other``, is dominated, total."""
    mine = {m["seed"]: m for m in models if m["arm"] == arm and m["model"] == "fused"}
    other = {m["seed"]: m for m in models if m["arm"] == other_arm and m["model"] == other_model}
    wins = losses = 0
    for s in sorted(mine):
        if s not in other:
            continue
        a, b = mine[s], other[s]
        if a["psnr"] > b["psnr"] and a["lpips"] < b["lpips"]:
            wins += 1
        elif b["psnr"] > a["psnr"] and b["lpips"] < a["lpips"]:
            losses += 1
    return wins, losses, len([s for s in mine if s in other])


def outcome_lines(data: Mapping[str, Any]) -> list[str]:
    """Data-driven statements about who wins (hypervolume, paired per seed; fused vs competitors)."""
    hv, models = data["hv"], data["models"]
    seeds = sorted({h["seed"] for h in hv})
    lines = []
    means = {a.name: _mean_std([h["hv_members"] for h in hv if h["arm"] == a.name])[0] for a in ARMS}
    best = max(means, key=lambda k: means[k])
    lines.append(f"- Largest mean members hypervolume (10⁻³ dB·LPIPS): **{ARM_BY_NAME[best].label}** "
                 f"({_hv(means[best])}); "
                 + ", ".join(f"{ARM_BY_NAME[k].label} {_hv(v)}" for k, v in means.items() if k != best) + ".")
    for arm in ("ea_moead", "ea_nsga2"):
        for key, what in (("hv_members", "members"), ("hv_with_fused", "members + fused")):
            d = _paired(hv, arm, "adam_only", key)
            if not d:
                continue
            m, s = _mean_std(d)
            pos = sum(1 for v in d if v > 0)
            spread = (f" ± {_hv(s)}; the mean is {'within' if abs(m) <= s else 'larger than'} one std of the "
                      f"paired differences" if len(d) > 1 else "")
            lines.append(f"- {ARM_BY_NAME[arm].label} − Adam only, {what} hypervolume, paired per seed: "
                         f"{'+' if m >= 0 else '−'}{_hv(abs(m))}{spread} ({pos}/{len(d)} seeds positive).")
    for arm in ("ea_moead", "ea_nsga2"):
        for other_arm, other_model, name in (("esrgan", "esrgan", "the ESRGAN model"),
                                             ("adam_only", "fused", "Adam-only's fused model")):
            w, lo, n = _fused_vs(models, arm, other_arm, other_model)
            lines.append(f"- {ARM_BY_NAME[arm].label} fused model vs {name}: better LPIPS at higher PSNR in "
                         f"{w}/{n} seeds, worse on both in {lo}/{n}, a trade-off in {n - w - lo}/{n}.")
    spans, ends = [], []
    for arm in ("ea_moead", "ea_nsga2", "adam_only"):
        for s in seeds:
            mem = sorted((m for m in models if m["arm"] == arm and m["seed"] == s and m["model"].startswith("member_")),
                         key=lambda m: int(m["model"].split("_")[1]))
            if len(mem) > 1:
                spans.append((max(m["psnr"] for m in mem) - min(m["psnr"] for m in mem),
                              max(m["lpips"] for m in mem) - min(m["lpips"] for m in mem)))
                ends.append((mem[-1]["psnr"] - mem[0]["psnr"], mem[-1]["lpips"] - mem[0]["lpips"]))
    if spans:
        lines.append(f"- Population spread (max − min over members, mean over population arms and seeds): "
                     f"{np.mean([x[0] for x in spans]):.3f} dB PSNR, {np.mean([x[1] for x in spans]):.4f} LPIPS.")
        lower = sum(1 for e in ends if e[1] < 0)
        lines.append(f"- Preference effect, perception end (last slot, w_perc = 1) minus distortion end (slot 0, "
                     f"w_dist = 1), mean over population arms and seeds: {np.mean([e[0] for e in ends]):+.3f} dB "
                     f"PSNR, {np.mean([e[1] for e in ends]):+.4f} LPIPS; the perception end has the lower LPIPS in "
                     f"{lower}/{len(ends)} populations.")
    pre = [m for m in models if m["model"] == "pretrained"]
    if pre:
        lines.append(f"- Pretrained start (L1): {np.mean([m['psnr'] for m in pre]):.3f} dB, LPIPS "
                     f"{np.mean([m['lpips'] for m in pre]):.4f} (mean over seeds).")
    for h_arm in ("ea_moead", "ea_nsga2"):
        stats = [h["ea"] for h in hv if h["arm"] == h_arm and h["ea"].get("accepted")]
        if stats:
            acc = np.mean([np.mean(st["accepted"]) for st in stats])
            gain = np.mean([np.mean([(b - a) / a if a > 0 else 0.0 for a, b in zip(st["hv_initial"], st["hv_final"])])
                            for st in stats])
            lines.append(f"- {ARM_BY_NAME[h_arm].label}: {acc:.1f} of {stats[0]['children_per_phase']} children "
                         f"accepted into the population per EA phase on average; an EA phase changed the "
                         f"hypervolume of the training objectives (mean L1, mean perceptual loss on the fitness "
                         f"tiles) by {100 * gain:+.2f} % on average.")
    dup = {a: [h["ea"].get("final_duplicates", 0) for h in hv if h["arm"] == a]
           for a in ("ea_moead", "ea_nsga2", "adam_only")}
    if any(dup.values()):
        lines.append("- Final populations holding the same genome in two or more slots (duplicate slots per seed): "
                     + "; ".join(f"{ARM_BY_NAME[a].label} {', '.join(map(str, v))}" for a, v in dup.items() if v)
                     + ".")
    return lines


def results_markdown(data: Mapping[str, Any], meta: Mapping[str, Any], notes: str | None) -> str:
    hv, models = data["hv"], data["models"]
    seeds = sorted({h["seed"] for h in hv})
    quick = meta["quick"]
    L: list[str] = []
    title = "Does EA-Adam beat Adam? (paper-claim benchmark)"
    L += [f"# {title}{' — QUICK SMOKE RUN' if quick else ''}", ""]
    if quick:
        L += ["> **Smoke run (`--quick`)**: a handful of iterations to check the pipeline. These numbers say "
              "nothing about EA-Adam; the real result comes from `python bench/paper_claim.py`.", ""]
    L += [f"Command: `{meta['command']}`  ", f"Config: `{meta['config']}`; seeds {', '.join(map(str, seeds))}; "
          f"test set `{data['set']}` (held-out demo photos astronaut, china, coffee; ×{meta['scale']}).  ",
          f"Machine: {meta['machine']}; {meta['max_parallel']} process(es) at a time, OMP_NUM_THREADS="
          f"{meta['omp']}; torch {torch.__version__}; perceptual net {meta['perceptual_net']}.  ",
          f"Wall time: {meta['wall_s'] / 60:.1f} min (summed over the invocations that did work; {meta['date']}).",
          ""]
    L += ["## Setup", "",
          f"Backbone: MSRResNet ({meta['num_feat']} features, {meta['num_block']} blocks), L1-pretrained once per "
          f"seed ({meta['pretrain_iters']} iterations); population of {meta['population']} "
          f"(preferences w_dist = {meta['prefs']}), {meta['cycles']} cycle(s) × {meta['iters']} Adam iterations, "
          f"{meta['generations']} EA generations per cycle, fusion {meta['fusion_iters']} iterations (attention "
          f"only), batch {meta['batch']} of {meta['patch']} px patches, Adam lr {meta['lr']}.", "",
          "| arm | what | generator updates per seed (planned → recorded) |", "|---|---|---|"]
    what = {"ea_moead": "EA-Adam, MOEA/D selection (reference)", "ea_nsga2": "EA-Adam, NSGA-II selection",
            "adam_only": "same population and Adam phases, every EA phase an identity carry",
            "esrgan": "one model, 0.01·L1 + 1·perceptual + 0.005·GAN, as many iterations as an arm's budget"}
    for a in ARMS:
        counts = ", ".join(f"{h['planned_updates']} → {h['recorded_updates']}" for h in hv if h["arm"] == a.name)
        L.append(f"| {a.label} | {what[a.name]} | {counts} |")
    equal = meta["updates_equal"]
    L += ["", f"Generator updates are **{'equal' if equal else 'NOT EQUAL'}** across arms in every seed.", ""]

    L += ["## Hypervolume of each arm's front in the (−PSNR, LPIPS) plane", "",
          f"One reference point for all arms and seeds: (−PSNR, LPIPS) = ({data['ref'][0]:.4f} dB, "
          f"{data['ref'][1]:.5f}), i.e. PSNR {-data['ref'][0]:.3f} dB — the worst PSNR and worst LPIPS over every "
          f"arm's models, pushed out by {int(HV_MARGIN * 100)} % of each span. Units: 10⁻³ dB·LPIPS; higher is "
          f"better.", "", "| arm | HV members (mean ± std) | HV members + fused | per seed (members) |",
          "|---|---:|---:|---|"]
    for a in ARMS:
        mine = [h for h in hv if h["arm"] == a.name]
        L.append(f"| {a.label} | {_hv_pm([h['hv_members'] for h in mine])} | "
                 f"{_hv_pm([h['hv_with_fused'] for h in mine])} | "
                 f"{', '.join(_hv(h['hv_members']) for h in mine)} |")
    L += ["", "## Every model (mean ± std over seeds)", "",
          "| arm | model | preference | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-alex ↓ |", "|---|---|---|---:|---:|---:|"]
    for arm in [a.name for a in ARMS] + ["reference"]:
        for model in _model_order(models, arm):
            pts = _by(models, arm, model)
            label = ARM_BY_NAME[arm].label if arm in ARM_BY_NAME else "reference"
            L.append(f"| {label} | {model} | {pts[0]['preference'] or '—'} | {_pm([p['psnr'] for p in pts], 3)} | "
                     f"{_pm([p['ssim'] for p in pts], 4)} | {_pm([p['lpips'] for p in pts], 4)} |")
    L += ["", "## Outcome", ""]
    L += outcome_lines(data)
    if notes:
        L += ["", "## Discussion", "", notes.strip()]
    L += ["", "## Choices that make the comparison fair", "",
          "- **Same start, same data, same budget.** Every arm of a seed loads that seed's pretrained generator "
          "(`model.pretrained` → `pretrain/G.pt`, a bare state dict that `load_generator_weights` accepts), shares "
          "`run.seed` (discriminator initialisation and the per-(cycle, slot) data streams) and gets the same "
          "number of generator updates, counted from the members' meta.json files (ESRGAN: its loop's step count).",
          "- **Adam only = EA phases replaced by an identity.** `ea.p_crossover = ea.p_mutation = 0` does not "
          "switch the EA off: \"copy\" children still go through selection, so MOEA/D lets member i's copy replace "
          "a neighbour with a worse Tchebycheff value and NSGA-II lets duplicates of non-dominated members crowd "
          "out dominated ones. One long cycle would still end in an EA phase and change the Adam-moment resets and "
          "data seeds. So the bench copies every member unchanged to the next cycle (generator Adam moments "
          "reset, `ea.reset_adam: true`, as after a real EA phase; discriminators and their optimiser state kept) "
          "— the EA operators and selection are the only difference from the EA-Adam arms.",
          "- **ESRGAN gets the whole budget in one model** (as many iterations as a population arm has updates in "
          "total), with raw loss weights 0.01/1/0.005 and the same lr, batch, perceptual net and discriminator "
          "architecture. Its 'front' is one point, so its hypervolume is one box.",
          "- **Fusion is part of the EA-Adam method** and is given to all three population arms alike; it trains "
          "attention branches only and is not counted as generator updates.",
          "- **Reference point**: shared by all arms and seeds (see above) so hypervolumes are comparable; it is "
          "data-derived (the worst model of any arm), so absolute values shift if arms change, rankings do not "
          "depend on the margin as long as every model lies inside.",
          "- **Scale**: a 2-block, 16-feature SRResNet, 32 px patches, a few hundred updates per member and 3 test "
          "images — orders of magnitude below the paper (16 blocks, 128 px, 22 × 13k iterations, VGG19). The "
          "benchmark tests the *mechanism* at a scale that runs on 2 CPU cores, not the paper's numbers.", ""]
    L += [f"Files: `{meta['stem']}.csv` (every model and seed), `{meta['stem']}_summary.csv` (hypervolumes, update "
          f"counts, wall time per arm and seed), `{meta['stem']}.png` (all arms).", ""]
    return "\n".join(L)


def write_results(results: Sequence[ArmResult], out: Path, stem: str, meta: dict[str, Any],
                  notes: str | None = None) -> dict[str, Any]:
    """Aggregate and write ``<out>/<stem>.md``, ``.csv``, ``_summary.csv`` and ``.png``; return the aggregate."""
    data = collect(results)
    equal_by_seed = {}
    for s in sorted({r.seed for r in results}):
        counts = {r.recorded for r in results if r.seed == s} | {r.planned for r in results if r.seed == s}
        equal_by_seed[s] = len(counts) == 1
    meta = {**meta, "updates_equal": all(equal_by_seed.values()), "stem": stem}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.csv", models_csv(data))
    atomic_write_text(out / f"{stem}_summary.csv", summary_csv(data))
    title = (f"EA-Adam vs Adam vs ESRGAN on the demo val set ({len(equal_by_seed)} seed(s))"
             + (" — QUICK SMOKE RUN" if meta["quick"] else ""))
    atomic_write_bytes(out / f"{stem}.png", plot_png(data, title))
    atomic_write_text(out / f"{stem}.md", results_markdown(data, meta, notes))
    data["updates_equal"] = meta["updates_equal"]
    return data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/paper_claim.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 3; --quick: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    ap.add_argument("--quick", action="store_true", help="smoke run with configs/bench/paper_claim_quick.yaml")
    ap.add_argument("--config", type=Path, default=None, help="bench config (default by --quick)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default runs/bench/<stem>)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first instead of resuming")
    ap.add_argument("--max-parallel", type=int, default=2, help="processes at a time (default 2)")
    ap.add_argument("--executor", choices=["local", "debug"], default="local")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (repeatable)")
    ap.add_argument("--notes", type=Path, default=None,
                    help="Markdown included as the Discussion (default <out>/<stem>_notes.md when present)")
    ap.add_argument("--single-worker", metavar="RUN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        if args.single_worker:
            if args.iterations < 1:
                raise BenchError("--single-worker needs --iterations >= 1")
            single_worker(args.single_worker, args.iterations)
            return 0
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
        results = run_benchmark(config, list(range(n_seeds)), work, executor=args.executor,
                                max_parallel=args.max_parallel, overrides=args.overrides)
        # Wall time summed over the invocations that trained or evaluated something (a pure re-report adds 0).
        timing = work / f"bench_seconds_{n_seeds}seeds.json"
        worked = any(r.worked for r in results)
        wall = _add_seconds(timing, time.monotonic() - t0) if worked else _stored_seconds(timing)
        cfg = load_run_config(results[0].run_dir)
        from easlurm.train.member import preferences

        perc_net = "?"
        fit = results[0].run_dir / "cycles" / "000" / "ea" / "fitness.json"
        if fit.is_file():
            perc_net = str(read_json(fit).get("perceptual", {}).get("net"))
        notes_path = args.notes or args.out / f"{stem}_notes.md"
        notes = notes_path.read_text(encoding="utf-8") if notes_path.is_file() else None
        cmd = "python bench/paper_claim.py" + (" --quick" if args.quick else "") + \
              (f" --seeds {n_seeds}" if args.seeds is not None else "")
        meta = {"quick": args.quick, "command": cmd, "config": config.resolve().relative_to(ROOT).as_posix()
                if config.resolve().is_relative_to(ROOT) else str(config),
                "machine": f"{cpu_name()}, {os.cpu_count()} cores", "max_parallel": args.max_parallel,
                "omp": os.environ.get("OMP_NUM_THREADS"), "perceptual_net": perc_net, "wall_s": wall,
                "date": dt.date.today().isoformat(), "scale": cfg.data.scale, "num_feat": cfg.model.num_feat,
                "num_block": cfg.model.num_block, "pretrain_iters": cfg.pretrain.iters,
                "population": cfg.population.size,
                "prefs": ", ".join(f"{w[0]:.3g}" for w in preferences(cfg.population.size)),
                "cycles": cfg.run.cycles, "iters": cfg.adam.iters_per_cycle, "generations": cfg.ea.generations,
                "fusion_iters": cfg.fusion.iters, "batch": cfg.adam.batch_size, "patch": cfg.data.patch_size,
                "lr": cfg.adam.lr}
        data = write_results(results, args.out, stem, meta, notes)
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
