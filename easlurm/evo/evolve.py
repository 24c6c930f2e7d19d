"""The EA proper (DESIGN.md §2 "EA phase"): a pure, resumable function of (population, objectives, seeds).

:func:`evolve` advances an :class:`EAState` — genomes, objectives, lineage references, ideal/nadir, history — by
``ea.generations`` generations (from ``state.generation`` on, so a job that checkpointed the state after some
generation resumes there). Every random draw of child i in generation g comes from its own seed
``derive_seed(run.seed, cycle, g, i, SEED_TAG)`` (:func:`make_child`), so a resumed phase produces exactly the
children an uninterrupted one would.

Selection is a registry (:data:`SELECTIONS`) of generation steps with one signature: ``moead`` (the reference),
``nsga2`` (Pareto selection) and ``identity`` (no EA: the population passes through unchanged — the Adam-only
ablation). Slots that may not be replaced (``population.member0: frozen``) are passed as ``fixed``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config import EAConfig
from ..rng import SEED_TAG_CHILD, derive_seed
from . import EvoError
from .genes import GenePlan
from .operators import Genome, choose_partner, gaussian_mutation, sbx_child
from .pareto import hypervolume
from .selection import MoeadState, assign_slots_by_f1, moead_replace, neighbourhoods, nsga2_select

__all__ = ["SEED_TAG", "HV_REF_FACTOR", "SELECTIONS", "EAState", "Context", "Evaluate", "EvaluateMany", "child_id",
           "make_child", "distinct_genomes", "evolve"]

log = logging.getLogger("easlurm.evo")

#: Last part of every child's seed: ``derive_seed(run.seed, cycle, generation, slot, SEED_TAG)``.
SEED_TAG = SEED_TAG_CHILD
#: Hypervolume reference point = HV_REF_FACTOR × the initial population's per-objective maximum, fixed for the
#: whole phase so the per-generation values are comparable (objectives are >= 0, so this lies beyond every member).
HV_REF_FACTOR = 1.1

Evaluate = Callable[[Genome], tuple[float, float]]
#: Several genomes' objectives at once (``ea.batch_children``: easlurm.evo.objectives.Objectives.many).
EvaluateMany = Callable[[Sequence[Genome]], list[tuple[float, float]]]


def child_id(cycle: int, generation: int, slot: int) -> str:
    """Lineage id of the child of ``slot`` in ``generation`` of ``cycle``'s EA phase, e.g. ``c3-g12-s2``."""
    return f"c{cycle}-g{generation}-s{slot}"


def make_child(i: int, genomes: Sequence[Genome], ea: EAConfig, neighbourhood: Sequence[int], seed: int,
               genes: GenePlan | None = None) -> tuple[Genome, list[dict[str, Any]], int | None]:
    """Member ``i``'s child (DESIGN.md §2 EA steps 1-2) with all draws from ``seed``.

    ``genes``: the backbone's gene layout (which entries SBX crosses and mutation perturbs,
    :mod:`easlurm.evo.genes`); None → SBX crosses every floating-point entry, mutation the weight-like ones.

    A ``numpy.random.Generator(seed)`` draws ``r_c`` then ``r_m`` (two uniforms in [0, 1), always both, so the
    mutation decision does not depend on how many draws crossover used); crossover fires when ``r_c <
    ea.p_crossover`` and then draws the partner and the SBX ``u`` values from the same generator; mutation fires when
    ``r_m < ea.p_mutation`` and draws its mask and noise from a CPU ``torch.Generator(seed)``.

    Returns ``(child, operators, partner)``: ``operators`` is the lineage record (``[{"op": "copy"}]`` when neither
    operator fired; the child is then ``genomes[i]`` itself — genomes are never modified in place), ``partner`` the
    crossover partner's slot or None.
    """
    import torch

    n = len(genomes)
    rng = np.random.default_rng(seed)
    r_cross, r_mut = float(rng.random()), float(rng.random())
    child = genomes[i]
    ops: list[dict[str, Any]] = []
    partner: int | None = None
    if r_cross < ea.p_crossover:
        partner = choose_partner(i, n, neighbourhood, ea.p_global_partner, rng)
        child, us = sbx_child(genomes[i], genomes[partner], ea.sbx_eta, rng,
                              genes.crossover if genes is not None else None)
        ops.append({"op": "sbx", "eta": ea.sbx_eta, "partner": partner, "u": us})
    if r_mut < ea.p_mutation:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        child, mutated = gaussian_mutation(child, ea.mutation_rate, ea.mutation_sigma, gen,
                                           genes.mutation if genes is not None else None)
        ops.append({"op": "mutation", "rate": ea.mutation_rate, "sigma": ea.mutation_sigma, "mutated": mutated})
    return child, ops or [{"op": "copy"}], partner


