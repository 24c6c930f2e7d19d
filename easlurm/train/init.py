"""The init stage: cycle 0's start population (``cycles/000/start/I``), written once, before any Adam phase.

Every slot starts from the same PSNR-oriented generator — ``model.pretrained`` (its ``model.pretrained_key`` entry)
or this run's finished pretrain stage — and gets its own freshly initialised discriminator (seeded per slot), which
stays with the slot for the whole run. Slot 0 holds the generator file; the other slots reference it (the store's
file references), so the shared start costs one copy on disk. No optimizer state: the first Adam phase starts with
fresh moments. Last, ``cycles/000/start/done.json`` (:class:`easlurm.stages.init.InitRecord`) records when it ran.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import factory, rng
from ..config import Config, load_run_config
from ..engine.context import stage_context
from ..errors import CheckpointError
from ..population import MemberMeta, member_complete, member_file, preferences, read_member, slot_mode, write_member
from ..runtime import cpu_state
from ..stages.init import InitRecord, record_path
from ..stages.pretrain import read_record as read_pretrain
from ..store import RunDir, atomic_write_json
from ..tensor_files import load_verified, torch_bytes


def initial_generator_state(cfg: Config, run: RunDir) -> tuple[dict[str, torch.Tensor], str]:
    """The PSNR-oriented starting generator (CPU state dict) and its origin label."""
    if cfg.model.pretrained:
        from ..models.checkpoint_io import load_generator_weights

        g = factory.build_generator(cfg)
        load_generator_weights(g, cfg.model.pretrained, key=cfg.model.pretrained_key,
                               sha256=cfg.model.pretrained_sha256)
        return cpu_state(g), f"pretrained:{cfg.model.pretrained}#{cfg.model.pretrained_key}"
    record = read_pretrain(cfg, run)
    if record is None or not record.done:
        raise CheckpointError(f"{run.pretrain}: no finished pretraining (run the pretrain stage first, or set "
                              f"model.pretrained)")
    return load_verified(run.pretrain, "G.pt", record.store), f"pretrain:{record.files['sha256']['G.pt']}"


def init_population(run_dir: str | Path, device: str | None = None) -> list[MemberMeta]:
    """Write (or complete) cycle 0's start population; return the N records in slot order (CPU only; ``device``
    is accepted like every stage's and ignored)."""
    run = RunDir(run_dir)
    cfg = load_run_config(run.root)
    n = cfg.population.size
    with stage_context(run, cfg, run.cycle(0) / "start", "init stage", "cpu", preemptible=False) as ctx:
        attempt = ctx.attempt_log([], 0)
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
            torch.manual_seed(rng.derive_seed(cfg.run.seed, rng.SEED_TAG_D, i))
            d = factory.build_discriminator(cfg)
            meta = MemberMeta(kind="start", cycle=0, slot=i, preference=prefs[i], mode=slot_mode(cfg, i),
                              origin=origin, reset_g_optimizer=True)
            files = {"D.pt": torch_bytes(cpu_state(d))}
            refs = {}
            if i == 0:
                files["G.pt"] = g_bytes
            else:
                refs["G.pt"] = member_file(run.start(0, 0), out[0], "G.pt")
            out.append(write_member(folder, meta, files, refs, fence=ctx.lease.check))
        record = InitRecord(iteration=1, iters_target=1, done=True, attempts=attempt.entries(1), slots=n)
        atomic_write_json(record_path(run), record.to_dict())
        return out


__all__ = ["initial_generator_state", "init_population"]
