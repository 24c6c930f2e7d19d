"""easlurm.inference: tiled equals whole-image inference (receptive field within the overlap), uint8 rounding,
padding for backbones that need input multiples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from easlurm.inference import InferenceError, input_multiple, super_resolve, tensor_to_uint8, upscale_tiled


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


def test_super_resolve_uint8_roundtrip() -> None:
    model = _model().train()
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(19, 26, 3), dtype=np.uint8)
    out = super_resolve(model, img, 2, None, device="cpu")
    assert model.training  # mode restored
    assert out.dtype == np.uint8 and out.shape == (38, 52, 3)
    lr = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = tensor_to_uint8(model.eval()(lr))
    np.testing.assert_array_equal(out, expected)
    tiled = super_resolve(model, img, 2, 6, overlap=4, device="cpu")
    # Tiled differs from whole-image only by float rounding, i.e. at most one level at a rounding tie.
    assert np.abs(tiled.astype(int) - out.astype(int)).max() <= 1
    assert np.mean(tiled == out) > 0.999
    with pytest.raises(InferenceError, match=r"\(19, 26, 3\) float32"):
        super_resolve(model, img.astype(np.float32), 2, None, device="cpu")


def test_tensor_to_uint8_rounding_and_layout() -> None:
    vals = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 0.3, 0.999, 1.0, 1.7])
    x = vals.view(1, 2, 4).expand(3, 2, 4).clone()
    x[1] *= 0.5  # make the channels differ so a wrong layout shows
    out = tensor_to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    ref = np.round(np.clip(x.numpy(), 0, 1).astype(np.float32) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(out, ref.transpose(1, 2, 0))
    assert out[0, 0, 0] == 0 and out[1, 3, 0] == 255  # clamped below and above
    np.testing.assert_array_equal(tensor_to_uint8(x.unsqueeze(0)), out)
    with pytest.raises(InferenceError, match=r"\(2, 3, 1, 4\)"):
        tensor_to_uint8(torch.zeros(2, 3, 1, 4))


def test_rrdbnet_x2_pads_odd_sizes_and_crops_back() -> None:
    # RRDBNet at x2 pixel-unshuffles its input, so it needs even sides: an odd image is mirror-padded by one pixel
    # at the bottom/right, and the output cropped back, which equals running the padded image and cropping.
    from easlurm.models.rrdb import RRDBNet

    torch.manual_seed(0)
    model = RRDBNet(num_feat=4, num_block=1, num_grow_ch=4, scale=2).eval()
    assert input_multiple(model, 2) == 2 and input_multiple(model, 4) == 1 and input_multiple(_model(), 4) == 1
    img = np.random.default_rng(5).integers(0, 256, size=(13, 10, 3), dtype=np.uint8)
    out = super_resolve(model, img, 2)
    assert out.shape == (26, 20, 3)
    padded = np.pad(img, ((0, 1), (0, 0), (0, 0)), mode="symmetric")
    with torch.no_grad():
        expected = tensor_to_uint8(model(torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255))[:26]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(InferenceError, match="multiples of 2"):
        super_resolve(model, img, 2, tile=5)
