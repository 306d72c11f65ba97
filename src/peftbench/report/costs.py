"""Cost ratios with intervals: a method's inference time against the base model's (per latency round, paired), its
training throughput against an anchor method's (per steady-state step, paired by seed and batch), and its training
memory account. A ratio is a t-interval of the mean log ratio, exponentiated; a difference is claimed only where that
interval excludes 1, so that one noisy reading is never reported as a speed-up."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from peftbench.report.load import MethodRuns
from peftbench.report.stats import CONFIDENCE
from peftbench.store.records import INFERENCE_MODELS, LATENCY_PARTS, MethodResult

MODELS = INFERENCE_MODELS[1:]  # the trained model as trained, and its merged copy: each timed against the base
PARTS = dict(zip(LATENCY_PARTS, ("prefill", "per-token decode"), strict=True))  # latency_rounds' parts, as said
STATE = ("weights", "gradients", "optimizer")  # the training state: counted from the model and optimizer, exact
ACCOUNT = ("runtime", *STATE, "rest")  # train_memory's parts, which add up to the peak


@dataclass(frozen=True)
class Ratio:
    """A ratio (a geometric mean over samples) and its CONFIDENCE t-interval; paired: from paired samples (rounds,
    batches), else from two independent groups (Welch)."""

    value: float
    low: float
    high: float
    samples: int
    paired: bool = True

    @property
    def measurable(self) -> bool:
        """The interval excludes 1: a real difference at this confidence."""
        return self.low > 1 or self.high < 1

    @property
    def reach(self) -> float:
        """The largest deviation from 1 the interval still allows, as a share (0.03: within 3% either way)."""
        return max(self.high - 1, 1 - self.low)

    def text(self, of: str = "", note: str = "") -> str:
        """ "1.32x [1.28, 1.36]" ("1.32x full's [1.28, 1.36]" with of "full's"), or "no measurable difference
        (within ±3%)" where the interval includes 1; note goes in the parentheses."""
        if not self.measurable:
            versus = f" from {of}" if of else ""
            return f"no measurable difference{versus} (within ±{_percent(self.reach)}{'; ' + note if note else ''})"
        # Two decimals, three where two would round an end onto 1.00 (and hide that the interval excludes it).
        places = 2 if round(self.low, 2) > 1 or round(self.high, 2) < 1 else 3
        said = f"{self.value:.{places}f}x{' ' + of if of else ''} [{self.low:.{places}f}, {self.high:.{places}f}]"
        return said + (f" ({note})" if note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "samples": self.samples,
            "paired": self.paired,
            "measurable": self.measurable,
        }


def _percent(share: float) -> str:
    """A share as a percentage rounded up: whole percents from 1% on, tenths below (an interval never reads
    narrower than it is)."""
    percent = 100 * share
    shown = math.ceil(percent - 1e-9) if percent >= 1 else math.ceil(10 * percent - 1e-9) / 10
    return f"{shown:g}%"


def _ratio(estimate: float, interval, samples: int, paired: bool = True) -> Ratio:
    """exp of a mean log ratio and of its interval (a scipy ConfidenceInterval); without one (samples without
    spread: nothing to scale an interval by), the estimate at both ends."""
    low, high = (interval.low, interval.high) if interval is not None else (estimate, estimate)
    return Ratio(math.exp(estimate), math.exp(float(low)), math.exp(float(high)), samples, paired)


def one_sample_ratio(logs: Sequence[float]) -> Ratio | None:
    """The ratio whose per-sample logs these are (paired samples): t-interval of their mean (None with fewer than
    two)."""
    if len(logs) < 2:
        return None
    interval = scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE) if np.ptp(logs) > 0 else None
    return _ratio(float(np.mean(logs)), interval, len(logs))


def two_sample_ratio(over: Sequence[float], under: Sequence[float]) -> Ratio | None:
    """exp(mean(over) - mean(under)) with Welch's t-interval, for logs of two independent groups (None where a group
    has fewer than two)."""
    if len(over) < 2 or len(under) < 2:
        return None
    spread = np.ptp(over) > 0 or np.ptp(under) > 0
    welch = scipy_stats.ttest_ind(over, under, equal_var=False).confidence_interval(CONFIDENCE) if spread else None
    return _ratio(float(np.mean(over) - np.mean(under)), welch, len(over) + len(under), paired=False)


