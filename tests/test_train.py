"""The training stages: one member's Adam phase (gradient mix, exact resume, preemption, finiteness, TensorBoard,
member-0 modes, phase lengths), the pretrain stage and the init stage (cycle 0's start population)."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import stage_done, stage_progress
from easlurm import factory, losses
from easlurm.config import load_config, load_run_config
from easlurm.errors import CheckpointError, ConfigError, TrainingError
from easlurm.population import (
    MemberMeta, load_member_file, member_file, preferences, read_member, write_member,
)
from easlurm.checkpoints import read_checkpoint_meta, verify_checkpoint_dir
from easlurm.store import RunDir, sha256_file
from easlurm.tensor_files import load_verified
from easlurm.train import member as member_stage
from easlurm.train.init import init_population
from easlurm.train.member import MemberStep, train_member
from easlurm.train.mix import mix, normalised_mix, weighted_sum
from easlurm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]

# Subprocesses: one thread (bitwise equality on CPU holds for a fixed number of threads, another test in
# this process may have changed torch's, and spinning threads on a shared machine cost 10x) and no Slurm identity
# (a lease held by "this job" counts as ours).
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"OMP_NUM_THREADS": "1"}


def _started(make_run: Any, overrides: tuple[str, ...] | list[str] = (), name: str = "run") -> Path:
    """A tiny run with its pretrain and init stages done."""
    run = make_run(list(overrides), name)
    pretrain(run)
    init_population(run)
    return run


# ----------------------------------------------------------------------------------------------------------------
# The gradient mix


def _tiny_parts(cfg, w):
    torch.manual_seed(0)
    g = factory.build_generator(cfg)
    d = factory.build_discriminator(cfg)
    perc = factory.build_perceptual(cfg)
    # SGD with lr 1 makes the applied step equal to the direction handed to the optimizer.
    opt_g = torch.optim.SGD(g.parameters(), lr=1.0)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
    return g, d, perc, MemberStep(cfg, g, d, perc, w, opt_g, opt_d, torch.device("cpu"))


def _both_gradients(cfg, g, d, perc, lr, hr):
    """Independent computation of ∇L_dist and ∇L_perc on a copy of the generator."""
    g = copy.deepcopy(g)
    params = list(g.parameters())
    sr = g(lr)
    l_dist = (sr - hr).abs().mean()
    fake = d(sr)
    l_gan = torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    l_perc = cfg.loss.perceptual_weight * perc(sr, hr) + cfg.loss.gan_weight * l_gan
    return torch.autograd.grad(l_dist, params, retain_graph=True), torch.autograd.grad(l_perc, params)


@pytest.mark.parametrize("kind,w", [("normalised", (1.0, 0.0)), ("normalised", (0.5, 0.5)),
                                    ("normalised", (0.0, 1.0)), ("weighted_sum", (0.7, 0.3))])
def test_step_direction_is_the_configured_gradient_mix(kind, w, demo_shards):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", "model.num_feat=8",
                                                       "model.num_block=1", "discriminator.num_feat=4",
                                                       f"adam.mix={kind}"])
    g, d, perc, step = _tiny_parts(cfg, w)
    torch.manual_seed(1)
    hr = torch.rand(2, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    g1, g2 = _both_gradients(cfg, g, d, perc, lr, hr)
    eps = cfg.adam.norm_eps  # matters: at init some tensors' L1 gradients have norms ~1e-8
    before = [p.detach().clone() for p in g.parameters()]
    step(lr, hr)
    for b, p, a, c in zip(before, g.parameters(), g1, g2):
        applied = b - p.detach()
        if kind == "normalised":  # per tensor: unit-norm gradients, whatever the losses' scales
            expected = w[0] * a / (a.norm() + eps) + w[1] * c / (c.norm() + eps)
        else:  # the raw gradient of w_dist·L_dist + w_perc·L_perc
            expected = w[0] * a + w[1] * c
        torch.testing.assert_close(applied, expected, rtol=1e-4, atol=1e-7)


def test_weighted_sum_is_the_raw_weighted_gradient():
    gen = torch.Generator().manual_seed(0)
    g1 = [torch.randn(3, 4, generator=gen), None, torch.randn(5, generator=gen), torch.randn(2, generator=gen)]
    g2 = [1e3 * torch.randn(3, 4, generator=gen), torch.randn(2, generator=gen), None, torch.randn(2, generator=gen)]
    out = weighted_sum(g1, g2, 0.25, 0.75)
    assert torch.equal(out[0], 0.25 * g1[0] + 0.75 * g2[0])  # no normalisation: g2's scale dominates
    assert torch.equal(out[1], 0.75 * g2[1]) and torch.equal(out[2], 0.25 * g1[2])  # None counts as zero
    assert mix("weighted_sum", g1, g2, 0.25, 0.75)[3].equal(out[3])
    # A zero weight drops the term entirely (and never touches a None).
    assert weighted_sum([None, g1[2]], [g2[1], None], 0.0, 1.0)[1] is None
    # The normalised mix differs: each term has unit norm per tensor before weighting.
    norm = normalised_mix(g1, g2, 0.25, 0.75)[0]
    torch.testing.assert_close(norm, 0.25 * g1[0] / (g1[0].norm() + 1e-7) + 0.75 * g2[0] / (g2[0].norm() + 1e-7))
    with pytest.raises(ValueError, match="adam.mix: unknown 'sum'"):
        mix("sum", g1, g2, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Resume, preemption, finiteness


def _finals(run: Path, cycle: int, member: int) -> tuple[MemberMeta, dict[str, Any]]:
    folder = RunDir(run).member(cycle, member)
    meta = read_member(folder)
    assert meta is not None
    return meta, {name: load_member_file(folder, meta, name) for name in ("G.pt", "D.pt", "optim.pt")}


def _assert_equal_tree(a: Any, b: Any, where: str = "") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_equal_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tree(x, y, f"{where}/{k}")
    else:
        assert a == b, where


def _assert_same_result(run_a: Path, run_b: Path, cycle: int, member: int) -> None:
    ma, fa = _finals(run_a, cycle, member)
    mb, fb = _finals(run_b, cycle, member)
    assert ma.done and mb.done and ma.iteration == mb.iteration == ma.iters_target
    _assert_equal_tree(fa, fb)  # G, D and both Adam states, to the bit


def _cli(run: Path, stage: str, index: int) -> list[str]:
    """The one entry point of every task: ``python -m easlurm.orchestrate.runner RUN STAGE INDEX``."""
    return [sys.executable, "-m", "easlurm.orchestrate.runner", str(run), stage, str(index)]


def _wait_for_iteration(folder: Path, proc: subprocess.Popen, at_least: int, below: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            meta = read_member(folder)
        except CheckpointError:
            meta = None
        if meta is not None and at_least <= meta.iteration < below:
            return meta.iteration
        assert proc.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


# Interrupted phases: 16 iterations, a checkpoint every 5 (a signal's commit falls between two of them).
INTERRUPT = ("adam.iters_per_cycle=16", "adam.checkpoint_every=5", "adam.log_every=1000", "adam.image_every=1000")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """Member 1's Adam phase of cycle 0, run uninterrupted in a subprocess: the reference the interrupted runs
    (same config, their own run directories) must reproduce to the bit."""
    from easlurm.config import write_config

    from conftest import TINY

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", *TINY, *INTERRUPT])
    run = tmp_path_factory.mktemp("straight") / "run"
    write_config(cfg, run, argv=["pytest"])
    pretrain(run)
    init_population(run)
    subprocess.run(_cli(run, "adam/000", 1), check=True, capture_output=True, env=_ENV)
    return run


@pytest.mark.slow
def test_exact_resume_after_sigkill(make_run, straight):
    killed = _started(make_run, INTERRUPT, "killed")
    folder = RunDir(killed).member(0, 1)
    proc = subprocess.Popen(_cli(killed, "adam/000", 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_ENV)
    try:
        killed_at = _wait_for_iteration(folder, proc, 5, 16)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    meta = read_member(folder)
    assert meta is not None and killed_at <= meta.iteration < 16 and not meta.done
    resumed = subprocess.run(_cli(killed, "adam/000", 1), capture_output=True, text=True, env=_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at iteration {meta.iteration}/16" in resumed.stdout
    _assert_same_result(straight, killed, 0, 1)
    # A finished phase is a no-op: nothing is rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}
    assert train_member(killed, 0, 1).done
    assert {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} == before


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_preemption_signal_commits_exits_128_plus_signal_and_resumes(make_run, straight, sig):
    pre = _started(make_run, INTERRUPT, "pre")
    folder = RunDir(pre).member(0, 1)
    proc = subprocess.Popen(_cli(pre, "adam/000", 1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_ENV)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("[task] adam/000 member 01: ")  # the runner names the task
        line = proc.stdout.readline()  # printed inside the preemption handlers, just before the first iteration
        assert "starting at iteration 0/16" in line, line
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"stopped by signal {sig} after committing a checkpoint" in err
    meta = read_member(folder)
    assert meta is not None and 0 < meta.iteration < 16 and not meta.done  # committed on the signal
    assert verify_checkpoint_dir(folder)
    subprocess.run(_cli(pre, "adam/000", 1), check=True, capture_output=True, env=_ENV)
    _assert_same_result(straight, pre, 0, 1)


def test_nan_loss_stops_with_one_clear_error_and_keeps_the_checkpoint(make_run, monkeypatch):
    run = _started(make_run, ["adam.iters_per_cycle=8", "adam.checkpoint_every=3"])
    calls = {"n": 0}
    real_l1 = losses.l1_loss

    def l1_with_nan(sr, hr):
        calls["n"] += 1
        value = real_l1(sr, hr)
        return value * float("nan") if calls["n"] == 5 else value  # 5th iteration (index 4)

    monkeypatch.setattr(losses, "l1_loss", l1_with_nan)
    with pytest.raises(TrainingError, match=r"^Adam phase of cycle 0, member 01: l1 loss is not finite at "
                                            r"iteration 4; stopped, the last checkpoint is kept$"):
        train_member(run, 0, 1)
    folder = RunDir(run).member(0, 1)
    meta = read_member(folder)
    assert meta is not None and meta.iteration == 3 and not meta.done and verify_checkpoint_dir(folder)
    monkeypatch.setattr(losses, "l1_loss", real_l1)
    assert train_member(run, 0, 1).done


def test_non_finite_weights_are_refused_before_the_checkpoint(make_run, monkeypatch):
    """A weight that turned Inf after an iteration whose loss was still finite (the next forward would show it)
    must not reach a checkpoint: the error names stage, member, iteration and tensor; the last good checkpoint
    stays as it was."""
    run = _started(make_run, ["adam.iters_per_cycle=8", "adam.checkpoint_every=3"])
    real_step = member_stage.MemberTrainee.step

    def step_then_poison(self, iteration):
        out = real_step(self, iteration)
        if iteration == 5:  # ends at 6 finished iterations: a checkpoint step
            with torch.no_grad():
                self.s.g.conv_first.weight[0, 0, 0, 0] = float("inf")
        return out

    monkeypatch.setattr(member_stage.MemberTrainee, "step", step_then_poison)
    folder = RunDir(run).member(0, 1)
    with pytest.raises(TrainingError, match=r"^Adam phase of cycle 0, member 01: non-finite weights at iteration 6 "
                                            r"in G\.conv_first\.weight; not committed, the last checkpoint is kept$"):
        train_member(run, 0, 1)
    meta = read_member(folder)
    assert meta is not None and meta.iteration == 3 and not meta.done and verify_checkpoint_dir(folder)
    assert torch.isfinite(load_member_file(folder, meta, "G.pt")["conv_first.weight"]).all()
    monkeypatch.setattr(member_stage.MemberTrainee, "step", real_step)
    assert train_member(run, 0, 1).done  # resumes from iteration 3
    # TensorBoard: the steps logged after the last commit (4-6) were dropped and logged again, each once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(run).tb / "member_01"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/l1")] == list(range(1, 9))


def test_tensorboard_scalars_and_images_read_back(make_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _started(make_run)
    train_member(run, 0, 0)
    acc = EventAccumulator(str(RunDir(run).tb / "member_00"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("loss/l1", "loss/perceptual", "loss/gan", "loss/d", "loss/grad_norm_dist", "loss/grad_norm_perc",
                "lr/generator", "speed/iters_per_s"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, 7)), tag
    assert all(e.value == pytest.approx(1e-4) for e in acc.Scalars("lr/generator"))
    assert all(e.value > 0 for e in acc.Scalars("loss/l1"))
    images = acc.Images("samples/lr_sr_hr")
    assert [e.step for e in images] == [3, 6] and images[0].width == 3 * images[0].height


# ----------------------------------------------------------------------------------------------------------------
# Pretrain and init stages


def test_pretrain_stage_commits_resumes_and_skips(make_run):
    run = make_run(["pretrain.iters=3", "pretrain.checkpoint_every=2"])
    assert not stage_done(run, "pretrain") and stage_progress(run, "pretrain") == 0
    meta = pretrain(run)
    folder = RunDir(run).pretrain
    assert meta.kind == "pretrain" and meta.done and meta.iteration == 3 == meta.iters_target
    assert set(meta.files["sha256"]) == {"G.pt", "optim.pt", "rng.pt"} and verify_checkpoint_dir(folder)
    assert stage_done(run, "pretrain") and stage_progress(run, "pretrain") == 3
    before = {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}
    assert pretrain(run).done
    assert {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} == before
    # The loaded G is a working generator for the configured architecture.
    g = factory.build_generator(load_config(run / "config.yaml"))
    g.load_state_dict(load_verified(folder, "G.pt"), strict=True)


def test_init_stage_writes_the_start_population_once_with_one_generator_file(make_run):
    run = make_run()
    with pytest.raises(CheckpointError, match=r"pretrain: no finished pretraining \(run the pretrain stage first"):
        init_population(run)
    pretrain(run)
    assert not stage_done(run, "init")
    records = init_population(run)
    rd = RunDir(run)
    g_sha = read_checkpoint_meta(rd.pretrain)["sha256"]["G.pt"]
    assert [m.slot for m in records] == [0, 1, 2] and [m.preference for m in records] == preferences(3)
    ds = set()
    for i, m in enumerate(records):
        folder = rd.start(0, i)
        assert m.kind == "start" and m.cycle == 0 and m.mode == "trained" and m.origin == f"pretrain:{g_sha}"
        assert m.reset_g_optimizer and m.complete
        g = member_file(folder, m, "G.pt")
        assert g.sha256 == g_sha and g.path == rd.start(0, 0) / "G.pt"  # slots 1.. reference slot 0's file
        assert (folder / "G.pt").exists() == (i == 0)
        assert "optim.pt" not in m.files["sha256"]  # the first Adam phase starts with fresh moments
        ds.add(sha256_file(folder / "D.pt"))
    assert len(ds) == 3  # every slot its own discriminator
    assert stage_done(run, "init")
    before = {i: (rd.start(0, i) / "meta.json").stat().st_mtime_ns for i in range(3)}
    assert init_population(run) == records
    assert {i: (rd.start(0, i) / "meta.json").stat().st_mtime_ns for i in range(3)} == before


@pytest.mark.parametrize("mode", ["frozen", "ea_only"])
def test_member0_not_adam_trained_has_no_task_to_run(make_run, mode):
    """No GPU job for a slot with no work: its task is done from the start, the phase's array holds only the
    trained slots (array index = slot), its state after the phase is its start entry, and running it by hand is a
    clear error."""
    from easlurm.orchestrate.plan import build_plan, pending_stages
    from easlurm.population import after_adam

    run = _started(make_run, [f"population.member0={mode}"])
    rd = RunDir(run)
    cfg = load_run_config(run)
    assert stage_done(run, "adam", cycle=0, member=0) and not stage_done(run, "adam", cycle=0, member=1)
    adam0 = next(s for s in pending_stages(build_plan(cfg, rd)) if s.key == "adam/000")
    assert [i for i, t in enumerate(adam0.tasks) if not t.is_done()] == [1, 2]
    assert after_adam(cfg, rd, 0, 0) == (rd.start(0, 0), "start")
    assert after_adam(cfg, rd, 0, 1) == (rd.member(0, 1), "member")
    with pytest.raises(ConfigError, match=rf"member 00: not Adam-trained \(population.member0: {mode}\); its state "
                                          r"after the phase is its start entry .*cycles/000/start/00, nothing runs"):
        train_member(run, 0, 0)
    assert not rd.member(0, 0).exists()
    # A job for it anyway (a plain `sbatch --array=0-4 jobs/adam.sh`) has nothing to do and succeeds.
    from easlurm.orchestrate.runner import main as runner_main

    assert runner_main([str(run), "adam/000", "0"]) == 0 and not rd.member(0, 0).exists()
    assert train_member(run, 0, 1).iteration == 6  # the other slots are trained


def test_member0_trained_is_adam_trained(make_run):
    run = _started(make_run, ["population.member0=trained"])
    rd = RunDir(run)
    meta = train_member(run, 0, 0)
    assert meta.done and meta.iteration == meta.iters_target == 6 and meta.mode == "trained"
    before = load_member_file(rd.start(0, 0), read_member(rd.start(0, 0)), "G.pt")
    after = load_member_file(rd.member(0, 0), meta, "G.pt")
    assert (rd.member(0, 0) / "G.pt").is_file()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _hand_written_start(run: Path, cycle: int, slot: int, reset_g: bool) -> None:
    """What the EA phase of ``cycle - 1`` writes for a genome carried unchanged: references to the trained files."""
    rd = RunDir(run)
    src = read_member(rd.member(cycle - 1, slot))
    assert src is not None and src.done
    refs = {n: member_file(rd.member(cycle - 1, slot), src, n) for n in ("G.pt", "D.pt", "optim.pt")}
    write_member(rd.start(cycle, slot), MemberMeta(
        kind="start", cycle=cycle, slot=slot, preference=src.preference, mode=src.mode,
        origin=f"carried:{rd.rel(refs['G.pt'].path)}", reset_g_optimizer=reset_g), refs=refs)


@pytest.mark.parametrize("reset_g", [True, False])
def test_first_and_final_phase_lengths_and_generator_moment_reset(make_run, reset_g):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _started(make_run, ["run.cycles=1", "adam.first_phase_iters=4", "adam.iters_per_cycle=6",
                              "adam.final_phase_iters=2", "adam.checkpoint_every=100"])
    first = train_member(run, 0, 1)
    assert first.iteration == first.iters_target == 4 and first.done
    with pytest.raises(CheckpointError, match=r"cycles/001/start/01: not found \(written by the EA phase of "
                                              r"cycle 0\)"):
        train_member(run, 1, 1)
    _hand_written_start(run, 1, 1, reset_g)
    final = train_member(run, 1, 1)  # cycle run.cycles: the final phase
    assert final.iteration == final.iters_target == 2 and final.done and final.cycle == 1
    optim = load_member_file(RunDir(run).member(1, 1), final, "optim.pt")
    steps_g = {int(s["step"]) for s in optim["g"]["state"].values()}
    steps_d = {int(s["step"]) for s in optim["d"]["state"].values()}
    assert steps_g == ({2} if reset_g else {6}) and steps_d == {6}  # D keeps its moments across the EA phase
    with pytest.raises(ConfigError, match=r"cycle 2: the run's Adam phases are cycles 0\.\.1"):
        train_member(run, 2, 1)
    # TensorBoard steps continue across phases: 1..4, then 5..6.
    acc = EventAccumulator(str(RunDir(run).tb / "member_01"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/l1")] == [1, 2, 3, 4, 5, 6]


def test_without_final_phase_the_last_cycle_has_no_adam_phase(make_run):
    run = _started(make_run, ["run.cycles=1", "adam.final_phase=false"])
    with pytest.raises(ConfigError, match=r"cycle 1: the run's Adam phases are cycles 0\.\.0"):
        train_member(run, 1, 0)


def test_member_progress_and_done_checks(make_run):
    run = _started(make_run, ["adam.iters_per_cycle=5", "adam.checkpoint_every=2"])
    assert stage_progress(run, "adam", cycle=0, member=2) == 0 and not stage_done(run, "adam", cycle=0, member=2)
    meta = train_member(run, 0, 2)
    assert stage_progress(run, "adam", cycle=0, member=2) == 5 and stage_done(run, "adam", cycle=0, member=2)
    # A missing file makes the phase not done (the stage would redo it from its checkpoint).
    (RunDir(run).member(0, 2) / "D.pt").unlink()
    assert not stage_done(run, "adam", cycle=0, member=2) and meta.iteration == 5


def test_cli_reports_bad_arguments_in_one_line(make_run):
    run = make_run()
    res = subprocess.run(_cli(run, "adam/000", 7), capture_output=True, text=True, env=_ENV)
    assert res.returncode == 2 and res.stderr == "easlurm: error: stage adam/000 has tasks 0..2, not 7\n"
    res = subprocess.run(_cli(run, "adam/000", 0), capture_output=True, text=True, env=_ENV)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cycles/000/start/00: not found (written by the init stage)" in res.stderr


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_full_size_networks_train_one_iteration(name, demo_shards):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.patch_size=32", "loss.perceptual.net=auto"])
    g = factory.build_generator(cfg)
    counts = {"srresnet": 1_517_571, "rrdb": 16_697_987}
    assert sum(p.numel() for p in g.parameters()) == counts[name]
    d = factory.build_discriminator(cfg)
    perc = factory.build_perceptual(cfg)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.adam.lr)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.discriminator.lr)
    step = MemberStep(cfg, g, d, perc, (0.5, 0.5), opt_g, opt_d, torch.device("cpu"))
    hr = torch.rand(2, 3, 32, 32)  # batch 2: the discriminator's BatchNorm needs more than one value
    before = g.conv_first.weight.detach().clone()
    res, sr = step(torch.nn.functional.avg_pool2d(hr, 4), hr)
    assert sr.shape == hr.shape and res.grad_norm_dist > 0 and res.grad_norm_perc > 0
    assert not torch.equal(before, g.conv_first.weight)
