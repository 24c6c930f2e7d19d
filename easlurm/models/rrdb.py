"""RRDBNet: ESRGAN's Residual-in-Residual Dense Block generator, with BasicSR-compatible parameter names.

Names: ``conv_first``, ``body.N.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
``conv_last``. For scale 1 and 2 the input is first pixel-unshuffled (×16 / ×4 channels) so the trunk always
upsamples ×4 with two nearest-neighbour stages, as BasicSR does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .srresnet import init_scaled_kaiming

__all__ = ["RRDBNet", "RRDB", "ResidualDenseBlock"]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; output = x + 0.2·conv5(...). Channels preserved."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)
        init_scaled_kaiming([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        # 0.2 residual scaling stabilises very deep stacks (ESRGAN).
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Three residual dense blocks with an outer 0.2-scaled residual connection."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator.

    Input: NCHW RGB float, nominally in [0, 1]; for ``scale`` 2 (1) H and W must be multiples of 2 (4).
    Output: N×C×(H·scale)×(W·scale), not clamped. ``scale`` ∈ {1, 2, 4}.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ConfigError(f"RRDBNet scale must be 1, 2 or 4, got {scale!r}")
        if num_block < 0 or num_feat <= 0 or num_grow_ch <= 0 or num_in_ch <= 0 or num_out_ch <= 0:
            raise ConfigError(f"RRDBNet: channel/block counts must be positive (num_in_ch={num_in_ch}, "
                              f"num_out_ch={num_out_ch}, num_feat={num_feat}, num_block={num_block}, "
                              f"num_grow_ch={num_grow_ch})")
        self.scale = scale
        self._unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self._unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×C×H×W RGB float in [0, 1] → N×C×(sH)×(sW), unclamped."""
        if self._unshuffle > 1:
            r = self._unshuffle
            if x.shape[-2] % r or x.shape[-1] % r:
                raise ValueError(f"RRDBNet scale {self.scale}: input H, W must be multiples of {r}, "
                                 f"got {tuple(x.shape[-2:])}")
            x = F.pixel_unshuffle(x, r)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
