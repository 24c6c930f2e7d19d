"""Tiled inference equals whole-image inference for models whose receptive field fits in the overlap."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easlurm.infer import InferenceError, upscale_image, upscale_tiled
from easlurm.metrics.psnr_ssim import tensor_to_uint8


class SmallSR(nn.Module):
    """Three 3×3 convs (receptive-field radius 3 LR px), pixel shuffle ×2, bilinear skip (radius 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.c3 = nn.Conv2d(8, 3 * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c3(F.leaky_relu(self.c2(F.leaky_relu(self.c1(x), 0.1)), 0.1))
        return self.shuffle(y) + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Recorder(nn.Module):
    """Wraps a real model and records the input sizes it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _model() -> SmallSR:
    torch.manual_seed(0)
    return SmallSR().eval()


def _lr(n: int = 2, h: int = 23, w: int = 30) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tile, overlap", [(8, 4), (7, 3), (5, 16)])
def test_tiled_equals_untiled(tile: int, overlap: int) -> None:
    model, lr = _model(), _lr()
    with torch.no_grad():
        full = model(lr)
    rec = Recorder(model)
    tiled = upscale_tiled(rec, lr, 2, tile, overlap)
    assert tiled.shape == full.shape == (2, 3, 46, 60)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-6)
    # Several tiles ran (23×30 is not a multiple of the tile), none larger than tile + 2·overlap.
    assert len(rec.shapes) == math.ceil(23 / tile) * math.ceil(30 / tile) > 1
    assert max(s[2] for s in rec.shapes) <= tile + 2 * overlap
    assert max(s[3] for s in rec.shapes) <= tile + 2 * overlap


def test_too_little_overlap_shows_seams() -> None:
    # The equality above is not automatic: with overlap < receptive radius the tile borders differ.
    model, lr = _model(), _lr()
    with torch.no_grad():
        full = model(lr)
    tiled = upscale_tiled(model, lr, 2, 8, overlap=1)
    assert (tiled - full).abs().max() > 1e-4


def test_whole_image_paths() -> None:
    model, lr = _model(), _lr(1)
    with torch.no_grad():
        full = model(lr)
    assert torch.equal(upscale_tiled(model, lr, 2, None), full)
    rec = Recorder(model)
    assert torch.equal(upscale_tiled(rec, lr, 2, 64), full)
    assert rec.shapes == [(1, 3, 23, 30)]
    assert not upscale_tiled(model, lr.requires_grad_(), 2, 8, 4).requires_grad  # inference only


def test_bad_arguments() -> None:
    model, lr = _model(), _lr(1)
    with pytest.raises(InferenceError, match="tile"):
        upscale_tiled(model, lr, 2, 0)
    with pytest.raises(InferenceError, match="overlap"):
        upscale_tiled(model, lr, 2, 8, overlap=-1)
    with pytest.raises(InferenceError, match=r"\(3, 23, 30\)"):
        upscale_tiled(model, lr[0], 2, 8)
    with pytest.raises(InferenceError, match=r"scale 4.*\(N, C, 92, 120\)"):
        upscale_tiled(model, lr, 4, None)


def test_upscale_image_uint8_roundtrip() -> None:
    model = _model().train()
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(19, 26, 3), dtype=np.uint8)
    out = upscale_image(model, img, 2, None, "cpu")
    assert model.training  # mode restored
    assert out.dtype == np.uint8 and out.shape == (38, 52, 3)
    lr = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = tensor_to_uint8(model.eval()(lr))
    np.testing.assert_array_equal(out, expected)
    tiled = upscale_image(model, img, 2, 6, "cpu", overlap=4)
    # Tiled differs from whole-image only by float rounding, i.e. at most one level at a rounding tie.
    assert np.abs(tiled.astype(int) - out.astype(int)).max() <= 1
    assert np.mean(tiled == out) > 0.999
    with pytest.raises(InferenceError, match=r"\(19, 26, 3\) float32"):
        upscale_image(model, img.astype(np.float32), 2, None, "cpu")
