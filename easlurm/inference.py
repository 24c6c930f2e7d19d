"""Run a generator on images: padding, tiling and BasicSR's uint8 rounding in one place.

Layouts: images are uint8 RGB laid out HWC (what a PNG holds); inside, a model sees float NCHW RGB in [0, 1].

- :func:`super_resolve` — one uint8 LR image → its uint8 SR image (×``scale``): mirror-pads sides the backbone
  cannot take (:func:`input_multiple`), runs whole-image or tiled inference on ``device`` and rounds as BasicSR
  does (:func:`tensor_to_uint8`). The evaluation stage, the ``upscale`` CLI and the benchmarks all go through it.
- :func:`upscale_tiled` — the float tensor core of it.

Tiling: the LR image is cut into a grid of ``tile``×``tile`` *cores* (the last row/column may be smaller). Each core
is run with ``overlap`` extra LR pixels of real context on every side where the image has any (at the image border
the model sees the true border, exactly as in whole-image inference). Only the core's part of each output is kept.
So if the model's receptive-field radius is at most ``overlap`` LR pixels, the stitched result equals whole-image
inference up to float rounding; with a larger receptive field (e.g. the full MSRResNet/RRDBNet) it is a close
approximation without visible seams. Peak memory scales with (tile + 2·overlap)², not with the image size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import EaslurmError

__all__ = ["InferenceError", "uint8_to_tensor", "tensor_to_uint8", "input_multiple", "upscale_tiled",
           "super_resolve"]


class InferenceError(EaslurmError):
    """Bad input to inference (image layout, tile settings, model output size); the message names shapes/values."""


def _check_image(img: object) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise InferenceError(f"expected a uint8 RGB image laid out HWC, got {got}")


def uint8_to_tensor(img: np.ndarray) -> torch.Tensor:
    """A uint8 HWC RGB image as a float32 1×3×H×W tensor in [0, 1] (a copy: the input may be read-only)."""
    _check_image(img)
    return torch.tensor(img).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Convert a model output to a uint8 HWC image with BasicSR's rounding.

    Args:
        x: float tensor, CHW or NCHW with N = 1, nominal range [0, 1] (RGB for SR outputs).

    Returns:
        uint8 array (H, W, C): clamp to [0, 1], multiply by 255 and round half to even, computed in float32 as
        BasicSR's ``tensor2img`` does (so saved images and metric inputs match published pipelines bit for bit).
    """
    if not isinstance(x, torch.Tensor):
        raise InferenceError(f"tensor_to_uint8 expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InferenceError(f"tensor_to_uint8 expects a float tensor in [0, 1], got dtype {x.dtype} "
                             f"(shape {tuple(x.shape)})")
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise InferenceError(f"tensor_to_uint8 converts one image; got a batch of shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3:
        raise InferenceError(f"tensor_to_uint8 expects CHW or 1CHW, got shape {tuple(x.shape)}")
    img = x.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    img = (img * 255.0).round()
    return img.permute(1, 2, 0).contiguous().numpy().astype(np.uint8)


def input_multiple(model: nn.Module, scale: int) -> int:
    """The factor the LR input's height and width must be multiples of, as the model's backbone spec says
    (:meth:`easlurm.models.specs.GeneratorSpec.model_multiple`; RRDBNet ×2: 2, SwinIR: its window size); 1 for a
    network no spec builds."""
    from .models.specs import spec_of

    spec = spec_of(model)
    return spec.model_multiple(model, scale) if spec is not None else 1


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
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
    """Super-resolve ``lr`` with ``model``, tile by tile (see the module docstring).

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


def super_resolve(model: nn.Module, lr: np.ndarray, scale: int, tile: int | None = None, overlap: int = 16,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Upscale one uint8 HWC RGB image to the uint8 HWC RGB image of ×``scale`` size (BasicSR rounding).

    The model is moved to ``device`` (in place, as ``nn.Module.to`` does) and run in eval mode without gradients;
    its previous train/eval mode is restored. The image and the stitched output stay on the CPU; only tiles visit
    ``device``. When the backbone needs input sides that are multiples of m (:func:`input_multiple`), the image is
    first padded at the bottom/right by mirroring (symmetric, < m px) and the output cropped back, so any image size
    works; then ``tile`` and ``overlap`` must be multiples of m too (else :class:`InferenceError`).
    """
    _check_image(lr)
    m = input_multiple(model, scale)
    if m > 1 and ((tile is not None and tile % m) or overlap % m):
        raise InferenceError(f"tile {tile} / overlap {overlap}: must be multiples of {m} for "
                             f"{type(model).__name__} at scale {scale}")
    h, w = lr.shape[:2]
    ph, pw = (-h) % m, (-w) % m
    lr_t = uint8_to_tensor(np.pad(lr, ((0, ph), (0, pw), (0, 0)), mode="symmetric") if (ph or pw) else lr)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        sr = upscale_tiled(model, lr_t, scale, tile, overlap)
    finally:
        model.train(was_training)
    out = tensor_to_uint8(sr)
    return np.ascontiguousarray(out[: h * scale, : w * scale]) if (ph or pw) else out
