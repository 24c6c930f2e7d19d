"""The EA phase's pure machinery: Pareto sorting, variation operators and selection (DESIGN.md §2 "EA phase").

Submodules (import them directly; this package imports nothing heavy on purpose):

- :mod:`easlurm.evo.pareto` — non-dominated sort, crowding distance, 2-D hypervolume (numpy only).
- :mod:`easlurm.evo.operators` — SBX crossover, Gaussian weight mutation, partner choice (torch state dicts).
- :mod:`easlurm.evo.selection` — neighbourhoods, preferences, Tchebycheff/MOEA-D replacement, NSGA-II selection.

Every function is deterministic given its explicit random generator and never modifies its inputs (the one
documented exception is :class:`easlurm.evo.selection.MoeadState`, whose whole purpose is to accumulate).
Objectives are always minimised; a population's objectives are an ``n × m`` float array, row = member.
"""
from __future__ import annotations

from easlurm.errors import EaslurmError


class EvoError(EaslurmError):
    """Bad input to the EA machinery (wrong shape, NaN objective, mismatched genomes); the message names it."""


__all__ = ["EvoError"]
