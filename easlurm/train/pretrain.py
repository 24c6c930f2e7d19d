"""L1 pretraining: the PSNR-oriented generator every member starts from when ``model.pretrained`` is null.

Writes ``RUN/pretrain/{G.pt, optim.pt, rng.pt, meta.json}`` (:class:`easlurm.stages.pretrain.PretrainRecord`) with
the same commit/resume rules as a member (the engine of :mod:`easlurm.engine`); its settings are ``pretrain.*``
(lr, betas, batch, cadence). Images NCHW RGB in [0, 1].
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from .. import factory, rng
from ..config import load_run_config
from ..engine.context import load_optimizers, loader, resume, stage_context, train
from ..engine.data import batches
from ..engine.loop import Cadence
from ..runtime import adam, cpu_state, optimizer_state_cpu
from ..stages.pretrain import PretrainRecord, read_record
from ..checkpoints import commit_checkpoint
from ..store import RunDir
from ..tensor_files import torch_bytes


class PretrainTrainee:
    where = "pretrain"

    def __init__(self, g: nn.Module, opt: torch.optim.Optimizer, device: torch.device):
        self.g, self.opt, self.device = g, opt, device
        self.data: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        assert self.data is not None
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

    def load_files(self, load: Callable[[str], Any]) -> None:
        self.g.load_state_dict(load("G.pt"))
        load_optimizers(load("optim.pt"), {"g": self.opt})

    def sample_image(self) -> torch.Tensor | None:
        return None


def pretrain(run_dir: str | Path, device: str | None = None) -> PretrainRecord:
    """Train (or resume, or skip) the L1 pretraining stage; return its record (preemption as for members)."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    with stage_context(run, cfg, run.pretrain, "pretrain", device) as ctx:
        p = cfg.pretrain
        record = read_record(cfg, run, recover=True)
        if record is not None and record.done:
            return record
        if record is None:  # first start: a seeded random generator (BasicSR init)
            torch.manual_seed(rng.derive_seed(cfg.run.seed, rng.SEED_TAG_PRETRAIN))
        g = factory.build_generator(cfg).to(ctx.device).train()
        trainee = PretrainTrainee(g, adam(g.parameters(), p.lr, p.betas), ctx.device)
        if record is None:
            record = PretrainRecord(iters_target=p.iters)
        else:
            resume(trainee, loader(run.pretrain, record))
        it0 = record.iteration
        trainee.data = batches(factory.data_dirs(cfg).train, cfg, p.batch_size,
                               rng.derive_seed(cfg.run.seed, rng.SEED_TAG_PRETRAIN, rng.SEED_TAG_DATA),
                               start_index=it0 * p.batch_size, total=p.iters * p.batch_size,
                               num_workers=cfg.data.num_workers)

        def save(rec: PretrainRecord, files: dict[str, bytes]) -> PretrainRecord:
            rec = dataclasses.replace(rec, done=rec.iteration >= p.iters)
            raw = commit_checkpoint(run.pretrain, files, rec.to_dict(), fence=ctx.lease.check)
            return PretrainRecord.from_dict(raw, run.pretrain / "meta.json")

        return train(ctx, trainee, record, save, Cadence(p.iters, p.checkpoint_every, p.log_every),
                     tb_folder=run.tb / "pretrain")


__all__ = ["PretrainTrainee", "pretrain"]
