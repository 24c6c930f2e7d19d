"""The fusion job (easlurm.fuse.job / python -m easlurm.fuse) on a tiny run whose final population is written here."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from easlurm import factory
from easlurm.config import load_config, load_run_config, write_config
from easlurm.errors import CheckpointError, ConfigError
from easlurm.fuse import job as fuse_job
from easlurm.fuse.dynamic import dynamic_layers, make_dynamic, set_fixed_attention
from easlurm.fuse.job import run_fusion
from easlurm.fuse.collapse import merge_from_dynamic
from easlurm.population import MemberMeta, final_folder, member_file, preferences, slot_mode, write_member
from easlurm.checkpoints import read_checkpoint_meta
from easlurm.store import RunDir, read_json
from easlurm.tensor_files import load_checkpoint, load_verified, torch_bytes

from conftest import TINY, stage_done, stage_progress

REPO = Path(__file__).resolve().parents[1]
# Few averaging images: the attention branches run at full LR size there, the costliest part on a CPU.
FUSION = ("fusion.average_images=2", "fusion.log_every=1")


def new_run(root: Path, demo_shards: Path, *overrides: str) -> Path:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", *TINY, *FUSION, *overrides])
    write_config(cfg, root, argv=["pytest"])
    return root


def random_generator(cfg, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    g = factory.build_generator(cfg)
    with torch.no_grad():  # the scaled init makes every expert ≈ bilinear upsampling; make them really differ
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return g.state_dict()


def add_final_population(run: Path, seeds: tuple[int, ...] = (11, 12, 13)) -> list[dict[str, torch.Tensor]]:
    """Write the final population (the final Adam phase's members, or the last EA phase's start entries without a
    final phase) as the stages do; slots with the same seed share one genome file. Returns the G states."""
    cfg = load_run_config(run)
    rd = RunDir(run)
    n = cfg.population.size
    assert len(seeds) == n
    prefs = preferences(n)
    states: list[dict[str, torch.Tensor]] = []
    first_slot: dict[int, int] = {}
    written: dict[int, MemberMeta] = {}
    for i, seed in enumerate(seeds):
        folder = final_folder(cfg, rd, i)
        torch.manual_seed(1000 + i)
        d = factory.build_discriminator(cfg)
        files = {"D.pt": torch_bytes(d.state_dict()), "optim.pt": torch_bytes({"g": None, "d": None})}
        refs = {}
        if seed in first_slot:  # a genome the EA put into two slots: the second references the first's file
            j = first_slot[seed]
            refs["G.pt"] = member_file(final_folder(cfg, rd, j), written[j], "G.pt")
        else:
            first_slot[seed] = i
            files["G.pt"] = torch_bytes(random_generator(cfg, seed))
        final = cfg.adam.final_phase
        meta = MemberMeta(kind="member" if final else "start", cycle=cfg.run.cycles, slot=i, preference=prefs[i],
                          mode=slot_mode(cfg, i), origin="test", iteration=4 if final else 0,
                          iters_target=4 if final else 0, done=final)
        written[i] = write_member(folder, meta, files, refs)
        states.append(load_checkpoint(member_file(folder, written[i], "G.pt").path))
    return states


def _outputs(run: Path) -> dict[str, bytes]:
    """The fusion stage's files; meta.json without ``attempts`` (when and where it ran: differs by design)."""
    folder = RunDir(run).fusion
    out = {name: (folder / name).read_bytes() for name in ("fused.pt", "attention.json", "attention.pt", "D.pt",
                                                           "optim.pt", "meta.json")}
    out["meta.json"] = json.dumps({k: v for k, v in json.loads(out["meta.json"]).items() if k != "attempts"}).encode()
    return out


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """One finished fusion run shared by the read-only tests below."""
    run = new_run(tmp_path_factory.mktemp("fused") / "run", demo_shards)
    add_final_population(run)
    run_fusion(run)
    return run