def log_ratios(mine: Sequence[float], base: Sequence[float]) -> list[float]:
    """Each pair's log(mine / base), paired by position (a round's two readings), where both are positive."""
    return [math.log(m / b) for m, b in zip(mine, base, strict=True) if m > 0 and b > 0]


def latency_ratio(results: Sequence[MethodResult], model: str, part: str) -> Ratio | None:
    """model's time over the base model's on one part of generation (PARTS), from every round of every result (seed):
    each round's log ratio pairs two models timed one after the other on the same prompt. None where fewer than two
    rounds timed both (older results have no rounds)."""
    logs = []
    for result in results:
        rounds = (result.efficiency.latency_rounds or {}).get(part, {}) if result.efficiency else {}
        if rounds.get(model) and rounds.get("base"):
            logs += log_ratios(rounds[model], rounds["base"])
    return one_sample_ratio(logs)


def latency_ratios(results: Sequence[MethodResult]) -> dict[str, dict[str, Ratio]]:
    """Every model's (MODELS) time over the base model's, per part of generation, where rounds measured it."""
    found: dict[str, dict[str, Ratio]] = {}
    for model in MODELS:
        for part in PARTS:
            ratio = latency_ratio(results, model, part)
            if ratio is not None:
                found.setdefault(model, {})[part] = ratio
    return found


def merged_problem(latency: Mapping[str, Mapping[str, Ratio]]) -> dict[str, Ratio]:
    """The parts where the merged copy's time differs measurably from the base model's (latency: latency_ratios').
    A merged adapter has the base model's architecture and weights' shapes, so it computes at the base model's speed:
    an interval that excludes 1 says the measurement differs in something besides the weights' values (where the
    copies' tensors lie in memory, the machine's state within rounds), not that merging sped anything up."""
    return {part: ratio for part, ratio in latency.get("merged", {}).items() if ratio.measurable}


def _steady_steps(result: MethodResult) -> dict[int, tuple[float, float]]:
    """The steady-state steps (Efficiency.steady_steps) with real tokens and time: index -> (tokens, seconds)."""
    steps = result.efficiency.train_steps if result.efficiency else None
    if not steps:
        return {}
    figures = {i: (steps["tokens"][i], steps["seconds"][i]) for i in result.efficiency.steady_steps()}
    return {i: (tokens, seconds) for i, (tokens, seconds) in figures.items() if tokens > 0 and seconds > 0}


def throughput_ratio(results: Sequence[MethodResult], anchor: Sequence[MethodResult]) -> Ratio | None:
    """Training tokens/s over the anchor's, at steady state. Methods of one seed train the same batches in the same
    order, so step i of both, where both are steady and trained the same number of tokens, is one batch: each such
    pair's log(anchor seconds / seconds) is a paired sample. Where fewer than two steps pair (different data), Welch's
    interval compares the steps' log(seconds per token) as independent groups. None without steps to compare."""
    by_seed = {r.config.get("seed"): r for r in anchor}
    logs = []
    for result in results:
        theirs = _steady_steps(by_seed[result.config.get("seed")]) if result.config.get("seed") in by_seed else {}
        for i, (tokens, seconds) in _steady_steps(result).items():
            if i in theirs and theirs[i][0] == tokens:
                logs.append(math.log(theirs[i][1] / seconds))
    if len(logs) >= 2:
        return one_sample_ratio(logs)
    per_token = [
        [math.log(seconds / tokens) for r in group for tokens, seconds in _steady_steps(r).values()]
        for group in (anchor, results)
    ]
    return two_sample_ratio(*per_token)


def memory_account(results: Sequence[MethodResult]) -> dict[str, int] | None:
    """The training memory account (ACCOUNT) in bytes, each part's mean over the results that recorded it, and its
    "peak" (their sum); None where none did (older results)."""
    accounts = [r.efficiency.train_memory for r in results if r.efficiency and r.efficiency.train_memory]
    if not accounts:
        return None
    mean = {part: round(float(np.mean([account[part] for account in accounts]))) for part in ACCOUNT}
    return mean | {"peak": sum(mean.values())}


