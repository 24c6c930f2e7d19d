"""Image-quality metrics with the conventions of published SR papers (DESIGN.md §2 "Evaluation").

``from easlurm.metrics import psnr_y, ssim_y, LPIPSMetric, DISTSMetric, build_metrics`` works; the network metrics
(which import ``lpips`` and torchvision) are imported only when first asked for, so ``import easlurm.metrics`` stays
cheap. Submodules:

- :mod:`easlurm.metrics.psnr_ssim` — PSNR / SSIM on the BT.601 Y channel of uint8 RGB images (BasicSR / MATLAB).
- :mod:`easlurm.metrics.lpips` — LPIPS-alex v0.1 on RGB in [-1, 1], offline ImageNet trunk.
- :mod:`easlurm.metrics.dists` — DISTS on RGB in [0, 1], offline VGG16 trunk and the published α/β.
- :mod:`easlurm.metrics.registry` — the metrics as data (name, direction, format, builder) behind ``eval.metrics``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .psnr_ssim import MetricError, psnr_y, rgb_to_y, ssim_y
from .registry import METRICS, ImageMetric, MetricSpec, build_metrics

if TYPE_CHECKING:
    from .dists import DISTSMetric
    from .lpips import LPIPSMetric

__all__ = ["MetricError", "psnr_y", "ssim_y", "rgb_to_y", "LPIPSMetric", "DISTSMetric", "METRICS", "MetricSpec",
           "ImageMetric", "build_metrics"]

_LAZY = {"LPIPSMetric": ".lpips", "DISTSMetric": ".dists"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