def test_fused_backbone_loads_strictly_and_attention_is_a_distribution_per_slot(fused_run):
    cfg = load_run_config(fused_run)
    folder = RunDir(fused_run).fusion
    meta = read_checkpoint_meta(folder)
    assert meta["done"] and meta["iteration"] == cfg.fusion.iters and meta["kind"] == "fusion"
    assert stage_done(fused_run, "fuse") and stage_progress(fused_run, "fuse") == cfg.fusion.iters
    for name in ("fused.pt", "attention.json", "attention.pt", "D.pt", "optim.pt", "rng.pt"):
        assert name in meta["sha256"], name
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(folder, "fused.pt", meta), strict=True)

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
    # Averaged over the first training images (sorted ids), not the validation set.
    assert meta["average_ids"] == ["chelsea", "flower"]
    assert meta["experts_sha256"] == [read_json(RunDir(fused_run).member(cfg.run.cycles, i) / "meta.json")
                                      ["sha256"]["G.pt"] for i in range(3)]
    assert meta["slot_expert"] == [0, 1, 2] and meta["experts_cycle"] == cfg.run.cycles


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
    # Warm start + a few Adam steps at fusion.lr (d_lr null; each moves a parameter by at most ~lr).
    params = [n for n, _ in factory.build_discriminator(cfg).named_parameters()]
    diffs = [float((d1[k] - d0[k]).abs().max()) for k in params]
    assert cfg.fusion.d_lr is None and 0 < max(diffs) <= 1.5 * cfg.fusion.lr * cfg.fusion.iters
    opt = load_checkpoint(rd.fusion / "optim.pt")
    assert int(opt["att"]["state"][0]["step"]) == cfg.fusion.iters and opt["d"]["state"]


def test_tensorboard_holds_fusion_losses_and_per_slot_attention(fused_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(fused_run).tb / "fusion"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("loss/l1", "loss/perceptual", "loss/gan", "loss/d", "loss/total", "lr/attention",
                "attention/member_00", "attention/member_02"):
        assert tag in acc.Tags()["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]


def test_rerun_is_a_no_op(fused_run):
    folder = RunDir(fused_run).fusion
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}
    meta = run_fusion(fused_run)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}
    assert meta.done and after == before


def test_preempted_fusion_resumes_to_the_same_result(fused_run, demo_shards, tmp_path, monkeypatch):
    run = new_run(tmp_path / "preempted", demo_shards)
    add_final_population(run)
    real_step = fuse_job.fusion_step
    calls = {"n": 0}

    def step_then_signal(*args: Any) -> Any:
        out = real_step(*args)
        calls["n"] += 1
        if calls["n"] == 3:  # a real SIGUSR2 during iteration index 2: commit at 3 finished iterations, then stop
            os.kill(os.getpid(), signal.SIGUSR2)
        return out

    monkeypatch.setattr(fuse_job, "fusion_step", step_then_signal)
    with pytest.raises(SystemExit) as exc:
        run_fusion(run)
    assert exc.value.code == 128 + signal.SIGUSR2
    meta = read_checkpoint_meta(RunDir(run).fusion)
    assert meta["iteration"] == 3 and not meta["done"] and not (RunDir(run).fusion / "fused.pt").exists()
    assert not stage_done(run, "fuse") and stage_progress(run, "fuse") == 3
    monkeypatch.setattr(fuse_job, "fusion_step", real_step)
    run_fusion(run)
    assert _outputs(run) == _outputs(fused_run)  # bit-identical to the uninterrupted run


