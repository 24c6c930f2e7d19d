"""Fail before submitting, never retry the hopeless: every input a run reads is checked at launch (one error lists
all that are missing), the data a run was launched on is recorded and re-checked by every task, and a task that
fails for a reason a retry cannot change runs once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easlurm.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _tripwire_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose sbatch/squeue/sacct only record that they were called, and whose torchvision cache is
    empty (no VGG19 staged)."""
    bindir, calls = tmp_path / "bin", tmp_path / "slurm-calls"
    bindir.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scontrol", "scancel"):
        (bindir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 1\n")
        (bindir / name).chmod(0o755)
    (tmp_path / "torch-home").mkdir()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "TORCH_HOME": str(tmp_path / "torch-home")}
    return env, calls


def _launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "easlurm.launch", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_the_srresnet_paper_config_without_vgg19_fails_before_anything_is_submitted(tmp_path, demo_shards):
    env, calls = _tripwire_env(tmp_path)
    res = _launch(env, "--config", "configs/srresnet.yaml", "--executor", "slurm", "--run-dir", str(tmp_path / "r"),
                  "--set", f"data.train={demo_shards / 'train'}", "--set", f"data.val={demo_shards / 'val'}",
                  "--set", "model.pretrained=null", "--set", "fusion.average_set=null", "--set", "eval.sets={}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "1 input(s) the run needs are missing or wrong; nothing was submitted" in res.stderr
    assert f"loss.perceptual.net: vgg19: {tmp_path / 'torch-home' / 'hub' / 'checkpoints' / 'vgg19-dcbb9e9d.pth'} " \
           f"not found" in res.stderr
    assert not calls.exists() and not (tmp_path / "r").exists()


def test_the_paper_config_as_shipped_lists_every_missing_input_in_one_error(tmp_path):
    env, calls = _tripwire_env(tmp_path)
    res = _launch(env, "--config", "configs/srresnet.yaml", "--executor", "slurm", "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in lines] == [
        "  - data.train", "  - data.val", "  - model.pretrained", "  - fusion.average_set", "  - eval.sets.B100",
        "  - eval.sets.Manga109", "  - eval.sets.Set14", "  - eval.sets.Set5", "  - eval.sets.Urban100",
        "  - loss.perceptual.net"]
    assert "10 input(s) the run needs are missing or wrong; nothing was submitted" in res.stderr
    assert "/path/to/shards/flickr2k_train not found" in lines[0]
    assert not calls.exists() and not (tmp_path / "r").exists()


def test_the_dry_run_shows_what_a_launch_would_refuse(tmp_path):
    env, _ = _tripwire_env(tmp_path)
    res = _launch(env, "--config", "configs/srresnet.yaml", "--executor", "slurm", "--run-dir", str(tmp_path / "r"),
                  "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "# missing inputs (a launch refuses until they exist):" in res.stdout
    assert "#   model.pretrained: /path/to/MSRResNet_x4_L1.pth not found" in res.stdout


def test_the_shard_manifests_are_recorded_and_a_task_refuses_changed_data(tmp_path, demo_shards):
    import shutil

    from easlurm.launch import prepare_run
    from easlurm.run_record import read, verify_inputs

    data = tmp_path / "data"
    shutil.copytree(demo_shards, data)
    _, run = prepare_run(str(REPO / "configs" / "tiny.yaml"), str(tmp_path / "run"), None,
                         [f"data.train={data / 'train'}", f"data.val={data / 'val'}"], None, ["test"],
                         echo=lambda m: None)
    inputs = read(run)["inputs"]
    assert sorted(inputs) == ["data.train", "data.val"]
    assert inputs["data.train"]["path"] == str(data / "train") and len(inputs["data.train"]["manifest_sha256"]) == 64
    verify_inputs(run)
    manifest = data / "train" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "rebuilt": True}))
    with pytest.raises(DataError, match=r"data\.train: .*manifest\.json: shard manifest changed since it was "
                                        r"recorded .*\(recorded in .*run\.json at launch\)"):
        verify_inputs(run)
    with pytest.raises(DataError, match=r"data\.train: "):
        prepare_run(None, None, str(run.root), [], None, ["test"], echo=lambda m: None)  # --resume refuses too


def test_a_pinned_pretrained_start_is_checked_at_launch_and_at_load(tmp_path):
    import torch

    from easlurm import factory
    from easlurm.config import load_config
    from easlurm.errors import CheckpointError, ConfigError
    from easlurm.inputs import missing_inputs
    from easlurm.models.checkpoint_io import load_generator_weights
    from easlurm.store import sha256_file

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["data.train=x"])
    start = tmp_path / "start.pth"
    torch.save({"params": factory.build_generator(cfg).state_dict()}, start)
    good = sha256_file(start)
    for pin, wrong in ((good, False), ("f" * 64, True)):
        cfg = load_config(REPO / "configs" / "tiny.yaml", ["data.train=x", f"model.pretrained={start}",
                                                           f"model.pretrained_sha256={pin}"])
        lines = [m for m in missing_inputs(cfg, jobs_see_host=True) if m.startswith("model.pretrained")]
        assert bool(lines) == wrong and (not wrong or "not the pinned model.pretrained_sha256 ffffffffffff" in lines[0])
        g = factory.build_generator(cfg)
        if wrong:
            with pytest.raises(CheckpointError, match=r"start\.pth: sha256 mismatch"):
                load_generator_weights(g, start, sha256=pin)
        else:
            assert load_generator_weights(g, start, sha256=pin) == "params"
    with pytest.raises(ConfigError, match=r"model\.pretrained_sha256: expected 64 lower-case hex digits"):
        load_config(REPO / "configs" / "tiny.yaml", ["data.train=x", "model.pretrained_sha256=abc"])
