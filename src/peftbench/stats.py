"""Statistics for several seeds: mean, 95% confidence interval from the t-distribution, and an overlap test.

No scipy: the t-distribution's CDF for an integer number of degrees of freedom has a closed form (Abramowitz and
Stegun 26.7.3-4), and its quantile is found by bisection on it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df (a positive integer) degrees of freedom."""
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    # A = P(|T| <= |t|) as a finite series in cos^2(theta); odd and even df have different series.
    term, series = 1.0, 1.0
    if df % 2 == 0:
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        inside = sin * series
    else:
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        inside = 2 / math.pi * (theta + (sin * math.cos(theta) * series if df > 1 else 0.0))
    return 0.5 + math.copysign(inside / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The t such that P(T <= t) = p, for 0.5 <= p < 1 (bisection to machine precision)."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    """A mean over n runs with the half-width of its confidence interval (None with fewer than two runs)."""

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
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, None, len(values))
    standard_error = statistics.stdev(values) / math.sqrt(len(values))
    return Estimate(mean, t_quantile((1 + confidence) / 2, len(values) - 1) * standard_error, len(values))


def overlaps(a: Estimate, b: Estimate) -> bool:
    """Whether the two intervals share a point; a single run counts as the interval of its one value."""
    return a.low <= b.high and b.low <= a.high