def distinct_genomes(refs: Sequence[Mapping[str, Any]]) -> int:
    """How many different genomes a population holds (slots sharing a lineage reference hold the same one)."""
    return len({tuple(sorted((k, str(v)) for k, v in r.items())) for r in refs})


@dataclass
class EAState:
    """Everything an EA phase carries from one generation to the next (and a generation checkpoint saves).

    ``genomes[j]``/``F[j]``/``refs[j]``: slot j's genome, objectives (f1, f2) and lineage reference
    (``{"checkpoint": path, "sha256": …}`` for a genome that entered the phase, ``{"child": id}`` for a child).
    ``rows``: lineage rows so far, in creation order. ``generation``: the next generation to run.
    """

    genomes: list[Genome]
    F: np.ndarray
    refs: list[dict[str, Any]]
    z: MoeadState
    z_initial: MoeadState
    hv_ref: list[float]
    generation: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    children_F: list[tuple[float, float]] = field(default_factory=list)
    hypervolume: list[float] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    distinct: list[int] = field(default_factory=list)

    @classmethod
    def initial(cls, genomes: Sequence[Genome], F: np.ndarray, refs: Sequence[Mapping[str, Any]]) -> EAState:
        F = np.array(F, dtype=np.float64, copy=True)
        z = MoeadState.from_population(F)
        return cls(list(genomes), F, [dict(r) for r in refs], z, MoeadState(z.z_min, z.z_max),
                   [float(HV_REF_FACTOR * v) for v in F.max(axis=0)])

    @property
    def children_array(self) -> np.ndarray:
        return np.array(self.children_F, dtype=np.float64).reshape(-1, 2)


@dataclass
class _Made:
    """A child made ahead from the generation's starting population, with its objectives: still slot i's child
    while slot i and its partner hold the genomes it was made from (make_child reads nothing else)."""
    child: Genome
    ops: list[dict[str, Any]]
    partner: int | None
    f: tuple[float, float] | None
    parent_genome: Genome
    partner_genome: Genome | None

    def holds_for(self, genomes: Sequence[Genome], i: int) -> bool:
        return genomes[i] is self.parent_genome and (self.partner is None
                                                     or genomes[self.partner] is self.partner_genome)


