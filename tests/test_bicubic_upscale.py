"""bicubic_upscale: the bicubic baseline row of every evaluation table (MATLAB imresize, Keys a = -0.5)."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from easlurm.data.bicubic import bicubic_downscale, bicubic_upscale


def test_step_edge_x2_matches_hand_computed_matlab_values() -> None:
    # ×2: output pixel x (1-based) samples u = x/2 + 1/4, so its 4 taps sit at distances (1.25, 0.25, 0.75, 1.75)
    # or mirrored, with Keys weights (-0.0703125, 0.8671875, 0.2265625, -0.0234375). On a 100 → 200 step that gives
    # the familiar ringing: 100 + 100·(-0.0234375) = 97.66 → 98, 100 - 7.03 → 93, 100 + 20.31 → 120,
    # 100 + 79.69 → 180, 100 + 107.03 → 207, 100 + 102.34 → 202; borders are mirrored, so they stay flat.
    row = np.array([100] * 4 + [200] * 4, dtype=np.uint8)
    img = np.repeat(row[None, :], 3, axis=0)
    out = bicubic_upscale(img, 2)
    expected = [100, 100, 100, 100, 100, 98, 93, 120, 180, 207, 202, 200, 200, 200, 200, 200]
    assert out.shape == (6, 16) and out.dtype == np.uint8
    for r in out:
        assert r.tolist() == expected


def test_odd_scale_block_centres_reproduce_the_lr_pixels() -> None:
    # With an odd scale the centre of every s×s output block samples an LR pixel centre exactly, where the cubic
    # kernel is 1 and every other tap is 0.
    lr = np.ascontiguousarray(skdata.astronaut()[::8, ::8][:40, :50])
    out = bicubic_upscale(lr, 3)
    assert out.shape == (120, 150, 3)
    np.testing.assert_array_equal(out[1::3, 1::3], lr)


def test_constant_stays_constant_and_channels_are_independent() -> None:
    flat = np.full((5, 7, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(bicubic_upscale(flat, 4), np.full((20, 28, 3), 77, dtype=np.uint8))
    img = np.ascontiguousarray(skdata.coffee()[::10, ::10][:30, :40])
    up = bicubic_upscale(img, 4)
    for c in range(3):
        np.testing.assert_array_equal(up[..., c], bicubic_upscale(img[..., c], 4))


def test_is_a_sensible_baseline_on_a_real_photo() -> None:
    from easlurm.metrics import psnr_y

    hr = np.ascontiguousarray(skdata.astronaut()[:256, :256])
    up = bicubic_upscale(bicubic_downscale(hr, 4), 4)
    assert 20.0 < psnr_y(up, hr, 4) < 35.0
    assert psnr_y(up, hr, 4) > psnr_y(np.repeat(np.repeat(bicubic_downscale(hr, 4), 4, 0), 4, 1), hr, 4)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        bicubic_upscale(np.zeros((4, 4, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="scale"):
        bicubic_upscale(np.zeros((4, 4, 3), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="shape"):
        bicubic_upscale(np.zeros((0, 4, 3), dtype=np.uint8), 2)
