"""Every bad input is refused with an error naming the culprit, and no partial shard or manifest is left behind."""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easlurm.data.dataset import RandomPatchDataset
from easlurm.data.images import list_images, read_rgb
from easlurm.data.shards import build_shards
from easlurm.errors import DataError

RNG = np.random.default_rng(42)
GOOD = RNG.integers(0, 256, (32, 40, 3), dtype=np.uint8)


def _png16_rgb(path: Path, h: int = 8, w: int = 8) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    rows = b"".join(b"\x00" + np.full(w * 3, 40000, dtype=">u2").tobytes() for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def _truncated_png(path: Path) -> None:
    Image.fromarray(GOOD).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _alpha_png(path: Path) -> None:
    rgba = np.dstack([GOOD, np.full(GOOD.shape[:2], 255, np.uint8)])
    rgba[3, 5, 3] = 254
    Image.fromarray(rgba, "RGBA").save(path)


def _colour_key_png(path: Path) -> None:
    img = GOOD.copy()
    img[0, 0] = (1, 2, 3)
    Image.fromarray(img).save(path, transparency=(1, 2, 3))


# name -> (file name, writer). Each writer makes one bad file inside an otherwise good HR folder.
BAD_FILES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "corrupt": ("corrupt.png", _truncated_png),
    "non_image": ("notes.jpg", lambda p: p.write_text("this is not an image\n")),
    "alpha": ("alpha.png", _alpha_png),
    "colour_key_transparency": ("key.png", _colour_key_png),
    "gray16": ("gray16.png", lambda p: Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(p)),
    "rgb16": ("rgb16.png", _png16_rgb),
    "tiff16": ("deep.tif", lambda p: Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(p)),
    "float": ("float.tiff", lambda p: Image.fromarray(np.zeros((32, 32), np.float32), "F").save(p)),
    "cmyk": ("cmyk.jpg", lambda p: Image.fromarray(GOOD).convert("CMYK").save(p)),
}


def _good_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    Image.fromarray(GOOD).save(path / "good.png")
    return path


