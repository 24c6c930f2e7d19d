"""Super-resolve images, optionally tile by tile so memory stays bounded on large test images.

Tiling: the LR image is cut into a grid of ``tile``×``tile`` *cores* (the last row/column may be smaller). Each core
is run with ``overlap`` extra LR pixels of real context on every side where the image has any (at the image border
the model sees the true border, exactly as in whole-image inference). Only the core's part of each output is kept.
So if the model's receptive-field radius is at most ``overlap`` LR pixels, the stitched result equals whole-image
inference up to float rounding; with a larger receptive field (e.g. the full MSRResNet/RRDBNet) it is a close
approximation without visible seams. Peak memory scales with (tile + 2·overlap)², not with the image size.

For a model that needs input sizes divisible by some factor (RRDBNet at scale 1 or 2), choose ``tile`` and
``overlap`` as multiples of it and use images whose sides are multiples too.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import EaslurmError
from .metrics.psnr_ssim import tensor_to_uint8

__all__ = ["InferenceError", "upscale_tiled", "upscale_image"]


class InferenceError(EaslurmError):
    """Bad input to inference (image layout, tile settings, model output size); the message names shapes/values."""


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InferenceError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _run(model: nn.Module, x: torch.Tensor, device: torch.device | None, scale: int) -> torch.Tensor:
    out = model(x.to(device) if device is not None else x)
    n, _, h, w = x.shape
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != n or out.shape[2:] != (h * scale,
                                                                                                      w * scale):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InferenceError(f"model output {got} does not match input {tuple(x.shape)} at scale {scale} "
                             f"(expected (N, C, {h * scale}, {w * scale}))")
    return out


@torch.no_grad()
def upscale_tiled(model: nn.Module, lr: torch.Tensor, scale: int, tile: int | None,
                  overlap: int = 16) -> torch.Tensor:
    """Super-resolve ``lr`` with ``model``, tile by tile.

    Args:
        model: maps NCHW (H, W) → NCHW (H·scale, W·scale); its train/eval mode is left as it is.
        lr: float tensor NCHW, RGB in [0, 1] (any N). Tiles are moved to the model's device one at a time.
        scale: upscaling factor of the model (int >= 1).
        tile: core tile side in LR pixels, or None for whole-image inference.
        overlap: LR pixels of context added around each tile and discarded from its output (>= 0).

    Returns:
        Float tensor (N, C_out, H·scale, W·scale) on ``lr``'s device, unclamped (as the model produced it).
    """
    if not isinstance(lr, torch.Tensor) or lr.ndim != 4 or not lr.is_floating_point():
        got = f"{tuple(lr.shape)} {lr.dtype}" if isinstance(lr, torch.Tensor) else type(lr).__name__
        raise InferenceError(f"lr must be a float NCHW tensor in [0, 1], got {got}")
    scale = _check_int("scale", scale, 1)
    overlap = _check_int("overlap", overlap, 0)
    device = _model_device(model)
    n, _, h, w = lr.shape
    if tile is not None:
        tile = _check_int("tile", tile, 1)
    if tile is None or (tile >= h and tile >= w):
        return _run(model, lr, device, scale).to(lr.device)

    out: torch.Tensor | None = None
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        wy0, wy1 = max(y0 - overlap, 0), min(y1 + overlap, h)
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            wx0, wx1 = max(x0 - overlap, 0), min(x1 + overlap, w)
            res = _run(model, lr[:, :, wy0:wy1, wx0:wx1], device, scale)
            if out is None:
                out = torch.empty((n, res.shape[1], h * scale, w * scale), dtype=res.dtype, device=lr.device)
            core = res[:, :, (y0 - wy0) * scale:(y1 - wy0) * scale, (x0 - wx0) * scale:(x1 - wx0) * scale]
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = core.to(lr.device)
    assert out is not None  # h, w >= 1 so at least one tile ran
    return out


def upscale_image(model: nn.Module, img: np.ndarray, scale: int, tile: int | None,
                  device: str | torch.device = "cpu", overlap: int = 16) -> np.ndarray:
    """Super-resolve one uint8 RGB HWC image and return the uint8 RGB HWC result (BasicSR rounding).

    The model is moved to ``device`` (in place, as ``nn.Module.to`` does) and run in eval mode; its previous mode
    is restored. The input and the stitched output stay on the CPU, only tiles visit ``device``.
    """
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise InferenceError(f"img must be a uint8 RGB image laid out HWC, got {got}")
    lr = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        sr = upscale_tiled(model, lr, scale, tile, overlap)
    finally:
        model.train(was_training)
    return tensor_to_uint8(sr)
