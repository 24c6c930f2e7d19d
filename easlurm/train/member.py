"""One member's Adam phase (DESIGN.md §2), resumable to the bit.

A member lives in ``RUN/cycles/C/members/I/`` (zero-padded): ``G.pt``, ``D.pt``, ``optim.pt`` (generator and
discriminator Adam states), ``rng.pt`` and ``meta.json`` (preference, iteration, sample index, sha256 of every file).
The phase trains ``adam.iters_per_cycle`` iterations in place, committing all files together every
``adam.checkpoint_every`` iterations and at the end. Running the same command again resumes from the last commit; a
finished phase is a no-op. Training data are drawn by global sample index (a pure function of seed and index), so the
sample position is one integer and a resumed run sees exactly the batches an uninterrupted one would.

Per iteration (batch of HR patches, ×scale bicubic LR; all images NCHW RGB in [0,1]):
  sr = G(lr); L_dist = L1(sr, hr); L_perc = perceptual_weight·Perc(sr, hr) + gan_weight·GAN_G(D, sr, hr)
  g1 = ∇L_dist, g2 = ∇L_perc (two backward passes over one forward; a term whose preference weight is 0 is skipped)
  Adam step on G with the per-tensor normalised mix (easlurm.train.mix); one D step on (hr, sr.detach()).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from .. import factory
from ..config import Config, load_run_config
from ..errors import CheckpointError, TrainingError
from ..store import RunDir, commit_checkpoint, load_verified, read_checkpoint_meta, torch_bytes
from . import rng
from .mix import global_norm, normalised_mix
from .lock import member_lock
from .preempt import Preemption


def preferences(n: int) -> list[tuple[float, float]]:
    """(w_dist, w_perc) of members 0..n-1, uniform on the simplex from (1, 0) to (0, 1)."""
    return [(1.0 - i / (n - 1), i / (n - 1)) for i in range(n)] if n > 1 else [(1.0, 0.0)]


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` or CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_state(module_or_state: nn.Module | dict[str, Any]) -> dict[str, Any]:
    """A state dict with every tensor moved to CPU (checkpoints are device-independent)."""
    sd = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in sd.items()}


def optimizer_state_cpu(opt: torch.optim.Optimizer) -> dict[str, Any]:
    sd = opt.state_dict()
    return {"state": {k: {n: (t.cpu() if torch.is_tensor(t) else t) for n, t in s.items()}
                      for k, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def restore_training_state(folder: Path, meta: dict[str, Any],
                           optimizers: dict[str, torch.optim.Optimizer]) -> bool:
    """Load the optimizer states saved in ``folder/optim.pt`` (under the given keys; a ``None`` entry means "fresh")
    and the RNG states of ``rng.pt`` when the checkpoint has one; return whether RNG states were restored."""
    saved = load_verified(folder, "optim.pt", meta)
    for key, opt in optimizers.items():
        if saved.get(key):
            opt.load_state_dict(saved[key])
    if "rng.pt" in meta.get("sha256", {}):
        rng.restore(load_verified(folder, "rng.pt", meta))
        return True
    return False


def initial_generator_state(cfg: Config, run: RunDir) -> tuple[dict[str, torch.Tensor], str]:
    """The PSNR-oriented starting generator: ``model.pretrained`` or this run's finished pretrain stage."""
    if cfg.model.pretrained:
        from ..models.checkpoint_io import load_generator_weights

        g = factory.build_generator(cfg)
        load_generator_weights(g, cfg.model.pretrained)
        return cpu_state(g), f"pretrained:{cfg.model.pretrained}"
    meta = read_checkpoint_meta(run.pretrain)
    if meta is None or not meta.get("done"):
        raise CheckpointError(f"{run.pretrain}: no finished pretraining (run `python -m easlurm.train --run "
                              f"{run.root} --pretrain` first, or set model.pretrained)")
    return load_verified(run.pretrain, "G.pt", meta), f"pretrain:{meta['sha256']['G.pt']}"


def init_member(cfg: Config, run: RunDir, i: int) -> dict[str, Any]:
    """Create cycle 0's member ``i``: the shared pretrained G and a fresh, seeded discriminator."""
    g_state, origin = initial_generator_state(cfg, run)
    torch.manual_seed(rng.derive_seed(cfg.run.seed, 0xD15C, i))
    d = factory.build_discriminator(cfg)
    w = preferences(cfg.population.size)[i]
    meta = {"kind": "member", "cycle": 0, "slot": i, "preference": list(w), "iteration": 0, "sample_index": 0,
            "iters_target": cfg.adam.iters_per_cycle, "frozen": bool(cfg.population.freeze_first and i == 0),
            "origin": origin, "done": False}
    files = {"G.pt": torch_bytes(g_state), "D.pt": torch_bytes(cpu_state(d)),
             "optim.pt": torch_bytes({"g": None, "d": None})}
    return commit_checkpoint(run.member(0, i), files, meta)


