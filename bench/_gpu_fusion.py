"""Section 4 of bench/gpu_check.py: one ``fusion_step`` with 5 RRDB experts (the fusion job's model, optimizers and
step) and ``average_attention`` over the averaging photos: seconds, peak memory, host syncs."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from _common import median, peak_gib, reset_peak
from _gpu_common import free_memory
from _gpu_ctx import Ctx, flags, seeded_genomes
from _gpu_syncs import count_syncs


def section_fusion(ctx: Ctx, record: dict[str, Any]) -> None:
    from easlurm import factory
    from easlurm.fuse.dynamic import attention_parameters, average_attention, dynamic_layers
    from easlurm.fuse.job import averaging_crops, build_fusion_model, fusion_step

    dev = ctx.device
    cfg = ctx.cfg("rrdb", ("population.size=5",))
    states = ctx.shared.get("genomes") or [{k: v.cpu() for k, v in g.items()}
                                           for g in seeded_genomes(cfg, 5, torch.device("cpu"))]
    torch.manual_seed(0)
    model = build_fusion_model(cfg, states).to(dev).train()
    d = factory.build_discriminator(cfg).to(dev).train()
    perceptual = factory.build_perceptual(cfg).to(dev)
    f = cfg.fusion  # the optimisers exactly as run_fusion builds them
    opt_att = torch.optim.Adam(attention_parameters(model), lr=f.lr, betas=(f.betas[0], f.betas[1]))
    opt_d = torch.optim.Adam(d.parameters(), lr=f.d_lr or f.lr, betas=(f.betas[0], f.betas[1]))
    record.update(experts=len(states), layers=len(dynamic_layers(model)),
                  attention_params=sum(p.numel() for p in attention_parameters(model)),
                  expert_buffers_mib=sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20,
                  att_kernel=cfg.fusion.att_kernel, att_channels=cfg.fusion.att_channels, flags=flags())
    parts = (cfg, model, d, perceptual, opt_att, opt_d)
    batch = cfg.fusion.batch_size
    while True:
        try:
            data = _fusion_batches(cfg, batch, dev)
            record["step"] = _time_fusion_steps(ctx, parts, data, 2 if ctx.smoke else 6)
            break
        except torch.cuda.OutOfMemoryError as exc:
            record.setdefault("oom", []).append(f"batch {batch}: {str(exc).splitlines()[0]}")
            free_memory(dev)
            if batch <= 1:
                raise
            batch //= 2
    ctx.results.put("fusion", record)
    record["syncs_per_step"] = count_syncs(lambda: fusion_step(*parts, *data[0]), dev).as_dict()
    free_memory(dev)

    ids, crops_iter = averaging_crops(cfg)  # fusion.average_set: null → the (demo) training photos
    crops = list(crops_iter)
    reset_peak(dev)
    first = ctx.timed(lambda: average_attention(model, crops))
    again = ctx.timed(lambda: average_attention(model, crops))
    record["averaging"] = {"images": len(crops), "lr_shapes": [list(c.shape[-2:]) for c in crops],
                           "first_s": first, "s": again, "s_per_image": again / len(crops),
                           "projected_s": again / len(crops) * cfg.fusion.average_images,
                           "projected_images": cfg.fusion.average_images, "peak_gib": peak_gib(dev)}
    record["syncs_averaging_one_image"] = count_syncs(lambda: average_attention(model, crops[:1]), dev).as_dict()
    record["projection"] = {"fusion_iters": cfg.fusion.iters,
                            "training_s": cfg.fusion.iters * record["step"]["median_s"]
                            if record["step"]["median_s"] else None}


def _fusion_batches(cfg: Any, batch: int, dev: torch.device) -> list[Any]:
    """Two training batches (LR, HR) through the trainer's loader, on ``dev``."""
    from easlurm.engine.data import batches

    it = batches(Path(cfg.data.train), cfg, batch, seed=7, start_index=0, total=10**6, num_workers=0)
    return [tuple(t.to(dev) for t in next(it)) for _ in range(2)]


def _time_fusion_steps(ctx: Ctx, parts: tuple[Any, ...], data: list[Any], steps: int) -> dict[str, Any]:
    """The first ``fusion_step`` (cold) and up to ``steps`` more, each synchronised; peak memory over them."""
    from easlurm.fuse.job import fusion_step

    dev = ctx.device
    reset_peak(dev)
    first = ctx.timed(lambda: fusion_step(*parts, *data[0]))
    ts = []
    for k in range(steps):
        if ctx.clock.left() < 3 * first + 5:
            break
        ts.append(ctx.timed(partial(fusion_step, *parts, *data[k % 2])))
    return {"batch": data[0][1].shape[0], "patch": data[0][1].shape[-1], "first_s": first, "s": ts,
            "median_s": median(ts) if ts else None, "peak_gib": peak_gib(dev)}
