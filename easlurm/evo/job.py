"""The EA-phase job of one cycle (DESIGN.md §2 "EA phase", §4): cycle C members in, cycle C+1 members out.

``run_ea(RUN, C)`` reads the N finished members of ``RUN/cycles/C/members/``, evolves their generators for
``ea.generations`` generations (SBX crossover, sparse Gaussian mutation, MOEA/D or NSGA-II selection, all from
:mod:`easlurm.evo.operators` / :mod:`easlurm.evo.selection`) and writes:

- ``RUN/cycles/C+1/members/J/`` — G.pt (the EA's genome for slot J), D.pt (cycle C slot J's discriminator, bytes
  unchanged: each slot keeps its D), optim.pt (``{"g": None or the old state (ea.reset_adam), "d": old state}``)
  and meta.json (``done: False``, ready for the next Adam phase);
- ``RUN/cycles/C/ea/fitness.json`` — the fitness tiles and their source hashes, the perceptual net, the initial
  and final population objectives, z_min/z_max, the hypervolume reference point and the hypervolume per generation;
- ``RUN/cycles/C/ea/lineage.jsonl`` — one row per child (see :func:`evolve`);
- ``RUN/cycles/C/ea/front.png`` — f1 vs f2 of the initial/final population and all children;
- ``RUN/tb/ea`` — TensorBoard scalars per generation;
- ``RUN/cycles/C/ea/done.json`` — written last: sha256 of the three files above and of every C+1 member's meta.

Idempotent: a verified ``done.json`` makes the job return at once. Anything less (a kill halfway) is redone from
scratch; every random draw comes from a per-child seed, so the redo writes byte-identical files.

Objectives (both minimised): f = (f1, f2) = (mean L1, mean perceptual loss) of the generator's SR output (not
clamped, exactly what the Adam phase trains on) against the HR tile, over the fixed fitness tiles, computed under
``torch.no_grad`` in eval mode in batches of ``ea.eval_batch``. No GAN term: discriminators are frozen and play no
part in the EA phase. Images are NCHW RGB float32 in [0, 1] throughout.

Random draws of child i in generation g (seed ``s = derive_seed(run.seed, C, g, i, 0xEA)``, also in the lineage):
a ``numpy.random.Generator(s)`` draws ``r_c`` then ``r_m`` (two uniforms in [0, 1), always both, so the mutation
decision does not depend on how many draws crossover used); crossover fires when ``r_c < ea.p_crossover`` and then
draws the partner (:func:`~easlurm.evo.operators.choose_partner`) and the SBX ``u`` values from the same generator;
mutation fires when ``r_m < ea.p_mutation`` and draws its mask and noise from a CPU ``torch.Generator(s)``. With
``<`` on [0, 1) draws, p = 0 never fires and p = 1 always does.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import factory
from ..config import Config, EAConfig, load_run_config
from ..errors import CheckpointError, ConfigError
from ..store import (
    RunDir, atomic_write_bytes, atomic_write_json, commit_checkpoint, load_verified, read_checkpoint_meta,
    read_json, sha256_bytes, sha256_file, torch_bytes, verify_checkpoint_dir,
)
from ..train.rng import derive_seed
from . import EvoError
from .operators import Genome, choose_partner, gaussian_mutation, sbx_child
from .pareto import hypervolume, pareto_front_mask
from .selection import MoeadState, assign_slots_by_f1, moead_replace, neighbourhoods, nsga2_select

__all__ = [
    "SEED_TAG", "HV_REF_FACTOR", "FitnessSet", "Objectives", "ChildRecord", "EAResult", "child_id", "make_child",
    "evolve", "plot_front", "run_ea",
]

log = logging.getLogger("easlurm.evo")

#: Last part of every child's seed: ``derive_seed(run.seed, cycle, generation, slot, SEED_TAG)``.
SEED_TAG = 0xEA
#: Hypervolume reference point = HV_REF_FACTOR × the initial population's per-objective maximum, fixed for the
#: whole phase so the per-generation values are comparable (objectives are >= 0, so this lies beyond every member).
HV_REF_FACTOR = 1.1
OBJECTIVE_NAMES = ("l1", "perceptual")


# ----------------------------------------------------------------------------------------------------------------
# Fitness data and objectives


@dataclass
class FitnessSet:
    """The fixed fitness tiles, in memory: ``lr`` T×3×(t/s)×(t/s), ``hr`` T×3×t×t, float32 RGB in [0, 1]."""

    lr: torch.Tensor
    hr: torch.Tensor
    rows: list[dict[str, Any]]
    source_sha256: dict[str, str]

    @classmethod
    def from_config(cls, cfg: Config) -> FitnessSet:
        """Tiles of ``data.fitness_tile`` HR px from the first ``data.fitness_images`` sorted ids of the fitness
        shards, at most ``data.fitness_max_tiles`` per image (:class:`easlurm.data.dataset.TileDataset`)."""
        from ..data.dataset import TileDataset

        fitness_dir = factory.data_dirs(cfg)[2]
        ds = TileDataset(fitness_dir, cfg.data.fitness_tile, cfg.data.scale, cfg.data.fitness_max_tiles,
                         max_images=cfg.data.fitness_images)
        pairs = [ds[k] for k in range(len(ds))]
        lr = torch.stack([p[0] for p in pairs])
        hr = torch.stack([p[1] for p in pairs])
        return cls(lr, hr, ds.manifest_rows(), ds.source_hashes())

    def __len__(self) -> int:
        return int(self.hr.shape[0])

    def to(self, device: torch.device | str) -> FitnessSet:
        return FitnessSet(self.lr.to(device), self.hr.to(device), self.rows, self.source_sha256)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the tiles (id, y, x, size in HR px) and the sha256 of their source images."""
        return {"tiles": self.rows, "source_sha256": dict(sorted(self.source_sha256.items())),
                "count": len(self)}


