"""PSNR / SSIM on Y (BasicSR / MATLAB conventions) checked against scikit-image and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

skimage = pytest.importorskip("skimage")
from skimage import color, data, filters  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from easlurm.metrics.psnr_ssim import psnr_y, rgb_to_y, ssim_y  # noqa: E402


def _astronaut_crop(size: int = 72) -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[100:100 + size, 180:180 + size])


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img.astype(np.float64) + rng.normal(0.0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    out = filters.gaussian(img, sigma=sigma, channel_axis=-1, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _y_reference(img: np.ndarray) -> np.ndarray:
    # scikit-image's own BT.601 conversion (studio range), independent of the code under test.
    return color.rgb2ycbcr(img)[..., 0]


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    hr = _astronaut_crop()
    return [
        ("noise", hr, _noisy(hr, 8.0, seed=1)),
        ("blur", hr, _blurred(hr, 1.2)),
        ("blur+noise", hr, _noisy(_blurred(hr, 0.8), 3.0, seed=2)),
    ]


def test_rgb_to_y_matches_skimage_bt601() -> None:
    img = _astronaut_crop(32)
    np.testing.assert_allclose(rgb_to_y(img), _y_reference(img), rtol=0, atol=1e-9)
    assert rgb_to_y(img).dtype == np.float64
    # The range ends: black → 16, white → 235.
    ends = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(ends), [[16.0, 235.0]], atol=1e-9)


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("case", range(3))
def test_psnr_y_matches_skimage(case: int, crop: int) -> None:
    _, a, b = _pairs()[case]
    ya, yb = _y_reference(a), _y_reference(b)
    if crop:
        ya, yb = ya[crop:-crop, crop:-crop], yb[crop:-crop, crop:-crop]
    expected = peak_signal_noise_ratio(ya, yb, data_range=255)
    assert psnr_y(a, b, crop) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("case", range(3))
def test_ssim_y_matches_skimage(case: int, crop: int) -> None:
    _, a, b = _pairs()[case]
    ya, yb = _y_reference(a), _y_reference(b)
    if crop:
        ya, yb = ya[crop:-crop, crop:-crop], yb[crop:-crop, crop:-crop]
    # skimage pads (reflect) but then averages only pixels ≥ 5 px from the border: exactly the valid region.
    expected = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255)
    got = ssim_y(a, b, crop)
    assert got == pytest.approx(expected, abs=1e-4)
    assert 0.0 < got < 1.0


def test_crop_border_equals_cropping_first() -> None:
    _, a, b = _pairs()[2]
    c = 6
    assert ssim_y(a, b, c) == ssim_y(a[c:-c, c:-c], b[c:-c, c:-c], 0)
    assert psnr_y(a, b, c) == psnr_y(a[c:-c, c:-c], b[c:-c, c:-c], 0)
    assert psnr_y(a, b, c) != psnr_y(a, b, 0)


def test_identical_images() -> None:
    a = _astronaut_crop(24)
    assert psnr_y(a, a.copy(), 2) == math.inf
    assert ssim_y(a, a.copy(), 2) == 1.0


@pytest.mark.parametrize("step", [1, 5, 20])
def test_psnr_constant_y_offset(step: int) -> None:
    # Adding `step` to R, G and B raises Y by step·(65.481+128.553+24.966)/255 = step·219/255 everywhere.
    rng = np.random.default_rng(step)
    a = rng.integers(0, 200, size=(20, 23, 3), dtype=np.uint8)
    b = a + np.uint8(step)
    d = step * 219.0 / 255.0
    assert psnr_y(a, b, 3) == pytest.approx(10 * math.log10(255.0 ** 2 / d ** 2), abs=1e-9)


def test_ssim_constant_images_hand_formula() -> None:
    # Flat images: σ = 0 everywhere, so SSIM = (2 μa μb + C1) / (μa² + μb² + C1) with μ the Y levels.
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = np.full((16, 16, 3), 140, dtype=np.uint8)
    ya, yb = 16 + 100 * 219 / 255, 16 + 140 * 219 / 255
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya ** 2 + yb ** 2 + c1)
    assert ssim_y(a, b, 0) == pytest.approx(expected, abs=1e-9)


def test_bad_inputs_name_the_shapes() -> None:
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(20, 21, 3\)"):
        psnr_y(a, np.zeros((20, 21, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"uint8.*\(20, 20, 3\) float32"):
        ssim_y(a, np.zeros((20, 20, 3), np.float32), 0)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(a, a, 5)
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(a, a, -1)


def test_package_level_imports_are_the_metric_functions() -> None:
    import easlurm.metrics as m
    from easlurm.metrics import psnr_ssim

    assert m.psnr_y is psnr_ssim.psnr_y and m.ssim_y is psnr_ssim.ssim_y
    from easlurm.metrics import DISTSMetric, LPIPSMetric  # imported lazily, on first use
    from easlurm.metrics.dists import DISTSMetric as D
    from easlurm.metrics.lpips import LPIPSMetric as L

    assert (LPIPSMetric, DISTSMetric) == (L, D)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope  # noqa: B018


def test_registry_names_match_the_config_choices() -> None:
    import typing

    from easlurm.config import EvalConfig, EvalMetric
    from easlurm.metrics.registry import METRICS

    assert list(typing.get_args(EvalMetric)) == list(METRICS)
    assert EvalConfig().metrics == list(METRICS)  # every metric on by default, in registry order
    assert [METRICS[n].higher_is_better for n in METRICS] == [True, True, False, False]


def test_registry_y_metrics_crop_scale_pixels() -> None:
    from easlurm.metrics.registry import build_metrics

    hr = _astronaut_crop(64)
    sr = _noisy(hr, 6.0, seed=2)
    psnr, ssim = build_metrics(["psnr", "ssim"], scale=4, perceptual_crop=0)
    assert psnr.spec.name == "psnr" and ssim.spec.name == "ssim"
    assert psnr(sr, hr) == psnr_y(sr, hr, 4) and ssim(sr, hr) == ssim_y(sr, hr, 4)
    assert psnr(sr, hr) != psnr_y(sr, hr, 0)  # the crop matters on this pair, so the check above has teeth
    with pytest.raises(ValueError, match="unknown metric 'psnr_y'"):
        build_metrics(["psnr_y"], scale=4)


def test_plot_axes_prefer_psnr_against_a_perceptual_metric() -> None:
    from easlurm.metrics.registry import plot_axes

    assert plot_axes(["psnr", "ssim", "lpips", "dists"]) == ("psnr", "lpips")
    assert plot_axes(["dists", "psnr", "ssim"]) == ("psnr", "dists")
    assert plot_axes(["ssim", "psnr"]) == ("psnr", "ssim")
    assert plot_axes(["lpips"]) == ("lpips", "lpips")
