"""Training batches for the loop: random HR patches and their bicubic LR, by global sample index."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from ..config import Config


def batches(train_dir: Path, cfg: Config, batch_size: int, seed: int, start_index: int, total: int,
            num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (LR, HR: N×3×h×w RGB float in [0, 1]; h = ``data.patch_size / data.scale``) for global sample
    indices ``start_index`` … ``total - 1`` in order. Sample k is a pure function of ``seed`` and k, so a resumed
    stage sees exactly the batches an uninterrupted one would. ``num_workers`` is capped at the CPUs the task was
    allocated (:func:`easlurm.runtime.loader_workers`)."""
    from ..data.dataset import RandomPatchDataset, infinite_loader
    from ..runtime import loader_workers

    ds = RandomPatchDataset(train_dir, patch_size=cfg.data.patch_size, scale=cfg.data.scale, num_samples=total,
                            seed=seed, augment=True)
    return iter(infinite_loader(ds, batch_size=batch_size, start_index=start_index,
                                num_workers=loader_workers(num_workers),
                                pin_memory=torch.cuda.is_available()))


__all__ = ["batches"]