def _assert_refused(tmp_path: Path, culprit: str, hr_dir: Path, **kwargs: object) -> None:
    """build_shards fails naming ``culprit``; a new out_dir is not created and an existing build is untouched."""
    out = tmp_path / "out"
    with pytest.raises(DataError, match=culprit):
        build_shards(hr_dir, out, 4, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # A previous complete build survives a failed rebuild byte for byte.
    prev = build_shards(_good_folder(tmp_path / "prev_src"), out, 4)
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    with pytest.raises(DataError, match=culprit):
        build_shards(hr_dir, out, 4, **kwargs)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before
    assert prev["entries"][0]["id"] == "good"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_and_named(tmp_path: Path, case: str) -> None:
    name, write = BAD_FILES[case]
    hr_dir = _good_folder(tmp_path / "hr")
    write(hr_dir / name)
    with pytest.raises(DataError, match=name):
        read_rgb(hr_dir / name)
    _assert_refused(tmp_path, name, hr_dir)


def test_image_smaller_than_min_size(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(GOOD[:20, :36]).save(hr_dir / "tiny.png")
    _assert_refused(tmp_path, "tiny.png", hr_dir, min_size=24)


def test_image_smaller_than_sub_image(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(GOOD[:20, :36]).save(hr_dir / "tiny.png")
    _assert_refused(tmp_path, "tiny.png", hr_dir, sub_image=24, sub_step=12)


def test_duplicate_stems(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(GOOD).save(hr_dir / "good.bmp")
    _assert_refused(tmp_path, "good", hr_dir)


def test_hr_lr_size_mismatch_names_the_lr_file(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    Image.fromarray(GOOD[:8, :9]).save(lr_dir / "good.png")  # should be 8 x 10
    _assert_refused(tmp_path, "lr/good.png", hr_dir, lr_dir=lr_dir)


def test_missing_lr_partner_names_the_hr_file(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(GOOD).save(hr_dir / "second.png")
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    Image.fromarray(GOOD[:8, :10]).save(lr_dir / "good.png")
    _assert_refused(tmp_path, "hr/second.png", hr_dir, lr_dir=lr_dir)


def test_empty_and_missing_folders_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    _assert_refused(tmp_path, "empty", empty)
    with pytest.raises(DataError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere"):
        build_shards(tmp_path / "nowhere", tmp_path / "out2", 4)
    assert not (tmp_path / "out2").exists()


def test_foreign_output_folder_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        build_shards(_good_folder(tmp_path / "hr"), out, 4)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_accepted_conversions(tmp_path: Path) -> None:
    gray = GOOD[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    assert np.array_equal(read_rgb(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    opaque = np.dstack([GOOD, np.full(GOOD.shape[:2], 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(read_rgb(tmp_path / "opaque.png"), GOOD)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], np.uint8)
    idx = RNG.integers(0, 3, (16, 12), dtype=np.uint8)
    p_img = Image.fromarray(idx, "P")
    p_img.putpalette(palette.ravel().tolist())
    p_img.save(tmp_path / "pal.png")
    assert np.array_equal(read_rgb(tmp_path / "pal.png"), palette[idx])
    # Grayscale joins a colour shard set (documented conversion).
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(gray, "L").save(hr_dir / "gray.png")
    m = build_shards(hr_dir, tmp_path / "out", 4)
    assert [e["id"] for e in m["entries"]] == ["good", "gray"]


def test_entries_smaller_than_patch_are_named(tmp_path: Path) -> None:
    hr_dir = _good_folder(tmp_path / "hr")
    Image.fromarray(GOOD[:16, :40]).save(hr_dir / "short.png")
    build_shards(hr_dir, tmp_path / "out", 4)
    with pytest.raises(DataError, match="'short'"):
        RandomPatchDataset(tmp_path / "out", 24, 4, 10)
    RandomPatchDataset(tmp_path / "out", 16, 4, 10)
    with pytest.raises(DataError, match="scale 4, not 2"):
        RandomPatchDataset(tmp_path / "out", 16, 2, 10)


def test_rgb16_tiff_is_refused(tmp_path: Path) -> None:
    # Pillow decodes 16-bit RGB TIFFs as 8-bit "RGB" silently; the BitsPerSample tag must catch it.
    tifffile = pytest.importorskip("tifffile")
    hr_dir = _good_folder(tmp_path / "hr")
    tifffile.imwrite(hr_dir / "deep_rgb.tif", np.full((32, 32, 3), 40000, np.uint16), photometric="rgb")
    assert Image.open(hr_dir / "deep_rgb.tif").mode == "RGB"
    _assert_refused(tmp_path, "deep_rgb.tif", hr_dir)


@pytest.mark.parametrize("fmt", ["GIF", "EPS", "PPM"])
def test_other_formats_behind_an_image_suffix_are_refused_unopened(tmp_path: Path, fmt: str) -> None:
    # Pillow decodes all three (EPS through Ghostscript); read_rgb tries only the PNG/JPEG/BMP/TIFF/WebP decoders.
    hr_dir = _good_folder(tmp_path / "hr")
    culprit = hr_dir / f"disguised_{fmt.lower()}.png"
    Image.fromarray(GOOD).save(culprit, format=fmt)
    with pytest.raises(DataError) as err:
        read_rgb(culprit)
    assert str(err.value).startswith(f"{culprit}: not a readable image: not a PNG, JPEG, BMP, TIFF or WebP file")
    _assert_refused(tmp_path, culprit.name, hr_dir)


def test_allowed_format_under_another_allowed_suffix_is_read(tmp_path: Path) -> None:
    path = tmp_path / "really_a_bmp.png"
    Image.fromarray(GOOD).save(path, format="BMP")
    np.testing.assert_array_equal(read_rgb(path), GOOD)