@dataclass
class Context:
    """What a generation step needs besides the state. ``evaluate_many``: evaluate a generation's children as one
    batch (:meth:`make_ahead`); ``ahead``: the children made ahead for the current generation; ``ahead_used`` and
    ``ahead_wasted`` count made-ahead evaluations kept and redone."""
    ea: EAConfig
    cycle: int
    run_seed: int
    weights: np.ndarray
    neighbourhood: list[list[int]]
    fixed: frozenset[int]
    evaluate: Evaluate
    genes: GenePlan | None = None
    evaluate_many: EvaluateMany | None = None
    ahead: dict[int, _Made] = field(default_factory=dict)
    ahead_used: int = 0
    ahead_wasted: int = 0

    def make_ahead(self, st: EAState, g: int) -> None:
        """Every slot's child of generation g made from the generation's starting population, the non-copy ones
        evaluated in one ``evaluate_many`` call. With MOEA/D a child replaces members before the next is made: a
        child made ahead whose parent or partner slot changed meanwhile is made and evaluated again when its turn
        comes (:meth:`new_child`), so the generation is exactly the sequential one (same children, same draws)."""
        self.ahead = {}
        if self.evaluate_many is None:
            return
        for i in range(len(st.genomes)):
            seed = derive_seed(self.run_seed, self.cycle, g, i, SEED_TAG)
            child, ops, partner = make_child(i, st.genomes, self.ea, self.neighbourhood[i], seed, self.genes)
            self.ahead[i] = _Made(child, ops, partner, None, st.genomes[i],
                                  st.genomes[partner] if partner is not None else None)
        todo = [i for i, m in self.ahead.items() if m.ops[0]["op"] != "copy"]
        if todo:
            for i, (f1, f2) in zip(todo, self.evaluate_many([self.ahead[i].child for i in todo]), strict=True):
                self.ahead[i].f = (float(f1), float(f2))

    def new_child(self, st: EAState, g: int, i: int) -> tuple[Genome, dict[str, Any], tuple[float, float] | None]:
        """Make and evaluate slot i's child of generation g; returns (child, lineage row, objectives or None)."""
        seed = derive_seed(self.run_seed, self.cycle, g, i, SEED_TAG)
        made = self.ahead.pop(i, None)
        if made is not None and made.holds_for(st.genomes, i):
            child, ops, partner, f_ahead = made.child, made.ops, made.partner, made.f
            self.ahead_used += f_ahead is not None
        else:
            self.ahead_wasted += made is not None and made.f is not None
            child, ops, partner = make_child(i, st.genomes, self.ea, self.neighbourhood[i], seed, self.genes)
            f_ahead = None
        parents = [st.refs[i]] + ([st.refs[partner]] if partner is not None else [])
        if ops[0]["op"] == "copy":  # the parent itself: evaluation would only reproduce its objectives
            f = (float(st.F[i, 0]), float(st.F[i, 1]))
        elif f_ahead is not None:
            f = f_ahead
        else:
            f1, f2 = self.evaluate(child)
            f = (float(f1), float(f2))
        cid = child_id(self.cycle, g, i)
        row: dict[str, Any] = {"cycle": self.cycle, "generation": g, "slot": i, "id": cid, "seed": seed,
                               "parents": [dict(p) for p in parents], "operators": ops, "accepted_into": []}
        st.rows.append(row)
        if all(math.isfinite(v) for v in f):
            row["objectives"] = [f[0], f[1]]
            st.z.update(np.asarray(f))
            st.children_F.append(f)
            return child, row, f
        row["objectives"] = None
        row["rejected"] = f"non-finite objectives ({f[0]!r}, {f[1]!r})"
        log.warning("cycle %d generation %d: child %s rejected: %s", self.cycle, g, cid, row["rejected"])
        return child, row, None


def _moead_generation(st: EAState, g: int, ctx: Context) -> tuple[int, int]:
    """Each child may replace members of B(i) at once (the next member's child already sees the result)."""
    accepted = rejected = 0
    cap = ctx.ea.max_replacements
    ctx.make_ahead(st, g)
    for i in range(len(st.genomes)):
        child, row, f = ctx.new_child(st, g, i)
        if f is None:
            rejected += 1
            continue
        hit = [j for j in moead_replace(f, st.F, ctx.weights, ctx.neighbourhood[i], st.z) if j not in ctx.fixed]
        if cap is not None:
            hit = hit[:cap]
        for j in hit:
            st.genomes[j] = child
            st.F[j] = f
            st.refs[j] = {"child": row["id"]}
        row["accepted_into"] = hit
        accepted += bool(hit)
    return accepted, rejected


