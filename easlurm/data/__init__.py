"""Data layer: bicubic degradation, image reading, HDF5 shards, torch datasets and the built-in sample photos.

Modules (import what you need; this package imports nothing heavy on its own):

* :mod:`easlurm.data.bicubic` — MATLAB-compatible ``imresize`` / ``bicubic_downscale`` (numpy) and
  ``torch_bicubic_downscale``.
* :mod:`easlurm.data.images` — ``read_rgb`` (uint8 HWC RGB, explicit format policy), ``list_images``.
* :mod:`easlurm.data.shards` — ``build_shards``, ``load_manifest``, ``verify_shards``, ``manifest_digest``,
  ``check_manifest``; :mod:`easlurm.data.shard_files` — what a shard file may hold (checked on open), bounded reads.
* :mod:`easlurm.data.dataset` — ``RandomPatchDataset``, ``infinite_loader``, ``ShardReader``;
  :mod:`easlurm.data.fitness` — the EA's fitness tiles.
* :mod:`easlurm.data.fitness` — ``FitnessTiles``: the EA's fitness set (N distinct source images, the reference's
  tile choice, per-image mean weights).
* :mod:`easlurm.data.samples` — ``build_samples`` (train/val shards from photos shipped in wheels).

Command line: ``python -m easlurm.data build ...`` and ``python -m easlurm.data samples ...`` (see ``--help``).
"""
from __future__ import annotations
