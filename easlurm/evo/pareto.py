"""Pareto dominance tools for minimisation problems: fronts, crowding distance, 2-D hypervolume.

Layout everywhere: ``F`` is an ``n × m`` array of objective values, one row per candidate, one column per
objective, all **minimised** (for easlurm: column 0 = mean L1, column 1 = mean perceptual loss). Rows are referred
to by their index. Inputs must be finite; NaN or ±inf raise :class:`easlurm.evo.EvoError` (a ValueError), because
a diverged candidate has no meaningful rank — the caller should reject it before it gets here.

Dominance: row a dominates row b when ``a <= b`` in every objective and ``a < b`` in at least one. Two identical
rows therefore do not dominate each other and always land in the same front.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import EvoError

__all__ = [
    "as_objectives",
    "dominance_matrix",
    "non_dominated_sort",
    "pareto_front_mask",
    "crowding_distance",
    "hypervolume",
]


def as_objectives(F: object, name: str = "F") -> np.ndarray:
    """Return ``F`` as a finite float64 ``n × m`` array (a copy), or raise EvoError naming ``name``.

    A 1-D input of length m is *not* accepted: pass ``F[None, :]`` for a single point, so that a transposed
    population is never silently misread.
    """
    arr = np.array(F, dtype=np.float64, copy=True)
    if arr.ndim != 2:
        raise EvoError(f"{name}: expected an n×m objective array, got shape {arr.shape}")
    if arr.shape[1] < 1 and arr.shape[0] > 0:
        raise EvoError(f"{name}: needs at least one objective column, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise EvoError(f"{name}: non-finite objective at row {bad[0]}, column {bad[1]} ({arr[bad[0], bad[1]]})")
    return arr


def dominance_matrix(F: np.ndarray) -> np.ndarray:
    """``D[a, b]`` is True when row a dominates row b (minimisation). Shape ``n × n``, bool; the diagonal is False.

    Memory is ``n² m`` booleans, which is fine for EA pools (tens to a few thousand rows).
    """
    arr = as_objectives(F)
    le = np.all(arr[:, None, :] <= arr[None, :, :], axis=2)
    lt = np.any(arr[:, None, :] < arr[None, :, :], axis=2)
    return le & lt


def non_dominated_sort(F: np.ndarray) -> list[np.ndarray]:
    """Split the rows of ``F`` into Pareto fronts, best first (Deb's fast non-dominated sort, vectorised).

    Returns a list of int64 arrays of row indices, each sorted ascending; together they partition ``range(n)``.
    Front 0 holds the rows no other row dominates; front k holds the rows dominated only by rows of fronts < k.
    Identical rows share a front. ``n == 0`` gives ``[]``. Cost O(m n²) time and memory.
    """
    dom = dominance_matrix(F)
    n = dom.shape[0]
    # How many not-yet-assigned rows dominate each row; a row joins the next front once this reaches 0.
    remaining_dominators = dom.sum(axis=0).astype(np.int64)
    assigned = np.zeros(n, dtype=bool)
    fronts: list[np.ndarray] = []
    current = np.flatnonzero(remaining_dominators == 0)
    while current.size:
        fronts.append(current.astype(np.int64))
        assigned[current] = True
        remaining_dominators -= dom[current].sum(axis=0)
        current = np.flatnonzero((remaining_dominators == 0) & ~assigned)
    return fronts


def pareto_front_mask(F: np.ndarray) -> np.ndarray:
    """Boolean mask over rows: True for rows in the first (non-dominated) front. ``n == 0`` gives an empty mask."""
    dom = dominance_matrix(F)
    return ~np.any(dom, axis=0)


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of ``F`` (call it on the rows of one front). Shape ``(n,)``, float64.

    For each objective k with range ``r_k = max - min`` over the given rows:

    - rows are ordered by ``(value, row index)`` — a stable argsort, so ties keep index order;
    - the first and last rows of that order get ``inf`` (boundary points);
    - every other row gets ``(value of next - value of previous) / r_k`` added (neighbours in that order);
    - if ``r_k == 0`` the objective carries no spread information and adds 0 to *every* row, boundaries included.

    The distance is the sum over objectives. With ``n <= 2`` every row is a boundary: all ``inf``.
    Because ties are broken by row index, duplicate points at an extreme get ``inf`` only for the lowest index
    (minimum end) or the highest index (maximum end), and the result is fully deterministic.
    """
    arr = as_objectives(F)
    n, m = arr.shape
    if n <= 2:
        return np.full(n, np.inf)
    dist = np.zeros(n, dtype=np.float64)
    for k in range(m):
        col = arr[:, k]
        order = np.argsort(col, kind="stable")
        span = col[order[-1]] - col[order[0]]
        if span <= 0.0:
            continue
        sorted_vals = col[order]
        dist[order[1:-1]] += (sorted_vals[2:] - sorted_vals[:-2]) / span
        dist[order[0]] = np.inf
        dist[order[-1]] = np.inf
    return dist


def hypervolume(F: np.ndarray, ref: Sequence[float]) -> float:
    """Exact area dominated by the rows of a 2-objective ``F`` (minimisation) and bounded above by ``ref``.

    This is the area of the union of the boxes ``[f1, ref1] × [f2, ref2]``. Rows that are not strictly better than
    ``ref`` in both objectives contribute nothing; dominated and duplicate rows add nothing either. Units are the
    product of the two objectives' units. ``n == 0`` gives 0.0. Raises ValueError (EvoError) when ``m != 2``.
    """
    arr = np.array(F, dtype=np.float64, copy=True)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise EvoError(f"hypervolume: exact hypervolume is implemented for 2 objectives only, got shape {arr.shape}")
    arr = as_objectives(arr)
    r = np.asarray(ref, dtype=np.float64)
    if r.shape != (2,) or not np.all(np.isfinite(r)):
        raise EvoError(f"hypervolume: ref must be two finite numbers, got {ref!r}")
    inside = arr[np.all(arr < r, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    # Sweep along f1 ascending (ties by f2): each point that lowers the best f2 seen so far adds one strip.
    order = np.lexsort((inside[:, 1], inside[:, 0]))
    area = 0.0
    best_f2 = r[1]
    for f1, f2 in inside[order]:
        if f2 < best_f2:
            area += (r[0] - f1) * (best_f2 - f2)
            best_f2 = f2
    return float(area)
