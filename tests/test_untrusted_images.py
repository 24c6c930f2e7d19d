"""Images others may have made (security audit N6, L5): a pixel cap before decoding (Pillow only warns between 1x
and 2x its limit), and file names that are not UTF-8 shown, never a UnicodeEncodeError.
Memory is measured in a child process as the growth of its peak RSS (VmHWM, reset before the load).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easlurm.data.dataset import ShardReader
from easlurm.data.images import DEFAULT_MAX_PIXELS, check_max_pixels, read_rgb
from easlurm.data.shards import build_shards, load_manifest
from easlurm.errors import DataError

from child_rss import ROOT, child

# ----------------------------------------------------------------------------------------------------------------
# N6: decompression bombs below 2x Pillow's limit


def _png_bomb(path: Path, width: int, height: int) -> None:
    """An all-black RGB PNG written without ever holding its pixels (13000x13000: 481 KiB for 507 MB)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    comp = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_169_megapixel_png_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb, 13000, 13000)  # 169 MP: between 1x and 2x Image.MAX_IMAGE_PIXELS, where Pillow only warns
    assert bomb.stat().st_size < 600_000 and DEFAULT_MAX_PIXELS < 13000 ** 2 < 2 * DEFAULT_MAX_PIXELS
    res = child("from easlurm.data.images import read_rgb\nfrom easlurm.errors import DataError\nSTART\n"
                 "import time; t = time.perf_counter()\n"
                 "try:\n    read_rgb(sys.argv[1])\nexcept DataError as e:\n    print('refused', e)\n"
                 "print(f'{GROWTH():.1f} MiB {time.perf_counter() - t:.3f} s')\n", str(bomb))
    assert res.returncode == 0, res.stderr
    assert f"refused {bomb}: image too large, refused before decoding" in res.stdout, res.stdout
    grew, secs = res.stdout.split()[-4], res.stdout.split()[-2]
    assert float(grew) < 50 and float(secs) < 1, res.stdout  # decoding it took +755 MiB


def test_the_pixel_cap_is_a_parameter_of_reading_and_building(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    Image.fromarray(np.zeros((80, 100, 3), dtype=np.uint8)).save(tmp_path / "hr" / "a.png")
    assert read_rgb(tmp_path / "hr" / "a.png", max_pixels=8000).shape == (80, 100, 3)
    msg = rf"^{tmp_path / 'hr' / 'a.png'}: image is 100x80 = 8000 px, more than the 7999 px allowed"
    with pytest.raises(DataError, match=msg):
        read_rgb(tmp_path / "hr" / "a.png", max_pixels=7999)
    with pytest.raises(DataError, match=msg):
        build_shards(tmp_path / "hr", tmp_path / "out", 4, max_pixels=7999, show_progress=False)
    assert not (tmp_path / "out").exists()
    for bad in (0, True, 1.5, DEFAULT_MAX_PIXELS + 1):
        with pytest.raises(DataError, match=r"max_pixels must be an integer from 1 to"):
            check_max_pixels(bad)
    res = subprocess.run([sys.executable, "-m", "easlurm.data", "build", "--hr", str(tmp_path / "hr"), "--scale",
                          "4", "--out", str(tmp_path / "out"), "--max-pixels", "7999"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "more than the 7999 px allowed" in res.stderr, res.stderr
    build_shards(tmp_path / "hr", tmp_path / "out", 4, max_pixels=8000, show_progress=False)


def test_file_names_that_are_not_utf8_are_shown_never_a_unicode_error(tmp_path: Path) -> None:
    odd = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: Python keeps them as lone surrogates
    hr, out = tmp_path / f"hr-{odd}", tmp_path / f"out-{odd}"
    hr.mkdir()
    Image.fromarray(np.full((16, 12, 3), 7, dtype=np.uint8)).save(hr / f"{odd}.png")
    env = {"PYTHONIOENCODING": "utf-8:strict"}  # stdout and stderr refuse what a log file would refuse
    res = child("from easlurm.data.__main__ import main\nsys.exit(main(sys.argv[1:]))\n", "build", "--hr",
                 str(hr), "--scale", "4", "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr
    assert "out-caf\\xe9: 1 entries from 1 images" in res.stdout and "Traceback" not in res.stderr
    m = load_manifest(out)
    assert [(e["id"], e["source"]) for e in m["entries"]] == [("caf\\xe9", "caf\\xe9.png")]
    assert json.loads((out / "manifest.json").read_bytes().decode("utf-8")) == m
    assert ShardReader(out).read_full("caf\\xe9", "hr").shape == (16, 12, 3)
    (hr / f"{odd}2.png").write_bytes(b"not an image")
    res = child("from easlurm.data.__main__ import main\nsys.exit(main(sys.argv[1:]))\n", "build", "--hr",
                 str(hr), "--scale", "4", "--out", str(out), env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "hr-caf\\xe9/caf\\xe92.png: not a readable image" in res.stderr
    with pytest.raises(DataError) as err:
        read_rgb(hr / f"{odd}2.png")
    str(err.value).encode("utf-8")  # printable and writable as UTF-8
