"""poise.algo.stats and compute.estimated_flops on hand-made numbers whose answers are known exactly."""

import math

import numpy as np
import pytest

from poise.train.compute import COUNTERS, estimated_flops
from poise.algo.stats import (bootstrap_mean_ci, hierarchical_bootstrap, hierarchical_means, paired_difference,
                         percentile_interval, ratio_ci, resample_weights)


def test_percentile_interval_is_numpy_linear_quantile_and_keeps_inf():
    r = np.arange(101.0)
    assert percentile_interval(r, 0.9) == pytest.approx((5.0, 95.0))
    x = np.random.default_rng(1).normal(size=57)
    assert percentile_interval(x) == pytest.approx(tuple(np.quantile(x, [0.025, 0.975])), abs=1e-12)
    assert percentile_interval([1.0, 2.0, np.inf, np.inf], 0.5) == (1.75, math.inf)  # "not reached" stays inf
    assert percentile_interval([np.inf] * 3) == (math.inf, math.inf)
    assert percentile_interval([1.0, np.nan, 1.0]) == (1.0, 1.0)  # an undefined replicate is left out
    with pytest.raises(ValueError, match="empty"):
        percentile_interval([np.nan])


def test_resample_weights_count_draws_with_replacement():
    w = resample_weights(np.random.default_rng(0), 5, 300)
    assert w.shape == (300, 5) and np.allclose(w.sum(1), 1.0)
    assert np.allclose(w * 5, np.round(w * 5))  # each weight is (times drawn) / n
    idx = np.random.default_rng(0).integers(0, 5, size=(300, 5))  # the same draws, as indices
    x = np.array([0.1, 0.7, 0.2, 0.9, 0.4])
    assert np.allclose(w @ x, x[idx].mean(1))


def test_bootstrap_of_a_constant_or_a_single_value_has_zero_width():
    assert bootstrap_mean_ci([0.3] * 20) == pytest.approx((0.3, 0.3, 0.3))
    assert bootstrap_mean_ci([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci([1.0, float("nan")])


def test_bootstrap_two_values_hand_checked():
    """Two values 0 and 1: a replicate's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4."""
    mean, lo, hi = bootstrap_mean_ci([0.0, 1.0], n_boot=4000, seed=3)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)
    _, lo, hi = bootstrap_mean_ci([0.0, 1.0], level=0.4, n_boot=4000, seed=3)
    assert lo == hi == 0.5  # the middle 40% all lies on 0.5 (probability 1/2 around the median)


def test_bootstrap_width_matches_the_normal_theory_width():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=400)
    mean, lo, hi = bootstrap_mean_ci(x, n_boot=4000, seed=1)
    expected = 2 * 1.96 * x.std(ddof=1) / math.sqrt(400)
    assert abs((hi - lo) - expected) < 0.15 * expected and lo < mean < hi
    assert bootstrap_mean_ci(x, n_boot=500, seed=5) == bootstrap_mean_ci(x, n_boot=500, seed=5)  # deterministic


def test_bootstrap_mean_with_inf_costs():
    mean, lo, hi = bootstrap_mean_ci([10.0, math.inf], n_boot=1000)
    assert mean == math.inf and lo == 10.0 and hi == math.inf


def test_paired_difference_constant_shift_and_identical_inputs():
    before = np.random.default_rng(2).uniform(size=50)
    d = paired_difference(before, before + 0.125)
    assert d["mean"] == pytest.approx(0.125) and d["lo"] == pytest.approx(0.125) and d["hi"] == pytest.approx(0.125)
    assert d["se"] == pytest.approx(0.0, abs=1e-12) and d["n"] == 50
    assert d["mean_after"] - d["mean_before"] == pytest.approx(0.125)
    same = paired_difference(before, before)
    assert same["mean"] == same["lo"] == same["hi"] == 0.0
    assert math.isnan(paired_difference([0.5], [1.0])["se"]) and paired_difference([0.5], [1.0])["lo"] == 0.5
    with pytest.raises(ValueError, match="pair"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="before is empty"):
        paired_difference([], [])


def test_paired_difference_hand_checked_se():
    d = paired_difference([0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0])  # d = 0, 1, 0, 1
    assert d["mean"] == 0.5 and d["se"] == pytest.approx(math.sqrt(1 / 3) / 2)  # sd = sqrt(1/3), n = 4
    assert 0.0 <= d["lo"] < 0.5 < d["hi"] <= 1.0