@dataclass
class StepResult:
    """Loss values and gradient norms of one iteration (floats, for logging)."""
    l1: float
    perceptual: float
    gan: float
    d: float
    grad_norm_dist: float
    grad_norm_perc: float


class MemberStep:
    """The math of one EA-Adam iteration for one member, with no I/O (shared by the job and its benchmark)."""

    def __init__(self, cfg: Config, g: nn.Module, d: nn.Module, perceptual: nn.Module, w: tuple[float, float],
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, device: torch.device):
        from .. import losses

        self.cfg, self.g, self.d, self.perceptual, self.w = cfg, g, d, perceptual, w
        self.opt_g, self.opt_d, self.device = opt_g, opt_d, device
        self.losses = losses
        self.params = [p for p in g.parameters() if p.requires_grad]
        self.autocast = (device.type == "cuda" and cfg.adam.bf16)
        self.channels_last = device.type == "cuda" and cfg.adam.channels_last

    def _amp(self) -> Any:
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor, iteration: int = 0, where: str = "") -> tuple[
            StepResult, torch.Tensor]:
        """One G update and one D update; returns the losses and the SR batch (detached)."""
        cfg, losses = self.cfg, self.losses
        if self.channels_last:
            lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
        w_dist, w_perc = self.w
        kind = cfg.loss.gan_type
        with self._amp():
            sr = self.g(lr)
            l_dist = losses.l1_loss(sr.float(), hr)
            l_per = self.perceptual(sr.float(), hr)
            d_fake = self.d(sr)
            d_real = self.d(hr).detach() if kind == "relativistic" else None
            l_gan = losses.gan_g_loss(kind, d_fake.float(), None if d_real is None else d_real.float())
            l_perc = cfg.loss.perceptual_weight * l_per + cfg.loss.gan_weight * l_gan
        _check_finite(where, iteration, l1=l_dist, perceptual=l_per, gan=l_gan)
        g1 = (torch.autograd.grad(l_dist, self.params, retain_graph=w_perc != 0.0, allow_unused=True)
              if w_dist != 0.0 else [None] * len(self.params))
        g2 = (torch.autograd.grad(l_perc, self.params, allow_unused=True)
              if w_perc != 0.0 else [None] * len(self.params))
        direction = normalised_mix(g1, g2, w_dist, w_perc, cfg.adam.norm_eps)
        for p, dp in zip(self.params, direction):
            p.grad = dp
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        sr_d = sr.detach()
        with self._amp():
            real = self.d(hr)
            fake = self.d(sr_d)
            l_d = losses.gan_d_loss(kind, real.float(), fake.float())
        _check_finite(where, iteration, discriminator=l_d)
        self.opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        res = StepResult(float(l_dist.detach()), float(l_per.detach()), float(l_gan.detach()), float(l_d.detach()),
                         global_norm(g1), global_norm(g2))
        return res, sr_d


def _check_finite(where: str, iteration: int, **terms: torch.Tensor) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise TrainingError(f"{where}: {name} loss is {float(value)} at iteration {iteration}; stopped, the "
                                f"last checkpoint is kept")


