"""The fusion job (easlurm.fuse.job / python -m easlurm.fuse) on a tiny run with three random experts."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easlurm import factory
from easlurm.config import load_run_config
from easlurm.errors import CheckpointError
from easlurm.fuse.dynamic import make_dynamic, set_fixed_attention
from easlurm.fuse.job import run_fusion
from easlurm.store import RunDir, commit_checkpoint, load_checkpoint, read_checkpoint_meta, torch_bytes

REPO = Path(__file__).resolve().parents[1]


def add_final_population(run: Path, seeds: tuple[int, ...] = (11, 12, 13)) -> list[dict[str, torch.Tensor]]:
    """Write random tiny members (G, D) as the final population, cycle ``run.cycles``; return their G states."""
    cfg = load_run_config(run)
    rd = RunDir(run)
    n = cfg.population.size
    assert len(seeds) == n
    states = []
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        g = factory.build_generator(cfg)
        with torch.no_grad():  # the scaled init makes every expert ≈ bilinear upsampling; make them really differ
            for p in g.parameters():
                p.add_(0.05 * torch.randn_like(p))
        d = factory.build_discriminator(cfg)
        w = [1 - i / (n - 1), i / (n - 1)]
        meta = {"kind": "member", "cycle": cfg.run.cycles, "slot": i, "preference": w, "iteration": 0,
                "objectives": [0.1 * (i + 1), 0.3 - 0.1 * i], "done": False}
        commit_checkpoint(rd.member(cfg.run.cycles, i), {"G.pt": torch_bytes(g.state_dict()),
                                                         "D.pt": torch_bytes(d.state_dict()),
                                                         "optim.pt": torch_bytes({"g": None, "d": None})}, meta)
        states.append(g.state_dict())
    return states


def _outputs(run: Path) -> dict[str, bytes]:
    folder = RunDir(run).fusion
    return {name: (folder / name).read_bytes() for name in ("fused.pt", "attention.json", "attention.pt", "D.pt")}


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """One finished fusion run shared by the read-only tests below."""
    from easlurm.config import load_config, write_config

    from conftest import TINY

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", *TINY])
    run = tmp_path_factory.mktemp("fused") / "run"
    write_config(cfg, run, argv=["pytest"])
    add_final_population(run)
    run_fusion(run)
    return run


def test_fused_backbone_loads_strictly_and_attention_is_a_distribution_per_conv(fused_run):
    cfg = load_run_config(fused_run)
    folder = RunDir(fused_run).fusion
    meta = read_checkpoint_meta(folder)
    assert meta["done"] and meta["iteration"] == cfg.fusion.iters
    for name in ("fused.pt", "attention.json", "attention.pt", "D.pt", "optim.pt", "rng.pt"):
        assert name in meta["sha256"], name
    fused = load_checkpoint(folder / "fused.pt", sha256=meta["sha256"]["fused.pt"])
    g = factory.build_generator(cfg)
    g.load_state_dict(fused, strict=True)

    att = json.loads((folder / "attention.json").read_text())
    convs = [n for n, m in g.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert list(att) == convs
    for name, vec in att.items():
        assert len(vec) == cfg.population.size
        assert all(v >= 0 for v in vec)
        assert sum(vec) == pytest.approx(1.0, abs=1e-12), name
    # Checkpoints hold only the attention branches, never the K stacked expert kernels.
    att_state = load_checkpoint(folder / "attention.pt")
    assert att_state and all(".attention." in k for k in att_state)
    assert meta["val_ids"] == ["astronaut", "china", "coffee"][: cfg.data.val_images]


def test_fused_model_equals_dynamic_model_with_recorded_attention_fixed(fused_run):
    cfg = load_run_config(fused_run)
    folder = RunDir(fused_run).fusion
    att = json.loads((folder / "attention.json").read_text())
    experts = []
    for i in range(cfg.population.size):
        g = factory.build_generator(cfg)
        g.load_state_dict(load_checkpoint(RunDir(fused_run).member(cfg.run.cycles, i) / "G.pt"))
        experts.append(g)
    dyn = make_dynamic(experts, cfg.fusion.att_kernel, cfg.fusion.att_channels).eval()
    set_fixed_attention(dyn, att)
    fused = factory.build_generator(cfg).eval()
    fused.load_state_dict(load_checkpoint(folder / "fused.pt"), strict=True)
    x = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = dyn(x), fused(x)
        plain0 = experts[0].eval()(x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(b, plain0, atol=1e-4)  # the experts differ, so the merge is not just expert 0


def test_attention_was_trained_and_discriminator_warm_started_from_the_chosen_member(fused_run):
    cfg = load_run_config(fused_run)
    rd = RunDir(fused_run)
    meta = read_checkpoint_meta(rd.fusion)
    slot = cfg.fusion.discriminator_from % cfg.population.size
    assert meta["discriminator_from"] == slot
    d0 = load_checkpoint(rd.member(cfg.run.cycles, slot) / "D.pt")
    d1 = load_checkpoint(rd.fusion / "D.pt")
    assert d0.keys() == d1.keys()
    # Warm start + a few Adam steps (each moves a parameter by at most ~lr): close to the member's D, but moved.
    params = [n for n, _ in factory.build_discriminator(cfg).named_parameters()]
    diffs = [float((d1[k] - d0[k]).abs().max()) for k in params]
    assert 0 < max(diffs) <= 1.5 * cfg.discriminator.lr * cfg.fusion.iters
    from easlurm.store import read_json

    opt = load_checkpoint(rd.fusion / "optim.pt")
    assert opt["att"]["state"] and opt["d"]["state"]
    assert int(opt["att"]["state"][0]["step"]) == cfg.fusion.iters
    assert read_json(rd.fusion / "meta.json")["experts_sha256"] == [
        read_json(rd.member(cfg.run.cycles, i) / "meta.json")["sha256"]["G.pt"] for i in range(3)]


def test_tensorboard_holds_fusion_losses(fused_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(fused_run).tb / "fusion"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("loss/l1", "loss/perceptual", "loss/gan", "loss/d", "loss/total"):
        assert tag in acc.Tags()["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]


def test_rerun_is_a_no_op(fused_run):
    folder = RunDir(fused_run).fusion
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}
    meta = run_fusion(fused_run)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}
    assert meta["done"] and after == before


class _PreemptAfterFirstCheckpoint(logging.Handler):
    """Sends this process SIGUSR2 when the job logs its first checkpoint: a real signal at a fixed point."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("fusion iteration 2/"):
            os.kill(os.getpid(), signal.SIGUSR2)


