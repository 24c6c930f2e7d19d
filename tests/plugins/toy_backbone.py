"""A backbone added from outside easlurm: one module (network, options, spec); the test registers the spec.

ToyNet: conv → ``depth`` residual convs → conv to 3·scale² channels → pixel shuffle, plus a bilinear skip.
It takes LR sides that are multiples of 2 only (it pools once for context), so inference must pad for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from easlurm.fields import setting
from easlurm.models.specs import GeneratorSpec


@dataclass
class ToyOptions:
    width: int = setting(16, min=1, doc="channels")
    depth: int = setting(2, min=0, doc="residual convs")


class ToyNet(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, width, 3, 1, 1)
        self.body = nn.ModuleList([nn.Conv2d(width, width, 3, 1, 1) for _ in range(depth)])
        self.tail = nn.Conv2d(width, 3 * scale * scale, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"ToyNet needs even sides, got {tuple(x.shape[-2:])}")
        f = F.leaky_relu(self.head(x), 0.2)
        ctx = F.interpolate(F.avg_pool2d(f, 2), scale_factor=2.0, mode="nearest")
        for conv in self.body:
            f = f + 0.1 * conv(F.leaky_relu(f + ctx, 0.2))
        up = F.pixel_shuffle(self.tail(f), self.scale)
        return up + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


SPEC = GeneratorSpec("toynet", "a toy backbone from a plugin", "plugins.toy_backbone:ToyNet", ToyOptions,
                     scales=(2, 4), input_multiple=lambda scale: 2, tiny={"width": 4, "depth": 1})
