"""PSNR and SSIM on the Y channel, with the conventions SR papers report (BasicSR / MATLAB).

Conventions (DESIGN.md §2 "Evaluation"):

- Inputs are uint8 RGB images laid out HWC (what a saved PNG holds), so the model output must first be rounded to
  uint8 (:func:`easlurm.inference.tensor_to_uint8`) exactly as BasicSR does before it writes or scores an image.
- ``crop_border`` pixels are removed at every border *before* the colour conversion (commonly ``crop_border =
  scale``).
- Y is ITU-R BT.601 luma in the 16–235 "studio" range, as MATLAB's ``rgb2ycbcr``: with R, G, B in [0, 1],
  Y = 16 + 65.481 R + 128.553 G + 24.966 B. It is kept as float64, not re-rounded.
- PSNR = 10 log10(255² / MSE) on Y; identical images give ``inf``.
- SSIM is Wang et al.'s definition as in MATLAB's reference ``ssim.m``: an 11×11 Gaussian window (σ = 1.5,
  normalised to sum 1), C1 = (0.01·255)², C2 = (0.03·255)², population (not sample) statistics, and the mean of the
  SSIM map over the *valid* region only (no padding: the map is (H−10)×(W−10)).

  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255)`` filters with reflect padding but then discards a 5-pixel margin before averaging, so on the
  same Y arrays it averages exactly the valid region and agrees with :func:`ssim_y` to float rounding.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EaslurmError

__all__ = ["MetricError", "rgb_to_y", "psnr_y", "ssim_y"]

# BT.601 luma weights for R, G, B in [0, 1], scaled to the 219-level studio range (MATLAB rgb2ycbcr).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


class MetricError(EaslurmError):
    """An image handed to a metric has the wrong shape, dtype or range; the message names the shapes."""


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image, in the 16–235 range (MATLAB ``rgb2ycbcr``), as float64.

    Args:
        img: RGB, HWC, values in the uint8 range [0, 255] (uint8 or any real dtype).

    Returns:
        float64 array (H, W), Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255].
    """
    if not isinstance(img, np.ndarray):
        raise MetricError(f"rgb_to_y expects a numpy array (HWC RGB), got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise MetricError(f"rgb_to_y expects an RGB image laid out HWC with 3 channels, got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise MetricError(f"rgb_to_y expects a real-valued image, got dtype {img.dtype} (shape {img.shape})")
    rgb = img.astype(np.float64) / 255.0
    return rgb @ _Y_WEIGHTS + _Y_OFFSET


def _check_pair(a: np.ndarray, b: np.ndarray, crop_border: int, min_size: int, metric: str) -> None:
    for name, img in (("a", a), ("b", b)):
        if not isinstance(img, np.ndarray):
            raise MetricError(f"{metric}: image {name} must be a numpy uint8 HWC RGB array, got {type(img).__name__}")
    shapes = f"a {a.shape} {a.dtype}, b {b.shape} {b.dtype}"
    if a.shape != b.shape:
        raise MetricError(f"{metric}: image shapes differ: {shapes}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise MetricError(f"{metric}: images must be uint8 (round the output first, e.g. with "
                          f"easlurm.inference.tensor_to_uint8): {shapes}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise MetricError(f"{metric}: images must be RGB laid out HWC with 3 channels: {shapes}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise MetricError(f"{metric}: crop_border must be an int >= 0, got {crop_border!r}")
    h, w = a.shape[0] - 2 * int(crop_border), a.shape[1] - 2 * int(crop_border)
    if h < min_size or w < min_size:
        raise MetricError(f"{metric}: after cropping {crop_border} px per border the images ({shapes}) are "
                          f"{h}x{w}, need at least {min_size}x{min_size}")


def _crop(img: np.ndarray, crop_border: int) -> np.ndarray:
    c = int(crop_border)
    return img[c:img.shape[0] - c, c:img.shape[1] - c] if c > 0 else img


def psnr_y(a: np.ndarray, b: np.ndarray, crop_border: int) -> float:
    """PSNR in dB between two uint8 RGB HWC images, on the BT.601 Y channel after cropping ``crop_border`` px.

    Returns ``inf`` for identical (cropped) Y channels. Raises :class:`MetricError` (a ``ValueError``) naming the
    shapes for mismatched shapes, a non-uint8 dtype, non-RGB input, or a crop that leaves nothing.
    """
    _check_pair(a, b, crop_border, 1, "psnr_y")
    ya = rgb_to_y(_crop(a, crop_border))
    yb = rgb_to_y(_crop(b, crop_border))
    mse = float(np.mean((ya - yb) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Correlate a 2-D float64 image with the separable window ``taps ⊗ taps``, keeping only the valid region."""
    n = taps.size
    h, w = img.shape
    rows = np.zeros((h - n + 1, w), dtype=np.float64)
    for t in range(n):
        rows += taps[t] * img[t:t + h - n + 1, :]
    out = np.zeros((h - n + 1, w - n + 1), dtype=np.float64)
    for t in range(n):
        out += taps[t] * rows[:, t:t + w - n + 1]
    return out


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    taps = _gaussian_1d(_SSIM_WINDOW, _SSIM_SIGMA)
    mu_x = _filter_valid(x, taps)
    mu_y = _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x ** 2
    var_y = _filter_valid(y * y, taps) - mu_y ** 2
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + _SSIM_C1) * (2.0 * cov + _SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    return num / den


def ssim_y(a: np.ndarray, b: np.ndarray, crop_border: int) -> float:
    """SSIM (MATLAB/Wang definition, valid region) between two uint8 RGB HWC images on the BT.601 Y channel.

    ``crop_border`` px are removed at every border first; the cropped image must be at least 11×11. Identical
    images give exactly 1.0. Raises :class:`MetricError` (a ``ValueError``) naming the shapes on bad input.
    """
    _check_pair(a, b, crop_border, _SSIM_WINDOW, "ssim_y")
    ya = rgb_to_y(_crop(a, crop_border))
    yb = rgb_to_y(_crop(b, crop_border))
    if np.array_equal(ya, yb):
        # The map is 1 analytically; skip the rounding noise of the filtered variances.
        return 1.0
    return float(np.mean(_ssim_map(ya, yb)))
