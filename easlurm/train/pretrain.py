"""L1 pretraining: the PSNR-oriented generator every member starts from when ``model.pretrained`` is null.

Writes ``RUN/pretrain/{G.pt, optim.pt, rng.pt, meta.json}`` with the same commit/resume rules as a member (the one
loop of :mod:`easlurm.train.loop`); its settings are ``pretrain.*`` (lr, betas, batch, cadence).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from .. import factory, rng
from ..config import load_run_config
from ..leases import held
from ..runtime import AttemptLog, cpu_state, optimizer_state_cpu, pick_device, tb_writer
from ..store import RunDir, checkpoint_intact, commit_checkpoint, load_verified, read_checkpoint_meta, torch_bytes
from .loop import Cadence, run_loop
from .member import batches, load_optimizers
from .preempt import Preemption

SEED_TAG = 0x9E7


def is_done(run_dir: str | Path) -> bool:
    """Whether pretraining finished (record done, files present with their recorded sizes)."""
    folder = RunDir(run_dir).pretrain
    try:
        meta = read_checkpoint_meta(folder)
    except Exception:  # noqa: BLE001 - an unreadable record is simply "not done"
        return False
    return bool(meta and meta.get("kind") == "pretrain" and meta.get("done") and checkpoint_intact(folder, meta))


def progress(run_dir: str | Path) -> int:
    """Committed pretraining iterations."""
    try:
        meta = read_checkpoint_meta(RunDir(run_dir).pretrain)
    except Exception:  # noqa: BLE001
        return 0
    return int(meta.get("iteration", 0)) if meta else 0


class _PretrainTrainee:
    where = "pretrain"

    def __init__(self, g: nn.Module, opt: torch.optim.Optimizer, data: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device):
        self.g, self.opt, self.data, self.device = g, opt, data, device

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        lr, hr = next(self.data)
        sr = self.g(lr.to(self.device, non_blocking=True))
        loss = torch.nn.functional.l1_loss(sr, hr.to(self.device, non_blocking=True))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"l1": loss.detach()}

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.g}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"G.pt": torch_bytes(cpu_state(self.g)), "optim.pt": torch_bytes({"g": optimizer_state_cpu(self.opt)})}

    def sample_image(self) -> torch.Tensor | None:
        return None


def pretrain(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) the L1 pretraining stage; return its meta.json (preemption as for members)."""
    started = time.time()
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    with Preemption() as pre, held(run.pretrain, "pretrain", cfg.executor.lease_s) as lease:
        p = cfg.pretrain
        meta = read_checkpoint_meta(run.pretrain, recover=True)
        if meta is not None and meta.get("done"):
            return meta
        dev = pick_device(device)
        fresh = meta is None
        if meta is None:  # first start: a seeded random generator (BasicSR init)
            torch.manual_seed(rng.derive_seed(cfg.run.seed, SEED_TAG))
            g = factory.build_generator(cfg)
            meta = {"kind": "pretrain", "iteration": 0, "iters_target": p.iters, "done": False}
            saved = None
        else:
            g = factory.build_generator(cfg)
            g.load_state_dict(load_verified(run.pretrain, "G.pt", meta))
            saved = load_verified(run.pretrain, "optim.pt", meta)
        g.to(dev).train()
        opt = torch.optim.Adam(g.parameters(), lr=p.lr, betas=(p.betas[0], p.betas[1]))
        load_optimizers(saved, {"g": opt})
        if not fresh:
            rng.restore(load_verified(run.pretrain, "rng.pt", meta))
        it0 = int(meta["iteration"])
        data = batches(factory.data_dirs(cfg).train, cfg, p.batch_size,
                       rng.derive_seed(cfg.run.seed, SEED_TAG, 0xDA7A), start_index=it0 * p.batch_size,
                       total=p.iters * p.batch_size, num_workers=cfg.data.num_workers)
        tb = tb_writer(run.tb / "pretrain", purge_step=it0 + 1)
        record = meta
        attempt = AttemptLog(meta.get("attempts"), it0, dev, started)

        def commit(done: int, files: dict[str, bytes]) -> None:
            nonlocal record
            lease.check()
            record = commit_checkpoint(run.pretrain, files, {**record, "iteration": done, "done": done >= p.iters,
                                                             "attempts": attempt.entries(done)})

        try:
            run_loop(_PretrainTrainee(g, opt, data, dev), start=it0,
                     cadence=Cadence(p.iters, p.checkpoint_every, p.log_every), commit=commit, tb=tb, preempt=pre,
                     attempt=attempt)
        finally:
            tb.close()
        return record


__all__ = ["pretrain", "is_done", "progress"]
