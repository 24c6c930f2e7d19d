"""L1 pretraining: the PSNR-oriented generator every member starts from when ``model.pretrained`` is null.

Writes ``RUN/pretrain/{G.pt, optim.pt, rng.pt, meta.json}`` with the same commit/resume rules as a member.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import factory
from ..config import load_run_config
from ..store import RunDir, commit_checkpoint, load_verified, read_checkpoint_meta, torch_bytes
from . import rng
from .member import (
    _check_finite, _tb_writer, batches, cpu_state, optimizer_state_cpu, pick_device, restore_training_state,
)
from .preempt import Preemption


def pretrain(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) the L1 pretraining stage; return its meta.json (preemption as for members)."""
    with Preemption() as pre:
        return _pretrain(run_dir, device, pre)


def _pretrain(run_dir: str | Path, device: str | None, pre: Preemption) -> dict[str, Any]:
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    p = cfg.pretrain
    meta = read_checkpoint_meta(run.pretrain, recover=True)
    if meta is None:  # first start: a seeded random generator (BasicSR init), committed as iteration 0
        torch.manual_seed(rng.derive_seed(cfg.run.seed, 0x9E7))
        meta = commit_checkpoint(run.pretrain, {"G.pt": torch_bytes(cpu_state(factory.build_generator(cfg))),
                                                "optim.pt": torch_bytes({"g": None})},
                                 {"kind": "pretrain", "iteration": 0, "iters_target": p.iters, "done": False})
    if meta.get("done"):
        return meta
    dev = pick_device(device)
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(run.pretrain, "G.pt", meta))
    g.to(dev).train()
    # betas (0.9, 0.99): BasicSR's setting for PSNR-oriented pretraining.
    opt = torch.optim.Adam(g.parameters(), lr=p.lr, betas=(0.9, 0.99))
    restore_training_state(run.pretrain, meta, {"g": opt})
    it0 = int(meta["iteration"])
    data = batches(factory.data_dirs(cfg)[0], cfg, p.batch_size, rng.derive_seed(cfg.run.seed, 0x9E7, 0xDA7A),
                   start_index=it0 * p.batch_size, total=p.iters * p.batch_size, num_workers=cfg.data.num_workers)
    tb = _tb_writer(run, "pretrain", purge_step=it0)

    def checkpoint(it: int) -> dict[str, Any]:
        return commit_checkpoint(run.pretrain, {"G.pt": torch_bytes(cpu_state(g)),
                                                "optim.pt": torch_bytes({"g": optimizer_state_cpu(opt)}),
                                                "rng.pt": torch_bytes(rng.capture())},
                                 {**meta, "iteration": it, "done": it >= p.iters})

    t0 = time.perf_counter()
    try:
        for it in range(it0, p.iters):
            lr_b, hr_b = next(data)
            sr = g(lr_b.to(dev))
            loss = torch.nn.functional.l1_loss(sr, hr_b.to(dev))
            _check_finite("pretrain", it, l1=loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = it + 1
            if done % cfg.adam.log_every == 0 or done == p.iters:
                tb.add_scalar("loss/l1", float(loss.detach()), done)
                tb.add_scalar("speed/iters_per_s", (done - it0) / max(time.perf_counter() - t0, 1e-9), done)
            if done % p.checkpoint_every == 0 or done == p.iters or pre.requested:
                tb.flush()
                meta = checkpoint(done)
            if pre.requested:
                tb.close()
                pre.finish()
    finally:
        tb.close()
    return meta