def batches(train_dir: Path, cfg: Config, batch_size: int, seed: int, start_index: int, total: int,
            num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches for global sample indices ``start_index`` … ``total - 1`` in order."""
    from ..data.dataset import RandomPatchDataset, infinite_loader

    ds = RandomPatchDataset(train_dir, patch_size=cfg.data.patch_size, scale=cfg.data.scale, num_samples=total,
                            seed=seed, augment=True)
    return iter(infinite_loader(ds, batch_size=batch_size, start_index=start_index, num_workers=num_workers))


def _tb_writer(run: RunDir, name: str, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.tb / name), purge_step=purge_step)


def _sample_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """CHW image: nearest-upsampled LR | SR | HR of the first sample, clamped to [0, 1]."""
    up = torch.nn.functional.interpolate(lr[:1].float(), size=hr.shape[-2:], mode="nearest")
    return torch.cat([up[0], sr[0].float(), hr[0].float()], dim=2).clamp(0, 1).cpu()


def train_member(run_dir: str | Path, cycle: int, member: int, device: str | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) the Adam phase of ``member`` in ``cycle``; return its final meta.json.

    SIGUSR2/SIGTERM at any point (also during start-up) → checkpoint after the current iteration, then hand the
    signal on (submitit requeues the task) or exit with 128 + signal.
    """
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    if not 0 <= member < n:
        raise CheckpointError(f"--member {member}: the population has members 0..{n - 1}")
    if not 0 <= cycle < cfg.run.cycles:
        raise CheckpointError(f"--cycle {cycle}: the run has cycles 0..{cfg.run.cycles - 1}")
    # Installed first: a preemption during start-up must not kill the task before its next commit.
    with Preemption() as pre, member_lock(run.member(cycle, member)):
        return _train_member(run, cfg, cycle, member, device, pre)


def _train_member(run: RunDir, cfg: Config, cycle: int, member: int, device: str | None, pre: Preemption
                  ) -> dict[str, Any]:
    folder = run.member(cycle, member)
    meta = read_checkpoint_meta(folder, recover=True)  # we own the folder (we hold its lock)
    if meta is None:
        if cycle != 0:
            raise CheckpointError(f"{folder}: member not found (cycle {cycle} members are written by the EA job "
                                  f"of cycle {cycle - 1})")
        meta = init_member(cfg, run, member)
    target = cfg.adam.iters_per_cycle
    if meta.get("done") or meta.get("frozen"):
        if meta.get("frozen") and not meta.get("done"):
            meta = commit_checkpoint(folder, {}, {**meta, "done": True})
        return meta

    dev = pick_device(device)
    where = f"cycle {cycle} member {member}"
    g = factory.build_generator(cfg)
    d = factory.build_discriminator(cfg)
    g.load_state_dict(load_verified(folder, "G.pt", meta))
    d.load_state_dict(load_verified(folder, "D.pt", meta))
    g.to(dev).train()
    d.to(dev).train()
    if dev.type == "cuda" and cfg.adam.channels_last:
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    perceptual = factory.build_perceptual(cfg).to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.adam.lr, betas=tuple(cfg.adam.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr, betas=tuple(cfg.discriminator.betas))
    if not restore_training_state(folder, meta, {"g": opt_g, "d": opt_d}):
        torch.manual_seed(rng.derive_seed(cfg.run.seed, cycle, member))

    w = tuple(meta["preference"])
    step = MemberStep(cfg, g, d, perceptual, (float(w[0]), float(w[1])), opt_g, opt_d, dev)
    it0 = int(meta["iteration"])
    batch = cfg.adam.batch_size
    data = batches(factory.data_dirs(cfg)[0], cfg, batch, rng.derive_seed(cfg.run.seed, cycle, member, 0xDA7A),
                   start_index=it0 * batch, total=target * batch, num_workers=cfg.data.num_workers)
    step0 = cycle * target
    print(f"[train] {where}: {'resuming' if it0 else 'starting'} at iteration {it0}/{target} on {dev}", flush=True)
    tb = _tb_writer(run, f"member_{member:02d}", purge_step=step0 + it0)

    def checkpoint(it: int) -> dict[str, Any]:
        files = {"G.pt": torch_bytes(cpu_state(g)), "D.pt": torch_bytes(cpu_state(d)),
                 "optim.pt": torch_bytes({"g": optimizer_state_cpu(opt_g), "d": optimizer_state_cpu(opt_d)}),
                 "rng.pt": torch_bytes(rng.capture())}
        return commit_checkpoint(folder, files, {**meta, "iteration": it, "sample_index": it * batch,
                                                 "done": it >= target})

    t_last, it_last = time.perf_counter(), it0
    try:
        for it in range(it0, target):
            lr_b, hr_b = next(data)
            lr_b, hr_b = lr_b.to(dev, non_blocking=True), hr_b.to(dev, non_blocking=True)
            res, sr = step(lr_b, hr_b, iteration=it, where=where)
            done = it + 1
            gstep = step0 + done
            if done % cfg.adam.log_every == 0 or done == target:
                now = time.perf_counter()
                for tag, val in (("loss/l1", res.l1), ("loss/perceptual", res.perceptual), ("loss/gan", res.gan),
                                 ("loss/d", res.d), ("grad_norm/l1", res.grad_norm_dist),
                                 ("grad_norm/perceptual", res.grad_norm_perc),
                                 ("lr/generator", opt_g.param_groups[0]["lr"]),
                                 ("speed/iters_per_s", (done - it_last) / max(now - t_last, 1e-9))):
                    tb.add_scalar(tag, val, gstep)
                t_last, it_last = now, done
            if done % cfg.adam.image_every == 0 or done == target:
                tb.add_image("samples/lr_sr_hr", _sample_grid(lr_b, sr, hr_b), gstep)
            if done % cfg.adam.checkpoint_every == 0 or done == target or pre.requested:
                tb.flush()
                meta = checkpoint(done)
            if pre.requested:
                tb.close()
                pre.finish()
    finally:
        tb.close()
    return meta
