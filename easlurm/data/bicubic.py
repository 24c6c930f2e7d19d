"""MATLAB-compatible bicubic resizing (the degradation every SR paper's ×4 LR images are made with).

Math (MATLAB ``imresize(..., 'bicubic')`` with its default antialiasing, the convention BasicSR copies):

* cubic kernel with a = -0.5: ``1.5|x|³ - 2.5|x|² + 1`` on |x| ≤ 1, ``-0.5|x|³ + 2.5|x|² - 4|x| + 2`` on 1 < |x| ≤ 2;
* when downscaling (scale < 1) the kernel is stretched by 1/scale and its height scaled by ``scale``
  (antialiasing), so a ×1/4 resize averages over a 16-pixel-wide window;
* output pixel ``x`` (1-based) samples input coordinate ``u = x/scale + 0.5·(1 - 1/scale)`` (pixel centres);
* weights of each output pixel are normalised to sum 1; taps that fall outside the image are mirrored
  symmetrically (``... 2 1 | 1 2 3 ... n | n n-1 ...``);
* rows (height) are resized first, then columns, everything in float64; no rounding in :func:`imresize`.

Each axis is resized with a precomputed (out_len, taps) weight/index table, so a call is ``taps`` vectorised
gather-multiply-adds per axis: a 2000×2000×3 image goes to 500×500 in well under a second on one core.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["imresize", "bicubic_downscale", "bicubic_upscale", "torch_bicubic_downscale", "cubic", "contributions"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``bicubic``), evaluated elementwise (float64)."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


@functools.lru_cache(maxsize=64)
def contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weight and 0-based source-index tables ``(weights, indices)``, both shaped ``(out_len, taps)``.

    ``out[i] = Σ_t weights[i, t] · in[indices[i, t]]`` resizes one axis by ``scale`` (output/input length ratio)
    with the antialiased a = -0.5 cubic kernel and symmetric border mirroring. The arrays are cached and read-only.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"contributions: lengths must be >= 1 (got in_len={in_len}, out_len={out_len})")
    if not scale > 0:
        raise ValueError(f"contributions: scale must be > 0 (got {scale})")
    # Antialiasing: when shrinking, a wider, lower kernel acts as the low-pass filter a plain cubic lacks.
    stretch = min(scale, 1.0)
    kernel_width = 4.0 / stretch

    def kernel(d: np.ndarray) -> np.ndarray:
        return stretch * cubic(stretch * d)
    x = np.arange(1, out_len + 1, dtype=np.float64)[:, None]  # 1-based, as in MATLAB's index convention
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left + np.arange(taps, dtype=np.float64)[None, :]  # 1-based source positions
    weights = kernel(u - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: position p maps into the sequence 1..n, n..1 repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0.0, axis=0)  # taps that are zero for every output pixel cost work and add nothing
    weights = np.ascontiguousarray(weights[:, keep])
    indices = np.ascontiguousarray(indices[:, keep])
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


def _out_len(in_len: int, scale: float) -> int:
    # MATLAB uses ceil(in * scale); the tolerance keeps e.g. 300 * (1/3) = 99.999... from rounding up to 101.
    return max(1, int(math.ceil(in_len * scale - 1e-9)))


def _resize_axis(arr: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, indices = contributions(arr.shape[axis], out_len, float(scale))
    shape = list(arr.shape)
    shape[axis] = out_len
    out = np.zeros(shape, dtype=np.float64)
    buf = np.empty_like(out)
    bshape = [1] * arr.ndim
    bshape[axis] = out_len
    # Gathering along the axis in place keeps the work at `taps` passes over the output, with no big temporaries.
    for t in range(weights.shape[1]):
        np.take(arr, indices[:, t], axis=axis, out=buf)
        buf *= weights[:, t].reshape(bshape)
        out += buf
    return out


def imresize(img: np.ndarray, scale: float, output_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resize an HW or HWC image by ``scale`` with MATLAB's bicubic ``imresize`` (see module docstring).

    ``img`` may be any real dtype and value range (it is converted to float64; nothing is clipped or rounded).
    The output is float64 of size ``ceil(H·scale) × ceil(W·scale)`` (or ``output_shape`` (H, W) when given; the
    kernel still uses ``scale``, as MATLAB does when both are given). Channels are resized independently.
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an HW or HWC array, got shape {arr.shape}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"imresize: scale must be a finite number > 0 (got {scale!r})")
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"imresize: empty image of shape {arr.shape}")
    out_h, out_w = output_shape if output_shape is not None else (_out_len(h, scale), _out_len(w, scale))
    x = arr.astype(np.float64, copy=False)
    x = _resize_axis(x, 0, int(out_h), float(scale))
    return _resize_axis(x, 1, int(out_w), float(scale))


def _check_int_scale(scale: object) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1 (got {scale!r})")
    return int(scale)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR image = MATLAB bicubic ``imresize(hr, 1/scale)``, rounded half-up and clipped to uint8.

    ``hr``: uint8 HWC (RGB) or HW, each side a multiple of ``scale`` (mod-crop first). Returns uint8 of shape
    ``(H/scale, W/scale[, C])``. This is the BasicSR/MATLAB LR convention used by every ×4 SR benchmark.
    """
    s = _check_int_scale(scale)
    arr = np.asarray(hr)
    if arr.dtype != np.uint8:
        raise ValueError(f"bicubic_downscale: expected uint8 input, got {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"bicubic_downscale: expected an HW or HWC array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h % s or w % s or h == 0 or w == 0:
        raise ValueError(f"bicubic_downscale: size {h}x{w} is not a positive multiple of scale {s} (mod-crop first)")
    out = imresize(arr, 1.0 / s, output_shape=(h // s, w // s))
    # floor(x + 0.5) rounds halves up like MATLAB's im2uint8 (np.round would round halves to even).
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """SR baseline = MATLAB bicubic ``imresize(lr, scale)``, rounded half-up and clipped to uint8.

    ``lr``: uint8 HWC (RGB) or HW. Returns uint8 of shape ``(H·scale, W·scale[, C])``: the "Bicubic" row of SR
    papers' tables. Upscaling needs no antialiasing, so each output pixel mixes the 4×4 nearest LR pixels with
    Keys' a = -0.5 weights; with an odd ``scale`` the centre pixel of every ``scale``×``scale`` block lands on an
    LR pixel centre and reproduces it exactly.
    """
    s = _check_int_scale(scale)
    arr = np.asarray(lr)
    if arr.dtype != np.uint8:
        raise ValueError(f"bicubic_upscale: expected uint8 input, got {arr.dtype}")
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"bicubic_upscale: expected a non-empty HW or HWC array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    out = imresize(arr, float(s), output_shape=(h * s, w * s))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def torch_bicubic_downscale(x: torch.Tensor, scale: int, quantize: bool = True) -> torch.Tensor:
    """Torch twin of :func:`bicubic_downscale` for NCHW (or CHW) float RGB tensors in [0, 1].

    Same weights and index tables as the numpy version, applied in float64 on ``x``'s device; the result has
    ``x``'s dtype and shape ``(N, C, H/scale, W/scale)``. With ``quantize`` (default) the output is rounded to the
    uint8 grid (``floor(255·v + 0.5) / 255``) and clipped to [0, 1], so for inputs on that grid it equals
    ``bicubic_downscale(uint8 image) / 255`` — the LR that offline shards hold.
    """
    s = _check_int_scale(scale)
    import torch  # only here: shard building (numpy) must not need torch

    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError("torch_bicubic_downscale: expected a floating-point tensor")
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"torch_bicubic_downscale: expected NCHW or CHW, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % s or w % s or h == 0 or w == 0:
        raise ValueError(f"torch_bicubic_downscale: size {h}x{w} is not a positive multiple of scale {s}")
    y = x.to(torch.float64)
    for dim, (n_in, n_out) in ((2, (h, h // s)), (3, (w, w // s))):
        weights, indices = contributions(int(n_in), int(n_out), 1.0 / s)
        wt = torch.from_numpy(np.array(weights)).to(y.device)
        it = torch.from_numpy(np.array(indices)).to(y.device)
        shape = [1, 1, 1, 1]
        shape[dim] = int(n_out)
        acc = torch.zeros(*y.shape[:dim], int(n_out), *y.shape[dim + 1:], dtype=torch.float64, device=y.device)
        for t in range(wt.shape[1]):
            acc += wt[:, t].reshape(shape) * y.index_select(dim, it[:, t])
        y = acc
    if quantize:
        y = torch.clamp(torch.floor(y * 255.0 + 0.5), 0.0, 255.0) / 255.0
    y = y.to(x.dtype)
    return y.squeeze(0) if squeeze else y