def _random_attention(model, k: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, _ in dynamic_layers(model):
        w = torch.rand(k, generator=gen) + 0.1
        out[name] = w / w.sum()
    return out


@pytest.mark.parametrize("arch", ["msrresnet", "rrdbnet"])
def test_identical_experts_fused_once_equal_fusing_the_duplicates(arch):
    """Experts [A, A, B] with attention (a1, a2, b) per layer give the same model as [A, B] with (a1 + a2, b):
    a convolution is linear in its kernel, so K copies of one kernel are one kernel with the copies' weight."""
    cfg = load_config(None, ["data.train=x", f"model.arch={arch}", "model.num_feat=8", "model.num_block=1",
                             *(["model.num_grow_ch=4"] if arch == "rrdbnet" else [])])
    a, b = (random_generator(cfg, s) for s in (1, 2))
    experts = []
    for sd in (a, a, b):
        g = factory.build_generator(cfg)
        g.load_state_dict(sd)
        experts.append(g.eval())
    dup = make_dynamic(experts, 3, 4).eval()
    once = make_dynamic([experts[0], experts[2]], 3, 4).eval()
    w3 = _random_attention(dup, 3, seed=5)
    w2 = {name: torch.stack([w[0] + w[1], w[2]]) for name, w in w3.items()}
    set_fixed_attention(dup, w3)
    set_fixed_attention(once, w2)
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(once(x), dup(x), rtol=1e-5, atol=1e-6)
    merged_dup = merge_from_dynamic(dup, {k: v.double().numpy() for k, v in w3.items()})
    merged_once = merge_from_dynamic(once, {k: v.double().numpy() for k, v in w2.items()})
    assert merged_dup.keys() == merged_once.keys()
    for key in merged_dup:
        torch.testing.assert_close(merged_once[key], merged_dup[key], rtol=1e-5, atol=1e-6, msg=key)


def test_slots_sharing_a_genome_enter_fusion_once(demo_shards, tmp_path):
    # Without a final Adam phase the final population is the last EA phase's output, where one genome may hold
    # several slots (MOEA/D without a replacement cap).
    run = new_run(tmp_path / "shared", demo_shards, "adam.final_phase=false")
    add_final_population(run, seeds=(11, 11, 13))
    meta = run_fusion(run)
    cfg = load_run_config(run)
    assert len(meta.experts_sha256) == 2 and meta.slot_expert == [0, 0, 1]
    assert meta.experts_cycle == cfg.run.cycles
    att_state = load_checkpoint(RunDir(run).fusion / "attention.pt")
    last = [k for k in att_state if k.endswith("mapping.2.weight")]
    assert last and all(att_state[k].shape[0] == 2 for k in last)  # softmax over 2 distinct experts
    att = json.loads((RunDir(run).fusion / "attention.json").read_text())
    for name, (w0, w1, w2) in att.items():
        assert w0 == w1 and w0 + w1 + w2 == pytest.approx(1.0, abs=1e-12), name  # the shared weight, split
    g = factory.build_generator(cfg)
    g.load_state_dict(load_verified(RunDir(run).fusion, "fused.pt"), strict=True)


@pytest.mark.parametrize("which", ["data.val", "eval.sets.Set5"])
def test_averaging_over_an_evaluation_set_is_refused_before_training(which, demo_shards, tmp_path):
    folder = demo_shards / ("val" if which == "data.val" else "train")
    over = [f"fusion.average_set={folder}"] + ([f"eval.sets={{Set5: {folder}}}"] if which != "data.val" else [])
    run = new_run(tmp_path / "run", demo_shards, *over)
    add_final_population(run)
    with pytest.raises(ConfigError, match=rf"^fusion.average_set: {folder} is also {which}; average the attention "
                                          rf"over training images"):
        run_fusion(run)
    assert read_checkpoint_meta(RunDir(run).fusion) is None  # refused before any fusion iteration


def test_milestones_decay_both_learning_rates(demo_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = new_run(tmp_path / "run", demo_shards, "fusion.lr=1e-3", "fusion.d_lr=4e-3", "fusion.milestones=[2, 3]",
                  "fusion.gamma=0.5", "fusion.log_every=1")
    add_final_population(run)
    run_fusion(run)
    acc = EventAccumulator(str(RunDir(run).tb / "fusion"), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [(e.step, e.value) for e in acc.Scalars("lr/attention")]
    assert [s for s, _ in lrs] == [1, 2, 3, 4]
    assert [v for _, v in lrs] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])  # iterations 0-1, 2, 3
    opt = load_checkpoint(RunDir(run).fusion / "optim.pt")
    assert opt["att"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)
    assert opt["d"]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # fusion.d_lr, decayed the same way


def test_other_experts_refuse_a_stale_checkpoint_and_a_missing_member_is_named(demo_shards, tmp_path):
    run = new_run(tmp_path / "stale", demo_shards)
    add_final_population(run)
    rd = RunDir(run)
    cfg = load_run_config(run)
    # A half-done fusion checkpoint from other experts …
    from easlurm.checkpoints import commit_checkpoint

    commit_checkpoint(rd.fusion, {"attention.pt": torch_bytes({})},
                      {"kind": "fusion", "schema": 1, "iteration": 1, "iters_target": 4,
                       "experts_sha256": ["0" * 64] * 3, "slot_expert": [0, 1, 2], "experts_cycle": 3,
                       "discriminator_from": 2, "done": False})
    with pytest.raises(CheckpointError, match="fusion checkpoint was made from other experts"):
        run_fusion(run)
    # … and a missing final member is named with the stage that writes it.
    shutil.rmtree(rd.member(cfg.run.cycles, 1))
    shutil.rmtree(rd.fusion)
    with pytest.raises(CheckpointError, match=r"cycles/003/members/01: not found \(written by the final Adam "
                                              r"phase, cycle 3\)"):
        run_fusion(run)


def test_cli_reports_errors_in_one_line(demo_shards, tmp_path):
    run = new_run(tmp_path / "cli", demo_shards)
    res = subprocess.run([sys.executable, "-m", "easlurm.orchestrate.runner", str(run), "fuse", "0"],
                         capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert res.returncode == 2
    assert res.stderr.startswith("easlurm: error: ") and "cycles/003/members/00: not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
