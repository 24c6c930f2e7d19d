"""Image-quality metrics with the conventions of published SR papers (DESIGN.md §2 "Evaluation").

Submodules (imported on demand so that ``import easlurm.metrics`` stays cheap):

- :mod:`easlurm.metrics.psnr_ssim` — PSNR / SSIM on the BT.601 Y channel of uint8 RGB images (BasicSR / MATLAB
  conventions), plus ``tensor_to_uint8`` (BasicSR rounding).
- :mod:`easlurm.metrics.lpips` — LPIPS-alex v0.1 on RGB in [-1, 1].
"""
from __future__ import annotations
