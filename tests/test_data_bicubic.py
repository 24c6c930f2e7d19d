"""MATLAB-style bicubic resize: checked against Pillow, a brute-force reference, and analytic invariants."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from easlurm.data.bicubic import bicubic_downscale, imresize, torch_bicubic_downscale


def _pillow_resize_f(channel: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Pillow's antialiased bicubic (a = -0.5) on a float32 ("F") image; borders differ from MATLAB."""
    im = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(im.resize((out_w, out_h), Image.BICUBIC, reducing_gap=None), dtype=np.float64)


def _keys(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                    np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


def _brute_resize_1d(v: np.ndarray, scale: float, out_len: int) -> np.ndarray:
    """Direct transcription of the spec: symmetric-padded signal, kernel stretched by 1/scale when shrinking."""
    n = len(v)
    pad = 4 * n
    padded = np.pad(v, pad, mode="symmetric")  # ... 2 1 | 1 2 ... n | n n-1 ...
    stretch = 1.0 / scale if scale < 1 else 1.0
    out = np.empty(out_len)
    for i in range(out_len):
        centre = (i + 0.5) / scale - 0.5  # 0-based source coordinate of output pixel i
        src = np.arange(-pad, n + pad)
        w = _keys((centre - src) / stretch) / stretch
        out[i] = np.sum(w * padded) / np.sum(w)
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_pillow_on_interior_pixels(scale: int) -> None:
    rng = np.random.default_rng(scale)
    img = rng.random((48, 60, 3)) * 255.0
    ours = imresize(img, 1.0 / scale)
    assert ours.shape == (48 // scale, 60 // scale, 3)
    m = 2  # the kernel spans 2 output pixels either side; beyond that Pillow's truncated border does not reach
    for c in range(3):
        ref = _pillow_resize_f(img[..., c], 60 // scale, 48 // scale)
        # Pillow stores float32 results, hence the tolerance (on a 0..255 scale).
        np.testing.assert_allclose(ours[m:-m, m:-m, c], ref[m:-m, m:-m], atol=1e-3, rtol=0)
    # ... and the borders really are different (symmetric padding vs Pillow's renormalised truncation).
    assert np.abs(ours[0, :, 0] - _pillow_resize_f(img[..., 0], 60 // scale, 48 // scale)[0]).max() > 1e-2


def test_matches_pillow_when_upscaling() -> None:
    rng = np.random.default_rng(7)
    img = rng.random((20, 24)) * 255.0
    ours = imresize(img, 2.0)
    ref = _pillow_resize_f(img, 48, 40)
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-3, rtol=0)


@pytest.mark.parametrize("scale,n", [(0.25, 37), (0.5, 10), (1 / 3, 9), (2.0, 7), (0.25, 5)])
def test_matches_brute_force_reference_including_borders(scale: float, n: int) -> None:
    rng = np.random.default_rng(n)
    v = rng.random(n)
    out_len = int(np.ceil(n * scale - 1e-9))
    ours = imresize(np.tile(v[:, None], (1, 3)), scale)[:, 0]
    np.testing.assert_allclose(ours, _brute_resize_1d(v, scale, out_len), atol=1e-12)


def test_constant_image_stays_constant() -> None:
    img = np.full((40, 52, 3), 0.3712)
    np.testing.assert_allclose(imresize(img, 0.25), 0.3712, atol=1e-12)
    u8 = np.full((40, 52, 3), 201, dtype=np.uint8)
    assert np.array_equal(bicubic_downscale(u8, 4), np.full((10, 13, 3), 201, dtype=np.uint8))


@pytest.mark.parametrize("scale", [2, 4])
def test_linear_ramp_stays_linear_in_interior(scale: int) -> None:
    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.7 * yy - 0.3 * xx + 5.0
    out = imresize(img, 1.0 / scale)
    # LR pixel (i, j) is centred on HR coordinate ((i + 0.5)·s - 0.5, (j + 0.5)·s - 0.5) in 0-based pixels.
    cy = (np.arange(h // scale) + 0.5) * scale - 0.5
    cx = (np.arange(w // scale) + 0.5) * scale - 0.5
    expected = 0.7 * cy[:, None] - 0.3 * cx[None, :] + 5.0
    m = 2
    np.testing.assert_allclose(out[m:-m, m:-m], expected[m:-m, m:-m], atol=1e-9)


def test_bicubic_downscale_is_rounded_clipped_imresize() -> None:
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    hr[:, :20] = 0
    hr[:, 20:32] = 255  # a hard edge rings: values below 0 and above 255 exercise the clipping
    lr = bicubic_downscale(hr, 4)
    assert lr.dtype == np.uint8 and lr.shape == (8, 10, 3)
    ref = imresize(hr.astype(np.float64), 0.25)
    assert ref.min() < 0 and ref.max() > 255
    assert np.array_equal(lr, np.clip(np.floor(ref + 0.5), 0, 255).astype(np.uint8))


def test_bicubic_downscale_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of scale"):
        bicubic_downscale(np.zeros((30, 32, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_downscale(np.zeros((32, 32, 3), np.float32), 4)
    with pytest.raises(ValueError, match="integer"):
        bicubic_downscale(np.zeros((32, 32, 3), np.uint8), 2.0)  # type: ignore[arg-type]


def test_torch_version_equals_numpy_version() -> None:
    rng = np.random.default_rng(11)
    imgs = rng.integers(0, 256, (2, 36, 44, 3), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    lr = torch_bicubic_downscale(x, 4)
    assert lr.shape == (2, 3, 9, 11) and lr.dtype == torch.float32
    ref = np.stack([bicubic_downscale(im, 4) for im in imgs]).transpose(0, 3, 1, 2) / 255.0
    diff = np.abs(lr.numpy().astype(np.float64) - ref)
    assert diff.max() < 1e-6  # same uint8 grid values
    raw = torch_bicubic_downscale(x.double(), 4, quantize=False)
    ref_raw = np.stack([imresize(im / 255.0, 0.25) for im in imgs.astype(np.float64)]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(raw.numpy(), ref_raw, atol=1e-12)
    chw = torch_bicubic_downscale(x[0], 4)
    assert torch.equal(chw, lr[0])


def test_large_image_is_fast() -> None:
    hr = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        lr = bicubic_downscale(hr, 4)
        best = min(best, time.perf_counter() - t0)
    assert lr.shape == (500, 500, 3)
    assert best < 1.0, f"2000x2000 downscale took {best:.2f} s"
