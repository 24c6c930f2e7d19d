"""The EA objectives: cached HR features give exactly the values of recomputing them every time."""
from __future__ import annotations

import torch

from easlurm import factory
from easlurm.config import load_run_config
from easlurm.evo import job


def test_cached_hr_features_give_identical_objectives(make_run, monkeypatch):
    cfg = load_run_config(make_run(["data.fitness_images=2", "data.fitness_max_tiles=5", "ea.eval_batch=3"]))
    torch.manual_seed(0)
    model = factory.build_generator(cfg)
    genome = {k: v.clone() for k, v in model.state_dict().items()}
    perceptual = factory.build_perceptual(cfg)
    fitness = job.FitnessSet.from_config(cfg)
    cached = job.Objectives(model, perceptual, fitness, cfg.ea.eval_batch)
    f_cached = cached(genome)
    assert cached._targets is not None and len(cached._targets) == -(-len(fitness) // 3)  # ceil: last batch short
    monkeypatch.setattr(job, "_CACHE_BYTES", 0)  # too big to cache → recomputed per call
    plain = job.Objectives(model, perceptual, fitness, cfg.ea.eval_batch)
    f_plain = plain(genome)
    assert plain._targets is None
    assert f_cached == f_plain  # exactly: the same features, the same arithmetic
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in genome.items()}
    assert cached(other) == plain(other) != f_plain
