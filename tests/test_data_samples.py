"""Built-in sample photos: train/val shards with the documented ids, built offline, idempotent."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from easlurm.data.bicubic import bicubic_downscale
from easlurm.data.dataset import ShardReader
from easlurm.data.samples import build_samples, sample_image
from easlurm.data.shards import verify_shards


def test_build_samples(tmp_path: Path) -> None:
    paths = build_samples(tmp_path / "samples", scale=4)
    assert paths == {"train": tmp_path / "samples" / "train", "val": tmp_path / "samples" / "val"}
    val = verify_shards(paths["val"])
    train = verify_shards(paths["train"])
    assert [e["id"] for e in val["entries"]] == ["astronaut", "china", "coffee"]
    assert [e["id"] for e in train["entries"]] == [
        "chelsea", "flower", "grace_hopper", "hubble_deep_field", "immunohistochemistry",
        "motorcycle_left", "motorcycle_right", "retina", "rocket"]
    assert val["scale"] == train["scale"] == 4
    for e in val["entries"] + train["entries"]:
        assert e["hr_shape"][0] >= 128 and e["hr_shape"][1] >= 128  # every sample fits a 128 px training patch

    # Shards hold the real photo (mod-cropped) and its bicubic LR.
    reader = ShardReader(paths["val"])
    astronaut = sample_image("astronaut")
    assert astronaut.shape == (512, 512, 3)
    assert np.array_equal(reader.read_full("astronaut", "hr"), astronaut)
    assert np.array_equal(reader.read_full("astronaut", "lr"), bicubic_downscale(astronaut, 4))
    china = sample_image("china")
    assert np.array_equal(reader.read_full("china", "hr"), china[:424, :640])
    reader.close()
    left, right = sample_image("motorcycle_left"), sample_image("motorcycle_right")
    assert left.shape == right.shape and not np.array_equal(left, right)

    # Second call: nothing rebuilt.
    mtimes = {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "samples").rglob("*"))}
    t0 = time.perf_counter()
    assert build_samples(tmp_path / "samples", scale=4) == paths
    assert time.perf_counter() - t0 < 2.0
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "samples").rglob("*"))} == mtimes

    # A corrupted split is rebuilt; a different scale rebuilds both.
    shard = paths["val"] / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    build_samples(tmp_path / "samples", scale=4)
    verify_shards(paths["val"])
    assert paths["train"].joinpath("shard-00000.h5").stat().st_mtime_ns == mtimes[
        paths["train"] / "shard-00000.h5"]
    build_samples(tmp_path / "samples", scale=2)
    assert verify_shards(paths["train"])["scale"] == 2
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["train", "val"]
