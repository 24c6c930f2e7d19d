"""The EA objectives: cached HR features give exactly the values of recomputing them; per-image or per-tile means."""
from __future__ import annotations

import pytest
import torch

from easlurm import factory
from easlurm.config import load_run_config
from easlurm.errors import ConfigError
from easlurm.evo import objectives


def _parts(make_run, *overrides: str):
    cfg = load_run_config(make_run(["data.fitness_images=2", "data.fitness_max_tiles=5", "ea.eval_batch=3",
                                    *overrides]))
    torch.manual_seed(0)
    model = factory.build_generator(cfg)
    genome = {k: v.clone() for k, v in model.state_dict().items()}
    return cfg, model, genome, factory.build_perceptual(cfg), objectives.FitnessSet.from_config(cfg)


def test_cached_hr_features_give_identical_objectives(make_run, monkeypatch):
    cfg, model, genome, perceptual, fitness = _parts(make_run)
    cached = objectives.Objectives(model, perceptual, fitness, cfg.ea.eval_batch)
    f_cached = cached(genome)
    assert cached._targets is not None and len(cached._targets) == len(cached.batches)
    monkeypatch.setattr(objectives, "_CACHE_BYTES", 0)  # too big to cache → recomputed per call
    plain = objectives.Objectives(model, perceptual, fitness, cfg.ea.eval_batch)
    f_plain = plain(genome)
    assert plain._targets is None
    assert f_cached == f_plain  # exactly: the same features, the same arithmetic
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in genome.items()}
    assert cached(other) == plain(other) != f_plain
    assert cached.calls == plain.calls == 2


def test_the_cache_budget_is_half_a_gpus_free_memory_and_1_gib_elsewhere(monkeypatch):
    assert objectives.cache_budget(torch.device("cpu")) == 1 << 30
    # No GPU here: the CUDA query answers as a GPU with 60 GiB free of 141 GiB would.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 << 30, 141 << 30))
    assert objectives.cache_budget(torch.device("cuda", 0)) == 30 << 30


def test_image_mean_weighs_every_image_the_same_and_tile_mean_every_tile(make_run):
    # 128 px tiles: the first demo photo (300×448) holds 6, the second the first 8 of its 15.
    cfg, model, genome, perceptual, fitness = _parts(make_run, "data.fitness_tile=128", "data.fitness_max_tiles=8",
                                                     "data.fitness_tile_choice=first")
    groups = fitness.groups()
    assert [e - s for s, e in groups] == [6, 8]
    # Independently: one tile at a time, then the two kinds of mean.
    model.eval()
    l1, perc = [], []
    with torch.no_grad():
        for k in range(len(fitness)):
            sr = model(fitness.lr[k:k + 1])
            l1.append(float((sr - fitness.hr[k:k + 1]).abs().mean()))
            perc.append(float(perceptual(sr, fitness.hr[k:k + 1])))

    def per_image(values):
        return sum(sum(values[s:e]) / (e - s) for s, e in groups) / len(groups)

    f_images = objectives.Objectives(model, perceptual, fitness, 3, "image")(genome)
    f_tiles = objectives.Objectives(model, perceptual, fitness, 3, "tile")(genome)
    assert f_images == pytest.approx((per_image(l1), per_image(perc)), rel=1e-5)
    assert f_tiles == pytest.approx((sum(l1) / len(l1), sum(perc) / len(perc)), rel=1e-5)
    assert f_images != pytest.approx(f_tiles, rel=1e-6)  # the two means really differ here
    with pytest.raises(ConfigError, match="data.fitness_mean: must be image or tile"):
        objectives.Objectives(model, perceptual, fitness, 3, "pixels")
