"""The decision rule, applied to the analysis: which methods beat the base model (and the task's trivial reference),
which are as good as the comparator within the margin, and which one to use. The outcome is data (Verdict, written
as verdict.json); verdict.py puts it into sentences.

The rule, declared before any result is seen: the comparator is full fine-tuning unless the run names another. A
method is eligible when it is significantly better than the zero-shot base model and than the task's trivial
reference where it has one (the majority class), one-sided and Holm-adjusted over the methods. It is non-inferior
when its paired difference to the comparator is shown to lie above -margin, one-sided and Holm-adjusted over the
methods (the more methods claim it, the harder the claim), and inferior when shown to lie below -margin. The answer
is the cheapest eligible method among the comparator and the non-inferior ones; where the comparator is not eligible,
the cheapest eligible method; else none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats as scipy_stats

from peftbench.report.analysis import Analysis
from peftbench.report.costs import mean_peak, method_costs
from peftbench.report.forgetting import Forgetting
from peftbench.report.load import MethodRuns, Section
from peftbench.report.stats import CONFIDENCE, ONE_SIDED_ALPHA, Difference, Interval
from peftbench.store.rundir import LEAD_3, MAJORITY, ZERO_SHOT
from peftbench.task.metrics import METRICS

DEFAULT_COMPARATOR = "full"
BARS = (ZERO_SHOT, MAJORITY)  # rows a method must significantly beat to be eligible
RIVALS = (LEAD_3,)  # strong references without a model: the headline says where one beats the answer
POWER = 0.8  # examples needed: enough to decide at this power if the true difference is the one observed
NEEDED_CAP = 100  # beyond this many times the test set, "examples needed" is reported as out of reach

RECOMMENDED, NON_INFERIOR, INFERIOR, INCONCLUSIVE, NOT_ELIGIBLE, COMPARATOR = (
    "recommended",
    "non-inferior",
    "inferior",
    "inconclusive",
    "not eligible",
    "comparator",
)


DEFAULT_MARGIN = 1.0  # points out of 100 (RunConfig.margin's default, for records written before it existed)


@dataclass(frozen=True)
class Rule:
    """What the verdict asks: the comparator (None: full fine-tuning) and the margin in points out of 100 (None:
    the run's own)."""

    comparator: str | None = None
    margin: float | None = None

    def of(self, section: Section) -> Rule:
        """This rule, where a value is unset the one the run declared (its configuration), else the default."""
        config = next((r.config for runs in section.trained for r in runs.results), {})
        margin = self.margin if self.margin is not None else config.get("margin", DEFAULT_MARGIN)
        return Rule(self.comparator or config.get("comparator"), float(margin))


def per_point(metric: str) -> float:
    """One point out of 100 on a metric's own scale: 0.01 for scores from 0 to 1, 1 for BLEU and chrF (0-100)."""
    return 1.0 if METRICS[metric].corpus else 0.01


@dataclass
class Comparison:
    """A method's difference to another row on the primary metric: estimate, 95% interval, the adjusted p-value of the
    claim tested (claim: what was claimed, e.g. "above -0.01"), and where the data left it open, the test examples
    that would decide it."""

    to: str
    difference: float
    low: float
    high: float
    claim: str
    p_adjusted: float
    holds: bool
    examples_needed: int | None = None

    @classmethod
    def of(cls, to: str, difference: Difference, claim: str, needed: int | None = None) -> Comparison:
        span = difference.interval
        return cls(to, span.value, span.low, span.high, claim, difference.p_holm, difference.significant, needed)


@dataclass
class Retained:
    """What training cost a method on the held-out text: its loss there (nats per token), its forgetting (that loss
    minus the base model's, two-sided test of "no change", Holm over the methods), the same relative to the base
    model's loss, and its loss minus the comparator's."""

    loss: float
    forgetting: Comparison
    relative: Interval
    vs_comparator: Comparison | None


@dataclass
class MethodDecision:
    """What the rule found for one method."""

    method: str
    decision: str  # RECOMMENDED, NON_INFERIOR, INFERIOR, INCONCLUSIVE, NOT_ELIGIBLE or COMPARATOR
    eligible: bool | None  # None: no bar to test against (no zero-shot row)
    non_inferior: bool | None  # None: no comparator row (or this is the comparator)
    inferior: bool | None
    bars: dict[str, Comparison]  # each bar's claim "better than it"
    vs_comparator: Comparison | None  # the claim "not worse than the comparator by more than the margin"
    trainable_params: int
    peak_memory_bytes: float | None
    retention: Retained | None = None  # None where forgetting was not measured
    retention_task: Comparison | None = None  # its retention task score minus the base model's (primary metric)
    # Its cost ratios with their intervals (costs.MethodCosts.to_json: training against the comparator, inference
    # time against the base model, the training memory account); None where it recorded no efficiency.
    costs: dict[str, Any] | None = None


@dataclass
class Verdict:
    """The verdict of one model's comparison, as data: what verdict.json holds and the sentences are made from."""

    model: str
    primary: str
    label: str
    comparator: str
    comparator_ran: bool
    margin_points: float  # out of 100
    margin: float  # on the metric's own scale
    one_sided_alpha: float
    examples: int
    seeds: int
    rows: dict[str, Interval]  # each row's primary score and its 95% interval
    methods: list[MethodDecision]
    recommended: str | None
    reason: str
    rivals: list[str] = field(default_factory=list)  # trivial references significantly above the answer
    headline: str = ""  # set by verdict.headline (the sentence is verdict.py's)
    # Forgetting (None where not measured): the held-out text (sample, texts, the base model's loss and interval) and
    # the retention task (dataset, task, metric, examples, the base model's score and interval).
    retention: dict[str, Any] | None = None
    retention_task: dict[str, Any] | None = None
    # The tie-breaker: methods the rule chose among by cost (the comparator and the non-inferior ones) that forget
    # significantly less than the recommended one. It informs; it does not change the answer.
    forgets_less: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodDecision:
        return next(m for m in self.methods if m.method == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cost(runs: MethodRuns) -> tuple[float, float]:
    """What "cheapest" orders by: trainable parameters, then peak training memory."""
    peak = mean_peak(runs.results)
    return (runs.results[0].trainable_params, math.inf if peak is None else peak)


def _costs(runs: MethodRuns, anchor: MethodRuns | None) -> dict[str, Any] | None:
    """A method's cost ratios as verdict.json holds them (None where no result recorded its efficiency)."""
    if not any(r.efficiency for r in runs.results):
        return None
    return method_costs(runs, anchor).to_json()


def examples_needed(difference: Difference, examples: int, bound: float, tests: int) -> int | None:
    """Test examples that would decide whether a difference lies above or below bound at POWER, if the true difference
    were the one observed and its spread shrank as 1 / sqrt(examples): from the measured interval, at the one-sided
    level Holm asks of the first of `tests` claims. None where the estimate sits on the bound (no size decides it)."""
    span = difference.interval
    distance = abs(span.value - bound)
    z_interval = scipy_stats.norm.ppf((1 + CONFIDENCE) / 2)
    spread = (span.high - span.low) / (2 * z_interval) * math.sqrt(examples)  # one example's standard deviation
    if distance == 0 or spread == 0:
        return None
    z = scipy_stats.norm.ppf(1 - ONE_SIDED_ALPHA / max(tests, 1)) + scipy_stats.norm.ppf(POWER)
    needed = math.ceil((z * spread / distance) ** 2)
    return needed if needed <= NEEDED_CAP * examples else None


def _bars(tests: dict[str, dict[str, Difference]], name: str, examples: int, claims: int) -> dict[str, Comparison]:
    """A method's claims "better than each bar"; where one is not shown but the estimate is a gain, the test examples
    that would show a gain that size."""
    passed = {}
    for bar, by_method in tests.items():
        test = by_method[name]
        open_gain = not test.significant and test.interval.value > 0
        needed = examples_needed(test, examples, 0.0, claims) if open_gain else None
        passed[bar] = Comparison.of(bar, test, "above 0", needed)
    return passed


def _versus(above: Difference, below: Difference, to: str, margin: float, examples: int, claims: int) -> Comparison:
    """A method against the comparator: the claim that holds (inferior, else non-inferior), or the one the rule asks
    with the test examples that would decide it."""
    if below.significant:
        return Comparison.of(to, below, f"below {-margin:g}")
    needed = None if above.significant else examples_needed(above, examples, -margin, claims)
    return Comparison.of(to, above, f"above {-margin:g}", needed)


def _decisions(
    analysis: Analysis, methods: list[str], comparator: str, margin: float, by_name: dict[str, MethodRuns]
) -> list[MethodDecision]:
    """Each method's claims against the bars and the comparator, and what they make it."""
    primary, n = analysis.primary, analysis.examples
    bars = {bar: analysis.claim(primary, bar, methods, 0.0) for bar in BARS if primary in analysis.scores.get(bar, {})}
    others = [name for name in methods if name != comparator]
    above = analysis.claim(primary, comparator, others, -margin) if comparator in methods else {}
    below = analysis.claim(primary, comparator, others, -margin, above=False) if comparator in methods else {}
    decisions = []
    for name in methods:
        passed = _bars(bars, name, n, len(methods))
        eligible = all(c.holds for c in passed.values()) if ZERO_SHOT in bars else None
        versus = _versus(above[name], below[name], comparator, margin, n, len(others)) if name in above else None
        non_inferior, inferior = (above[name].significant, below[name].significant) if versus else (None, None)
        cost = _cost(by_name[name])
        decision = _decision(name == comparator, eligible, non_inferior, inferior)
        costs = _costs(by_name[name], by_name.get(comparator) if comparator in methods else None)
        found = (eligible, non_inferior, inferior, passed, versus, int(cost[0]), cost[1])
        decisions.append(MethodDecision(name, decision, *found, costs=costs))
    return decisions


def decide(section: Section, analysis: Analysis, rule: Rule) -> Verdict:
    """Apply the rule to one model's comparison."""
    primary, by_name = analysis.primary, {runs.method: runs for runs in section.methods}
    methods = [name for name in analysis.trained if primary in analysis.scores[name]]
    comparator, margin_points = rule.comparator or DEFAULT_COMPARATOR, rule.margin or 0.0
    margin = margin_points * per_point(primary)
    decisions = _decisions(analysis, methods, comparator, margin, by_name)
    recommended, reason = _recommend(decisions, comparator, comparator in methods, by_name)
    for decision in decisions:
        if decision.method == recommended:
            decision.decision = RECOMMENDED
    verdict = Verdict(
        model=section.model,
        primary=primary,
        label=METRICS[primary].label,
        comparator=comparator,
        comparator_ran=comparator in methods,
        margin_points=margin_points,
        margin=margin,
        one_sided_alpha=ONE_SIDED_ALPHA,
        examples=analysis.examples,
        seeds=analysis.seeds,
        rows={name: scores[primary] for name, scores in analysis.scores.items() if primary in scores},
        methods=decisions,
        recommended=recommended,
        reason=reason,
    )
    verdict.rivals = _rivals(analysis, verdict)
    _add_retention(analysis, verdict)
    return verdict


def _add_retention(analysis: Analysis, verdict: Verdict) -> None:
    """What training cost each method (analysis.forgetting, analysis.retention_task) into the verdict, and the
    methods as good as the answer that forget significantly less than it."""
    methods = [m.method for m in verdict.methods]
    forgetting, task = analysis.forgetting, analysis.retention_task
    if forgetting is not None:
        base = forgetting.loss(ZERO_SHOT)
        verdict.retention = {"sample": forgetting.sample, "texts": forgetting.texts, "seeds": forgetting.seeds}
        verdict.retention |= {"base_loss": base}
        changes = forgetting.differences(methods)
        versus = forgetting.differences(methods, verdict.comparator) if verdict.comparator in forgetting.losses else {}
        for m in verdict.methods:
            if m.method in changes:
                to = versus.get(m.method)
                m.retention = Retained(
                    forgetting.losses[m.method][0],
                    Comparison.of(ZERO_SHOT, changes[m.method], "not 0"),
                    forgetting.relative(m.method),
                    Comparison.of(verdict.comparator, to, "not 0") if to else None,
                )
        verdict.forgets_less = _forgets_less(forgetting, verdict)
    if task is not None and ZERO_SHOT in task.scores:
        verdict.retention_task = {"dataset": task.dataset, "metric": task.primary, "examples": task.examples}
        verdict.retention_task |= {"base": task.scores[ZERO_SHOT][task.primary]}
        for name, difference in task.compare({task.primary: ZERO_SHOT}, methods).items():
            verdict.method(name).retention_task = Comparison.of(ZERO_SHOT, difference[task.primary], "not 0")


def _forgets_less(forgetting: Forgetting, verdict: Verdict) -> list[str]:
    """The methods the rule chose the answer from by cost (the comparator and the non-inferior ones, all eligible)
    whose loss on the held-out text is significantly below the answer's (two-sided, Holm over them)."""
    if verdict.recommended is None or verdict.reason not in ("comparator", "non-inferior"):
        return []
    pool = [
        m.method
        for m in verdict.methods
        if m.eligible is not False and (m.method == verdict.comparator or m.non_inferior)
    ]
    lower = forgetting.differences(pool, verdict.recommended)
    return [name for name, d in lower.items() if d.significant and d.interval.value < 0]


def _decision(is_comparator: bool, eligible: bool | None, non_inferior: bool | None, inferior: bool | None) -> str:
    if is_comparator:
        return COMPARATOR
    if eligible is False:
        return NOT_ELIGIBLE
    if non_inferior:
        return NON_INFERIOR
    return INFERIOR if inferior else INCONCLUSIVE


def _recommend(
    decisions: list[MethodDecision], comparator: str, ran: bool, by_name: dict[str, MethodRuns]
) -> tuple[str | None, str]:
    """The recommended method and why (a short reason the headline words out), or None and why not."""
    eligible = [d.method for d in decisions if d.eligible is not False]

    def cheapest(names: list[str]) -> str:
        return min(names, key=lambda name: _cost(by_name[name]))

    if ran and comparator in eligible:
        pool = [comparator] + [d.method for d in decisions if d.method in eligible and d.non_inferior]
        choice = cheapest(pool)
        return choice, "comparator" if choice == comparator else "non-inferior"
    if eligible:
        return cheapest(eligible), "beats the bars" if ran else "no comparator"
    return None, "nothing beats the bars"


def _rivals(analysis: Analysis, verdict: Verdict) -> list[str]:
    """The trivial references significantly above the recommended method (or, with none, above every method)."""
    primary = analysis.primary
    targets = [verdict.recommended] if verdict.recommended else [m.method for m in verdict.methods]
    found = []
    for rival in RIVALS:
        if primary not in analysis.scores.get(rival, {}) or not targets:
            continue
        worse = analysis.claim(primary, rival, targets, 0.0, above=False)
        if worse and all(worse[name].significant for name in targets):
            found.append(rival)
    return found
