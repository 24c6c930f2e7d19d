"""Whole runs, 3 cycles end to end with the debug executor: the paper configs shrunk (their architecture family,
member-0 mode, selection and GAN type kept) and the tiny config's member-0 × selection matrix. Each finished run is
checked for what the run-state model promises: stage outputs written once, every lineage row's checkpoint present
with its sha256, member 0 handled as its mode says, and a rerun that runs nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from easlurm import factory
from easlurm.checkpoints import verify_checkpoint_dir
from easlurm.config import Config, load_config, load_run_config, write_config
from easlurm.orchestrate.local import DebugExecutor
from easlurm.orchestrate.plan import build_plan, pending_stages
from easlurm.population import after_adam, is_adam_trained, member_file, read_member
from easlurm.store import RunDir, sha256_file
from easlurm.tensor_files import load_verified

from conftest import TINY, stage_done

REPO = Path(__file__).resolve().parents[1]
CYCLES = 3

# Sizes only: tiny networks on 32 px patches, a few iterations per stage, every phase length distinct.
SHRINK = (*TINY, f"run.cycles={CYCLES}", "adam.iters_per_cycle=3", "adam.first_phase_iters=2",
          "adam.final_phase=true", "adam.final_phase_iters=2", "adam.checkpoint_every=2", "adam.image_every=2",
          "ea.eval_batch=4", "data.fitness_tile=32", "fusion.iters=2", "fusion.checkpoint_every=1",
          "fusion.batch_size=2", "fusion.average_images=2", "eval.metrics=[psnr, ssim]")


def _run_to_the_end(cfg: Config, root: Path) -> tuple[RunDir, list[tuple[str, int]]]:
    write_config(cfg, root, argv=["pytest"])
    run = RunDir(root)
    cfg = load_run_config(root)
    ex = DebugExecutor(cfg, run, echo=lambda m: None)
    ex.run(build_plan(cfg, run))
    return run, ex.calls


def _expected_calls(cfg: Any) -> list[tuple[str, int]]:
    """Every task that runs, in order: an Adam phase runs its Adam-trained slots only (array index = slot)."""
    trained = [i for i in range(cfg.population.size) if is_adam_trained(cfg, i)]
    out = [("pretrain", 0), ("init", 0)]
    for c in range(CYCLES + 1):
        out += [(f"adam/{c:03d}", i) for i in trained] + ([(f"ea/{c:03d}", 0)] if c < CYCLES else [])
    return out + [("fuse", 0), ("eval", 0)]


def check_finished_run(run: RunDir, calls: list[tuple[str, int]] | None) -> dict[str, Any]:
    """The checks every finished run must pass; returns facts for the caller's mode-specific checks."""
    cfg = load_run_config(run.root)
    n = cfg.population.size
    if calls is not None:
        assert calls == _expected_calls(cfg)
    plan = build_plan(cfg, run)
    assert pending_stages(plan) == []
    # Every checkpoint folder of every stage verifies in full: its own files and the files it references.
    folders = [run.pretrain, run.fusion] + [f for c in range(CYCLES + 1) for i in range(n)
                                            for f in (run.start(c, i), after_adam(cfg, run, c, i)[0])]
    for folder in folders:
        assert verify_checkpoint_dir(folder), folder
    # Write-once: each EA phase's done record still matches the start entries it wrote, after every later stage.
    for c in range(CYCLES):
        assert stage_done(run.root, "ea", cycle=c), c
    # The lineage acceptance: every checkpoint a row names exists and matches its sha256.
    named = 0
    for c in range(CYCLES):
        rows = [json.loads(line) for line in (run.ea(c) / "lineage.jsonl").read_text().splitlines()]
        assert len(rows) == cfg.ea.generations * n
        for r in rows:
            for p in r["parents"]:
                if "checkpoint" in p:
                    assert sha256_file(run.root / p["checkpoint"]) == p["sha256"], (c, r["id"], p)
                    named += 1
            if "checkpoint" in r:
                assert sha256_file(run.root / r["checkpoint"]) == r["checkpoint_sha256"], (c, r["id"])
                named += 1
    assert named > 0
    # The fused model is a plain backbone; evaluation scored it.
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(run.fusion, "fused.pt"), strict=True)
    assert (run.eval / "results.csv").is_file()
    # A second pass runs nothing.
    again = DebugExecutor(cfg, run, echo=lambda m: None)
    again.run(plan)
    assert again.calls == []
    slot0 = [after_adam(cfg, run, c, 0)[0] for c in range(CYCLES + 1)]
    return {"cfg": cfg, "g0": [member_file(f, read_member(f), "G.pt").path for f in slot0]}


