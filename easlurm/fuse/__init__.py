"""Fusion of the N expert generators into one plain backbone (DESIGN.md §2 "Fusion").

Submodules (imported on demand so that ``import easlurm.fuse`` stays cheap):

- :mod:`easlurm.fuse.dynamic` — ``make_dynamic`` wraps every ``nn.Conv2d`` of any backbone into a
  ``DynamicConv2d`` holding the K frozen expert kernels plus a trainable attention branch; ``average_attention``
  averages each layer's softmax vector over a validation set.
- :mod:`easlurm.fuse.merge` — collapses the experts into one state dict with per-layer weights
  (θ_l = Σ_k w̄_{l,k} θ_{l,k}), loadable by the ordinary backbone class with ``strict=True``.
"""
from __future__ import annotations
