"""One member's Adam phase: the normalised gradient mix, exact resume, preemption, NaN stops, TensorBoard."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from easlurm import factory, losses
from easlurm.config import load_config, load_run_config
from easlurm.errors import TrainingError
from easlurm.store import RunDir, load_verified, read_checkpoint_meta, verify_checkpoint_dir
from easlurm.train.member import MemberStep, train_member
from easlurm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]


def _tiny_parts(cfg, w):
    torch.manual_seed(0)
    g = factory.build_generator(cfg)
    d = factory.build_discriminator(cfg)
    perc = factory.build_perceptual(cfg)
    # SGD with lr 1 makes the applied step equal to the direction handed to the optimizer.
    opt_g = torch.optim.SGD(g.parameters(), lr=1.0)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
    return g, d, perc, MemberStep(cfg, g, d, perc, w, opt_g, opt_d, torch.device("cpu"))


def _expected_direction(cfg, g, d, perc, lr, hr, w):
    """Independent computation: both gradients on a copy, normalised per tensor, mixed."""
    g = copy.deepcopy(g)
    params = list(g.parameters())
    sr = g(lr)
    l_dist = (sr - hr).abs().mean()
    fake = d(sr)
    l_gan = torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    l_perc = cfg.loss.perceptual_weight * perc(sr, hr) + cfg.loss.gan_weight * l_gan
    g1 = torch.autograd.grad(l_dist, params, retain_graph=True)
    g2 = torch.autograd.grad(l_perc, params)
    eps = cfg.adam.norm_eps
    return [w[0] * a / (a.norm() + eps) + w[1] * b / (b.norm() + eps) for a, b in zip(g1, g2)], g1, g2


@pytest.mark.parametrize("w", [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)])
def test_step_direction_is_the_normalised_gradient_mix(w, demo_shards):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}", "model.num_feat=8",
                                                       "model.num_block=1", "discriminator.num_feat=4"])
    g, d, perc, step = _tiny_parts(cfg, w)
    torch.manual_seed(1)
    hr = torch.rand(2, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    expected, g1, g2 = _expected_direction(cfg, g, d, perc, lr, hr, w)
    before = [p.detach().clone() for p in g.parameters()]
    step(lr, hr)
    for b, p, e, a, c in zip(before, g.parameters(), expected, g1, g2):
        applied = b - p.detach()
        torch.testing.assert_close(applied, e, rtol=1e-4, atol=1e-7)
        if w == (1.0, 0.0):  # the step is the unit-norm L1 gradient, whatever the loss scale
            torch.testing.assert_close(applied, a / (a.norm() + cfg.adam.norm_eps), rtol=1e-4, atol=1e-7)
        if w == (0.5, 0.5):
            eps = cfg.adam.norm_eps  # matters: at init some tensors' L1 gradients have norms ~1e-8
            torch.testing.assert_close(applied, 0.5 * (a / (a.norm() + eps) + c / (c.norm() + eps)),
                                       rtol=1e-4, atol=1e-7)


def _finals(run: Path, cycle: int, member: int):
    folder = RunDir(run).member(cycle, member)
    meta = read_checkpoint_meta(folder)
    return meta, load_verified(folder, "G.pt", meta), load_verified(folder, "D.pt", meta)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


_ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def _cli(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "easlurm.train", "--run", str(run), *args]


def _wait_for_iteration(folder: Path, proc: subprocess.Popen, at_least: int, below: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = None
        if meta and at_least <= meta["iteration"] < below:
            return meta["iteration"]
        assert proc.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def test_exact_resume_after_sigkill(make_run):
    over = ["adam.iters_per_cycle=40", "adam.checkpoint_every=4", "adam.log_every=1000", "adam.image_every=1000"]
    straight, killed = make_run(over, "straight"), make_run(over, "killed")
    for run in (straight, killed):
        pretrain(run)
    # Both sides run as subprocesses with the same thread count: bitwise equality on CPU holds for a fixed number
    # of threads (another test in this process may have changed torch's).
    subprocess.run(_cli(straight, "--cycle", "0", "--member", "1"), check=True, capture_output=True, env=_ENV)

    folder = RunDir(killed).member(0, 1)
    proc = subprocess.Popen(_cli(killed, "--cycle", "0", "--member", "1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_ENV)
    try:
        killed_at = _wait_for_iteration(folder, proc, 4, 40)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint_meta(folder)["iteration"] < 40 and killed_at >= 4
    resumed = subprocess.run(_cli(killed, "--cycle", "0", "--member", "1"), capture_output=True, text=True, env=_ENV)
    assert resumed.returncode == 0, resumed.stderr

    m1, g1, d1 = _finals(straight, 0, 1)
    m2, g2, d2 = _finals(killed, 0, 1)
    assert m1["iteration"] == m2["iteration"] == 40 and m2["done"]
    _assert_same_weights(g1, g2)
    _assert_same_weights(d1, d2)
    # A finished phase is a no-op: nothing is rewritten.
    before = (folder / "G.pt").stat().st_mtime_ns
    train_member(killed, 0, 1)
    assert (folder / "G.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_preemption_signal_checkpoints_now_and_resumes(make_run, sig):
    over = ["adam.iters_per_cycle=40", "adam.checkpoint_every=1000", "adam.log_every=1000", "adam.image_every=1000"]
    straight, pre = make_run(over, "straight"), make_run(over, "pre")
    for run in (straight, pre):
        pretrain(run)
    subprocess.run(_cli(straight, "--cycle", "0", "--member", "2"), check=True, capture_output=True, env=_ENV)
    folder = RunDir(pre).member(0, 2)
    proc = subprocess.Popen(_cli(pre, "--cycle", "0", "--member", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_ENV)
    try:
        _wait_for_iteration(folder, proc, 0, 1)  # initial member committed: training has started
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 128 + sig, err
    meta = read_checkpoint_meta(folder)
    assert 0 < meta["iteration"] < 40 and verify_checkpoint_dir(folder)  # saved mid-interval, on the signal
    subprocess.run(_cli(pre, "--cycle", "0", "--member", "2"), check=True, capture_output=True, env=_ENV)
    _, g1, d1 = _finals(straight, 0, 2)
    _, g2, d2 = _finals(pre, 0, 2)
    _assert_same_weights(g1, g2)
    _assert_same_weights(d1, d2)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(make_run, monkeypatch):
    run = make_run(["adam.iters_per_cycle=8", "adam.checkpoint_every=3"])
    pretrain(run)
    calls = {"n": 0}
    real_l1 = losses.l1_loss

    def l1_with_nan(sr, hr):
        calls["n"] += 1
        value = real_l1(sr, hr)
        return value * float("nan") if calls["n"] == 5 else value  # 5th iteration (index 4)

    monkeypatch.setattr(losses, "l1_loss", l1_with_nan)
    with pytest.raises(TrainingError, match=r"cycle 0 member 1: l1 loss is nan at iteration 4"):
        train_member(run, 0, 1)
    folder = RunDir(run).member(0, 1)
    meta = read_checkpoint_meta(folder)
    assert meta["iteration"] == 3 and not meta["done"] and verify_checkpoint_dir(folder)
    monkeypatch.setattr(losses, "l1_loss", real_l1)
    assert train_member(run, 0, 1)["done"]


def test_tensorboard_events_hold_member_scalars_and_images(make_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = make_run()
    pretrain(run)
    train_member(run, 0, 0)
    acc = EventAccumulator(str(RunDir(run).tb / "member_00"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("loss/l1", "loss/perceptual", "loss/gan", "loss/d", "grad_norm/l1", "grad_norm/perceptual",
                "lr/generator", "speed/iters_per_s"):
        assert tag in tags["scalars"], tag
    steps = [e.step for e in acc.Scalars("loss/l1")]
    assert steps == list(range(1, 7))
    images = acc.Images("samples/lr_sr_hr")
    assert [e.step for e in images] == [3, 6] and images[0].width == 3 * images[0].height


def test_frozen_first_member_is_not_trained(make_run):
    run = make_run(["population.freeze_first=true"])
    pretrain(run)
    meta = train_member(run, 0, 0)
    assert meta["frozen"] and meta["done"] and meta["iteration"] == 0
    start = load_verified(RunDir(run).pretrain, "G.pt")
    _assert_same_weights(load_verified(RunDir(run).member(0, 0), "G.pt"), start)


def test_cli_reports_bad_arguments(make_run):
    run = make_run()
    res = subprocess.run(_cli(run, "--cycle", "0", "--member", "7"), capture_output=True, text=True)
    assert res.returncode == 2 and "--member 7: the population has members 0..2" in res.stderr
    res = subprocess.run(_cli(run, "--cycle", "0", "--member", "0"), capture_output=True, text=True)
    assert res.returncode == 2 and "no finished pretraining" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["srresnet", "rrdb"])
def test_full_size_networks_train_one_iteration(name, demo_shards):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.patch_size=32"])
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


def test_member_lock_refuses_a_second_live_trainer(make_run):
    import socket

    from easlurm.errors import CheckpointError

    run = make_run()
    pretrain(run)
    folder = RunDir(run).member(0, 1)
    folder.mkdir(parents=True)
    # A live process on this host (pytest's parent) holds the lock: refused, naming the holder.
    (folder / ".lock").write_text(json.dumps({"job": None, "host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(CheckpointError, match=r"member is being trained by job None \(pid \d+ on "):
        train_member(run, 0, 1)
    # A dead holder is stale: taken over, and released at the end.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / ".lock").write_text(json.dumps({"job": None, "host": socket.gethostname(), "pid": dead.pid}))
    assert train_member(run, 0, 1)["done"]
    assert not (folder / ".lock").exists()
