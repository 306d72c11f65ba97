"""Statistics: t-intervals and paired t-tests against scipy.stats, Holm's adjustment by hand, and the bootstrap's
intervals and p-values on samples whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from peftbench.report import stats
from peftbench.report.forgetting import loss_distributions

pytestmark = pytest.mark.fast


def _mean_of(values: np.ndarray):
    """The statistic "mean over the chosen examples of the chosen seeds" of values [seeds, examples]: one figure."""

    def statistic(seeds: np.ndarray, examples: np.ndarray) -> np.ndarray:
        return values[seeds[:, :, None], examples].mean(axis=(1, 2))[None, :]

    return statistic


def _interval(values: np.ndarray) -> stats.Interval:
    full, distribution = stats.bootstrap_distribution(_mean_of(values), *values.shape)
    (interval,) = stats.intervals(full, distribution)
    return interval


# ---------------------------------------------------------------------------------------------- t-intervals


@pytest.mark.parametrize("values", [[0.31, 0.29, 0.35], [1.0, 2.0], [5.0, 4.0, 6.5, 5.5, 4.5, 7.0]])
def test_estimate_is_the_mean_and_scipys_t_interval(values):
    estimate = stats.estimate(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert estimate.n == len(values)
    assert estimate.mean == pytest.approx(sum(values) / len(values))
    assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-12)


def test_estimate_at_another_confidence_is_narrower():
    values = [0.2, 0.4, 0.3, 0.5]
    assert stats.estimate(values, confidence=0.8).half_width < stats.estimate(values).half_width


def test_estimate_of_one_value_has_no_interval_and_of_none_is_an_error():
    estimate = stats.estimate([0.7])
    assert estimate.half_width is None and estimate.low == estimate.high == 0.7
    with pytest.raises(ValueError):
        stats.estimate([])


def test_paired_t_p_is_scipys_and_handles_constant_differences():
    a, b = [0.30, 0.35, 0.32, 0.40], [0.28, 0.30, 0.33, 0.31]
    assert stats.paired_t_p(a, b) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert stats.paired_t_p(a, a) == 1.0  # no difference at all
    assert stats.paired_t_p([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == 0.0  # the same difference every time
    assert stats.paired_t_p([1.0], [0.0]) == 1.0  # one pair tests nothing


# ---------------------------------------------------------------------------------------------- Holm


def test_holm_by_hand():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (never below the previous).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_is_capped_at_one_and_monotone():
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([0.3, 0.9, 0.4]) == pytest.approx([0.9, 0.9, 0.9])
    p_values = [0.001, 0.2, 0.04, 0.04, 0.7, 0.012]
    adjusted = stats.holm(p_values)
    ordered = [adjusted[i] for i in np.argsort(p_values, kind="stable")]
    assert ordered == sorted(ordered)  # in the order of the raw p-values, never decreasing
    assert all(p <= q <= 1.0 for p, q in zip(p_values, adjusted, strict=True))
    assert stats.holm([0.02]) == [0.02]  # one comparison: nothing to adjust


# ---------------------------------------------------------------------------------------------- bootstrap


def test_one_seed_bootstrap_is_scipys_percentile_interval():
    values = np.random.default_rng(5).normal(0.3, 0.1, size=40)
    interval = _interval(values[None, :])
    expected = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=stats.RESAMPLES, method="percentile", rng=np.random.default_rng(0)
    ).confidence_interval
    assert interval.value == pytest.approx(values.mean())
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), rel=1e-9)


@pytest.mark.parametrize("seeds", [1, 3])
def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_examples(seeds):
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 0.1, size=(seeds, 15)), rng.normal(0.3, 0.1, size=(seeds, 600))
    narrow, wide = _interval(large), _interval(small)
    for values, interval in ((small, wide), (large, narrow)):
        assert interval.value == pytest.approx(values.mean())
        assert interval.low < interval.value < interval.high
    assert narrow.width < wide.width / 3  # sqrt(600 / 15) = 6.3 times narrower, give or take the resampling


def test_several_seeds_carry_the_noise_between_seeds():
    """Seeds whose means differ: the crossed bootstrap's interval is wider than the examples' noise alone."""
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 0.05, size=(4, 200)) + np.array([[0.1], [0.3], [0.2], [0.4]])
    pooled = _interval(values.reshape(1, -1))  # as if one seed: examples only
    assert _interval(values).width > 3 * pooled.width


def test_identical_seeds_give_the_interval_of_one():
    """Three seeds that score every example alike carry no training noise: the test set's noise is not divided by
    three (resampling the examples anew per seed would narrow the interval by 1 / sqrt(3))."""
    values = np.random.default_rng(7).normal(0.3, 0.1, size=40)
    one, three = _interval(values[None, :]), _interval(np.stack([values] * 3))
    assert three.width == pytest.approx(one.width, rel=0.1)


def _covers(seeds: int, simulations: int, rng: np.random.Generator) -> float:
    """Share of simulated comparisons whose 95% interval covers the true mean score: each example has its own
    difficulty (sd 0.1), each seed its own offset (sd 0.02), each seed x example its own noise (sd 0.03); 32 examples,
    as the default test split. The truth is the method's mean over examples and seeds; with one seed, the trained
    model's mean over examples (one seed cannot show the noise between seeds, and the verdict says so)."""
    hits = 0
    for index in range(simulations):
        offsets = rng.normal(0, 0.02, size=(seeds, 1))
        truth = 0.3 + (offsets[0, 0] if seeds == 1 else 0.0)
        values = 0.3 + rng.normal(0, 0.1, size=(1, 32)) + offsets + rng.normal(0, 0.03, size=(seeds, 32))
        full, distribution = stats.bootstrap_distribution(_mean_of(values), seeds, 32, 1000, random_seed=index)
        (interval,) = stats.intervals(full, distribution)
        hits += interval.low <= truth <= interval.high
    return hits / simulations


