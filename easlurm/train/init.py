"""The init stage: cycle 0's start population (``cycles/000/start/I``), written once, before any Adam phase.

Every slot starts from the same PSNR-oriented generator — ``model.pretrained`` (its ``model.pretrained_key`` entry)
or this run's finished pretrain stage — and gets its own freshly initialised discriminator (seeded per slot), which
stays with the slot for the whole run. Slot 0 holds the generator file; the other slots reference it (the store's
file references), so the shared start costs one copy on disk. No optimizer state: the first Adam phase starts with
fresh moments.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import factory, rng
from ..config import Config, load_run_config
from ..errors import CheckpointError
from ..leases import held
from ..population import (
    MemberMeta, member_complete, member_file, preferences, read_member, slot_mode, write_member,
)
from ..runtime import cpu_state
from ..store import RunDir, load_verified, read_checkpoint_meta, torch_bytes

#: Seed tag of the per-slot discriminator initialisation (with run.seed and the slot).
SEED_TAG_D = 0xD15C


def initial_generator_state(cfg: Config, run: RunDir) -> tuple[dict[str, torch.Tensor], str]:
    """The PSNR-oriented starting generator (CPU state dict) and its origin label."""
    if cfg.model.pretrained:
        from ..models.checkpoint_io import load_generator_weights

        g = factory.build_generator(cfg)
        load_generator_weights(g, cfg.model.pretrained, key=cfg.model.pretrained_key)
        return cpu_state(g), f"pretrained:{cfg.model.pretrained}#{cfg.model.pretrained_key}"
    meta = read_checkpoint_meta(run.pretrain)
    if meta is None or not meta.get("done"):
        raise CheckpointError(f"{run.pretrain}: no finished pretraining (run the pretrain stage first, or set "
                              f"model.pretrained)")
    return load_verified(run.pretrain, "G.pt", meta), f"pretrain:{meta['sha256']['G.pt']}"


def is_done(run_dir: str | Path) -> bool:
    """Whether every slot of cycle 0's start population is committed and intact."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    return all(member_complete(run.start(0, i), "start") for i in range(cfg.population.size))


def init_population(run_dir: str | Path) -> list[MemberMeta]:
    """Write (or complete) cycle 0's start population; return the N records in slot order."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    with held(run.cycle(0) / "start", "init stage", cfg.executor.lease_s):
        g_state, origin = initial_generator_state(cfg, run)
        g_bytes = torch_bytes(g_state)
        prefs = preferences(n)
        out: list[MemberMeta] = []
        for i in range(n):
            folder = run.start(0, i)
            existing = read_member(folder, recover=True)
            if existing is not None and member_complete(folder, "start"):
                out.append(existing)
                continue
            torch.manual_seed(rng.derive_seed(cfg.run.seed, SEED_TAG_D, i))
            d = factory.build_discriminator(cfg)
            meta = MemberMeta(kind="start", cycle=0, slot=i, preference=prefs[i], mode=slot_mode(cfg, i),
                              origin=origin, reset_g_optimizer=True)
            files = {"D.pt": torch_bytes(cpu_state(d))}
            refs = {}
            if i == 0:
                files["G.pt"] = g_bytes
            else:
                refs["G.pt"] = member_file(run.start(0, 0), out[0], "G.pt")
            out.append(write_member(folder, meta, files, refs))
        return out


__all__ = ["initial_generator_state", "init_population", "is_done", "SEED_TAG_D"]