def mean_peak(results: Sequence[MethodResult]) -> float | None:
    """The measured peak training memory, bytes, mean over the results that recorded one (None: none did)."""
    peaks = [r.efficiency.peak_train_memory_bytes for r in results if r.efficiency]
    return float(np.mean(peaks)) if peaks else None


@dataclass(frozen=True)
class MethodCosts:
    """What one method costs, each figure as the report states it: training against the anchor (the comparator;
    None for the anchor itself or where it did not run), inference against the base model."""

    method: str
    anchor: str | None
    speed: Ratio | None  # steady tokens/s over the anchor's
    steady_tokens_per_s: float | None  # the mean over results of Efficiency.steady_tokens_per_s
    steady_steps: int  # steady-state steps over all results
    step_spread: tuple[float, float] | None  # the 10th and 90th percentile of those steps' tokens/s
    latency: dict[str, dict[str, Ratio]]  # latency_ratios
    deployed: str  # "merged" where the method merges, else "unmerged"
    memory: dict[str, int] | None  # memory_account
    anchor_memory: dict[str, int] | None
    peak_over_anchor: float | None  # mean peak over the anchor's: one reading per seed, no interval

    @property
    def state(self) -> int | None:
        """The training state in bytes (weights + gradients + optimizer): counted, not sampled."""
        return sum(self.memory[part] for part in STATE) if self.memory else None

    @property
    def anchor_state(self) -> int | None:
        return sum(self.anchor_memory[part] for part in STATE) if self.anchor_memory else None

    @property
    def merged_problem(self) -> dict[str, Ratio]:
        return merged_problem(self.latency)

    def to_json(self) -> dict[str, Any]:
        """verdict.json's form: every ratio with its interval, samples and whether it is measurable."""
        return {
            "anchor": self.anchor,
            "training_speed": self.speed.to_json() if self.speed else None,
            "steady_tokens_per_s": self.steady_tokens_per_s,
            "steady_steps": self.steady_steps,
            "step_tokens_per_s_p10_p90": self.step_spread,
            "deployed": self.deployed,
            "latency_over_base": {
                model: {part: ratio.to_json() for part, ratio in parts.items()} for model, parts in self.latency.items()
            },
            "merged_problem": list(self.merged_problem),
            "training_state_bytes": self.state,
            "anchor_training_state_bytes": self.anchor_state,
            "train_memory": self.memory,
            "peak_over_anchor": self.peak_over_anchor,
        }


def method_costs(runs: MethodRuns, anchor: MethodRuns | None) -> MethodCosts:
    """One method's costs (anchor: the method its training is compared with; None or runs itself: not compared)."""
    results = runs.results
    anchor = None if anchor is None or anchor is runs or not anchor.results else anchor
    speeds = [s for r in results if r.efficiency and (s := r.efficiency.steady_tokens_per_s) is not None]
    steps = sum(len(r.efficiency.steady_steps()) for r in results if r.efficiency)
    per_step = [tokens / seconds for r in results for tokens, seconds in _steady_steps(r).values()]
    merges = any(r.efficiency and r.efficiency.deployed == "merged" for r in results)
    mine, theirs = mean_peak(results), mean_peak(anchor.results) if anchor else None
    return MethodCosts(
        method=runs.method,
        anchor=anchor.method if anchor else None,
        speed=throughput_ratio(results, anchor.results) if anchor else None,
        steady_tokens_per_s=float(np.mean(speeds)) if speeds else None,
        steady_steps=steps,
        step_spread=tuple(float(x) for x in np.percentile(per_step, [10, 90])) if per_step else None,
        latency=latency_ratios(results),
        deployed="merged" if merges else "unmerged",
        memory=memory_account(results),
        anchor_memory=memory_account(anchor.results) if anchor else None,
        peak_over_anchor=mine / theirs if mine and theirs else None,
    )


def measured(results: Sequence[MethodResult]) -> bool:
    """Whether any of these results recorded what the intervals come from (latency rounds, training steps, the
    memory account); older results did not."""
    return any(
        r.efficiency and (r.efficiency.latency_rounds or r.efficiency.train_steps or r.efficiency.train_memory)
        for r in results
    )
