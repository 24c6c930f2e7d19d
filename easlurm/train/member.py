"""One member's Adam phase (DESIGN.md §2): ``cycles/C/start/I`` in, ``cycles/C/members/I`` out, resumable to the bit.

The stage reads slot I's start entry of cycle C (written by the init stage for cycle 0, by the EA phase of cycle
C-1 after that; never modified) and trains into ``cycles/C/members/I/``, which it alone writes: ``G.pt``, ``D.pt``,
``optim.pt`` (generator and discriminator Adam states), ``rng.pt`` and ``meta.json``
(:class:`easlurm.population.MemberMeta`). All files are committed together every ``adam.checkpoint_every``
iterations, at the end (``done: true``) and on preemption. Running the same call again resumes from the last commit;
a finished phase is a no-op. Training data are drawn by global sample index (a pure function of seed and index), so
the sample position is one integer and a resumed run sees exactly the batches an uninterrupted one would.

A slot that is not Adam-trained (``population.member0: ea_only | frozen``) finishes at once: its members folder
*references* the start entry's files instead of copying them.

Per iteration (batch of HR patches, ×scale bicubic LR; all images NCHW RGB in [0,1]):
  sr = G(lr); L_dist = L1(sr, hr); L_perc = perceptual_weight·Perc(sr, hr) + gan_weight·GAN_G(D, sr, hr)
  g1 = ∇L_dist, g2 = ∇L_perc (two backward passes over one forward; a term whose preference weight is 0 is skipped)
  Adam step on G with the ``adam.mix`` direction (easlurm.train.mix); one D step on (hr, sr.detach()).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from .. import factory, losses
from ..config import Config, load_run_config
from ..errors import CheckpointError
from ..population import (
    MemberMeta, is_adam_trained, load_member_file, member_complete, member_file, phase_iters, read_member,
    require_member, write_member,
)
from ..runtime import AttemptLog, cpu_state, optimizer_state_cpu, pick_device, tb_writer
from ..store import RunDir, torch_bytes
from .. import rng
from ..leases import Lease, held
from .loop import Cadence, run_loop
from .mix import global_norm, mix
from .preempt import Preemption

#: Seed tags (with run.seed, cycle, slot): the member's torch RNG and its sample stream.
SEED_TAG_DATA = 0xDA7A


@dataclass
class StepResult:
    """Loss values and gradient norms of one iteration, as 0-d tensors on the training device (no host sync)."""
    l1: torch.Tensor
    perceptual: torch.Tensor
    gan: torch.Tensor
    d: torch.Tensor
    grad_norm_dist: torch.Tensor
    grad_norm_perc: torch.Tensor

    def scalars(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class MemberStep:
    """The math of one EA-Adam iteration for one member, with no I/O (shared by the job and its benchmarks)."""

    def __init__(self, cfg: Config, g: nn.Module, d: nn.Module, perceptual: nn.Module, w: tuple[float, float],
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, device: torch.device):
        self.cfg, self.g, self.d, self.perceptual, self.w = cfg, g, d, perceptual, w
        self.opt_g, self.opt_d, self.device = opt_g, opt_d, device
        self.params = [p for p in g.parameters() if p.requires_grad]
        self.autocast = device.type == "cuda" and cfg.adam.bf16
        self.channels_last = device.type == "cuda" and cfg.adam.channels_last

    def _amp(self) -> Any:
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[StepResult, torch.Tensor]:
        """One G update and one D update; returns the losses (device tensors) and the SR batch (detached)."""
        cfg = self.cfg
        if self.channels_last:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        w_dist, w_perc = self.w
        kind = cfg.loss.gan_type
        with self._amp():
            sr = self.g(lr)
            l_dist = losses.l1_loss(sr.float(), hr)
            l_per = self.perceptual(sr.float(), hr)
            d_fake = self.d(sr)
            d_real = self.d(hr).detach() if losses.needs_real_logits(kind) else None
            l_gan = losses.gan_g_loss(kind, d_fake.float(), None if d_real is None else d_real.float())
            l_perc = cfg.loss.perceptual_weight * l_per + cfg.loss.gan_weight * l_gan
        g1 = (torch.autograd.grad(l_dist, self.params, retain_graph=w_perc != 0.0, allow_unused=True)
              if w_dist != 0.0 else [None] * len(self.params))
        g2 = (torch.autograd.grad(l_perc, self.params, allow_unused=True)
              if w_perc != 0.0 else [None] * len(self.params))
        direction = mix(cfg.adam.mix, g1, g2, w_dist, w_perc, cfg.adam.norm_eps)
        for p, dp in zip(self.params, direction):
            p.grad = dp
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        sr_d = sr.detach()
        with self._amp():
            l_d = losses.gan_d_loss(kind, self.d(hr).float(), self.d(sr_d).float())
        self.opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        res = StepResult(l_dist.detach(), l_per.detach(), l_gan.detach(), l_d.detach(),
                         global_norm(g1, self.device), global_norm(g2, self.device))
        return res, sr_d


def batches(train_dir: Path, cfg: Config, batch_size: int, seed: int, start_index: int, total: int,
            num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches (LR, HR: N×3×h×w RGB float in [0, 1]) for global sample indices ``start_index`` …
    ``total - 1`` in order."""
    from ..data.dataset import RandomPatchDataset, infinite_loader

    ds = RandomPatchDataset(train_dir, patch_size=cfg.data.patch_size, scale=cfg.data.scale, num_samples=total,
                            seed=seed, augment=True)
    return iter(infinite_loader(ds, batch_size=batch_size, start_index=start_index, num_workers=num_workers,
                                pin_memory=torch.cuda.is_available()))


