"""The one helper every typed settings dataclass uses: a field whose range and documentation live next to it.

:mod:`easlurm.config` reads ``min``/``max``/``min_exclusive`` from the field metadata to check a value and name the
field in its error, and ``doc`` to describe it. Config sections, stage resources (:mod:`easlurm.stages`) and backbone
options (:mod:`easlurm.models.specs`) are all declared with it, so each can live with what it configures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def setting(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
            min_exclusive: bool = False, doc: str = "", factory: Any = None) -> Any:
    """A dataclass field with a default (or ``factory``), an allowed range and a one-line ``doc``."""
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


__all__ = ["setting"]
