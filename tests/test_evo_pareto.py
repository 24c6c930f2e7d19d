"""Pareto tools against brute-force oracles written independently here, plus hand-computed hypervolumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easlurm.evo import EvoError
from easlurm.evo.pareto import crowding_distance, hypervolume, non_dominated_sort, pareto_front_mask

# ---------------------------------------------------------------- oracles (plain Python loops, no numpy tricks)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def oracle_fronts(rows: list[list[float]]) -> list[list[int]]:
    """Peel off, again and again, the rows that no remaining row dominates."""
    remaining = list(range(len(rows)))
    fronts = []
    while remaining:
        front = [i for i in remaining if not any(_dominates(rows[j], rows[i]) for j in remaining if j != i)]
        fronts.append(sorted(front))
        remaining = [i for i in remaining if i not in front]
    return fronts


def oracle_crowding(rows: list[list[float]]) -> list[float]:
    """Textbook crowding distance; ties ordered by row index; zero-range objectives add nothing."""
    n = len(rows)
    if n <= 2:
        return [math.inf] * n
    m = len(rows[0])
    dist = [0.0] * n
    for k in range(m):
        order = sorted(range(n), key=lambda r: (rows[r][k], r))
        lo, hi = rows[order[0]][k], rows[order[-1]][k]
        if hi == lo:
            continue
        dist[order[0]] = math.inf
        dist[order[-1]] = math.inf
        for pos in range(1, n - 1):
            dist[order[pos]] += (rows[order[pos + 1]][k] - rows[order[pos - 1]][k]) / (hi - lo)
    return dist


# ---------------------------------------------------------------- strategies: ties, duplicates, integer grids


@st.composite
def objective_arrays(draw: st.DrawFn, max_n: int = 25) -> np.ndarray:
    m = draw(st.integers(1, 3))
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["grid", "float", "duplicates"]))
    if kind == "grid":
        vals = draw(st.lists(st.integers(0, 4), min_size=n * m, max_size=n * m))
        return np.array(vals, dtype=np.float64).reshape(n, m)
    if kind == "float":
        vals = draw(
            st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=n * m, max_size=n * m)
        )
        return np.array(vals, dtype=np.float64).reshape(n, m)
    pool_size = draw(st.integers(1, 4))
    pool = draw(
        st.lists(
            st.lists(st.floats(0, 10, allow_nan=False), min_size=m, max_size=m), min_size=pool_size, max_size=pool_size
        )
    )
    picks = draw(st.lists(st.integers(0, pool_size - 1), min_size=n, max_size=n))
    return np.array([pool[p] for p in picks], dtype=np.float64)


# ---------------------------------------------------------------- non-dominated sort


@settings(max_examples=200, deadline=None)
@given(objective_arrays())
def test_non_dominated_sort_matches_peeling_oracle(F: np.ndarray) -> None:
    got = [front.tolist() for front in non_dominated_sort(F)]
    assert got == oracle_fronts(F.tolist())
    for front in non_dominated_sort(F):
        assert front.dtype.kind == "i"


@settings(max_examples=100, deadline=None)
@given(objective_arrays())
def test_pareto_front_mask_is_first_front(F: np.ndarray) -> None:
    mask = pareto_front_mask(F)
    assert mask.dtype == bool
    assert np.flatnonzero(mask).tolist() == oracle_fronts(F.tolist())[0]


def test_duplicates_share_a_front_and_single_point() -> None:
    F = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 3.0], [2.0, 3.0], [2.0, 3.0]])
    fronts = [f.tolist() for f in non_dominated_sort(F)]
    assert fronts == [[0, 1, 2], [3, 4]]
    assert [f.tolist() for f in non_dominated_sort(np.array([[5.0, 5.0]]))] == [[0]]
    assert non_dominated_sort(np.zeros((0, 2))) == []


def test_non_dominated_sort_large_pool_partitions() -> None:
    rng = np.random.default_rng(0)
    F = rng.integers(0, 30, size=(800, 2)).astype(float)
    fronts = non_dominated_sort(F)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(800))
    # No member of a later front dominates anyone in an earlier one.
    for a, b in zip(fronts[:-1], fronts[1:]):
        for j in b[:20]:
            assert any(_dominates(F[i].tolist(), F[j].tolist()) for i in a)


def test_rejects_bad_input() -> None:
    with pytest.raises(EvoError, match="non-finite"):
        non_dominated_sort(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="n×m"):
        non_dominated_sort(np.array([1.0, 2.0]))


# ---------------------------------------------------------------- crowding distance


@settings(max_examples=200, deadline=None)
@given(objective_arrays())
def test_crowding_distance_matches_oracle(F: np.ndarray) -> None:
    got = crowding_distance(F)
    want = oracle_crowding(F.tolist())
    assert got.shape == (F.shape[0],)
    for g, w in zip(got.tolist(), want):
        if math.isinf(w):
            assert math.isinf(g) and g > 0
        else:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-12)


def test_crowding_distance_hand_example() -> None:
    # A front sorted by f1: (0,4) (1,3) (3,1) (4,0); both ranges are 4.
    # Row 1: f1 neighbours 0 and 3 -> 3/4; f2 neighbours 4 and 1 -> 3/4; total 1.5. Row 2 likewise 1.5.
    F = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    cd = crowding_distance(F)
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    assert cd[1] == pytest.approx(1.5) and cd[2] == pytest.approx(1.5)
    assert np.all(np.isinf(crowding_distance(F[:2])))
    assert np.all(np.isinf(crowding_distance(F[:1])))
    # All identical: no objective has any range, so nobody is a boundary.
    assert crowding_distance(np.ones((4, 2))).tolist() == [0.0] * 4


# ---------------------------------------------------------------- hypervolume


def test_hypervolume_hand_cases() -> None:
    ref = (4.0, 4.0)
    # One point (1, 2): box 3 x 2.
    assert hypervolume(np.array([[1.0, 2.0]]), ref) == pytest.approx(6.0)
    # Staircase (1,3) (2,2) (3,1): dominated unit cells of the 3x3 grid are 1 + 2 + 3 = 6.
    stairs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(stairs, ref) == pytest.approx(6.0)
    assert hypervolume(stairs[::-1], ref) == pytest.approx(6.0)
    # A dominated point and a duplicate add nothing.
    assert hypervolume(np.vstack([stairs, [[2.5, 2.5]], stairs[:1]]), ref) == pytest.approx(6.0)
    # Points outside the reference box, or on its edge, add nothing.
    assert hypervolume(np.vstack([stairs, [[5.0, 0.0]], [[0.0, 4.0]], [[4.0, 0.0]]]), ref) == pytest.approx(6.0)
    assert hypervolume(np.array([[5.0, 5.0]]), ref) == 0.0
    assert hypervolume(np.zeros((0, 2)), ref) == 0.0


def test_hypervolume_rejects_other_dimensions() -> None:
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume(np.zeros((3, 3)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="ref"):
        hypervolume(np.zeros((3, 2)), (1.0,))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_monte_carlo(seed: int) -> None:
    rng = np.random.default_rng(seed)
    F = rng.uniform(0.0, 1.0, size=(int(rng.integers(1, 12)), 2))
    ref = np.array([1.1, 1.2])
    samples = rng.uniform(0.0, 1.0, size=(200_000, 2)) * ref
    covered = np.zeros(len(samples), dtype=bool)
    for p in F:
        covered |= np.all(samples >= p, axis=1)
    box = float(ref[0] * ref[1])
    p_hat = covered.mean()
    se = box * math.sqrt(max(p_hat * (1 - p_hat), 1e-6) / len(samples))
    assert hypervolume(F, ref) == pytest.approx(box * p_hat, abs=5 * se)