def sample_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """CHW image: nearest-upsampled LR | SR | HR of the first sample, clamped to [0, 1]."""
    up = torch.nn.functional.interpolate(lr[:1].float(), size=hr.shape[-2:], mode="nearest")
    return torch.cat([up[0], sr[0].float(), hr[0].float()], dim=2).clamp(0, 1).cpu()


def load_optimizers(state: Mapping[str, Any] | None, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Load the saved optimizer states (keys of ``optim.pt``; a missing or None entry means fresh moments)."""
    for key, opt in optimizers.items():
        if state and state.get(key):
            opt.load_state_dict(state[key])


class _MemberTrainee:
    """The member's step, data and state files, as :func:`~easlurm.train.loop.run_loop` drives them."""

    def __init__(self, cfg: Config, where: str, step: MemberStep, data: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device):
        self.where, self.cfg, self.s, self.data, self.device = where, cfg, step, data, device
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def step(self, iteration: int) -> dict[str, torch.Tensor]:
        lr, hr = next(self.data)
        lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
        res, sr = self.s(lr, hr)
        self._last = (lr, sr, hr)
        return res.scalars()

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.s.g, "D": self.s.d}

    def checkpoint_files(self) -> dict[str, bytes]:
        return {"G.pt": torch_bytes(cpu_state(self.s.g)), "D.pt": torch_bytes(cpu_state(self.s.d)),
                "optim.pt": torch_bytes({"g": optimizer_state_cpu(self.s.opt_g),
                                         "d": optimizer_state_cpu(self.s.opt_d)})}

    def sample_image(self) -> torch.Tensor | None:
        return None if self._last is None else sample_grid(*self._last)


def _start_hint(cycle: int) -> str:
    return ("written by the init stage" if cycle == 0 else f"written by the EA phase of cycle {cycle - 1}")


def is_done(run_dir: str | Path, cycle: int, member: int) -> bool:
    """Whether member ``member``'s Adam phase of ``cycle`` is finished (its record says done and its files exist
    with their recorded sizes) — the same check the stage makes before it starts."""
    return member_complete(RunDir(run_dir).member(cycle, member), "member")


def progress(run_dir: str | Path, cycle: int, member: int) -> int:
    """Committed iterations of the member's Adam phase (0 before its first checkpoint)."""
    try:
        meta = read_member(RunDir(run_dir).member(cycle, member))
    except CheckpointError:
        return 0
    return 0 if meta is None else meta.iteration


def train_member(run_dir: str | Path, cycle: int, member: int, device: str | None = None) -> MemberMeta:
    """Run (or resume, or skip) the Adam phase of ``member`` in ``cycle``; return its final record.

    SIGUSR2/SIGTERM at any point (also during start-up) → checkpoint after the current iteration, then hand the
    process exits with 128 + signal (the Slurm batch script then requeues the job).
    """
    started = time.time()
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    if not 0 <= member < n:
        raise CheckpointError(f"member {member}: the population has members 0..{n - 1}")
    last = cfg.run.cycles if cfg.adam.final_phase else cfg.run.cycles - 1
    if not 0 <= cycle <= last:
        raise CheckpointError(f"cycle {cycle}: the run's Adam phases are cycles 0..{last}")
    # Installed first: a preemption during start-up must not kill the task before its next commit.
    where = f"Adam phase of cycle {cycle}, member {member:02d}"
    with Preemption() as pre, held(run.member(cycle, member), where, cfg.executor.lease_s) as lease:
        return _train_member(run, cfg, cycle, member, device, pre, lease, started)