_CACHE_BYTES = 1 << 30  # HR feature cache limit (1 GiB): RRDB's conv1_2 maps of 800 tiles would not fit


class Objectives:
    """``f(genome) = (mean L1, mean perceptual loss)`` over a :class:`FitnessSet` (both minimised, floats).

    ``model`` is the backbone whose parameters the genome replaces (via ``torch.func.functional_call``, so the model
    itself is never modified); ``perceptual`` maps (sr, hr) NCHW RGB [0, 1] to a scalar mean loss. Both are put
    in eval mode. Per-batch means are weighted by batch size and summed in float64, so the result is the mean over
    all tiles. A diverged genome gives NaN/inf, which the caller must reject. ``calls`` counts evaluations.
    """

    def __init__(self, model: nn.Module, perceptual: nn.Module, fitness: FitnessSet, batch: int) -> None:
        if batch < 1:
            raise ConfigError(f"ea.eval_batch: must be >= 1, got {batch}")
        self.model = model.eval()
        self.perceptual = perceptual.eval()
        self.fitness = fitness
        self.batch = int(batch)
        self.calls = 0
        self._targets: list[dict[str, torch.Tensor]] | None = None
        self._targets_tried = False

    def _target_cache(self) -> list[dict[str, torch.Tensor]] | None:
        """The fitness set's HR features per batch, computed once: they are the same for every genome and are most
        of an evaluation's cost. Skipped (recomputed per call) when they would exceed ``_CACHE_BYTES``."""
        if self._targets_tried:
            return self._targets
        self._targets_tried = True
        target_fn = getattr(self.perceptual, "target_features", None)
        if target_fn is None:
            return None
        hr_all = self.fitness.hr
        first = target_fn(hr_all[: self.batch])
        per_tile = sum(t[:1].numel() * t.element_size() for t in first.values())
        if per_tile * len(self.fitness) > _CACHE_BYTES:
            return None
        self._targets = [first] + [target_fn(hr_all[s:s + self.batch])
                                   for s in range(self.batch, len(self.fitness), self.batch)]
        return self._targets

    @torch.no_grad()
    def __call__(self, genome: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        self.calls += 1
        lr_all, hr_all = self.fitness.lr, self.fitness.hr
        total = len(self.fitness)
        targets = self._target_cache()
        l1_sum = torch.zeros((), dtype=torch.float64, device=hr_all.device)
        perc_sum = torch.zeros((), dtype=torch.float64, device=hr_all.device)
        for k, start in enumerate(range(0, total, self.batch)):
            lr = lr_all[start:start + self.batch]
            hr = hr_all[start:start + self.batch]
            sr = torch.func.functional_call(self.model, dict(genome), (lr,))
            b = hr.shape[0]
            l1_sum += (sr - hr).abs().mean().double() * b
            if targets is not None:
                perc_sum += self.perceptual(sr, target=targets[k]).double() * b
            else:
                perc_sum += self.perceptual(sr, hr).double() * b
        return float(l1_sum) / total, float(perc_sum) / total


# ----------------------------------------------------------------------------------------------------------------
# The EA proper: a pure function of (population, objectives, seeds)


def _finite(f: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in f)


def child_id(cycle: int, generation: int, slot: int) -> str:
    """Lineage id of the child of ``slot`` in ``generation`` of ``cycle``'s EA phase, e.g. ``c3-g12-s2``."""
    return f"c{cycle}-g{generation}-s{slot}"


def make_child(i: int, genomes: Sequence[Genome], ea: EAConfig, neighbourhood: Sequence[int], seed: int
               ) -> tuple[Genome, list[dict[str, Any]], int | None]:
    """Member ``i``'s child (DESIGN.md §2 EA steps 1-2) with all draws from ``seed`` (see the module docstring).

    Returns ``(child, operators, partner)``: ``operators`` is the lineage record (``[{"op": "copy"}]`` when neither
    operator fired; the child is then ``genomes[i]`` itself — genomes are never modified in place), ``partner`` the
    crossover partner's slot or None.
    """
    n = len(genomes)
    rng = np.random.default_rng(seed)
    r_cross, r_mut = float(rng.random()), float(rng.random())
    child = genomes[i]
    ops: list[dict[str, Any]] = []
    partner: int | None = None
    if r_cross < ea.p_crossover:
        partner = choose_partner(i, n, neighbourhood, ea.p_global_partner, rng)
        child, us = sbx_child(genomes[i], genomes[partner], ea.sbx_eta, rng)
        ops.append({"op": "sbx", "eta": ea.sbx_eta, "partner": partner, "u": us})
    if r_mut < ea.p_mutation:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        child, mutated = gaussian_mutation(child, ea.mutation_rate, ea.mutation_sigma, gen)
        ops.append({"op": "mutation", "rate": ea.mutation_rate, "sigma": ea.mutation_sigma, "mutated": mutated})
    return child, ops or [{"op": "copy"}], partner


@dataclass
class ChildRecord:
    """One lineage row in the making (``row`` is JSON-ready, see :func:`evolve`)."""

    row: dict[str, Any]
    objectives: tuple[float, float] | None


@dataclass
class EAResult:
    """Outcome of :func:`evolve`: the final population (slot order) and the whole history."""

    genomes: list[Genome]
    F: np.ndarray                       # n × 2 final objectives
    refs: list[dict[str, Any]]          # lineage reference of each final slot's genome
    rows: list[dict[str, Any]]          # lineage rows, in creation order
    children_F: np.ndarray              # k × 2 objectives of every finite child
    hypervolume: list[float]            # after each generation
    accepted: list[int]                 # children accepted into >= 1 slot, per generation
    rejected: list[int]                 # non-finite children, per generation
    state: MoeadState                   # final ideal / nadir
    state_initial: MoeadState
    hv_ref: list[float] = field(default_factory=list)


def evolve(genomes: Sequence[Genome], F: np.ndarray, refs: Sequence[dict[str, Any]], weights: np.ndarray,
           ea: EAConfig, *, cycle: int, run_seed: int, freeze_first: bool,
           evaluate: Callable[[Genome], tuple[float, float]],
           on_generation: Callable[[int, EAResult], None] | None = None) -> EAResult:
    """Run ``ea.generations`` generations on a population (DESIGN.md §2 EA phase); inputs are not modified.

    ``genomes[j]``/``F[j]`` (n × 2, finite)/``refs[j]`` are slot j's genome, objectives and lineage reference
    (``{"checkpoint": path, "sha256": …}`` for a cycle-C genome); ``weights`` the n × 2 preferences.
    ``evaluate(genome) -> (f1, f2)``. Selection by ``ea.selection``:

    - ``moead``: z_min/z_max start as the population's column min/max and are widened by every finite child; each
      child may replace any member of B(i) (:func:`~easlurm.evo.selection.moead_replace`, no cap), objectives are
      updated at once so member i+1's child already sees the result. Slot 0 is never replaced with
      ``freeze_first``.
    - ``nsga2``: each generation's children are made from the population as it stood at the generation's start;
      the pool (population + finite children, minus "copy" children, which would duplicate their parent) is cut
      to N by non-dominated sort + crowding distance and the
      survivors are put in slots by ascending f1. With ``freeze_first`` slot 0 keeps its genome and stays out of the
      pool: N-1 survivors fill slots 1..N-1.

    A child whose objectives are not finite is rejected (logged, never selected, z not updated). A "copy" child
    (no operator fired) is not re-evaluated: it gets its parent's objectives, which evaluation would reproduce.

    Lineage rows (JSON-ready): ``cycle, generation, slot, id, seed, parents`` (slot i's reference, then the
    partner's after SBX; each ``{"checkpoint", "sha256"}`` or ``{"child": id}``), ``operators``, ``objectives``
    ([f1, f2] or None), ``accepted_into`` (moead: the slots it replaced; nsga2: the slots it got in its
    generation's selection) and ``rejected`` (only for non-finite children).
    """
    n = len(genomes)
    if n < 2:
        raise EvoError(f"evolve: need a population of at least 2, got {n}")
    if ea.selection not in ("moead", "nsga2"):
        raise ConfigError(f"ea.selection: unknown {ea.selection!r}; valid: moead, nsga2")
    genomes = list(genomes)
    refs = [dict(r) for r in refs]
    F = np.array(F, dtype=np.float64, copy=True)
    W = np.asarray(weights, dtype=np.float64)
    B = neighbourhoods(n, ea.neighbourhood)
    state = MoeadState.from_population(F)
    result = EAResult(genomes, F, refs, [], np.zeros((0, 2)), [], [], [], state,
                      MoeadState(state.z_min, state.z_max),
                      hv_ref=[float(HV_REF_FACTOR * v) for v in F.max(axis=0)])
    children_F: list[tuple[float, float]] = []
    slots = list(range(1, n)) if freeze_first else list(range(n))

    def new_child(g: int, i: int) -> tuple[Genome, ChildRecord]:
        seed = derive_seed(run_seed, cycle, g, i, SEED_TAG)
        child, ops, partner = make_child(i, genomes, ea, B[i], seed)
        parents = [refs[i]] + ([refs[partner]] if partner is not None else [])
        if ops[0]["op"] == "copy":
            f = (float(F[i, 0]), float(F[i, 1]))
        else:
            f = tuple(float(v) for v in evaluate(child))  # type: ignore[assignment]
        cid = child_id(cycle, g, i)
        row: dict[str, Any] = {"cycle": cycle, "generation": g, "slot": i, "id": cid, "seed": seed,
                               "parents": [dict(p) for p in parents], "operators": ops, "accepted_into": []}
        if _finite(f):
            row["objectives"] = [f[0], f[1]]
            state.update(np.asarray(f))
            children_F.append(f)
            return child, ChildRecord(row, f)
        row["objectives"] = None
        row["rejected"] = f"non-finite objectives ({f[0]!r}, {f[1]!r})"
        log.warning("cycle %d generation %d: child %s rejected: %s", cycle, g, cid, row["rejected"])
        return child, ChildRecord(row, None)

    for g in range(ea.generations):
        accepted = rejected = 0
        if ea.selection == "moead":
            for i in range(n):
                child, rec = new_child(g, i)
                result.rows.append(rec.row)
                if rec.objectives is None:
                    rejected += 1
                    continue
                # moead_replace updates z with the child again: a no-op, it was already included above.
                hit = moead_replace(rec.objectives, F, W, B[i], state)
                if freeze_first:
                    hit = [j for j in hit if j != 0]
                for j in hit:
                    genomes[j] = child
                    F[j] = rec.objectives
                    refs[j] = {"child": rec.row["id"]}
                rec.row["accepted_into"] = hit
                accepted += bool(hit)
        else:
            made = [new_child(g, i) for i in range(n)]
            rejected = sum(1 for _, r in made if r.objectives is None)
            # A "copy" child (neither operator fired) is its parent: in the pool it would be a duplicate that can
            # win a second slot and shrink the population's diversity, so it does not compete (NSGA-II practice of
            # eliminating duplicates).
            valid = [(c, r) for i, (c, r) in enumerate(made) if r.objectives is not None and c is not genomes[i]]
            result.rows.extend(r.row for _, r in made)
            pool_g = [genomes[j] for j in slots] + [c for c, _ in valid]
            pool_ref = [refs[j] for j in slots] + [{"child": r.row["id"]} for _, r in valid]
            pool_rec: list[ChildRecord | None] = [None] * len(slots) + [r for _, r in valid]
            pool_F = np.concatenate([F[slots], np.array([r.objectives for _, r in valid]).reshape(-1, 2)])
            keep = nsga2_select(pool_F, len(slots))
            order = keep[assign_slots_by_f1(pool_F[keep])]
            new_g, new_F, new_ref = list(genomes), F.copy(), list(refs)
            for s, k in zip(slots, order.tolist()):
                new_g[s], new_F[s], new_ref[s] = pool_g[k], pool_F[k], pool_ref[k]
                rec = pool_rec[k]
                if rec is not None:
                    rec.row["accepted_into"].append(s)
            accepted = sum(1 for _, r in valid if r.row["accepted_into"])
            genomes[:], refs[:] = new_g, new_ref
            F[:] = new_F
        result.hypervolume.append(hypervolume(F, result.hv_ref))
        result.accepted.append(accepted)
        result.rejected.append(rejected)
        result.children_F = np.array(children_F, dtype=np.float64).reshape(-1, 2)
        if on_generation is not None:
            on_generation(g, result)
    result.children_F = np.array(children_F, dtype=np.float64).reshape(-1, 2)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Plot


def plot_front(initial: np.ndarray, final: np.ndarray, children: np.ndarray, title: str) -> bytes:
    """PNG bytes of f1 (mean L1) vs f2 (mean perceptual): children light grey, initial population as blue circles,
    final population as red crosses labelled by slot, the final Pareto front as a red line. Byte-stable: fixed
    size and dpi, Agg renderer, no "Software" metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(children):
        ax.scatter(children[:, 0], children[:, 1], s=10, color="0.82", label="children", zorder=1)
    ax.scatter(initial[:, 0], initial[:, 1], s=46, facecolors="none", edgecolors="tab:blue",
               label="initial population", zorder=2)
    ax.scatter(final[:, 0], final[:, 1], s=40, marker="x", color="tab:red", label="final population", zorder=3)
    front = final[pareto_front_mask(final)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    ax.plot(front[:, 0], front[:, 1], "-", color="tab:red", linewidth=1.2, label="final Pareto front", zorder=3)
    labels: dict[tuple[float, float], list[str]] = {}
    for j, (x, y) in enumerate(final):
        labels.setdefault((float(x), float(y)), []).append(str(j))  # slots sharing a genome share one label
    for (x, y), names in labels.items():
        ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                    color="tab:red")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3), useOffset=True)
    ax.set_xlabel("f1: mean L1 (lower is better)")
    ax.set_ylabel("f2: mean perceptual loss (lower is better)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# The job: run-directory I/O around evolve()


def _rel(run: RunDir, path: Path) -> str:
    return path.relative_to(run.root).as_posix()


def _pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    # Benchmark mode may pick different conv algorithms run to run, which would break byte-identical reruns.
    old = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old


@dataclass
class _Member:
    folder: Path
    meta: dict[str, Any]


def _input_member(run: RunDir, cycle: int, j: int) -> _Member:
    folder = run.member(cycle, j)
    meta = read_checkpoint_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder}: member not found (the EA phase of cycle {cycle} needs all members)")
    missing = [f for f in ("G.pt", "D.pt", "optim.pt") if f not in meta.get("sha256", {})]
    if missing:
        raise CheckpointError(f"{folder}: meta.json lists no {', '.join(missing)}")
    if not verify_checkpoint_dir(folder):
        raise CheckpointError(f"{folder}: a file fails its sha256 in meta.json (corrupt or replaced)")
    if not meta.get("done"):
        raise CheckpointError(f"{folder}: member is not done (its Adam phase of cycle {cycle} is unfinished: "
                              f"iteration {meta.get('iteration')} of {meta.get('iters_target')})")
    pref = meta.get("preference")
    if not (isinstance(pref, list) and len(pref) == 2 and all(isinstance(v, (int, float)) for v in pref)):
        raise CheckpointError(f"{folder / 'meta.json'}: preference must be [w_dist, w_perc], got {pref!r}")
    return _Member(folder, meta)


def _member_ok(run: RunDir, cycle: int, j: int, entry: Mapping[str, Any]) -> bool:
    """Slot j of cycle C+1 still holds what the EA wrote, or a later Adam phase has advanced it from there."""
    folder = run.member(cycle + 1, j)
    path = folder / "meta.json"
    try:
        if path.is_file() and sha256_file(path) == entry.get("meta_sha256"):
            return verify_checkpoint_dir(folder)
        meta = read_checkpoint_meta(folder)
    except (OSError, CheckpointError):
        return False
    advanced = meta is not None and (meta.get("iteration", 0) > 0 or bool(meta.get("done")))
    return (advanced and meta.get("cycle") == cycle + 1 and meta.get("slot") == j  # type: ignore[union-attr]
            and meta.get("origin") == entry.get("origin") and verify_checkpoint_dir(folder))  # type: ignore[union-attr]


def _completed(run: RunDir, cycle: int, n: int) -> dict[str, Any] | None:
    """The verified done.json of this EA phase, or None when any listed file is missing or differs."""
    path = run.ea(cycle) / "done.json"
    if not path.is_file():
        return None
    try:
        done = read_json(path)
        files = done["files"]
        members = done["members"]
    except (CheckpointError, KeyError, TypeError):
        return None
    for name, sha in sorted(files.items()):
        p = run.ea(cycle) / name
        if not p.is_file() or sha256_file(p) != sha:
            return None
    if sorted(members) != [f"{j:02d}" for j in range(n)]:
        return None
    if not all(_member_ok(run, cycle, j, members[f"{j:02d}"]) for j in range(n)):
        return None
    return done


def _prepare_output_folder(folder: Path, names: set[str]) -> None:
    """Refuse to overwrite a member a later Adam phase has advanced; drop stale files our commit would not list."""
    meta = read_checkpoint_meta(folder, recover=True)  # this EA job writes the folder
    if meta is None:
        return
    if meta.get("iteration", 0) > 0 or meta.get("done"):
        raise CheckpointError(f"{folder}: already advanced by the next Adam phase (iteration "
                              f"{meta.get('iteration')}, done {meta.get('done')}) but the EA phase that writes it "
                              f"is not complete; remove the folder by hand to redo the EA phase")
    stale = sorted(set(meta.get("sha256", {})) - names)
    if stale:
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        (folder / "meta.json").unlink()


def _cpu_genome(genome: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in genome.items()}


def _tb_writer(run: RunDir, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.tb / "ea"), purge_step=purge_step)


def run_ea(run_dir: str | os.PathLike[str], cycle: int, device: str | None = None) -> dict[str, Any]:
    """Run (or skip, when already complete) the EA phase of ``cycle``; return the done.json record.

    The returned dict also has ``"skipped": True`` when nothing was done. ``device`` defaults to CUDA when
    available, else CPU. Raises :class:`CheckpointError` naming the member folder when a cycle-C member is
    missing, corrupt or not done, and ConfigError for unusable settings.
    """
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    ea = cfg.ea
    if not 0 <= cycle < cfg.run.cycles:
        raise CheckpointError(f"--cycle {cycle}: the run has cycles 0..{cfg.run.cycles - 1}")
    if ea.p_crossover > 0 and ea.p_global_partner < 1 and min(ea.neighbourhood, n) < 2:
        raise ConfigError(f"ea.neighbourhood: {ea.neighbourhood} leaves no crossover partner inside B(i); use >= 2")
    done = _completed(run, cycle, n)
    if done is not None:
        log.info("cycle %d EA phase already complete (%s)", cycle, run.ea(cycle) / "done.json")
        return {**done, "skipped": True}

    members = [_input_member(run, cycle, j) for j in range(n)]
    dev = _pick_device(device)
    with _deterministic_cudnn():
        model = factory.build_generator(cfg).to(dev).eval()
        genomes: list[Genome] = []
        refs: list[dict[str, Any]] = []
        for m in members:
            sd = load_verified(m.folder, "G.pt", m.meta)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{m.folder / 'G.pt'}: does not fit the configured {cfg.model.arch} "
                                      f"({str(exc).splitlines()[0]})") from exc
            genomes.append({k: v.to(dev) for k, v in sd.items()})
            refs.append({"checkpoint": _rel(run, m.folder / "G.pt"), "sha256": m.meta["sha256"]["G.pt"]})
        perceptual = factory.build_perceptual(cfg).to(dev).eval()
        fitness = FitnessSet.from_config(cfg)
        objective = Objectives(model, perceptual, fitness.to(dev), ea.eval_batch)
        F0 = np.array([objective(g) for g in genomes], dtype=np.float64)
        for j, f in enumerate(F0):
            if not _finite(f):
                raise CheckpointError(f"{members[j].folder}: generator has non-finite objectives {f.tolist()} on "
                                      f"the fitness set (diverged?)")
        weights = np.array([[float(v) for v in m.meta["preference"]] for m in members])
        log.info("cycle %d EA phase: %d members, %d generations, %s selection, %d fitness tiles, on %s",
                 cycle, n, ea.generations, ea.selection, len(fitness), dev)

        step0 = cycle * ea.generations
        tb = _tb_writer(run, purge_step=step0 + 1)

        def on_generation(g: int, res: EAResult) -> None:
            step = step0 + g + 1
            tb.add_scalar("ea/hypervolume", res.hypervolume[-1], step)
            tb.add_scalar("ea/accepted", res.accepted[-1], step)
            tb.add_scalar("ea/rejected", res.rejected[-1], step)
            for j in range(n):
                tb.add_scalar(f"ea/slot_{j:02d}/f1_l1", float(res.F[j, 0]), step)
                tb.add_scalar(f"ea/slot_{j:02d}/f2_perceptual", float(res.F[j, 1]), step)
            log.info("cycle %d generation %d/%d: hypervolume %.6g, accepted %d, rejected %d", cycle, g + 1,
                     ea.generations, res.hypervolume[-1], res.accepted[-1], res.rejected[-1])

        try:
            res = evolve(genomes, F0, refs, weights, ea, cycle=cycle, run_seed=cfg.run.seed,
                         freeze_first=cfg.population.freeze_first, evaluate=objective,
                         on_generation=on_generation)
        finally:
            tb.flush()
            tb.close()

    # Outputs. Members first, then the phase's records, done.json last (the commit point of the whole job).
    origins: list[str] = []
    member_entries: dict[str, dict[str, Any]] = {}
    final_rows: dict[str, list[int]] = {}
    row_by_id = {r["id"]: r for r in res.rows}
    for j in range(n):
        src = members[j]
        ref = res.refs[j]
        if "child" in ref:
            origin = ref["child"]
            final_rows.setdefault(origin, []).append(j)
        else:
            origin = ref["checkpoint"].rsplit("/", 1)[0]
        origins.append(origin)
        d_bytes = (src.folder / "D.pt").read_bytes()
        if sha256_bytes(d_bytes) != src.meta["sha256"]["D.pt"]:
            raise CheckpointError(f"{src.folder / 'D.pt'}: changed while the EA phase ran (sha256 mismatch)")
        old_optim = load_verified(src.folder, "optim.pt", src.meta)
        if not isinstance(old_optim, dict):
            raise CheckpointError(f"{src.folder / 'optim.pt'}: expected a dict with keys 'g' and 'd'")
        optim = {"g": None if ea.reset_adam else old_optim.get("g"), "d": old_optim.get("d")}
        files = {"G.pt": torch_bytes(_cpu_genome(res.genomes[j])), "D.pt": d_bytes, "optim.pt": torch_bytes(optim)}
        meta = {"kind": "member", "cycle": cycle + 1, "slot": j, "preference": list(src.meta["preference"]),
                "iteration": 0, "sample_index": 0, "iters_target": cfg.adam.iters_per_cycle,
                "frozen": bool(cfg.population.freeze_first and j == 0), "origin": origin,
                "objectives": [float(res.F[j, 0]), float(res.F[j, 1])], "done": False}
        folder = run.member(cycle + 1, j)
        _prepare_output_folder(folder, set(files))
        written = commit_checkpoint(folder, files, meta)
        member_entries[f"{j:02d}"] = {"meta_sha256": sha256_file(folder / "meta.json"), "origin": origin,
                                      "G.pt": written["sha256"]["G.pt"]}
        if "child" in ref and len(final_rows[origin]) == 1:
            row = row_by_id[origin]
            row["checkpoint"] = _rel(run, folder / "G.pt")
            row["checkpoint_sha256"] = written["sha256"]["G.pt"]
    for cid, slots in final_rows.items():
        row_by_id[cid]["final_slots"] = slots

    ea_dir = run.ea(cycle)
    lineage = "".join(json.dumps(r, sort_keys=True) + "\n" for r in res.rows).encode("utf-8")
    atomic_write_bytes(ea_dir / "lineage.jsonl", lineage)
    record = {
        "cycle": cycle, "selection": ea.selection, "generations": ea.generations, "population": n,
        "seed": cfg.run.seed, "objectives": list(OBJECTIVE_NAMES),
        "perceptual": {"net": getattr(perceptual, "net", None), "layers": dict(cfg.loss.perceptual.layers)},
        "fitness_set": {"tile": cfg.data.fitness_tile, "scale": cfg.data.scale,
                        "max_tiles_per_image": cfg.data.fitness_max_tiles, "max_images": cfg.data.fitness_images,
                        **fitness.describe()},
        "eval_batch": ea.eval_batch,
        "initial": F0.tolist(), "final": res.F.tolist(), "preferences": weights.tolist(),
        "z_initial": res.state_initial.to_dict(), "z_final": res.state.to_dict(),
        "hypervolume_ref": res.hv_ref, "hypervolume_ref_rule": f"{HV_REF_FACTOR} x initial max per objective",
        "hypervolume_initial": hypervolume(F0, res.hv_ref), "hypervolume": res.hypervolume,
        "accepted": res.accepted, "rejected": res.rejected,
        "evaluations": objective.calls,
    }
    atomic_write_json(ea_dir / "fitness.json", record)
    png = plot_front(F0, res.F, res.children_F, f"EA phase of cycle {cycle} ({ea.selection}, "
                                                f"{ea.generations} generations, N={n})")
    atomic_write_bytes(ea_dir / "front.png", png)
    done_record = {
        "kind": "ea", "cycle": cycle, "next_cycle": cycle + 1,
        "files": {name: sha256_file(ea_dir / name) for name in ("fitness.json", "front.png", "lineage.jsonl")},
        "members": member_entries,
        "hypervolume_initial": record["hypervolume_initial"],
        "hypervolume_final": res.hypervolume[-1] if res.hypervolume else record["hypervolume_initial"],
    }
    atomic_write_json(ea_dir / "done.json", done_record)
    log.info("cycle %d EA phase done: hypervolume %.6g → %.6g, %d evaluations", cycle,
             done_record["hypervolume_initial"], done_record["hypervolume_final"], objective.calls)
    return {**done_record, "skipped": False}