def _nsga2_generation(st: EAState, g: int, ctx: Context) -> tuple[int, int]:
    """Children of the generation's starting population compete with it: non-dominated sort + crowding keep the
    replaceable slots' count, survivors go to those slots by ascending f1 (each slot keeps its discriminator)."""
    n = len(st.genomes)
    slots = [j for j in range(n) if j not in ctx.fixed]
    ctx.make_ahead(st, g)  # every child comes from the starting population: all made ahead are kept
    made = [ctx.new_child(st, g, i) for i in range(n)]
    rejected = sum(1 for _, _, f in made if f is None)
    # A "copy" child is its parent: in the pool it would be a duplicate that can win a second slot and shrink the
    # population's diversity, so it does not compete (NSGA-II practice of eliminating duplicates).
    valid = [(c, row, f) for i, (c, row, f) in enumerate(made) if f is not None and c is not st.genomes[i]]
    pool_g = [st.genomes[j] for j in slots] + [c for c, _, _ in valid]
    pool_ref = [st.refs[j] for j in slots] + [{"child": row["id"]} for _, row, _ in valid]
    pool_row: list[dict[str, Any] | None] = [None] * len(slots) + [row for _, row, _ in valid]
    pool_F = np.concatenate([st.F[slots], np.array([f for _, _, f in valid], dtype=np.float64).reshape(-1, 2)])
    keep = nsga2_select(pool_F, len(slots))
    order = keep[assign_slots_by_f1(pool_F[keep])]
    new_g, new_F, new_ref = list(st.genomes), st.F.copy(), list(st.refs)
    for s, k in zip(slots, order.tolist()):
        new_g[s], new_F[s], new_ref[s] = pool_g[k], pool_F[k], pool_ref[k]
        row = pool_row[k]
        if row is not None:
            row["accepted_into"].append(s)
    st.genomes, st.refs, st.F = new_g, new_ref, new_F
    return sum(1 for _, row, _ in valid if row["accepted_into"]), rejected


Generation = Callable[[EAState, int, Context], tuple[int, int]]

#: ``ea.selection`` → one generation step (returns children accepted into >= 1 slot, children rejected);
#: ``identity`` runs no generation at all.
SELECTIONS: dict[str, Generation | None] = {"moead": _moead_generation, "nsga2": _nsga2_generation,
                                            "identity": None}


def evolve(state: EAState, weights: np.ndarray, ea: EAConfig, *, cycle: int, run_seed: int,
           fixed: Sequence[int] = (), evaluate: Evaluate,
           on_generation: Callable[[int, EAState], None] | None = None, genes: GenePlan | None = None,
           evaluate_many: EvaluateMany | None = None) -> EAState:
    """Run generations ``state.generation`` … ``ea.generations - 1`` in place; return the state.

    ``weights``: the n × 2 preferences. ``fixed``: slots never replaced. ``evaluate(genome) -> (f1, f2)``.
    ``genes``: the backbone's gene layout (:func:`make_child`; None → the ``float_tensors`` rule).
    ``evaluate_many(genomes) -> [(f1, f2), …]``: when given, each generation's children are made ahead and evaluated
    as one batch (:meth:`Context.make_ahead`); the generation is the sequential one, children whose parents were
    replaced meanwhile being made and evaluated again.
    A child whose objectives are not finite is rejected (logged, never selected, z not updated). A "copy" child
    (no operator fired) is not re-evaluated: it gets its parent's objectives. ``on_generation(g, state)`` runs after
    each generation (the job logs and checkpoints there).

    Lineage rows (JSON-ready): ``cycle, generation, slot, id, seed, parents`` (slot i's reference, then the
    partner's after SBX), ``operators``, ``objectives`` ([f1, f2] or None), ``accepted_into`` (moead: the slots
    it replaced; nsga2: the slots it got in its generation's selection) and ``rejected`` (non-finite children).
    """
    n = len(state.genomes)
    if n < 2:
        raise EvoError(f"evolve: need a population of at least 2, got {n}")
    if ea.selection not in SELECTIONS:
        raise EvoError(f"ea.selection: unknown {ea.selection!r}; valid: {', '.join(SELECTIONS)}")
    step = SELECTIONS[ea.selection]
    if step is None:
        return state
    ctx = Context(ea, cycle, run_seed, np.asarray(weights, dtype=np.float64), neighbourhoods(n, ea.neighbourhood),
                  frozenset(int(j) for j in fixed), evaluate, genes, evaluate_many)
    for g in range(state.generation, ea.generations):
        accepted, rejected = step(state, g, ctx)
        state.hypervolume.append(hypervolume(state.F, state.hv_ref))
        state.accepted.append(accepted)
        state.rejected.append(rejected)
        state.distinct.append(distinct_genomes(state.refs))
        state.generation = g + 1
        if evaluate_many is not None:
            log.debug("cycle %d generation %d: children evaluated ahead %d kept, %d redone", cycle, g,
                      ctx.ahead_used, ctx.ahead_wasted)
        if on_generation is not None:
            on_generation(g, state)
    return state