def _train_member(run: RunDir, cfg: Config, cycle: int, member: int, device: str | None, pre: Preemption,
                  lease: Lease, started: float) -> MemberMeta:
    folder = run.member(cycle, member)
    meta = read_member(folder, recover=True)  # we own the folder (we hold its lease)
    if meta is not None and meta.done:
        return meta
    start_folder = run.start(cycle, member)
    start = require_member(start_folder, "start", ("G.pt", "D.pt"), _start_hint(cycle))
    target = phase_iters(cfg, cycle)
    if not is_adam_trained(cfg, member):
        # Not Adam-trained: the trained population's entry is the start entry itself, by reference.
        refs = {name: member_file(start_folder, start, name) for name in sorted(start.files.get("sha256", {}))}
        record = dataclasses.replace(start, kind="member", iteration=0, iters_target=0, done=True,
                                     trained_from=run.rel(start_folder), files={}, attempts=[])
        return write_member(folder, record, refs=refs)

    dev = pick_device(device)
    where = f"Adam phase of cycle {cycle}, member {member:02d}"
    g = factory.build_generator(cfg)
    d = factory.build_discriminator(cfg)
    fresh = meta is None
    if meta is None:  # first start: from the start entry; fresh G moments when the EA reset them
        meta = dataclasses.replace(start, kind="member", iteration=0, iters_target=target, sample_index=0,
                                   done=False, trained_from=run.rel(start_folder), files={}, attempts=[])
        src_folder, src = start_folder, start
    else:
        src_folder, src = folder, meta
    g.load_state_dict(load_member_file(src_folder, src, "G.pt"))
    d.load_state_dict(load_member_file(src_folder, src, "D.pt"))
    saved = load_member_file(src_folder, src, "optim.pt") if "optim.pt" in src.files.get("sha256", {}) else None
    if fresh and saved and start.reset_g_optimizer:
        saved = {**saved, "g": None}
    g.to(dev).train()
    d.to(dev).train()
    if dev.type == "cuda" and cfg.adam.channels_last:
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    a, dc = cfg.adam, cfg.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=a.lr, betas=(a.betas[0], a.betas[1]))
    opt_d = torch.optim.Adam(d.parameters(), lr=dc.lr, betas=(dc.betas[0], dc.betas[1]))
    load_optimizers(saved, {"g": opt_g, "d": opt_d})  # Adam casts loaded states to its parameters' device
    perceptual = factory.build_perceptual(cfg).to(dev)
    # RNG last: building the networks above draws from it, and a resumed run must continue the exact stream.
    if fresh:
        torch.manual_seed(rng.derive_seed(cfg.run.seed, cycle, member))
    else:
        rng.restore(load_member_file(folder, meta, "rng.pt"))
    step = MemberStep(cfg, g, d, perceptual, meta.preference, opt_g, opt_d, dev)
    it0 = meta.iteration
    batch = cfg.adam.batch_size
    data = batches(factory.data_dirs(cfg).train, cfg, batch,
                   rng.derive_seed(cfg.run.seed, cycle, member, SEED_TAG_DATA),
                   start_index=it0 * batch, total=target * batch, num_workers=cfg.data.num_workers)
    print(f"[train] {where}: {'resuming' if it0 else 'starting'} at iteration {it0}/{target} on {dev}", flush=True)
    step0 = sum(phase_iters(cfg, c) for c in range(cycle))
    tb = tb_writer(run.tb / f"member_{member:02d}", purge_step=step0 + it0 + 1)
    record = meta
    attempt = AttemptLog(meta.attempts, it0, dev, started)

    def commit(done: int, files: dict[str, bytes]) -> None:
        nonlocal record
        lease.check()
        record = write_member(folder, dataclasses.replace(record, iteration=done, sample_index=done * batch,
                                                          done=done >= target, attempts=attempt.entries(done)),
                              files)

    a = cfg.adam
    try:
        run_loop(_MemberTrainee(cfg, where, step, data, dev), start=it0,
                 cadence=Cadence(target, a.checkpoint_every, a.log_every, a.image_every), commit=commit, tb=tb,
                 tb_step0=step0, preempt=pre,
                 extra_scalars=lambda: {"lr/generator": float(opt_g.param_groups[0]["lr"])}, attempt=attempt)
    finally:
        tb.close()
    return record


__all__ = ["MemberStep", "StepResult", "batches", "sample_grid", "load_optimizers", "is_done", "progress",
           "train_member"]
