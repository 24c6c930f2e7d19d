"""Datasets over shards: pure-in-(seed, index) patches, alignment, worker invariance, resume, tiles, images."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm.data.bicubic import bicubic_downscale
from easlurm.data.dataset import RandomPatchDataset, ShardReader, infinite_loader
from easlurm.data.shards import build_shards

SIZES = {"b_wide": (40, 72), "a_tall": (64, 32), "c_small": (24, 24)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    images = {}
    for name, (h, w) in SIZES.items():
        images[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(images[name]).save(root / "hr" / f"{name}.png")
    build_shards(root / "hr", root / "shards", 4, shard_size=2)
    return root / "shards", images


def _np(t: torch.Tensor) -> np.ndarray:
    """float CHW [0, 1] -> uint8 HWC."""
    return np.round(t.numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)


def _undo(img: np.ndarray, hflip: bool, vflip: bool, rot90: bool) -> np.ndarray:
    # Inverse of: hflip, then vflip, then transpose.
    if rot90:
        img = np.transpose(img, (1, 0, 2))
    if vflip:
        img = np.flipud(img)
    if hflip:
        img = np.fliplr(img)
    return img


def test_patches_are_pure_functions_of_seed_and_index(shards: tuple[Path, dict]) -> None:
    d, _ = shards
    a = RandomPatchDataset(d, 16, 4, num_samples=50, seed=7)
    b = RandomPatchDataset(d, 16, 4, num_samples=50, seed=7)
    order = [13, 2, 40, 2, 0, 13]
    for i in order:
        (la, ha), (lb, hb) = a[i], b[i]
        assert torch.equal(la, lb) and torch.equal(ha, hb)
    assert la.shape == (3, 4, 4) and ha.shape == (3, 16, 16) and ha.dtype == torch.float32
    assert 0.0 <= float(ha.min()) and float(ha.max()) <= 1.0
    c = RandomPatchDataset(d, 16, 4, num_samples=50, seed=8)
    assert any(not torch.equal(a[i][1], c[i][1]) for i in range(5))
    assert len({a.plan(i) for i in range(50)}) > 40  # indices give different crops
    assert len(a) == 50
    a[10_000]  # any index >= 0 is a valid sample (the loader runs past num_samples)
    with pytest.raises(IndexError):
        a[-1]


def test_patch_is_aligned_crop_with_identical_augmentation(shards: tuple[Path, dict]) -> None:
    d, images = shards
    ds = RandomPatchDataset(d, 16, 4, num_samples=200, seed=1)
    seen_flags = set()
    for i in range(200):
        p = ds.plan(i)
        seen_flags.add((p.hflip, p.vflip, p.rot90))
        lr, hr = ds[i]
        src = images[p.entry_id]
        h, w = src.shape[0] // 4 * 4, src.shape[1] // 4 * 4
        full_lr = bicubic_downscale(src[:h, :w], 4)
        y, x = p.ly * 4, p.lx * 4
        assert np.array_equal(_undo(_np(hr), p.hflip, p.vflip, p.rot90), src[y:y + 16, x:x + 16])
        assert np.array_equal(_undo(_np(lr), p.hflip, p.vflip, p.rot90), full_lr[p.ly:p.ly + 4, p.lx:p.lx + 4])
    assert len(seen_flags) == 8
    assert {ds.plan(i).entry_id for i in range(200)} == set(SIZES)


def test_no_augment_means_no_flips(shards: tuple[Path, dict]) -> None:
    d, _ = shards
    ds = RandomPatchDataset(d, 16, 4, num_samples=20, augment=False)
    assert all(not (p.hflip or p.vflip or p.rot90) for p in map(ds.plan, range(20)))


def test_loader_identical_for_0_and_2_workers_and_resumes_exactly(shards: tuple[Path, dict]) -> None:
    d, _ = shards
    ds = RandomPatchDataset(d, 16, 4, num_samples=1000, seed=3)
    ds[0]  # the main process now holds open h5py handles: workers must not reuse them after fork
    torch.manual_seed(123)
    state = torch.get_rng_state()
    full0 = list(infinite_loader(ds, 4, 0, num_workers=0, stop_index=24))
    assert torch.equal(torch.get_rng_state(), state)  # the loader does not consume the global torch RNG
    full2 = list(infinite_loader(ds, 4, 0, num_workers=2, stop_index=24))
    assert len(full0) == len(full2) == 6
    for (l0, h0), (l2, h2) in zip(full0, full2, strict=True):
        assert torch.equal(l0, l2) and torch.equal(h0, h2)
    # Batch b is samples start + 4b ... start + 4b + 3.
    for k in range(4):
        assert torch.equal(full0[1][1][k], ds[4 + k][1])
    resumed = list(infinite_loader(ds, 4, 8, num_workers=2, stop_index=24))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(resumed, full0[2:], strict=True))
    endless = infinite_loader(ds, 4, 0, num_workers=0)
    batches = [next(endless) for _ in range(300)]  # past num_samples, still going
    assert torch.equal(batches[1][1], full0[1][1])


def test_dataset_pickles_without_handles(shards: tuple[Path, dict]) -> None:
    d, _ = shards
    ds = RandomPatchDataset(d, 16, 4, num_samples=10)
    expected = ds[3]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._files == {}
    got = clone[3]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_reader_caps_open_shard_files(shards: tuple[Path, dict]) -> None:
    d, images = shards  # 3 entries in 2 shards (shard_size=2)
    reader = ShardReader(d, scale=4)
    reader.max_open = 1
    for _ in range(2):
        for eid in reader.ids:
            hr = reader.read_full(eid, "hr")
            h, w = images[eid].shape[0] // 4 * 4, images[eid].shape[1] // 4 * 4
            assert np.array_equal(hr, images[eid][:h, :w])
            assert len(reader._files) == 1
    reader.close()
    assert len(reader._files) == 0
