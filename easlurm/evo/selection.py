"""Survivor selection for the EA phase: MOEA/D-style Tchebycheff replacement (reference) and NSGA-II.

Objectives are minimised, ``m = 2`` in easlurm: ``f = (f1, f2) = (mean L1, mean perceptual loss)`` over the
fixed fitness tiles. Preferences are rows ``w_i = (w_dist, w_perc)`` of :func:`uniform_preferences`; slot i keeps
its preference and its discriminator for the whole run (DESIGN.md §2). All functions are pure except
:meth:`MoeadState.update`, which accumulates the ideal and nadir points by design.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import EvoError
from .pareto import as_objectives, crowding_distance, non_dominated_sort

__all__ = [
    "neighbourhoods",
    "uniform_preferences",
    "tchebycheff",
    "MoeadState",
    "moead_replace",
    "nsga2_select",
    "assign_slots_by_f1",
]

TCHEBYCHEFF_EPS = 1e-5


def neighbourhoods(n: int, size: int = 3) -> list[list[int]]:
    """Index neighbourhood B(i) of every member of an ``n``-member population, ascending indices.

    B(i) is the window of ``size`` consecutive indices centred on i (for an even size one more on the left),
    shifted inwards at the ends so it always holds ``size`` members: n = 5, size 3 gives B(0) = [0, 1, 2],
    B(2) = [1, 2, 3], B(4) = [2, 3, 4]. If ``n < size`` every B(i) is all members. B(i) always contains i.
    """
    n, size = int(n), int(size)
    if n < 1:
        raise EvoError(f"neighbourhoods: population size must be >= 1, got {n}")
    if size < 1:
        raise EvoError(f"neighbourhoods: neighbourhood size must be >= 1, got {size}")
    if n <= size:
        return [list(range(n)) for _ in range(n)]
    half = size // 2
    result = []
    for i in range(n):
        start = min(max(i - half, 0), n - size)
        result.append(list(range(start, start + size)))
    return result


def uniform_preferences(n: int) -> np.ndarray:
    """``n × 2`` preference matrix, row i = ``(w_dist, w_perc) = (1 - i/(n-1), i/(n-1))``; ``n = 1`` → ``[[1, 0]]``.

    Evenly spaced on the simplex from pure distortion (slot 0) to pure perception (slot n-1);
    n = 5 gives w_dist = 1, .75, .5, .25, 0.
    """
    n = int(n)
    if n < 1:
        raise EvoError(f"uniform_preferences: population size must be >= 1, got {n}")
    if n == 1:
        return np.array([[1.0, 0.0]])
    w_perc = np.arange(n, dtype=np.float64) / (n - 1)
    return np.stack([1.0 - w_perc, w_perc], axis=1)


def _vector(x: Any, name: str, m: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or (m is not None and arr.shape[0] != m):
        want = f"({m},)" if m is not None else "1-D"
        raise EvoError(f"{name}: expected shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EvoError(f"{name}: non-finite value in {arr.tolist()}")
    return arr


def tchebycheff(
    f: Sequence[float] | np.ndarray,
    w: Sequence[float] | np.ndarray,
    z_min: Sequence[float] | np.ndarray,
    z_max: Sequence[float] | np.ndarray,
    eps: float = TCHEBYCHEFF_EPS,
) -> float:
    """Normalised weighted Tchebycheff value ``g = max_k w_k · |f_k − z_min,k| / (z_max,k − z_min,k + eps)``.

    ``f``, ``w``, ``z_min``, ``z_max`` are length-m vectors (objective units for f and z, unitless w); lower g is
    better for the preference w. ``eps`` (reference 1e-5) keeps a zero range finite.
    """
    fv = _vector(f, "tchebycheff f")
    m = fv.shape[0]
    wv = _vector(w, "tchebycheff w", m)
    lo = _vector(z_min, "tchebycheff z_min", m)
    hi = _vector(z_max, "tchebycheff z_max", m)
    return float(np.max(wv * np.abs(fv - lo) / (hi - lo + eps)))


@dataclass
class MoeadState:
    """Ideal point ``z_min`` and nadir point ``z_max`` (length-m float64 vectors, objective units).

    As in the reference, they are set from the population at the start of each EA phase
    (:meth:`from_population`: column-wise min and max of its objectives — *not* carried over from the previous
    cycle) and then widened by every evaluated child, accepted or not (:meth:`update`). So ``z_max`` is the
    worst value seen in this EA phase, not the nadir of the current population. ``to_dict``/``from_dict`` let a
    resumable job persist it as JSON.
    """

    z_min: np.ndarray
    z_max: np.ndarray

    def __post_init__(self) -> None:
        self.z_min = _vector(self.z_min, "MoeadState.z_min").copy()
        self.z_max = _vector(self.z_max, "MoeadState.z_max", self.z_min.shape[0]).copy()
        if np.any(self.z_min > self.z_max):
            raise EvoError(f"MoeadState: z_min {self.z_min.tolist()} exceeds z_max {self.z_max.tolist()}")

    @classmethod
    def from_population(cls, pop_F: np.ndarray) -> MoeadState:
        """State whose ideal/nadir are the column-wise min/max of the ``n × m`` population objectives (n >= 1)."""
        arr = as_objectives(pop_F, "pop_F")
        if arr.shape[0] == 0:
            raise EvoError("MoeadState.from_population: pop_F has no rows")
        return cls(arr.min(axis=0), arr.max(axis=0))

    def update(self, f: Sequence[float] | np.ndarray) -> None:
        """Widen the ideal/nadir to include ``f``: one point (length m) or several (``k × m``). In place."""
        arr = np.asarray(f, dtype=np.float64)
        pts = as_objectives(arr[None, :] if arr.ndim == 1 else arr, "MoeadState.update f")
        if pts.shape[1] != self.z_min.shape[0]:
            raise EvoError(f"MoeadState.update: expected {self.z_min.shape[0]} objectives, got {pts.shape[1]}")
        if pts.shape[0]:
            self.z_min = np.minimum(self.z_min, pts.min(axis=0))
            self.z_max = np.maximum(self.z_max, pts.max(axis=0))

    def to_dict(self) -> dict[str, list[float]]:
        return {"z_min": self.z_min.tolist(), "z_max": self.z_max.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoeadState:
        for key in ("z_min", "z_max"):
            if key not in d:
                raise EvoError(f"MoeadState.from_dict: missing key {key!r}")
        return cls(np.asarray(d["z_min"], dtype=np.float64), np.asarray(d["z_max"], dtype=np.float64))


def moead_replace(
    child_f: Sequence[float] | np.ndarray,
    pop_F: np.ndarray,
    weights: np.ndarray,
    neighbourhood: Sequence[int],
    state: MoeadState,
) -> list[int]:
    """Members of ``neighbourhood`` that member i's child should replace (MOEA/D step, DESIGN.md §2 EA step 4).

    Order of operations, as in the reference: first ``state.update(child_f)`` (the child widens the ideal and
    nadir even if it is rejected everywhere), then for each j in ``neighbourhood`` (given order, duplicates
    dropped) j is returned when ``tchebycheff(child_f, w_j) < tchebycheff(pop_F[j], w_j)`` with the updated
    z_min/z_max — strictly less, so a tie keeps the incumbent. Every such j is returned; like the reference there is
    no cap on replacements per child (no MOEA/D ``n_r`` limit), and i itself is a candidate.

    ``pop_F`` (``n × m``) must hold the *current* objectives: after replacing, the caller sets ``pop_F[j] =
    child_f`` before the next member's child is judged (the reference updates its table immediately). The
    reference with SRResNet never replaces slot 0 (``population.freeze_first``); that filtering is the caller's.
    ``weights`` is the ``n × m`` preference matrix (:func:`uniform_preferences`). Mutates ``state`` only.
    """
    pop = as_objectives(pop_F, "pop_F")
    n, m = pop.shape
    child = _vector(child_f, "child_f", m)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n, m):
        raise EvoError(f"moead_replace: weights must have shape {(n, m)} like pop_F, got {w.shape}")
    members = list(dict.fromkeys(int(j) for j in neighbourhood))
    for j in members:
        if not (0 <= j < n):
            raise EvoError(f"moead_replace: neighbourhood index {j} out of range for a population of {n}")
    state.update(child)
    replaced = []
    for j in members:
        g_child = tchebycheff(child, w[j], state.z_min, state.z_max)
        g_incumbent = tchebycheff(pop[j], w[j], state.z_min, state.z_max)
        if g_child < g_incumbent:
            replaced.append(j)
    return replaced


def nsga2_select(F: np.ndarray, n: int) -> np.ndarray:
    """NSGA-II environmental selection: indices of the ``n`` rows of the pool ``F`` (parents + children) to keep.

    Whole fronts are taken best first while they fit; the front that overflows is truncated by crowding distance
    computed within that front (:func:`easlurm.evo.pareto.crowding_distance`), largest first, ties by lower row
    index. Returns an int64 array of row indices sorted ascending (use :func:`assign_slots_by_f1` for slot order).
    """
    arr = as_objectives(F, "F")
    n = int(n)
    if not (0 <= n <= arr.shape[0]):
        raise EvoError(f"nsga2_select: cannot keep {n} of a pool of {arr.shape[0]}")
    chosen: list[np.ndarray] = []
    taken = 0
    for front in non_dominated_sort(arr):
        if taken == n:
            break
        if taken + front.size <= n:
            chosen.append(front)
            taken += front.size
            continue
        cd = crowding_distance(arr[front])
        # lexsort's last key is primary: -cd descending distance first, then ascending row index.
        order = np.lexsort((front, -cd))
        chosen.append(front[order[: n - taken]])
        taken = n
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def assign_slots_by_f1(F_selected: np.ndarray) -> np.ndarray:
    """Slot order for NSGA-II survivors: ``order[s]`` is the row of ``F_selected`` that goes to slot s.

    Rows are sorted by f1 ascending (slot 0 = lowest distortion), ties by f2 ascending, then by row index, so
    each slot keeps a stable meaning (its preference and discriminator) across generations.
    """
    arr = as_objectives(F_selected, "F_selected")
    if arr.shape[0] and arr.shape[1] < 2:
        raise EvoError(f"assign_slots_by_f1: need at least 2 objectives, got shape {arr.shape}")
    idx = np.arange(arr.shape[0])
    if arr.shape[0] == 0:
        return idx.astype(np.int64)
    return np.lexsort((idx, arr[:, 1], arr[:, 0])).astype(np.int64)
