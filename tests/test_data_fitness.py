"""The EA fitness set: distinct source images, the reference tile rule, per-image means, sub-image reassembly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm.config import load_config
from easlurm.data.bicubic import bicubic_downscale
from easlurm.data.fitness import FitnessTiles, choose_tiles
from easlurm.data.shards import build_shards
from easlurm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# Tile 8 px at scale 4: "big" has a 12x12 grid (144 tiles > 100), "small" 6x7 (42 tiles), "wide" 6x12 (72 tiles).
SIZES = {"big": (96, 96), "small": (48, 56), "wide": (50, 99)}
T, S = 8, 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(1)
    (root / "hr").mkdir()
    images = {}
    for name, (h, w) in SIZES.items():
        images[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(images[name]).save(root / "hr" / f"{name}.png")
    build_shards(root / "hr", root / "whole", S, shard_size=2)
    # Overlapping sub-images (the README's 480/240 pattern, scaled down): every tile lies inside one crop.
    build_shards(root / "hr", root / "sub_overlap", S, sub_image=40, sub_step=20, shard_size=5)
    # Non-overlapping 44 px crops: tiles straddle crop borders and must be assembled from two or four crops.
    build_shards(root / "hr", root / "sub_abut", S, sub_image=44, sub_step=44, shard_size=5)
    return root, images


def _uint8(t: torch.Tensor) -> np.ndarray:
    return np.round(t.numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)


def test_sub_image_shards_give_distinct_source_images(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    fit = FitnessTiles(root / "sub_overlap", T, S, images=3, choice="first", max_tiles=4)
    # Sorted by source file name; today's "first N sorted entry ids" would be 3 crops of big.png.
    assert [s.name for s in fit.sources] == ["big.png", "small.png", "wide.png"]
    assert fit.tiles_per_image() == [4, 4, 4]
    assert fit.image_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert fit.image_index.dtype == torch.long
    assert len({r["source"] for r in fit.manifest_rows()}) == 3
    assert set(fit.source_hashes()) == {"big.png", "small.png", "wide.png"}


def test_reference_rule_keeps_tiles_25_to_74_of_big_images_and_all_of_small_ones(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    fit = FitnessTiles(root / "whole", T, S, images=3, choice="reference", max_tiles=50)
    by_image = {s.name: [tl.index for tl in fit.tiles if fit.sources[tl.image].name == s.name] for s in fit.sources}
    assert by_image["big.png"] == list(range(25, 75))   # 144 tiles > 100
    assert by_image["small.png"] == list(range(42))     # 42 tiles: all
    assert by_image["wide.png"] == list(range(72))      # 72 tiles <= 100: all
    big = [tl for tl in fit.tiles if tl.image == 0]
    assert (big[0].y, big[0].x) == (2 * T, 1 * T)       # tile 25 of a 12-column grid: row 2, column 1
    first = FitnessTiles(root / "whole", T, S, images=3, choice="first", max_tiles=50)
    assert first.tiles_per_image() == [50, 42, 50]
    assert [tl.index for tl in first.tiles[:50]] == list(range(50))


def test_reference_rule_at_paper_scale() -> None:
    # A 2040x1356 Flickr2K image with 128 px tiles: 10 rows x 15 columns = 150 tiles -> the reference's [25:75],
    # i.e. rows 1-4 starting at column 10.
    kept = choose_tiles(150, "reference", 50)
    assert list(kept) == list(range(25, 75))
    assert divmod(kept[0], 15) == (1, 10)
    assert list(choose_tiles(100, "reference", 50)) == list(range(100))
    assert list(choose_tiles(101, "reference", 50)) == list(range(25, 75))
    assert list(choose_tiles(150, "first", 50)) == list(range(50))
    assert list(choose_tiles(17, "reference", 8)) == list(range(4, 12))  # configs/tiny.yaml's K = 8


def test_tile_pixels_are_the_source_image_and_its_bicubic_lr(photos: tuple[Path, dict]) -> None:
    root, images = photos
    fit = FitnessTiles(root / "whole", T, S, images=3, choice="reference", max_tiles=50)
    lr_full = {name: bicubic_downscale(img[:img.shape[0] // S * S, :img.shape[1] // S * S], S)
               for name, img in images.items()}
    for k in (0, 7, 49, 50, len(fit) - 1):
        tl = fit.tiles[k]
        name = fit.sources[tl.image].name.removesuffix(".png")
        lr, hr = fit[k]
        assert hr.shape == (3, T, T) and lr.shape == (3, T // S, T // S) and hr.dtype == torch.float32
        np.testing.assert_array_equal(_uint8(hr), images[name][tl.y:tl.y + T, tl.x:tl.x + T])
        np.testing.assert_array_equal(_uint8(lr), lr_full[name][tl.y // S:(tl.y + T) // S, tl.x // S:(tl.x + T) // S])


@pytest.mark.parametrize("layout", ["sub_overlap", "sub_abut"])
@pytest.mark.parametrize("choice", ["reference", "first"])
def test_sub_image_shards_reproduce_whole_image_tiles_exactly(photos: tuple[Path, dict], layout: str,
                                                              choice: str) -> None:
    root, _ = photos
    whole = FitnessTiles(root / "whole", T, S, images=3, choice=choice, max_tiles=50)
    sub = FitnessTiles(root / layout, T, S, images=3, choice=choice, max_tiles=50)
    strip = [{k: v for k, v in r.items() if k != "entries"} for r in whole.manifest_rows()]
    assert [{k: v for k, v in r.items() if k != "entries"} for r in sub.manifest_rows()] == strip
    assert [(s.height, s.width, s.rows, s.cols) for s in sub.sources] == \
        [(s.height, s.width, s.rows, s.cols) for s in whole.sources]
    (lw, hw, iw), (ls, hs, is_) = whole.load(), sub.load()
    assert torch.equal(hw, hs) and torch.equal(lw, ls) and torch.equal(iw, is_)
    if layout == "sub_abut":  # some tiles straddle the 44 px crop borders and were assembled from several crops
        assert max(len(r["entries"]) for r in sub.manifest_rows()) > 1
    else:  # every tile sits inside one crop: the first in sorted id order
        assert all(len(r["entries"]) == 1 for r in sub.manifest_rows())


def test_same_selection_twice(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    a = FitnessTiles(root / "sub_abut", T, S, images=2)
    b = FitnessTiles(root / "sub_abut", T, S, images=2)
    assert a.describe() == b.describe()
    (la, ha, ia), (lb, hb, ib) = a.load(), b.load()
    assert torch.equal(la, lb) and torch.equal(ha, hb) and torch.equal(ia, ib)


def test_too_few_sources_is_one_clear_error(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    with pytest.raises(DataError) as err:
        FitnessTiles(root / "sub_overlap", T, S, images=4)
    msg = str(err.value)
    # 3 photos in many sub-image entries: the count is of distinct sources, not entries.
    assert str(root / "sub_overlap") in msg and "needs 4 distinct source images" in msg
    assert "hold 3 " in msg and "data.fitness_images" in msg


def test_uncovered_tile_is_refused(tmp_path: Path, photos: tuple[Path, dict]) -> None:
    root, _ = photos
    # 20 px crops every 28 px leave 8 px gaps: tiles that reach into a gap cannot be read.
    build_shards(root / "hr", tmp_path / "gaps", S, sub_image=20, sub_step=28)
    with pytest.raises(DataError, match=r"fitness tile \d+ of 'big.png' .* not covered"):
        FitnessTiles(tmp_path / "gaps", T, S, images=1, choice="first", max_tiles=200)


def test_source_smaller_than_a_tile_is_refused(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    with pytest.raises(DataError, match=r"'small.png' is 56x48 px, smaller than one 64x64 fitness tile"):
        FitnessTiles(root / "whole", 64, S, images=3)


def test_per_image_mean_weights_and_batches(photos: tuple[Path, dict]) -> None:
    root, _ = photos
    fit = FitnessTiles(root / "whole", T, S, images=3, choice="reference", max_tiles=50)  # 50, 42, 72 tiles
    _, hr, idx = fit.load()
    loss = hr.double().mean(dim=(1, 2, 3))  # a per-tile "loss": the tile's mean value
    expected_image = float(np.mean([loss[idx == i].mean() for i in range(3)]))
    expected_tile = float(loss.mean())
    assert expected_image != pytest.approx(expected_tile, rel=1e-6)  # unequal counts: the two means differ
    for mean, expected in (("image", expected_image), ("tile", expected_tile)):
        w = fit.tile_weights(mean)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        assert float((w * loss).sum()) == pytest.approx(expected, rel=1e-12)
        batches = fit.batches(16, mean)
        assert all(b - a <= 16 for a, b, _ in batches)
        # What the EA computes: one mean per batch, weighted.
        assert sum(wt * float(loss[a:b].mean()) for a, b, wt in batches) == pytest.approx(expected, rel=1e-12)
    assert all(len(set(idx[a:b].tolist())) == 1 for a, b, _ in fit.batches(16, "image"))


def test_from_config_on_the_demo_photos(demo_shards: Path) -> None:
    # configs/tiny.yaml: 4 images, 32 px tiles, K = 8, default rule (reference) -> 8 tiles from each of 4 photos.
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.demo_dir={demo_shards}"])
    assert cfg.data.fitness_tile_choice == "reference" and cfg.data.fitness_mean == "image"
    fit = FitnessTiles.from_config(cfg.data, demo_shards / "train")
    assert [s.name for s in fit.sources] == ["chelsea.png", "flower.png", "grace_hopper.png",
                                             "hubble_deep_field.png"]
    assert fit.tiles_per_image() == [8, 8, 8, 8]
    assert [tl.index for tl in fit.tiles[:8]] == list(range(4, 12))  # chelsea: 126 tiles > 16
    lr, hr, idx = fit.load()
    assert hr.shape == (32, 3, 32, 32) and lr.shape == (32, 3, 8, 8) and idx.tolist() == sorted(idx.tolist())
