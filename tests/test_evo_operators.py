"""SBX crossover, Gaussian weight mutation and partner choice on tiny state dicts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from easlurm.evo import EvoError
from easlurm.evo.operators import (
    choose_partner,
    gaussian_mutation,
    is_weight_key,
    sbx_child,
    sbx_child_with_u,
    sbx_u_to_beta,
)


def make_genome(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv_first.weight": torch.randn(16, 3, 3, 3, generator=g, dtype=dtype),
        "conv_first.bias": torch.randn(16, generator=g, dtype=dtype),
        "body.0.conv.weight": torch.randn(32, 16, 3, 3, generator=g, dtype=dtype),
        "body.0.conv.bias": torch.randn(32, generator=g, dtype=dtype),
        "prelu.weight": torch.randn(1, generator=g, dtype=dtype),
        "steps": torch.tensor([seed, 7], dtype=torch.int64),
        "fc.weight": torch.randn(10, 32, generator=g, dtype=dtype),
    }


def clone(genome: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in genome.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- SBX


def test_beta_formula_both_branches() -> None:
    # u <= .5: (2u)^(1/(eta+1)).  u=.125, eta=2 -> .25^(1/3);  u=.25, eta=1 -> sqrt(.5).
    assert sbx_u_to_beta(0.125, 2.0) == pytest.approx(0.25 ** (1 / 3))
    assert sbx_u_to_beta(0.25, 1.0) == pytest.approx(math.sqrt(0.5))
    # u > .5: (1/(2(1-u)))^(1/(eta+1)).  u=.875, eta=2 -> 4^(1/3);  u=.75, eta=1 -> sqrt(2).
    assert sbx_u_to_beta(0.875, 2.0) == pytest.approx(4 ** (1 / 3))
    assert sbx_u_to_beta(0.75, 1.0) == pytest.approx(math.sqrt(2.0))
    assert sbx_u_to_beta(0.5, 20.0) == 1.0
    assert sbx_u_to_beta(0.0, 20.0) == 0.0
    # Symmetry of the two branches: beta(u) * beta(1 - u) = 1.
    for u in (0.01, 0.2, 0.37, 0.49):
        assert sbx_u_to_beta(u, 20.0) * sbx_u_to_beta(1 - u, 20.0) == pytest.approx(1.0)
    with pytest.raises(EvoError, match="u must"):
        sbx_u_to_beta(1.0, 20.0)
    with pytest.raises(EvoError, match="eta"):
        sbx_u_to_beta(0.3, -1.0)


def test_sbx_u_half_returns_first_parent_exactly() -> None:
    p1, p2 = make_genome(1), make_genome(2)
    n_genes = sum(1 for v in p1.values() if v.is_floating_point())
    child = sbx_child_with_u(p1, p2, 20.0, [0.5] * n_genes)
    assert_same(child, p1)
    assert child["conv_first.weight"] is not p1["conv_first.weight"]


def test_sbx_child_formula_and_pair_mean() -> None:
    p1, p2 = make_genome(1, torch.float64), make_genome(2, torch.float64)
    us = [0.05, 0.3, 0.5, 0.7, 0.95, 0.61]  # one per float tensor, in key order (int "steps" skipped)
    c1 = sbx_child_with_u(p1, p2, 2.0, us)
    c2 = sbx_child_with_u(p2, p1, 2.0, us)  # the pair's second offspring
    floats = [k for k, v in p1.items() if v.is_floating_point()]
    for key, u in zip(floats, us):
        beta = (2 * u) ** (1 / 3) if u <= 0.5 else (1 / (2 * (1 - u))) ** (1 / 3)
        expected = 0.5 * ((1 + beta) * p1[key] + (1 - beta) * p2[key])
        torch.testing.assert_close(c1[key], expected)
        torch.testing.assert_close((c1[key] + c2[key]) / 2, (p1[key] + p2[key]) / 2)
    assert torch.equal(c1["steps"], p1["steps"])
    assert list(c1) == list(p1)


def test_sbx_child_draws_one_u_per_float_tensor_in_key_order() -> None:
    p1, p2 = make_genome(3), make_genome(4)
    before1, before2 = clone(p1), clone(p2)
    child, us = sbx_child(p1, p2, 20.0, np.random.default_rng(123))
    ref = np.random.default_rng(123)
    assert us == [ref.random() for _ in range(6)]
    assert_same(child, sbx_child_with_u(p1, p2, 20.0, us))
    child_again, us_again = sbx_child(p1, p2, 20.0, np.random.default_rng(123))
    assert us_again == us
    assert_same(child_again, child)
    assert_same(p1, before1)
    assert_same(p2, before2)
    # With eta = 20 the child stays close to p1 (beta within about 0.7..1.4 for most u).
    assert not torch.equal(child["fc.weight"], p1["fc.weight"])


def test_sbx_rejects_mismatched_parents() -> None:
    p1, p2 = make_genome(1), make_genome(2)
    del p2["fc.weight"]
    with pytest.raises(EvoError, match="fc.weight"):
        sbx_child(p1, p2, 20.0, np.random.default_rng(0))
    p3 = make_genome(2)
    p3["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(EvoError, match="fc.weight"):
        sbx_child(p1, p3, 20.0, np.random.default_rng(0))
    with pytest.raises(EvoError, match="one u per"):
        sbx_child_with_u(p1, make_genome(2), 20.0, [0.5])


# ---------------------------------------------------------------- mutation


def test_is_weight_key() -> None:
    assert is_weight_key("conv.weight", torch.zeros(4, 3, 3, 3))
    assert is_weight_key("fc.weight", torch.zeros(4, 3))
    assert not is_weight_key("conv.bias", torch.zeros(4))
    assert not is_weight_key("odd.bias", torch.zeros(4, 3))
    assert not is_weight_key("prelu.weight", torch.zeros(1))
    assert not is_weight_key("idx.weight", torch.zeros(4, 3, dtype=torch.int64))


def test_mutation_rate_biases_and_determinism() -> None:
    genome = make_genome(5)
    before = clone(genome)
    rate, sigma = 0.02, 0.03
    child, count = gaussian_mutation(genome, rate, sigma, torch.Generator().manual_seed(9))
    assert_same(genome, before)  # input untouched
    assert list(child) == list(genome)

    weight_keys = [k for k, v in genome.items() if is_weight_key(k, v)]
    assert weight_keys == ["conv_first.weight", "body.0.conv.weight", "fc.weight"]
    for k, v in genome.items():
        if k not in weight_keys:
            assert torch.equal(child[k], v), f"{k} must not be mutated"
    changed = sum(int((child[k] != genome[k]).sum()) for k in weight_keys)
    total = sum(genome[k].numel() for k in weight_keys)
    assert changed == count
    # Binomial(total, rate): within 5 standard deviations of the mean.
    sd = math.sqrt(total * rate * (1 - rate))
    assert abs(count - total * rate) < 5 * sd
    deltas = torch.cat([(child[k] - genome[k]).flatten() for k in weight_keys])
    deltas = deltas[deltas != 0]
    assert float(deltas.std()) == pytest.approx(sigma, rel=0.2)

    child2, count2 = gaussian_mutation(genome, rate, sigma, torch.Generator().manual_seed(9))
    assert_same(child2, child)
    assert count2 == count
    child3, _ = gaussian_mutation(genome, rate, sigma, torch.Generator().manual_seed(10))
    assert not torch.equal(child3["fc.weight"], child["fc.weight"])


def test_mutation_draw_order_is_cpu_mask_then_noise_per_weight() -> None:
    genome = make_genome(6, torch.float64)
    child, _ = gaussian_mutation(genome, 0.3, 0.5, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    for k, v in genome.items():
        if not is_weight_key(k, v):
            continue
        mask = torch.rand(v.shape, generator=g) < 0.3
        noise = torch.randn(v.shape, generator=g) * 0.5
        expected = v + torch.where(mask, noise, torch.zeros(())).to(torch.float64)
        assert torch.equal(child[k], expected), k


def test_mutation_extreme_rates_and_bad_args() -> None:
    genome = make_genome(7)
    same, n0 = gaussian_mutation(genome, 0.0, 0.03, torch.Generator().manual_seed(0))
    assert n0 == 0
    assert_same(same, genome)
    _, n1 = gaussian_mutation(genome, 1.0, 0.03, torch.Generator().manual_seed(0))
    assert n1 == sum(v.numel() for k, v in genome.items() if is_weight_key(k, v))
    with pytest.raises(EvoError, match="rate"):
        gaussian_mutation(genome, 1.5, 0.03, torch.Generator())
    with pytest.raises(EvoError, match="sigma"):
        gaussian_mutation(genome, 0.1, -1.0, torch.Generator())


# ---------------------------------------------------------------- partner choice


def test_choose_partner_neighbourhood_only_and_global_only() -> None:
    rng = np.random.default_rng(0)
    local = {choose_partner(0, 5, [0, 1, 2], 0.0, rng) for _ in range(200)}
    assert local == {1, 2}
    everyone = {choose_partner(2, 5, [1, 2, 3], 1.0, rng) for _ in range(400)}
    assert everyone == {0, 1, 3, 4}


def test_choose_partner_distribution_and_draw_order() -> None:
    # i=0, B = [0,1,2], p_global=.3: P(1) = .7*.5 + .3*.25 = .425, P(3) = P(4) = .3*.25 = .075.
    rng = np.random.default_rng(42)
    draws = np.array([choose_partner(0, 5, [0, 1, 2], 0.3, rng) for _ in range(20_000)])
    for j, p in {1: 0.425, 2: 0.425, 3: 0.075, 4: 0.075}.items():
        sd = math.sqrt(p * (1 - p) / len(draws))
        assert abs((draws == j).mean() - p) < 5 * sd
    # Documented order: one random() decides global vs local, then one integers() picks.
    ref = np.random.default_rng(7)
    r = ref.random()
    cands = [1, 2, 3, 4] if r < 0.3 else [1, 2]
    expected = cands[int(ref.integers(len(cands)))]
    assert choose_partner(0, 5, [0, 1, 2], 0.3, np.random.default_rng(7)) == expected


def test_choose_partner_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(EvoError, match="at least 2"):
        choose_partner(0, 1, [0], 0.3, rng)
    with pytest.raises(EvoError, match="out of range"):
        choose_partner(5, 5, [3, 4], 0.3, rng)
    with pytest.raises(EvoError, match="no other member"):
        choose_partner(0, 5, [0], 0.0, rng)
