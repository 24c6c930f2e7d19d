"""Evaluation metrics as data: each has a name, a direction, a format and a builder (like BasicSR's ``val.metrics``).

``eval.metrics`` in the config lists names of :data:`METRICS`; :func:`build_metrics` turns them into callables that
score one SR image against its HR image, both uint8 RGB laid out HWC with equal shapes (what a saved PNG holds):

- ``psnr`` (higher is better): PSNR on the BT.601 Y channel, ``scale`` px cropped at every border (BasicSR);
- ``ssim`` (higher): SSIM on Y, 11×11 Gaussian window σ 1.5, valid region, ``scale`` px cropped (MATLAB, BasicSR);
- ``lpips`` (lower): LPIPS-alex v0.1 on RGB in [−1, 1], after cropping ``perceptual_crop`` px at every border (the
  reference code crops ``scale`` px before LPIPS);
- ``dists`` (lower): DISTS on RGB in [0, 1], after the same crop.

Adding a metric: a :class:`MetricSpec` here, a branch in :func:`build_metrics`, and its name in ``EvalConfig``'s
``metrics`` type (config.py); the tables, CSV files, TensorBoard and the Pareto plot follow from the spec.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["MetricSpec", "ImageMetric", "METRICS", "build_metrics", "metric_spec", "plot_axes"]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is called and how it is read: ``name`` (config key and CSV column), ``title`` (table header
    and axis label), direction, and decimals in the Markdown tables and the CSV files."""

    name: str
    title: str
    higher_is_better: bool
    table_digits: int
    csv_digits: int

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("psnr", "PSNR-Y (dB)", True, 2, 4),
    "ssim": MetricSpec("ssim", "SSIM-Y", True, 4, 6),
    "lpips": MetricSpec("lpips", "LPIPS-alex", False, 4, 6),
    "dists": MetricSpec("dists", "DISTS", False, 4, 6),
}


def metric_spec(name: str) -> MetricSpec:
    """The spec of ``name``; an unregistered name gets a neutral one (lower is better, 4/6 decimals)."""
    return METRICS.get(name) or MetricSpec(name, name, False, 4, 6)


def plot_axes(names: Sequence[str]) -> tuple[str, str]:
    """The two metrics a PSNR–perception plot uses: x = ``psnr`` (else the first name), y = the first of ``lpips``,
    ``dists``, ``ssim`` present (else the next name); y = x when there is only one metric."""
    if not names:
        raise ValueError("plot_axes: no metrics")
    x = "psnr" if "psnr" in names else names[0]
    others = [n for n in ("lpips", "dists", "ssim") if n in names and n != x] + [n for n in names if n != x]
    return x, (others[0] if others else x)


class ImageMetric(Protocol):
    """One metric, ready to score: ``metric(sr, hr)`` with uint8 HWC RGB images of equal shape → a float."""

    spec: MetricSpec

    def __call__(self, sr: np.ndarray, hr: np.ndarray) -> float: ...


@dataclass
class _YMetric:
    spec: MetricSpec
    crop: int

    def __call__(self, sr: np.ndarray, hr: np.ndarray) -> float:
        from .psnr_ssim import psnr_y, ssim_y

        return (psnr_y if self.spec.name == "psnr" else ssim_y)(sr, hr, self.crop)


@dataclass
class _DeepMetric:
    """A network metric on RGB (LPIPS, DISTS): crop ``crop`` px per border, convert to [0, 1] NCHW, score.

    The reference side is prepared once per HR image (for DISTS that is a whole VGG16 pass): called again with the
    very same ``hr`` array object, the metric reuses it — the evaluation scores every model against one HR image
    before it reads the next. (A caller that changes an HR array in place between calls must pass a copy.)
    """

    spec: MetricSpec
    crop: int
    net: Any  # LPIPSMetric | DISTSMetric: prepare(hr) → reference, compare(sr, reference) → N distances
    _reference: tuple[np.ndarray, Any] | None = field(default=None, repr=False)

    def __call__(self, sr: np.ndarray, hr: np.ndarray) -> float:
        from .psnr_ssim import MetricError

        if not (isinstance(sr, np.ndarray) and isinstance(hr, np.ndarray)) or sr.shape != hr.shape or \
                sr.dtype != np.uint8 or hr.dtype != np.uint8 or sr.ndim != 3 or sr.shape[2] != 3:
            raise MetricError(f"{self.spec.name}: expected two uint8 HWC RGB images of equal shape, got "
                              f"{getattr(sr, 'shape', type(sr).__name__)} and {getattr(hr, 'shape', '?')}")
        c = self.crop
        if sr.shape[0] - 2 * c < 1 or sr.shape[1] - 2 * c < 1:
            raise MetricError(f"{self.spec.name}: cropping {c} px per border leaves nothing of a "
                              f"{sr.shape[1]}x{sr.shape[0]} image")
        if self._reference is None or self._reference[0] is not hr:
            self._reference = None  # drop the previous image's features before computing the next ones
            self._reference = (hr, self.net.prepare(_cropped_tensor(hr, c)))
        return float(self.net.compare(_cropped_tensor(sr, c), self._reference[1])[0])


def _cropped_tensor(img: np.ndarray, c: int) -> torch.Tensor:
    """uint8 HWC RGB → float 1×3×H'×W' in [0, 1] without ``c`` px at every border (a copy)."""
    return torch.tensor(img[c:img.shape[0] - c, c:img.shape[1] - c]).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def build_metrics(names: Sequence[str], *, scale: int, perceptual_crop: int | None = None,
                  device: str | torch.device = "cpu") -> list[ImageMetric]:
    """Ready-to-use metrics for ``names`` (in that order).

    Args:
        names: keys of :data:`METRICS`.
        scale: the SR factor; PSNR-Y and SSIM-Y crop ``scale`` px at every border (BasicSR).
        perceptual_crop: px cropped at every border before LPIPS and DISTS; None → ``scale`` (the reference code
            crops before LPIPS), 0 → the whole image.
        device: where the LPIPS / DISTS networks run.

    Raises ``ValueError`` for an unknown name, and the weights' own errors (naming what to install or stage) when
    LPIPS or DISTS cannot be built offline.
    """
    crop = scale if perceptual_crop is None else int(perceptual_crop)
    out: list[ImageMetric] = []
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        spec = METRICS[name]
        if name in ("psnr", "ssim"):
            out.append(_YMetric(spec, scale))
        elif name == "lpips":
            from .lpips import LPIPSMetric

            out.append(_DeepMetric(spec, crop, LPIPSMetric(net="alex", version="0.1", device=device)))
        else:
            from .dists import DISTSMetric

            out.append(_DeepMetric(spec, crop, DISTSMetric(device=device)))
    return out
