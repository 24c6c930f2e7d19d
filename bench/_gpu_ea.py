"""Section 3 of bench/gpu_check.py: one EA generation of N = 5 RRDB children (the EA job's ``Objectives`` and
``evolve``/``make_child`` on a fitness set shaped like the config's) vs a bare G + VGG forward over the same tiles,
and the projected EA phase next to one Adam phase."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import median, peak_gib, reset_peak, sync
from easlurm.runtime import deterministic_cudnn
from _gpu_ctx import Ctx, flags, seeded_genomes
from _gpu_syncs import count_syncs


def _bare_eval(model: torch.nn.Module, perceptual: Any, lr_all: torch.Tensor, hr_all: torch.Tensor,
               spans: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None, bf16: bool
               ) -> tuple[float, float]:
    """G + VGG over all tiles under no_grad, the same math as Objectives without its machinery (no functional_call,
    no per-image bookkeeping): mean L1 and mean perceptual loss over the tiles, batched as ``spans`` ([start, end)
    tile ranges: Objectives' own batches, so both sides launch the same batches). ``targets`` are precomputed HR
    features per span (None: VGG also runs on the HR side). Equals Objectives' per-image mean when every image has
    the same tile count."""
    import torch.nn.functional as F

    l1 = torch.zeros((), dtype=torch.float64, device=hr_all.device)
    pc = torch.zeros((), dtype=torch.float64, device=hr_all.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), amp:
        for k, (s, e) in enumerate(spans):
            lr, hr = lr_all[s:e], hr_all[s:e]
            sr = model(lr).float()
            fs = perceptual.vgg(sr)
            fh = targets[k] if targets is not None else perceptual.vgg(hr)
            b = hr.shape[0]
            l1 += (sr - hr).abs().mean().double() * b
            pc += sum(wt * F.l1_loss(fs[n].float(), fh[n].float()) for n, wt in perceptual.layer_weights.items()
                      ).double() * b
    return float(l1) / hr_all.shape[0], float(pc) / hr_all.shape[0]


def _fitness_like_reference(ctx: Ctx, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """A FitnessSet shaped like the config's: ``data.fitness_images`` images × ``data.fitness_max_tiles`` tiles.

    The demo has fewer photos (and tiles) than the reference's 16 × 50, so the real tiles of every demo photo
    (``FitnessTiles``, the EA job's loader) are repeated to the reference's count and regrouped as that many images
    of that many tiles: the evaluation then launches exactly the batches of a reference-sized fitness set."""
    from easlurm.data.shards import load_manifest
    from easlurm.evo.objectives import FitnessSet

    sources = {e.get("source", e.get("id")) for e in load_manifest(Path(cfg.data.train))["entries"]}
    images = min(cfg.data.fitness_images, len(sources))
    demo_cfg = ctx.cfg("rrdb", ("population.size=5", f"data.fitness_images={images}"))
    fs = FitnessSet.from_config(demo_cfg)
    per_image, n_images = cfg.data.fitness_max_tiles, cfg.data.fitness_images
    target = n_images * per_image
    reps = math.ceil(target / len(fs))
    shaped = FitnessSet(fs.lr.repeat(reps, 1, 1, 1)[:target].contiguous(),
                        fs.hr.repeat(reps, 1, 1, 1)[:target].contiguous(),
                        [k // per_image for k in range(target)], fs.rows, fs.source_sha256, fs.info)
    info = {"tiles": len(shaped), "images": n_images, "tiles_per_image": per_image, "tile": cfg.data.fitness_tile,
            "from_demo_tiles": len(fs), "demo_images": len(set(fs.image)), "repeated": reps,
            "eval_batch": cfg.ea.eval_batch, "mean": cfg.data.fitness_mean,
            "reference": f"{n_images} images x {per_image} tiles"}
    return shaped, info


def hr_feature_passes(objective: Any, perceptual: torch.nn.Module, genome: dict[str, torch.Tensor]) -> int:
    """HR-side VGG passes (``perceptual.target_features`` calls) in one evaluation of ``objective``: 0 when
    ``Objectives`` keeps the fitness set's HR features (it does while they fit its cache limit), one per batch when
    it recomputes them. Counted by wrapping the method on this instance for the one call."""
    calls = 0
    original = perceptual.target_features

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*a, **k)

    perceptual.target_features = counting  # type: ignore[method-assign]
    try:
        objective(genome)
    finally:
        del perceptual.target_features
    return calls


def section_ea(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm import factory
    from easlurm.evo.evolve import EAState, evolve, make_child
    from easlurm.evo.objectives import Objectives
    from easlurm.evo.selection import neighbourhoods
    from easlurm.population import preferences, slot_mode
    from easlurm.rng import SEED_TAG_CHILD, derive_seed

    dev = ctx.device
    cfg = ctx.cfg("rrdb", ("population.size=5",))
    n = cfg.population.size
    fs, record["fitness"] = _fitness_like_reference(ctx, cfg)
    record["n"] = n
    record["selection"] = cfg.ea.selection
    with deterministic_cudnn():
        record["cudnn"] = {"benchmark": torch.backends.cudnn.benchmark,
                           "deterministic": torch.backends.cudnn.deterministic, **flags()}
        genomes = seeded_genomes(cfg, n, dev)
        ctx.shared["genomes"] = [{k: v.cpu() for k, v in g.items()} for g in genomes]
        torch.manual_seed(0)
        model = factory.build_generator(cfg).to(dev).eval()
        perceptual = factory.build_perceptual(cfg).to(dev).eval()
        record["perceptual_net"] = perceptual.net
        fsd = fs.to(dev)
        objective = Objectives(model, perceptual, fsd, cfg.ea.eval_batch, cfg.data.fitness_mean)
        record["batches_per_evaluation"] = len(objective.batches)
        reset_peak(dev)
        values, evals = [], []
        for g in genomes:  # the population's objectives: what the job computes first
            sync(dev)
            t0 = time.perf_counter()
            values.append(objective(g))
            evals.append(time.perf_counter() - t0)
        F0 = np.array(values, dtype=np.float64)
        record["initial_evaluations_s"] = evals
        record["peak_gib_eval"] = peak_gib(dev)
        record["hr_passes_per_evaluation"] = hr_feature_passes(objective, perceptual, genomes[0])
        record["target_cache_on"] = record["hr_passes_per_evaluation"] == 0
        ctx.results.put("ea", record)
        record["syncs_per_evaluation"] = count_syncs(lambda: objective(genomes[0]), dev).as_dict()
        forced = dataclasses.replace(cfg.ea, p_crossover=1.0, p_mutation=1.0)
        nb0 = neighbourhoods(n, cfg.ea.neighbourhood)[0]
        record["make_child_s"] = {
            "sbx": min(ctx.timed(lambda: make_child(0, genomes, dataclasses.replace(forced, p_mutation=0.0), nb0, 1))
                       for _ in range(2)),
            "sbx + mutation": min(ctx.timed(lambda: make_child(0, genomes, forced, nb0, 1)) for _ in range(2))}
        record["syncs_make_child"] = count_syncs(
            lambda: make_child(0, genomes, cfg.ea, neighbourhoods(n, cfg.ea.neighbourhood)[0],
                               derive_seed(0, 0, 0, 0, SEED_TAG_CHILD)), dev).as_dict()

        gens = 1 if ctx.smoke else 2
        stamps: list[float] = []
        calls0 = objective.calls

        def on_gen(g: int, st: Any) -> None:
            sync(dev)
            stamps.append(time.perf_counter())

        ea_cfg = dataclasses.replace(cfg.ea, generations=gens)
        # As the EA job calls it: the members' preferences as MOEA/D weights, frozen slots fixed.
        weights = np.array(preferences(n), dtype=np.float64)
        fixed = [j for j in range(n) if slot_mode(cfg, j) == "frozen"]
        state = EAState.initial(genomes, F0, [{"checkpoint": f"slot{j}", "sha256": "-"} for j in range(n)])
        sync(dev)
        t0 = time.perf_counter()
        state = evolve(state, weights, ea_cfg, cycle=0, run_seed=0, fixed=fixed, evaluate=objective,
                       on_generation=on_gen)
        gen_s = np.diff([t0, *stamps]).tolist()
        record["generations"] = {"count": gens, "seconds": gen_s, "evaluations": objective.calls - calls0,
                                 "fixed": fixed, "accepted": state.accepted, "hypervolume": state.hypervolume,
                                 "operators": [[op["op"] for op in r["operators"]] for r in state.rows]}
        ctx.results.put("ea", record)

        # Bare G + VGG forward over the same tiles and batches.
        spans = list(objective.batches)
        targets = [perceptual.target_features(fsd.hr[s:e])  # type: ignore[operator]
                   for s, e in spans]
        record["hr_feature_gib"] = sum(t.numel() * t.element_size() for tg in targets for t in tg.values()) / 2**30
        model.load_state_dict(genomes[0])
        bare: dict[str, float] = {}
        bare_values: dict[str, list[float]] = {}
        variants = [("G + VGG(sr), HR features precomputed", targets, False), ("G + VGG(sr) + VGG(hr)", None, False)]
        if dev.type == "cuda":  # what bf16 objectives would cost (they would change the EA's numbers: not a fix)
            variants.append(("G + VGG(sr) precomputed, bf16 autocast", targets, True))
        for label, tg, bf16 in variants:
            if ctx.clock.left() < 3 * max(evals[-1], 0.5):
                record.setdefault("skipped", []).append(label)
                continue
            run = partial(_bare_eval, model, perceptual, fsd.lr, fsd.hr, spans, tg, bf16)
            bare[label] = min(ctx.timed(run) for _ in range(2))
            bare_values[label] = list(run())
        del targets
        obj_s = min(ctx.timed(lambda: objective(genomes[0])) for _ in range(2))
        record["objectives_s"] = obj_s
        # One source image's tiles per batch (ea.eval_batch = tiles per image) against the config's eval_batch.
        per_image = Objectives(model, perceptual, fsd, record["fitness"]["tiles_per_image"], cfg.data.fitness_mean)
        if ctx.clock.left() > 4 * max(obj_s, 0.5):
            pi_s = min(ctx.timed(lambda: per_image(genomes[0])) for _ in range(2))
            record["per_image_batch"] = {"eval_batch": per_image.batch, "batches": len(per_image.batches), "s": pi_s,
                                         "config_eval_batch_s": obj_s, "speedup": obj_s / pi_s,
                                         "values": list(per_image(genomes[0]))}
        # A generation's children as one batch (ea.batch_children: Objectives.many — weights stacked, vmapped G,
        # one VGG pass) vs one Objectives call each, on the per-image batches.
        if ctx.clock.left() > 8 * max(obj_s, 0.5):
            one_by_one = min(ctx.timed(lambda: [per_image(g) for g in genomes]) for _ in range(2))
            reset_peak(dev)
            together = min(ctx.timed(lambda: per_image.many(genomes)) for _ in range(2))
            vals, ref = per_image.many(genomes), [per_image(g) for g in genomes]
            record["children_batched"] = {
                "children": len(genomes), "one_by_one_s": one_by_one, "batched_s": together,
                "speedup": one_by_one / together, "peak_gib": peak_gib(dev),
                "max_rel_diff": max(abs(a - b) / max(abs(b), 1e-30) for v, r in zip(vals, ref)
                                    for a, b in zip(v, r))}
        record["bare_s"] = bare
        # Same math: the bare forward's (f1, f2) next to Objectives' for the same genome.
        record["values"] = {"Objectives": list(objective(genomes[0])), **bare_values}
        if "G + VGG(sr), HR features precomputed" in bare:
            record["ratio_bare_vs_objectives"] = bare["G + VGG(sr), HR features precomputed"] / obj_s
    gen = median(gen_s)
    adam = {label: cfg.adam.iters_per_cycle / row["its_per_s"]["MemberStep"]
            for label, row in ctx.shared.get("member_rows", {}).items() if label.startswith("RRDB")}
    record["projection"] = {"generations": cfg.ea.generations, "ea_phase_s": cfg.ea.generations * gen + sum(evals),
                            "adam_iters": cfg.adam.iters_per_cycle, "adam_phase_s": adam}
