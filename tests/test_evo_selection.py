"""Neighbourhoods, preferences, Tchebycheff/MOEA-D replacement and NSGA-II selection on tiny populations."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from easlurm.evo import EvoError
from easlurm.evo.pareto import crowding_distance, non_dominated_sort
from easlurm.evo.selection import (
    MoeadState,
    assign_slots_by_f1,
    moead_replace,
    neighbourhoods,
    nsga2_select,
    tchebycheff,
    uniform_preferences,
)


def test_neighbourhoods() -> None:
    assert neighbourhoods(5) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert neighbourhoods(3) == [[0, 1, 2]] * 3
    assert neighbourhoods(2) == [[0, 1], [0, 1]]
    assert neighbourhoods(1) == [[0]]
    assert neighbourhoods(7, size=5)[0] == [0, 1, 2, 3, 4]
    assert neighbourhoods(7, size=5)[3] == [1, 2, 3, 4, 5]
    assert neighbourhoods(7, size=5)[6] == [2, 3, 4, 5, 6]
    for i, b in enumerate(neighbourhoods(9)):
        assert i in b and len(b) == 3
    with pytest.raises(EvoError):
        neighbourhoods(0)


def test_uniform_preferences() -> None:
    w = uniform_preferences(5)
    assert w.shape == (5, 2)
    np.testing.assert_allclose(w[:, 0], [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(w[:, 1], [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert uniform_preferences(1).tolist() == [[1.0, 0.0]]
    assert uniform_preferences(2).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_tchebycheff_hand_values() -> None:
    # f=(2,3), w=(.5,.5), z_min=(1,1), z_max=(4,5): max(.5*1/3.00001, .5*2/4.00001) = 0.2499994...
    assert tchebycheff([2, 3], [0.5, 0.5], [1, 1], [4, 5]) == pytest.approx(0.5 * 2 / 4.00001, rel=1e-12)
    # A zero range stays finite thanks to eps: |3-1| / (0 + 1e-5) = 2e5.
    assert tchebycheff([3, 1], [1, 0], [1, 1], [1, 1]) == pytest.approx(2e5)
    with pytest.raises(EvoError, match="shape"):
        tchebycheff([1, 2], [1, 0, 0], [0, 0], [1, 1])


def test_moead_replace_hand_example() -> None:
    weights = uniform_preferences(3)  # (1,0) (.5,.5) (0,1)
    pop_F = np.array([[1.0, 5.0], [2.0, 3.0], [4.0, 1.0]])
    state = MoeadState.from_population(pop_F)
    assert state.z_min.tolist() == [1.0, 1.0] and state.z_max.tolist() == [4.0, 5.0]
    # Child (1.5, 2) lies inside the box, so z is unchanged; ranges are 3+1e-5 and 4+1e-5.
    #   j=0 w=(1,0):   g_child = .5/3.00001 = .1667   g_pop = 0/3 = 0            -> keep
    #   j=1 w=(.5,.5): g_child = max(.0833, .5/4.00001=.125)
    #                  g_pop   = max(.5/3.00001=.1667, 1/4.00001=.25) = .25      -> replace
    #   j=2 w=(0,1):   g_child = 1/4.00001 = .25           g_pop = 0            -> keep
    assert moead_replace([1.5, 2.0], pop_F, weights, [0, 1, 2], state) == [1]
    assert state.z_min.tolist() == [1.0, 1.0] and state.z_max.tolist() == [4.0, 5.0]


def test_moead_updates_ideal_and_nadir_before_comparing() -> None:
    weights = uniform_preferences(3)
    pop_F = np.array([[1.0, 5.0], [2.0, 3.0], [4.0, 1.0]])
    state = MoeadState.from_population(pop_F)
    pop_before = pop_F.copy()
    # Child (0.5, 6) moves z_min to (.5, 1) and z_max to (4, 6); ranges 3.5 and 5.
    #   j=0 w=(1,0):   g_child = 0            g_pop = .5/3.50001 = .1429  -> replace
    #     (with the old z_min=1 it would be g_child = .5/3 > 0 = g_pop: the update order matters)
    #   j=1 w=(.5,.5): g_child = max(0, .5*5/5.00001) = .5   g_pop = max(.5*1.5/3.5, .5*2/5) = .2143 -> keep
    #   j=2 w=(0,1):   g_child = 5/5.00001 = 1               g_pop = 0  -> keep
    assert moead_replace([0.5, 6.0], pop_F, weights, [0, 1, 2], state) == [0]
    assert state.z_min.tolist() == [0.5, 1.0] and state.z_max.tolist() == [4.0, 6.0]
    np.testing.assert_array_equal(pop_F, pop_before)
    # A rejected child still widens the nadir, as in the reference.
    assert moead_replace([9.0, 9.0], pop_F, weights, [0, 1, 2], state) == []
    assert state.z_max.tolist() == [9.0, 9.0]


def test_moead_child_better_in_both_replaces_all_neighbours() -> None:
    pop_F = np.array([[1.0, 9.0], [2.0, 6.0], [3.0, 4.0], [5.0, 2.0], [8.0, 1.0]])
    weights = uniform_preferences(5)
    state = MoeadState.from_population(pop_F)
    child = np.array([1.5, 1.5])  # dominates members 1, 2 and 3
    b = neighbourhoods(5)[2]
    assert b == [1, 2, 3]
    assert moead_replace(child, pop_F, weights, b, state) == [1, 2, 3]
    # The same child judged from member 0's neighbourhood: slot 0 (pure L1, f1=1 < 1.5) keeps its incumbent.
    assert moead_replace(child, pop_F, weights, neighbourhoods(5)[0], MoeadState.from_population(pop_F)) == [1, 2]


def test_moead_state_roundtrip_and_validation() -> None:
    state = MoeadState.from_population(np.array([[1.0, 2.0], [3.0, 0.5]]))
    again = MoeadState.from_dict(state.to_dict())
    assert again.z_min.tolist() == [1.0, 0.5] and again.z_max.tolist() == [3.0, 2.0]
    state.update(np.array([[0.0, 0.0], [5.0, 5.0]]))
    assert state.z_min.tolist() == [0.0, 0.0] and state.z_max.tolist() == [5.0, 5.0]
    with pytest.raises(EvoError, match="non-finite"):
        state.update([np.nan, 1.0])
    with pytest.raises(EvoError, match="exceeds"):
        MoeadState(np.array([2.0, 0.0]), np.array([1.0, 1.0]))
    with pytest.raises(EvoError, match="out of range"):
        moead_replace([1.0, 1.0], np.ones((3, 2)), uniform_preferences(3), [0, 3],
                      MoeadState.from_population(np.ones((3, 2))))


# ---------------------------------------------------------------- NSGA-II


def test_nsga2_child_better_in_both_enters_first_front_and_is_selected() -> None:
    pop_F = np.array([[1.0, 9.0], [2.0, 6.0], [3.0, 4.0], [5.0, 2.0], [8.0, 1.0]])
    pool = np.vstack([pop_F, [[1.5, 1.5]]])  # row 5 = the child
    assert 5 in non_dominated_sort(pool)[0].tolist()
    kept = nsga2_select(pool, 5)
    assert 5 in kept.tolist()
    # Front 0 = {0, 4, 5} (3 rows), front 1 = {1, 2, 3}; two of front 1 are kept, the boundaries (inf) 1 and 3.
    assert kept.tolist() == [0, 1, 3, 4, 5]


def test_nsga2_truncates_last_front_by_crowding_then_index() -> None:
    # One front of 5 points on a line; keep 3: the two boundaries (inf) and the most isolated interior point.
    F = np.array([[0.0, 10.0], [1.0, 9.0], [2.0, 8.0], [6.0, 4.0], [10.0, 0.0]])
    # Interior distances (both ranges 10): row1 (2+2)/10=.4, row2 (5+5)/10=1.0, row3 (8+8)/10=1.6
    assert nsga2_select(F, 3).tolist() == [0, 3, 4]
    # Equal distances: the lower index wins. Rows 1 and 2 are symmetric here (each .8).
    G = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    assert nsga2_select(G, 3).tolist() == [0, 1, 3]
    assert nsga2_select(G, 0).tolist() == []
    assert nsga2_select(G, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(EvoError, match="cannot keep"):
        nsga2_select(G, 5)


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.integers(1, 20))
    vals = draw(st.lists(st.integers(0, 6), min_size=2 * n, max_size=2 * n))
    keep = draw(st.integers(0, n))
    return np.array(vals, dtype=float).reshape(n, 2), keep


@settings(max_examples=150, deadline=None)
@given(pools())
def test_nsga2_select_properties(args: tuple[np.ndarray, int]) -> None:
    F, keep = args
    kept = nsga2_select(F, keep)
    assert len(kept) == keep == len(set(kept.tolist()))
    rank = {}
    for r, front in enumerate(non_dominated_sort(F)):
        for i in front.tolist():
            rank[i] = r
    dropped = [i for i in range(len(F)) if i not in set(kept.tolist())]
    if keep and dropped:
        worst_kept = max(rank[i] for i in kept.tolist())
        assert all(rank[d] >= worst_kept for d in dropped)
        # Inside the split front, no dropped row is more crowded-distance-valuable than a kept one.
        front = non_dominated_sort(F)[worst_kept]
        cd = dict(zip(front.tolist(), crowding_distance(F[front]).tolist()))
        kept_here = [i for i in kept.tolist() if rank[i] == worst_kept]
        dropped_here = [d for d in dropped if rank[d] == worst_kept]
        for k in kept_here:
            for d in dropped_here:
                assert cd[k] > cd[d] or (cd[k] == cd[d] and k < d)


def test_assign_slots_by_f1() -> None:
    F = np.array([[3.0, 1.0], [1.0, 5.0], [2.0, 2.0], [1.0, 4.0], [2.0, 2.0]])
    # f1 ascending; f1 tie (rows 1, 3) broken by f2; full tie (rows 2, 4) by index.
    assert assign_slots_by_f1(F).tolist() == [3, 1, 2, 4, 0]
    assert assign_slots_by_f1(np.zeros((0, 2))).tolist() == []
