"""Small runtime helpers shared by stages and CLIs (below every stage, above nothing but torch).

Only the device choice lives here for now; stages and CLIs call :func:`pick_device` instead of each other's copies.
"""
from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: ``requested`` when given (``"cpu"``, ``"cuda:1"``, …), else CUDA when available,
    else the CPU. An empty string counts as not given (a CLI flag left blank)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