def test_preempted_run_resumes_to_the_same_result(make_run, fused_run):
    run = make_run(name="preempted")
    add_final_population(run)
    handler = _PreemptAfterFirstCheckpoint()
    logger = logging.getLogger("easlurm.fuse")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exc:
            run_fusion(run)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert exc.value.code == 128 + signal.SIGUSR2
    meta = read_checkpoint_meta(RunDir(run).fusion)
    assert meta["iteration"] == 2 and not meta["done"] and not (RunDir(run).fusion / "fused.pt").exists()
    run_fusion(run)
    assert _outputs(run) == _outputs(fused_run)  # bit-identical to the uninterrupted run


def test_other_experts_refuse_a_stale_checkpoint(make_run):
    run = make_run(name="stale")
    add_final_population(run)
    rd = RunDir(run)
    cfg = load_run_config(run)
    # A half-done fusion checkpoint from these experts …
    meta = {"kind": "fusion", "iteration": 1, "experts_sha256": ["0" * 64] * 3, "done": False}
    commit_checkpoint(rd.fusion, {"attention.pt": torch_bytes({})}, meta)
    with pytest.raises(CheckpointError, match="other experts"):
        run_fusion(run)
    # … and a missing member is named.
    import shutil

    shutil.rmtree(rd.member(cfg.run.cycles, 1))
    shutil.rmtree(rd.fusion)
    with pytest.raises(CheckpointError, match=r"members/01: final member 1 not found"):
        run_fusion(run)


def test_cli_reports_errors_in_one_line(make_run):
    run = make_run(name="cli")
    res = subprocess.run([sys.executable, "-m", "easlurm.fuse", "--run", str(run)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert res.returncode == 2
    assert res.stderr.startswith("easlurm.fuse: error: ") and "final member 0 not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