def _slot0_never_replaced(run: RunDir) -> bool:
    for c in range(CYCLES):
        for line in (run.ea(c) / "lineage.jsonl").read_text().splitlines():
            if 0 in json.loads(line)["accepted_into"]:
                return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["moead", "nsga2"])
@pytest.mark.parametrize("member0", ["frozen", "trained"])
def test_tiny_runs_end_to_end(member0, selection, demo_shards, tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", *SHRINK,
                                                       f"population.member0={member0}", f"ea.selection={selection}"])
    run, calls = _run_to_the_end(cfg, tmp_path / "run")
    facts = check_finished_run(run, calls)
    g0 = facts["g0"]
    if member0 == "frozen":
        # Never trained, never replaced: every cycle's member 0 is the init stage's generator file itself.
        assert set(g0) == {run.start(0, 0) / "G.pt"} and _slot0_never_replaced(run)
        assert all(not run.member(c, 0).exists() for c in range(CYCLES + 1))
    else:
        assert g0 == [run.member(c, 0) / "G.pt" for c in range(CYCLES + 1)]  # trained every phase


PAPER_CONFIGS = {"srresnet": "msrresnet", "rrdb": "rrdbnet", "swinir": "swinir"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_shrunk_paper_configs_run_end_to_end(name, tmp_path):
    """The preflight of each paper config (easlurm.preflight): its structure kept, its sizes shrunk."""
    from easlurm.preflight import run_preflight, shrink

    full = load_config(REPO / "configs" / f"{name}.yaml")
    lines: list[str] = []
    run = RunDir(run_preflight(full, tmp_path, echo=lines.append))
    facts = check_finished_run(run, None)
    cfg = facts["cfg"]
    for field in ("model.arch", "population.member0", "ea.selection", "loss.gan_type", "adam.mix",
                  "fusion.att_kernel", "fusion.l1_weight"):
        section, key = field.split(".")
        assert getattr(getattr(cfg, section), key) == getattr(getattr(full, section), key), field
    report = "\n".join(lines)
    assert "preflight: structure kept" in report and "preflight passed" in report
    assert "model.pretrained: /path/to/" in report and "VGG19 weights" in report  # what the real run needs
    assert shrink(full, tmp_path / "demo").cfg.run.cycles == CYCLES
    again = DebugExecutor(cfg, run, echo=lambda m: None)
    again.run(build_plan(cfg, run))
    assert again.calls == []
    assert cfg.model.arch == PAPER_CONFIGS[name]
    g0 = facts["g0"]
    # Member 0 is never Adam-trained (frozen: SRResNet; EA-only: RRDB): no job ever ran for it, no members folder.
    assert all(not run.member(c, 0).exists() for c in range(CYCLES + 1))
    if cfg.population.member0 == "frozen":
        assert set(g0) == {run.start(0, 0) / "G.pt"} and _slot0_never_replaced(run)
    else:
        assert cfg.population.member0 == "ea_only"
        # Its generator is the init stage's or a genome the EA put there, never a trained file.
        assert all(p == run.start(0, 0) / "G.pt" or p.parent.parent.name == "start" for p in g0)
    # Phase lengths: first, middle and final phases as configured.
    iters = [read_member(run.member(c, 1)).iteration for c in range(CYCLES + 1)]
    assert iters == [4, 6, 6, 4]
    # The GAN type reached the discriminator's loss: the members' D moved.
    d_start = load_verified(run.start(0, 1), "D.pt")
    d_end = load_verified(run.member(CYCLES, 1), "D.pt")
    assert any(not torch.equal(d_start[k], d_end[k]) for k in d_start)
    # Every layer fusion knows of became dynamic (SwinIR: its linear layers and LayerNorms beside the convs).
    from easlurm.fuse.dynamic import fusable_layers

    attention = json.loads((run.fusion / "attention.json").read_text())
    assert list(attention) == fusable_layers(factory.build_generator(cfg))


#: Every experiment config (site profiles, configs/sites/, are not experiments: tests/test_site.py proves those).
OTHER_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                       if p.stem not in PAPER_CONFIGS and "sites" not in p.relative_to(REPO / "configs").parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", OTHER_CONFIGS, ids=[p.relative_to(REPO / "configs").as_posix() for p in OTHER_CONFIGS])
def test_every_shipped_config_passes_its_preflight(path, tmp_path):
    """CI proves every file in configs/ (the paper configs above, with their own checks)."""
    res = subprocess.run([sys.executable, "-m", "easlurm.launch", "--config", str(path), "--preflight", "--run-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "preflight: sizes shrunk" in res.stdout and "preflight passed" in res.stdout
    assert "| bicubic |" in res.stdout
