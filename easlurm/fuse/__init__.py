"""Fusion of the N expert generators into one plain backbone (DESIGN.md §2 "Fusion").

Submodules (imported on demand so that ``import easlurm.fuse`` stays cheap):

- :mod:`easlurm.fuse.dynamic` — ``make_dynamic`` wraps every ``nn.Conv2d`` of any backbone into a
  ``DynamicConv2d`` holding the K frozen expert kernels plus a trainable attention branch; ``average_attention``
  averages each layer's softmax vector over a set of training images.
- :mod:`easlurm.fuse.merge` — merges expert state dicts with per-layer weights (θ_l = Σ_k w̄_{l,k} θ_{l,k});
- :mod:`easlurm.fuse.collapse` — a dynamic model → one state dict the ordinary backbone class loads with
  ``strict=True``;
- :mod:`easlurm.fuse.job` — the fusion stage.
"""
from __future__ import annotations