@pytest.mark.parametrize("seeds", [1, 3])
def test_interval_coverage_is_nominal_by_simulation(seeds):
    """The 95% interval covers the truth in 95% of simulated test sets, give or take the simulation's own error (1000
    simulations: +-0.014 at two standard errors) and the percentile bootstrap's shortfall with 32 examples, 3 seeds."""
    coverage = _covers(seeds, 1000, np.random.default_rng(seeds))
    assert 0.90 <= coverage <= 0.98, coverage


def test_bootstrap_is_seeded():
    values = np.random.default_rng(3).normal(size=(2, 30))
    assert _interval(values) == _interval(values)


def test_bootstrap_p_by_hand_and_in_range():
    distribution = np.array(
        [
            [-1.0, 1.0, 2.0, 3.0],  # one of four at or below zero: p = 2 x (1 + 1) / (4 + 1)
            [1.0, 2.0, 3.0, 4.0],  # none: p = 2 x 1 / 5, the floor for 4 resamples, not 0
            [0.0, 0.0, 0.0, 0.0],  # all zero: p = 1
            [-2.0, -1.0, 1.0, 2.0],  # half each side: p = 1
        ]
    )
    assert stats.bootstrap_p(distribution).tolist() == pytest.approx([0.8, 0.4, 1.0, 1.0])
    random = np.random.default_rng(4).normal(0.1, 1.0, size=(20, 500))
    p = stats.bootstrap_p(random)
    assert ((p >= 0) & (p <= 1)).all()


def test_one_sided_p_by_hand_and_never_zero():
    distribution = np.array([[-1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    assert stats.one_sided_p(distribution, 0.0).tolist() == pytest.approx([2 / 5, 1 / 5])
    assert stats.one_sided_p(distribution, 1.5).tolist() == pytest.approx([3 / 5, 2 / 5])  # "above 1.5"
    far = np.full((1, stats.RESAMPLES), 10.0)
    assert stats.one_sided_p(far, 0.0)[0] == pytest.approx(1 / (stats.RESAMPLES + 1))


def test_bootstrap_p_of_a_real_difference_is_small():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.40, 0.1, size=80), rng.normal(0.30, 0.1, size=80)
    both = np.stack([a, b])

    def difference(seeds: np.ndarray, examples: np.ndarray) -> np.ndarray:
        chosen = both[:, examples[:, 0, :]]  # one seed: [methods, resamples, examples]
        return (chosen[0] - chosen[1]).mean(axis=1)[None, :]

    full, distribution = stats.bootstrap_distribution(difference, 1, len(a))
    assert full[0] == pytest.approx(a.mean() - b.mean())
    assert stats.bootstrap_p(distribution)[0] < 0.01


def test_forgetting_interval_matches_an_independent_paired_bootstrap():
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 40, size=(1, 60)).astype(float)
    base = tokens * rng.uniform(2.0, 4.0, size=(1, 60))
    trained = base + tokens * rng.normal(0.3, 0.5, size=(1, 60))  # forgets 0.3 nats/token, noisily per text
    losses = loss_distributions({"base": base, "full": trained}, {"base": tokens, "full": tokens})
    change = losses["full"][1] - losses["base"][1]
    # By hand: resample texts with replacement, the same texts for both rows; the ratio of sums each time.
    draws = rng.integers(0, 60, size=(4000, 60))
    by_hand = trained[0][draws].sum(1) / tokens[0][draws].sum(1) - base[0][draws].sum(1) / tokens[0][draws].sum(1)
    assert losses["full"][0] - losses["base"][0] == pytest.approx((trained.sum() - base.sum()) / tokens.sum())
    low, high = np.percentile(change, [2.5, 97.5])
    expected_low, expected_high = np.percentile(by_hand, [2.5, 97.5])
    assert low == pytest.approx(expected_low, abs=0.1 * (expected_high - expected_low))
    assert high == pytest.approx(expected_high, abs=0.1 * (expected_high - expected_low))
