"""Shard building and reading: exact crops, mod-crop, sub-images, LR folders, manifest, atomic rebuild, CLI."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from easlurm.data.__main__ import main as cli_main
from easlurm.data.bicubic import bicubic_downscale
from easlurm.data.dataset import ShardReader
from easlurm.data.shards import build_shards, load_manifest, verify_shards
from easlurm.errors import DataError


def _img(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(path: Path, images: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, arr in images.items():
        Image.fromarray(arr).save(path / f"{name}{suffix}")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_crops_read_back_equal_source_and_bicubic_lr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = {"b": _img(rng, 50, 66), "a": _img(rng, 41, 37)}  # neither a multiple of 4: mod-crop kicks in
    hr_dir = _folder(tmp_path / "hr", src)
    m = build_shards(hr_dir, tmp_path / "out", 4)
    assert [e["id"] for e in m["entries"]] == ["a", "b"]
    for name, arr in src.items():
        h, w = arr.shape[0] // 4 * 4, arr.shape[1] // 4 * 4
        hr = arr[:h, :w]
        lr = bicubic_downscale(hr, 4)
        entry = next(e for e in m["entries"] if e["id"] == name)
        assert entry["hr_shape"] == [h, w, 3] and entry["lr_shape"] == [h // 4, w // 4, 3]
        with h5py.File(tmp_path / "out" / entry["shard"], "r") as f:
            assert f[f"hr/{name}"].dtype == np.uint8
            assert np.array_equal(f[f"hr/{name}"][...], hr)
            assert np.array_equal(f[f"lr/{name}"][...], lr)
        reader = ShardReader(tmp_path / "out")
        assert np.array_equal(reader.read(name, "hr", 8, 12, 16, 20), hr[8:24, 12:32])
        assert np.array_equal(reader.read(name, "lr", 2, 3, 4, 5), lr[2:6, 3:8])
        reader.close()


def test_manifest_contents_and_shard_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    names = ["im3", "im0", "im4", "im1", "im2"]
    hr_dir = _folder(tmp_path / "hr", {n: _img(rng, 16, 24) for n in names})
    m = build_shards(hr_dir, tmp_path / "out", 2, shard_size=2)
    assert m == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["format"] == 1 and m["scale"] == 2
    assert [e["id"] for e in m["entries"]] == sorted(names)
    assert [s["count"] for s in m["shards"]] == [2, 2, 1]
    assert [s["name"] for s in m["shards"]] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    for s in m["shards"]:
        assert s["sha256"] == _sha(tmp_path / "out" / s["name"])
    for e in m["entries"]:
        assert e["source"] == f"{e['id']}.png"
        assert e["source_sha256"] == _sha(hr_dir / e["source"])
        with h5py.File(tmp_path / "out" / e["shard"], "r") as f:
            assert f"hr/{e['id']}" in f
    assert m["counts"]["entries"] == 5 and m["counts"]["images"] == 5 and m["counts"]["shards"] == 3
    assert load_manifest(tmp_path / "out") == m
    assert verify_shards(tmp_path / "out") == m


def test_build_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    hr_dir = _folder(tmp_path / "hr", {"x": _img(rng, 24, 24), "y": _img(rng, 32, 16)})
    m1 = build_shards(hr_dir, tmp_path / "o1", 4)
    m2 = build_shards(hr_dir, tmp_path / "o2", 4)
    assert m1 == m2


def test_sub_images_cover_image_with_flush_last_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = _img(rng, 100, 74)  # mod-crop to 100 x 72 for scale 4
    hr_dir = _folder(tmp_path / "hr", {"pic": src})
    m = build_shards(hr_dir, tmp_path / "out", 4, sub_image=48, sub_step=24)
    hr = src[:100, :72]
    lr = bicubic_downscale(hr, 4)  # LR of the whole image, then cropped (not LR of each crop)
    ys, xs = [0, 24, 48, 52], [0, 24]  # 0, 24, 48 then the flush crop at 100 - 48 = 52; 72 - 48 = 24 is on-grid
    expected = [(y, x) for y in ys for x in xs]
    assert [e["id"] for e in m["entries"]] == [f"pic_s{k:03d}" for k in range(1, len(expected) + 1)]
    reader = ShardReader(tmp_path / "out")
    for e, (y, x) in zip(m["entries"], expected, strict=True):
        assert e["crop"] == [y, x] and e["hr_shape"] == [48, 48, 3] and e["lr_shape"] == [12, 12, 3]
        assert np.array_equal(reader.read_full(e["id"], "hr"), hr[y:y + 48, x:x + 48])
        assert np.array_equal(reader.read_full(e["id"], "lr"), lr[y // 4:y // 4 + 12, x // 4:x // 4 + 12])
    reader.close()


def test_sub_image_must_align_with_scale(tmp_path: Path) -> None:
    hr_dir = _folder(tmp_path / "hr", {"a": _img(np.random.default_rng(0), 64, 64)})
    with pytest.raises(DataError, match="multiples of scale"):
        build_shards(hr_dir, tmp_path / "out", 4, sub_image=30, sub_step=12)
    assert not (tmp_path / "out").exists()


def test_lr_folder_pairs_by_stem(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    hr = {"0001": _img(rng, 40, 48), "0002": _img(rng, 43, 32)}
    lr = {"0001x4": _img(rng, 10, 12), "0002": _img(rng, 10, 8)}  # DIV2K-style and plain names
    hr_dir, lr_dir = _folder(tmp_path / "hr", hr), _folder(tmp_path / "lr", lr)
    m = build_shards(hr_dir, tmp_path / "out", 4, lr_dir=lr_dir)
    reader = ShardReader(tmp_path / "out")
    assert np.array_equal(reader.read_full("0001", "lr"), lr["0001x4"])
    assert np.array_equal(reader.read_full("0002", "lr"), lr["0002"])
    assert np.array_equal(reader.read_full("0002", "hr"), hr["0002"][:40])
    e1 = next(e for e in m["entries"] if e["id"] == "0001")
    assert e1["lr_source"] == "0001x4.png" and e1["lr_source_sha256"] == _sha(lr_dir / "0001x4.png")
    reader.close()


def test_rebuild_replaces_complete_folder_atomically(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    hr_dir = _folder(tmp_path / "hr", {"a": _img(rng, 16, 16)})
    build_shards(hr_dir, tmp_path / "out", 4)
    _folder(hr_dir, {"b": _img(rng, 16, 16)})
    m = build_shards(hr_dir, tmp_path / "out", 4)
    assert [e["id"] for e in load_manifest(tmp_path / "out")["entries"]] == ["a", "b"] == [
        e["id"] for e in m["entries"]]
    assert _hidden_leftovers(tmp_path) == []


def test_load_manifest_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest.json"):
        load_manifest(tmp_path)
    hr_dir = _folder(tmp_path / "hr", {"a": _img(np.random.default_rng(6), 16, 16),
                                       "b": _img(np.random.default_rng(7), 16, 16)})
    out = tmp_path / "out"
    build_shards(hr_dir, out, 4)
    good = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match=re.escape(str(out / "manifest.json"))):
        load_manifest(out)
    bad = json.loads(good)
    bad["entries"].reverse()
    (out / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="sorted"):
        load_manifest(out)
    bad = json.loads(good)
    bad["entries"][0]["lr_shape"] = [5, 4, 3]
    (out / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="inconsistent with scale"):
        load_manifest(out)


def test_verify_shards_detects_a_modified_shard(tmp_path: Path) -> None:
    hr_dir = _folder(tmp_path / "hr", {"a": _img(np.random.default_rng(8), 16, 16)})
    out = tmp_path / "out"
    build_shards(hr_dir, out, 4)
    verify_shards(out)
    shard = out / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00000.h5"):
        verify_shards(out)


def test_cli_build_and_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr_dir = _folder(tmp_path / "hr", {"a": _img(np.random.default_rng(9), 32, 32)})
    assert cli_main(["build", "--hr", str(hr_dir), "--scale", "4", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 entries" in out and "1 shard" in out and "MB" in out
    (hr_dir / "broken.png").write_bytes(b"not a png at all")
    code = cli_main(["build", "--hr", str(hr_dir), "--scale", "4", "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "broken.png" in err and "Traceback" not in err
    assert not (tmp_path / "out2").exists()
    assert cli_main(["verify", str(tmp_path / "out")]) == 0
    assert "checksums ok" in capsys.readouterr().out
