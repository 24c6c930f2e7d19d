"""VGG-style discriminator (SRGAN/ESRGAN), with BasicSR-compatible parameter names.

Five stages ``k = 0..4``; each has a stride-1 3×3 conv ``convk_0`` and a stride-2 4×4 conv ``convk_1`` (batch norm
``bnk_0``/``bnk_1`` after every conv except ``conv0_0``), LeakyReLU 0.2, then ``linear1`` (→ 100) and ``linear2``
(→ 1). At ``input_size=128`` the layout and shapes are exactly BasicSR's 128×128 discriminator; other multiples of
32 change only ``linear1``'s input width (the spatial size after the five halvings is ``input_size / 32``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["VGGStyleDiscriminator"]


class VGGStyleDiscriminator(nn.Module):
    """Input: N×C×S×S RGB float in [0, 1] with S = ``input_size``. Output: N×1 raw logits (no sigmoid)."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size < 32 or input_size % 32:
            raise ConfigError(f"VGGStyleDiscriminator input_size must be a multiple of 32 and >= 32, "
                              f"got {input_size!r}")
        if num_in_ch <= 0 or num_feat <= 0:
            raise ConfigError(f"VGGStyleDiscriminator: num_in_ch and num_feat must be positive "
                              f"(got {num_in_ch}, {num_feat})")
        self.input_size = input_size
        self.num_in_ch = num_in_ch
        widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
        in_ch = num_in_ch
        for k, width in enumerate(widths):
            # Stage 0's first conv sees raw pixels and keeps its bias; every other conv feeds a BN, so no bias.
            setattr(self, f"conv{k}_0", nn.Conv2d(in_ch, width, 3, 1, 1, bias=(k == 0)))
            if k > 0:
                setattr(self, f"bn{k}_0", nn.BatchNorm2d(width))
            setattr(self, f"conv{k}_1", nn.Conv2d(width, width, 4, 2, 1, bias=False))
            setattr(self, f"bn{k}_1", nn.BatchNorm2d(width))
            in_ch = width
        self._stages = len(widths)
        side = input_size // 32
        self.linear1 = nn.Linear(widths[-1] * side * side, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×C×S×S (S = input_size) → N×1 logits."""
        if x.dim() != 4 or x.shape[1] != self.num_in_ch or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"VGGStyleDiscriminator built for N×{self.num_in_ch}×{self.input_size}×{self.input_size} input, "
                f"got shape {tuple(x.shape)} (set the discriminator input_size to the HR patch size)")
        feat = x
        for k in range(self._stages):
            feat = getattr(self, f"conv{k}_0")(feat)
            if k > 0:
                feat = getattr(self, f"bn{k}_0")(feat)
            feat = self.lrelu(feat)
            feat = self.lrelu(getattr(self, f"bn{k}_1")(getattr(self, f"conv{k}_1")(feat)))
        feat = self.lrelu(self.linear1(feat.flatten(1)))
        return self.linear2(feat)