def test_ratio_of_constants_and_independent_resampling():
    assert ratio_ci([6.0, 6.0, 6.0], [2.0, 2.0]) == pytest.approx((3.0, 3.0, 3.0))
    r, lo, hi = ratio_ci([1.0, 3.0], [2.0], n_boot=4000)
    assert r == 1.0 and (lo, hi) == (0.5, 1.5)  # num's replicate mean is 1, 2 or 3; den is always 2
    assert ratio_ci([1.0], [0.0])[0] == math.inf and ratio_ci([1.0], [math.inf])[0] == 0.0


def test_hierarchical_means_is_the_mean_over_resampled_seeds_and_problems():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(3, 2, 7))  # (S, C, N)
    u, w = resample_weights(rng, 3, 50), resample_weights(rng, 7, 50)
    m = hierarchical_means(x, u, w)
    assert m.shape == (50, 2)
    b = 17  # replicate 17 by hand: expand the weights back into draws
    seeds = np.repeat(np.arange(3), np.round(u[b] * 3).astype(int))
    probs = np.repeat(np.arange(7), np.round(w[b] * 7).astype(int))
    assert m[b] == pytest.approx(x[seeds][:, :, probs].mean(axis=(0, 2)))
    with pytest.raises(ValueError, match="seed weights"):
        hierarchical_means(x, w, w)


def test_hierarchical_bootstrap_with_identical_seeds_is_the_problem_only_interval():
    row = np.random.default_rng(5).uniform(size=30)
    matrix = np.stack([row, row, row, row])
    assert hierarchical_bootstrap(matrix, n_boot=800, seed=9) == pytest.approx(
        bootstrap_mean_ci(row, n_boot=800, seed=9), abs=1e-12)
    single = hierarchical_bootstrap(row[None, :], n_boot=800, seed=9)  # one seed: also problem-only
    assert single == pytest.approx(bootstrap_mean_ci(row, n_boot=800, seed=9), abs=1e-12)


def test_hierarchical_bootstrap_seed_spread_widens_the_interval():
    row = np.random.default_rng(6).uniform(size=30)
    shifted = np.stack([row - 0.2, row, row + 0.2])
    _, lo0, hi0 = hierarchical_bootstrap(np.stack([row] * 3), seed=1)
    mean, lo, hi = hierarchical_bootstrap(shifted, seed=1)
    assert mean == pytest.approx(row.mean()) and hi - lo > 1.5 * (hi0 - lo0)


def test_shared_problem_weights_keep_a_paired_design_paired():
    """Two methods with identical per-problem values: with one problem draw shared, every replicate of the difference
    is exactly 0; with independent draws it is not."""
    rng = np.random.default_rng(7)
    a = rng.uniform(size=(1, 40))
    w = resample_weights(rng, 40, 1000)
    u = np.ones((1000, 1))
    diff = hierarchical_means(a, u, w) - hierarchical_means(a.copy(), u, w)
    assert percentile_interval(diff) == (0.0, 0.0)
    other = hierarchical_means(a, u, resample_weights(rng, 40, 1000))
    lo, hi = percentile_interval(hierarchical_means(a, u, w) - other)
    assert lo < -0.01 and hi > 0.01
    shared = hierarchical_bootstrap(a, n_boot=1000, problem_weights=w)
    assert shared[1:] == percentile_interval(hierarchical_means(a, u, w))


def test_estimated_flops_on_hand_made_counters():
    totals = {k: 0.0 for k in COUNTERS}
    totals.update(prompt_tokens=10, generated_tokens=20, forward_tokens_policy=30, forward_tokens_reference=5,
                  forward_tokens_critic=7, backward_tokens_policy=11, backward_tokens_critic=3)
    # 2*100*(10+20+30+5) + 2*50*7 + 4*100*11 + 4*50*3 = 13000 + 700 + 4400 + 600
    assert estimated_flops(totals, 100, 50) == 18700.0
    assert estimated_flops(totals, 100) == 2 * 100 * 65 + 4 * 100 * 11  # no critic
    del totals["backward_tokens_critic"]
    with pytest.raises(KeyError, match="backward_tokens_critic"):
        estimated_flops(totals, 100)
