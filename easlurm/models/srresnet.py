"""MSRResNet: the modified SRResNet of BasicSR (no batch norm), with BasicSR-compatible parameter names.

Parameter names (so BasicSR checkpoints load unchanged): ``conv_first``, ``body.N.conv1`` / ``body.N.conv2``,
``upconv1`` (+ ``upconv2`` for ×4), ``conv_hr``, ``conv_last``. The network predicts a residual that is added to
a bilinear upsampling of the input.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["MSRResNet", "ResidualBlockNoBN", "init_scaled_kaiming"]


@torch.no_grad()
def init_scaled_kaiming(modules: Iterable[nn.Module], scale: float = 0.1) -> None:
    """Kaiming-normal (fan-in, gain √2) weights multiplied by ``scale``, zero biases, for every Conv2d/Linear inside.

    A small ``scale`` keeps each residual branch close to zero at start, so a deep residual stack begins near the
    identity (the initialisation SRResNet/ESRGAN training recipes assume).
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.zero_()


class ResidualBlockNoBN(nn.Module):
    """x + conv2(relu(conv1(x))), channels preserved, no batch norm."""

    def __init__(self, num_feat: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        init_scaled_kaiming([self.conv1, self.conv2], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """Modified SRResNet generator.

    Input: NCHW RGB float, nominally in [0, 1], any H, W. Output: N×C×(H·upscale)×(W·upscale), not clamped.
    ``upscale`` ∈ {2, 3, 4}; ×4 uses two ×2 pixel-shuffle stages (``upconv1``, ``upconv2``), ×2/×3 one stage.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ConfigError(f"MSRResNet upscale must be 2, 3 or 4, got {upscale!r}")
        if num_block < 0 or num_feat <= 0 or num_in_ch <= 0 or num_out_ch <= 0:
            raise ConfigError(f"MSRResNet: channel/block counts must be positive (num_in_ch={num_in_ch}, "
                              f"num_out_ch={num_out_ch}, num_feat={num_feat}, num_block={num_block})")
        self.upscale = upscale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        stage = 2 if upscale == 4 else upscale
        self.upconv1 = nn.Conv2d(num_feat, num_feat * stage * stage, 3, 1, 1)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(num_feat, num_feat * stage * stage, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(stage)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1)

        heads: list[nn.Module] = [self.conv_first, self.upconv1, self.conv_hr, self.conv_last]
        if upscale == 4:
            heads.append(self.upconv2)
        init_scaled_kaiming(heads, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×C×H×W RGB float in [0, 1] → N×C×(sH)×(sW), unclamped."""
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        base = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out + base
