"""Statistics: bootstrap intervals and paired tests over test examples (and seeds), Holm's correction for many
comparisons, and t-intervals and paired t-tests over seeds. scipy.stats does the resampling over examples, the t
quantiles and the t-tests; what it has no method for lives here: the crossed bootstrap over seeds and the examples they
share, p-values from a bootstrap distribution, and Holm's step-down adjustment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
RESAMPLES = 2000  # bootstrap resamples: intervals and p-values to about +-0.005 of their level
RANDOM_SEED = 0  # every bootstrap is seeded: the same results give the same intervals
ALPHA = 1 - CONFIDENCE
ONE_SIDED_ALPHA = ALPHA / 2  # a one-sided claim at the level of the 95% interval's lower end (as CONSORT's rule)


@dataclass(frozen=True)
class Estimate:
    """A mean over n runs with the half-width of its t confidence interval (None with fewer than two runs)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and t-based confidence interval: mean +- t((1 + confidence) / 2, n - 1) * sd / sqrt(n)."""
    if not values:
        raise ValueError("estimate needs at least one value")
    mean = float(np.mean(values))
    if len(values) < 2:
        return Estimate(mean, None, len(values))
    quantile = scipy_stats.t.ppf((1 + confidence) / 2, len(values) - 1)
    return Estimate(mean, float(quantile * scipy_stats.sem(values)), len(values))


def paired_t_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test (scipy.stats.ttest_rel); 1 where the differences are all equal."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(differences) < 2 or np.allclose(differences, differences[0]):
        return 1.0 if np.allclose(differences, 0) or len(differences) < 2 else 0.0
    return float(scipy_stats.ttest_rel(a, b).pvalue)


@dataclass(frozen=True)
class Interval:
    """A figure on the full sample and its bootstrap confidence interval (percentile method)."""

    value: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Difference:
    """A row's figure minus another's, with its two-sided interval and the p-value of a test about it (raw and
    Holm-adjusted): two-sided "it is not zero", or a one-sided claim (then alpha is ONE_SIDED_ALPHA)."""

    interval: Interval
    p: float
    p_holm: float
    alpha: float = ALPHA

    @property
    def significant(self) -> bool:
        return self.p_holm < self.alpha


# A statistic maps resampled indices to figures: (seeds [B, S], examples [B, S, N]) -> array [K, B]. The full sample
# is seeds = [0, 1, ..., S-1] and examples = [0, 1, ..., N-1] in every seed.
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _full_sample(seeds: int, examples: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(seeds)[None, :], np.broadcast_to(np.arange(examples), (1, seeds, examples))


def bootstrap_distribution(
    statistic: Statistic, seeds: int, examples: int, resamples: int = RESAMPLES, random_seed: int = RANDOM_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The statistic's figures on the full sample [K] and over bootstrap resamples [K, B].

    One seed: examples are resampled with scipy.stats.bootstrap, the same indices for every figure, so that figures
    of several methods (and their differences) are paired. Several seeds: a crossed bootstrap, since every seed is
    scored on the same test examples: each replicate draws S - 1 of the S seeds with replacement (so that the
    variance of their mean is the unbiased s^2 / S, not (S - 1) / S of it) and, once, the examples, and every chosen
    seed is read on those same examples. (Resampling examples anew within each seed would treat the seeds' test sets
    as independent samples and divide the test set's sampling noise by the number of seeds.)
    """
    rng = np.random.default_rng(random_seed)
    full = statistic(*_full_sample(seeds, examples))[:, 0]
    if seeds == 1:

        def over_examples(indices: np.ndarray, axis: int = -1) -> np.ndarray:
            indices = np.moveaxis(indices, axis, -1)
            flat = indices.reshape(-1, 1, examples)
            figures = statistic(np.zeros((len(flat), 1), dtype=int), flat)
            return figures.reshape(len(figures), *indices.shape[:-1])

        result = scipy_stats.bootstrap(
            (np.arange(examples),), over_examples, n_resamples=resamples, method="percentile", vectorized=True, rng=rng
        )
        return full, np.asarray(result.bootstrap_distribution).reshape(len(full), resamples)
    drawn = seeds - 1  # S - 1 draws from S seeds: the bootstrap variance of their mean is the unbiased s^2 / S
    chosen_seeds = rng.integers(0, seeds, size=(resamples, drawn))
    chosen_examples = rng.integers(0, examples, size=(resamples, 1, examples))
    return full, statistic(chosen_seeds, np.broadcast_to(chosen_examples, (resamples, drawn, examples)))


def intervals(full: np.ndarray, distribution: np.ndarray, confidence: float = CONFIDENCE) -> list[Interval]:
    """Percentile intervals of each figure."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(distribution, [tail, 100 - tail], axis=1)
    return [Interval(float(v), float(lo), float(hi)) for v, lo, hi in zip(full, low, high, strict=True)]


def bootstrap_p(distribution: np.ndarray) -> np.ndarray:
    """Two-sided p-value of "the difference is zero", for each row of a bootstrap distribution of differences: twice
    the smaller one-sided p-value (below zero or above it). Differences that are zero in every resample have p = 1."""
    below, above = one_sided_p(distribution, 0.0), one_sided_p(-distribution, 0.0)
    return np.where((distribution == 0).all(axis=1), 1.0, np.minimum(1.0, 2 * np.minimum(below, above)))


def one_sided_p(distribution: np.ndarray, bound: float) -> np.ndarray:
    """p-value of the claim "the figure lies above bound", for each row of a bootstrap distribution: (1 + k) / (B + 1)
    where k of the B resamples lie at or below it. The + 1 counts the observed sample as one of the resamples, so that
    a p-value is never 0: B resamples cannot show a smaller one (Davison and Hinkley, 1997, section 4.2)."""
    at_or_below = (distribution <= bound).sum(axis=1)
    return (1 + at_or_below) / (distribution.shape[1] + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the family-wise error of all the comparisons stays at the level tested."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()
