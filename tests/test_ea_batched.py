"""``ea.batch_children``: a generation's children evaluated as one batch (easlurm.evo.objectives.Objectives.many,
easlurm.evo.evolve's children made ahead) gives the objectives and the generation of one-by-one evaluation — the
objectives equal in float64 for every backbone, with and without the HR feature cache; the generation exactly,
children whose parents were replaced meanwhile being made and evaluated again."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from easlurm import factory
from easlurm.config import load_config
from easlurm.evo import objectives as objectives_mod
from easlurm.evo.evolve import EAState, evolve
from easlurm.evo.job import run_ea
from easlurm.evo.objectives import FitnessSet, Objectives
from easlurm.losses import PerceptualLoss
from easlurm.preflight import shrink
from easlurm.population import preferences
from test_evo_job import CYCLE, lineage, make_run, shards  # noqa: F401 - shards: the module fixture

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _fitness(scale: int, sizes=(3, 2, 1)) -> FitnessSet:
    """Tiles of three images with 3, 2 and 1 tiles (unequal: the per-image mean differs from the tile mean)."""
    gen = torch.Generator().manual_seed(4)
    t = sum(sizes)
    hr = torch.rand(t, 3, 32, 32, generator=gen, dtype=torch.float64)
    image = [k for k, n in enumerate(sizes) for _ in range(n)]
    return FitnessSet(torch.nn.functional.avg_pool2d(hr, scale), hr, image, [], {})


def _genomes(model: torch.nn.Module, k: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [{n: p.detach() + 0.02 * (i + 1) * torch.randn(p.shape, generator=gen, dtype=p.dtype)
             for n, p in model.named_parameters()} for i in range(k)]


@pytest.mark.parametrize("name", ["rrdb", "srresnet", "swinir"])
@pytest.mark.parametrize("mean", ["image", "tile"])
@pytest.mark.parametrize("cached", [True, False])
def test_many_equals_one_by_one_in_float64(name, mean, cached, monkeypatch):
    if not cached:
        monkeypatch.setattr(objectives_mod, "cache_budget", lambda device: 0)
    cfg = shrink(load_config(REPO / "configs" / f"{name}.yaml"), REPO / "data").cfg
    torch.manual_seed(0)
    model = factory.build_generator(cfg).double()
    perceptual = factory.build_perceptual(cfg).double()
    objective = Objectives(model, perceptual, _fitness(cfg.data.scale), batch=2, mean=mean)
    genomes = _genomes(model, 3)
    one_by_one = [objective(g) for g in genomes]
    calls = objective.calls
    with _quiet():
        together = objective.many(genomes)
    assert objective.calls == calls + 3
    assert (objective._targets is not None) == cached
    np.testing.assert_allclose(np.array(together), np.array(one_by_one), rtol=1e-12, atol=0)
    assert len({f for f in together}) == 3  # three different genomes, three different objectives


class _quiet:
    """SwinIR's attention has no vmap batching rule on CPU: torch falls back to a loop and warns; that is fine."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.filterwarnings("ignore", message="There is a performance drop")

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def test_many_refuses_genomes_of_different_layouts():
    cfg = shrink(load_config(REPO / "configs" / "srresnet.yaml"), REPO / "data").cfg
    model = factory.build_generator(cfg)
    objective = Objectives(model, factory.build_perceptual(cfg), _fitness(cfg.data.scale), batch=2)
    a, b = _genomes(model.double(), 2)
    del b[next(iter(b))]
    with pytest.raises(ValueError, match="genome 1 holds other tensors"):
        objective.many([a, b])


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_grouped_perceptual_loss_is_each_groups_loss(criterion):
    cfg = shrink(load_config(REPO / "configs" / "srresnet.yaml"), REPO / "data").cfg
    loss = PerceptualLoss(dict(cfg.loss.perceptual.layers), net=cfg.loss.perceptual.net,
                          criterion=criterion).double()
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 24, 24, generator=gen, dtype=torch.float64)
    srs = torch.rand(3, 2, 3, 24, 24, generator=gen, dtype=torch.float64)
    grouped = loss(srs.flatten(0, 1), hr, groups=3)
    assert grouped.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(grouped[i], loss(srs[i], hr), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        loss(srs.flatten(0, 1), hr, groups=4)


# --- the generation: children made ahead and evaluated as one batch -----------------------------------------------


def _population(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [{"w": torch.randn(40, generator=gen, dtype=torch.float64), "b": torch.randn(6, generator=gen,
                                                                                         dtype=torch.float64)}
            for _ in range(n)]


def _f(genome: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Two conflicting objectives of a genome (exact and cheap: the generation logic is under test here)."""
    w = torch.cat([genome["w"], genome["b"]])
    return float((w - 1).abs().mean()), float((w + 1).square().mean())


@pytest.mark.parametrize("selection", ["moead", "nsga2"])
def test_a_generation_made_ahead_is_the_sequential_generation(selection):
    n = 6
    ea = dataclasses.replace(load_config(REPO / "configs" / "tiny.yaml").ea, selection=selection, generations=8,
                             p_crossover=0.9, p_mutation=0.5, mutation_rate=0.3, mutation_sigma=0.2,
                             neighbourhood=3)
    weights = np.array(preferences(n), dtype=np.float64)

    def run(batched: bool) -> tuple[EAState, int, list[int]]:
        genomes = _population(n)
        singles: list[int] = []
        batches: list[int] = []

        def evaluate(g):
            singles.append(1)
            return _f(g)

        def evaluate_many(gs):
            batches.append(len(gs))
            return [_f(g) for g in gs]

        st = EAState.initial(genomes, np.array([_f(g) for g in genomes]), [{"checkpoint": f"s{j}"}
                                                                          for j in range(n)])
        evolve(st, weights, ea, cycle=0, run_seed=11, evaluate=evaluate,
               evaluate_many=evaluate_many if batched else None)
        return st, len(singles), batches

    (seq, seq_calls, _), (bat, redone, batches) = run(False), run(True)
    assert json.dumps(bat.rows, sort_keys=True) == json.dumps(seq.rows, sort_keys=True)  # same children, same fate
    assert np.array_equal(bat.F, seq.F) and bat.refs == seq.refs and bat.hypervolume == seq.hypervolume
    assert all(torch.equal(a[k], b[k]) for a, b in zip(bat.genomes, seq.genomes) for k in a)
    assert len(batches) == ea.generations and all(b >= 2 for b in batches)
    if selection == "nsga2":
        assert redone == 0  # every child comes from the starting population
    else:  # MOEA/D: children of replaced parents were made again, and only those
        assert 0 < redone < seq_calls


@pytest.fixture
def ea_pair(shards, tmp_path):  # noqa: F811 - the fixture imported above
    """The EA job run twice from the same members and seed: one by one, and with ea.batch_children."""
    a = make_run(tmp_path / "a", shards, "run.seed=5", "ea.generations=3")
    b = make_run(tmp_path / "b", shards, "run.seed=5", "ea.generations=3", "ea.batch_children=true")
    run_ea(a.root, CYCLE)
    run_ea(b.root, CYCLE)
    return a, b


def test_the_ea_job_with_batched_children_takes_the_same_decisions(ea_pair):
    a, b = ea_pair
    rows_a, rows_b = lineage(a), lineage(b)
    assert [(r["id"], r["operators"][0]["op"], r["accepted_into"]) for r in rows_a] == \
        [(r["id"], r["operators"][0]["op"], r["accepted_into"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        if ra["objectives"] is not None:
            np.testing.assert_allclose(rb["objectives"], ra["objectives"], rtol=1e-5)  # float32, grouped convs
