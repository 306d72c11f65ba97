"""The verdict: test scores with intervals, differences to full fine-tuning and to the best method with paired tests
(Holm-corrected), and in plain sentences what each method buys against full fine-tuning and which one to use."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from peftbench.report.load import ExampleScores, MethodRuns, Section
from peftbench.report.stats import (
    ALPHA,
    CONFIDENCE,
    RESAMPLES,
    Interval,
    bootstrap_distribution,
    bootstrap_p,
    holm,
    intervals,
)
from peftbench.store.records import MethodResult
from peftbench.store.rundir import LEAD_3, ZERO_SHOT
from peftbench.task.metrics import METRICS, corpus_score

MIN_EXAMPLES = 2  # a bootstrap over one example has no spread to show
ANCHOR = "full"  # differences are taken against full fine-tuning where it ran, else against the best method
_REFERENCE_NAMES = (ZERO_SHOT, LEAD_3)


@dataclass(frozen=True)
class Difference:
    """A row's score minus another's, with its interval and its paired test's p-value (raw and Holm-adjusted)."""

    interval: Interval
    p: float
    p_holm: float

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


@dataclass
class Analysis:
    """The statistics of one section's test scores. figures holds each row's value and bootstrap distribution per
    metric; with paired rows the distributions come from the same resamples, so any two rows' difference is
    paired."""

    rows: list[str]  # rows (methods and references) with per-example test scores, in the section's order
    metrics: list[str]  # the task metrics, in the order chosen
    primary: str  # the metric the verdict and the rankings use
    seeds: int  # seeds every row has (the bootstrap resamples them when there are several)
    examples: int
    paired: bool  # every row scored on the same test examples
    figures: dict[str, dict[str, tuple[float, np.ndarray]]]  # row -> metric -> (value, bootstrap distribution)
    scores: dict[str, dict[str, Interval]]  # row -> metric -> value and interval
    trained: list[str]  # the rows that are methods (not references)
    best: dict[str, str]  # metric -> the trained method with the highest value
    anchor: str | None  # the row differences are taken against: full fine-tuning, else the best method
    note: str  # how the figures were computed, for the report

    def compare(self, against: dict[str, str], rows: list[str] | None = None) -> dict[str, dict[str, Difference]]:
        """Each row's difference to against[metric] on every metric both have, with p-values adjusted with Holm's
        method over the rows compared on that metric (rows: these only; default every row)."""
        rows = self.rows if rows is None else rows
        result: dict[str, dict[str, Difference]] = {name: {} for name in rows}
        for metric, other in against.items():
            compared = [name for name in rows if name != other and metric in self.figures[name]]
            if other not in self.figures or metric not in self.figures[other] or not compared:
                continue
            value = np.array([self.figures[n][metric][0] - self.figures[other][metric][0] for n in compared])
            spread = np.stack([self.figures[n][metric][1] - self.figures[other][metric][1] for n in compared])
            raw = bootstrap_p(spread)
            for name, span, p, q in zip(compared, intervals(value, spread), raw, holm(raw.tolist()), strict=True):
                result[name][metric] = Difference(span, float(p), q)
        return {name: values for name, values in result.items() if values}

    @property
    def vs_anchor(self) -> dict[str, dict[str, Difference]]:
        """Each method's difference to the anchor, adjusted over the methods alone: the same family of tests as
        indistinguishable's, so that a method's line and the recommendation never disagree."""
        return self.compare(dict.fromkeys(self.metrics, self.anchor), self.trained) if self.anchor else {}

    def indistinguishable(self, metric: str) -> list[str]:
        """The methods whose value is not significantly below the best one's (the best included)."""
        below = self.compare({metric: self.best[metric]}, self.trained)
        present = [name for name in self.trained if metric in self.scores[name]]
        return [name for name in present if name not in below or not below[name][metric].significant]


def _stacked(runs: MethodRuns, seeds: list[int], ids: list[str] | None) -> ExampleScores | None:
    """A row's per-example scores over the given seeds, stacked [seed, example] (in the order of ids)."""
    by_seed = {run.seed: run.examples for run in runs.finished if run.examples is not None}
    if runs.reference:  # references do not depend on the seed: one run stands for all
        by_seed = dict.fromkeys(seeds, next(iter(by_seed.values()), None))
    if any(by_seed.get(seed) is None for seed in seeds):
        return None
    scores = [by_seed[seed] if ids is None else by_seed[seed].reordered(ids) for seed in seeds]
    return ExampleScores(
        scores[0].ids,
        {k: np.stack([s.values[k] for s in scores]) for k in scores[0].values},
        {k: np.stack([s.statistics[k] for s in scores]) for k in scores[0].statistics},
    )


def _statistic(pairs: list[tuple[ExampleScores, str]]):
    """Each (row, metric) pair's figure from resampled indices: a mean metric's mean over the resampled examples; a
    corpus metric's corpus score per resampled seed, averaged over the seeds."""

    def figures(seeds: np.ndarray, examples: np.ndarray) -> np.ndarray:
        picked, out = (seeds[..., None], examples), []
        for row, metric in pairs:
            if METRICS[metric].corpus:
                sums = row.statistics[metric][picked].sum(axis=-2)  # [B, S, statistics]: one corpus per seed
                out.append(np.array([[corpus_score(metric, c) for c in resample] for resample in sums]).mean(axis=-1))
            else:
                out.append(row.values[metric][picked].mean(axis=(-2, -1)))
        return np.stack(out)

    return figures


def _common_seeds(section: Section) -> list[int]:
    trained = [runs for runs in section.trained if runs.finished]
    sets = [{run.seed for run in runs.finished if run.examples is not None} for runs in trained]
    common = set.intersection(*sets) if sets else set()
    return sorted(seed for seed in common if seed is not None) or sorted(common, key=lambda s: s or 0)


def _pairs(scores: ExampleScores, metrics: list[str]) -> list[str]:
    return [m for m in metrics if m in scores.values or m in scores.statistics]


def analyse(section: Section, resamples: int = RESAMPLES) -> Analysis | None:
    """Bootstrap intervals of every row's test scores on the task's metrics, and of its differences to the anchor and
    the best method, with paired tests and Holm's correction per metric and family; None where no row has
    per-example scores on at least MIN_EXAMPLES test examples."""
    seeds = _common_seeds(section)
    candidates = [runs for runs in section.methods if runs.finished]
    raw = {runs.method: _stacked(runs, seeds, None) for runs in candidates} if seeds else {}
    raw = {name: scores for name, scores in raw.items() if scores is not None}
    first = next((r for runs in section.trained for r in runs.results), None)
    if not raw or first is None or min(len(scores.ids) for scores in raw.values()) < MIN_EXAMPLES:
        return None
    paired = len({frozenset(scores.ids) for scores in raw.values()}) == 1
    if paired:
        order = next(iter(raw.values())).ids
        raw = {name: _stacked(next(r for r in candidates if r.method == name), seeds, order) for name in raw}
    metrics = first.metrics
    pairs = [(name, metric) for name in raw for metric in _pairs(raw[name], metrics)]
    full, distribution = _joint_distribution(raw, pairs, len(seeds), paired, resamples)
    span = intervals(full, distribution)
    figures: dict[str, dict[str, tuple[float, np.ndarray]]] = {name: {} for name in raw}
    scores: dict[str, dict[str, Interval]] = {name: {} for name in raw}
    for index, (name, metric) in enumerate(pairs):
        figures[name][metric] = (float(full[index]), distribution[index])
        scores[name][metric] = span[index]
    names = list(raw)
    trained = [name for name in names if name not in _REFERENCE_NAMES]
    best = {
        metric: max((n for n in trained if metric in scores[n]), key=lambda n: scores[n][metric].value)
        for metric in metrics
        if any(metric in scores[n] for n in trained)
    }
    primary = first.primary_metric if first.primary_metric in best else next(iter(best), first.primary_metric)
    anchor = ANCHOR if ANCHOR in trained else best.get(primary)
    level = "seeds, then test examples within each seed" if len(seeds) > 1 else "test examples"
    note = (
        f"Test scores: {CONFIDENCE:.0%} percentile bootstrap intervals over {level} ({resamples:,} resamples, "
        f"seeded), {'paired: every row resampled on the same examples' if paired else 'UNPAIRED'}. Differences: "
        "the same resamples of both rows; p-values from the bootstrap distribution of the difference, adjusted with "
        "Holm's method over the methods (or, in the cautions, the rows) compared to the same row on the same metric; "
        "a difference is significant "
        f"when the adjusted p is below {ALPHA:g}."
    )
    if not paired:
        note += (
            " The rows were scored on different test examples (their example ids differ), so paired statistics "
            "are refused: each row is resampled on its own, and differences compare independent resamples."
        )
    examples = len(next(iter(raw.values())).ids)
    return Analysis(names, metrics, primary, len(seeds), examples, paired, figures, scores, trained, best, anchor, note)


def _joint_distribution(
    raw: dict[str, ExampleScores], pairs: list[tuple[str, str]], seeds: int, paired: bool, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The figures of every (row, metric) pair over the same resamples (paired), or over each row's own."""
    if paired:
        statistic = _statistic([(raw[name], metric) for name, metric in pairs])
        return bootstrap_distribution(statistic, seeds, len(next(iter(raw.values())).ids), resamples)
    parts = []
    for index, name in enumerate(raw):
        mine = [(raw[name], metric) for row, metric in pairs if row == name]
        parts.append(bootstrap_distribution(_statistic(mine), seeds, len(raw[name].ids), resamples, random_seed=index))
    return np.concatenate([full for full, _ in parts]), np.concatenate([dist for _, dist in parts])


# ---------------------------------------------------------------------------------------------- sentences


def _mean(runs: MethodRuns, value) -> float | None:
    values = [v for v in (value(r) for r in runs.results) if v is not None]
    return statistics.fmean(values) if values else None


def _memory(r: MethodResult) -> float | None:
    return r.efficiency.peak_train_memory_bytes if r.efficiency else None


def _speed(r: MethodResult) -> float | None:
    return r.efficiency.train_tokens_per_s if r.efficiency else None


def _deployed_over_base(r: MethodResult) -> float | None:
    if r.efficiency is None or not r.efficiency.latency_ms.get("base"):
        return None
    latency = r.efficiency.latency_ms
    deployed = latency["merged"] if latency.get("merged") is not None else latency["unmerged"]
    return deployed / latency["base"]


def _size(r: MethodResult) -> float | None:
    return r.efficiency.adapter_size_bytes if r.efficiency else None


def _points(x: float) -> str:
    return f"{x:+.4f}" if abs(x) < 1 else f"{x:+.2f}"


def _value(metric: str, x: float) -> str:
    return f"{x:.{METRICS[metric].decimals}f}"


def _span(metric: str, interval: Interval) -> str:
    return f"[{_value(metric, interval.low)}, {_value(metric, interval.high)}]"


def _difference_text(difference: Difference, other: str) -> str:
    span = f"[{_points(difference.interval.low)}, {_points(difference.interval.high)}]"
    if difference.significant:
        direction = "better" if difference.interval.value > 0 else "worse"
        p = "p < 0.001" if difference.p_holm < 0.001 else f"p = {difference.p_holm:.3f}"
        judged = f"significantly {direction} than {other} (adjusted {p})"
    else:
        judged = f"not significantly different from {other} (adjusted p = {difference.p_holm:.2f})"
    return f"{_points(difference.interval.value)} {span}: {judged}"


def _cost_text(runs: MethodRuns, anchor: MethodRuns | None) -> str:
    """What a method costs, against the anchor's figures where there is one."""
    parts = []
    result = runs.results[0]
    parts.append(f"trains {100 * result.trainable_params / result.total_params:.3g}% of the parameters")
    if anchor is not None and anchor is not runs:
        for label, value, fmt in (("peak training memory", _memory, "{:.2f}x"), ("training speed", _speed, "{:.2f}x")):
            mine, theirs = _mean(runs, value), _mean(anchor, value)
            if mine and theirs:
                parts.append(f"{label} {fmt.format(mine / theirs)} {anchor.method}'s")
    ratio = _mean(runs, _deployed_over_base)
    if ratio:
        parts.append(f"inference latency {ratio:.2f}x the base model's ({'merged' if _merges(runs) else 'as trained'})")
    size = _mean(runs, _size)
    if size:
        parts.append(f"adapter {size / 2**20:,.2f} MiB on disk")
    serving = _shared_base(runs)
    if serving:
        adapters, copies = serving
        parts.append(
            f"for {SERVED_TASKS} tasks one base model with {SERVED_TASKS} adapters holds "
            f"{_bytes_text(adapters)} of weights against {_bytes_text(copies)} for {SERVED_TASKS} fully "
            "fine-tuned copies (derived from the measured sizes)"
        )
    return ", ".join(parts)


SERVED_TASKS = 100  # the verdict's serving figure: one base with this many adapters, against as many full copies


def _shared_base(runs: MethodRuns) -> tuple[int, int] | None:
    """(one base + SERVED_TASKS adapters, SERVED_TASKS full copies) in bytes, for a method served as adapters on a
    shared base (not full fine-tuning), from its first result that measured them."""
    for result in runs.results:
        serving = result.efficiency.serving_bytes(SERVED_TASKS) if result.efficiency else None
        if serving and serving[0] is not None:
            return serving[0], serving[1]
    return None


def _bytes_text(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def _merges(runs: MethodRuns) -> bool:
    return any(r.efficiency and r.efficiency.latency_ms.get("merged") is not None for r in runs.results)


def verdict_lines(section: Section, analysis: Analysis | None) -> list[str]:
    """The verdict in plain sentences: each method against full fine-tuning (or the best method), the
    recommendation, then the cautions that apply."""
    if analysis is None or not analysis.anchor:
        return [
            f"No verdict: it needs per-example test scores on at least {MIN_EXAMPLES} examples (rerun with this "
            "peftbench, or with a larger --test-size)."
        ]
    primary = analysis.primary
    label = METRICS[primary].label
    by_name = {runs.method: runs for runs in section.methods}
    anchor = by_name[analysis.anchor]
    anchor_score = analysis.scores[analysis.anchor][primary]
    vs_anchor = analysis.vs_anchor
    lines = [
        f"{analysis.anchor}: {label} {_value(primary, anchor_score.value)} {_span(primary, anchor_score)}; "
        f"{_cost_text(anchor, None)}."
    ]
    for name in analysis.rows:
        if name == analysis.anchor or by_name[name].reference:
            continue
        score = analysis.scores[name][primary]
        difference = vs_anchor[name][primary]
        compared = _difference_text(difference, analysis.anchor)
        lines.append(
            f"{name}: {label} {_value(primary, score.value)} {_span(primary, score)}, {compared}; "
            f"{_cost_text(by_name[name], anchor)}."
        )
    lines.append(recommendation(section, analysis))
    return lines + cautions(section, analysis)


def recommendation(section: Section, analysis: Analysis) -> str:
    """The cheapest method (by trainable parameters, then training memory) whose primary score is statistically
    indistinguishable from the best method's; or that none matches full fine-tuning."""
    primary = analysis.primary
    label = METRICS[primary].label
    by_name = {runs.method: runs for runs in section.methods}
    matching = analysis.indistinguishable(primary)
    best = analysis.best[primary]
    if analysis.anchor == ANCHOR and matching == [ANCHOR]:
        return (
            f"Recommendation: no method matches full fine-tuning here: every other method's {label} is "
            "significantly below full fine-tuning's."
        )

    def cost(name: str) -> tuple[float, float]:
        return (by_name[name].results[0].trainable_params, _mean(by_name[name], _memory) or float("inf"))

    choice = min(matching, key=cost)
    others = [name for name in matching if name != choice]
    tied = f" (also indistinguishable: {', '.join(others)})" if others else ""
    return (
        f"Recommendation: {choice}: the cheapest method (trainable parameters, then training memory) whose "
        f"{label} is statistically indistinguishable from the best ({best}, "
        f"{_value(primary, analysis.scores[best][primary].value)}){tied}."
    )


def _lr_edge(search: dict | None) -> str | None:
    """ "largest" or "smallest" where a search selected the learning rate at that end of a grid of several."""
    if not search or "lr" not in search["settings"]:
        return None
    rates = {trial["lr"] for trial in search["trials"] if trial["error"] is None}
    if len(rates) < 2:
        return None
    return "largest" if search["lr"] == max(rates) else "smallest" if search["lr"] == min(rates) else None


CONTENDED = 0.25  # other processes' share of the machine's CPU time beyond which a phase's times are not the method's
TIMED_PHASES = {"training": "trained", "latency": "had its latency timed"}  # the phases the table's figures come from


def _contended(section: Section) -> str:
    """Where other processes took more than CONTENDED of the machine's CPU time in a timed phase: "lora trained
    (41%), ia3 had its latency timed (30%)"; empty where none did (or it was not measured)."""
    found = []
    for runs in section.trained:
        for phase, what in TIMED_PHASES.items():
            shares = [(r.efficiency.other_cpu_share or {}).get(phase, 0.0) for r in runs.results if r.efficiency]
            if shares and max(shares) > CONTENDED:
                found.append(f"{runs.method} {what} ({max(shares):.0%})")
    return ", ".join(found)


def cautions(section: Section, analysis: Analysis) -> list[str]:
    """What limits the verdict: references that score well, untuned learning rates (or tuned at a grid's end), few
    examples, one seed."""
    primary, notes = analysis.primary, []
    label = METRICS[primary].label
    trained = [name for name in analysis.rows if name not in _REFERENCE_NAMES]
    for reference, what in (
        (LEAD_3, "Lead-3 (each article's first three sentences, no model)"),
        (ZERO_SHOT, "the zero-shot base model (no fine-tuning)"),
    ):
        if primary not in analysis.scores.get(reference, {}):
            continue
        score = analysis.scores[reference][primary]
        beaten = [n for n in trained if analysis.scores[n][primary].value < score.value]
        if reference == LEAD_3 and beaten:
            share = "every fine-tuned method" if len(beaten) == len(trained) else ", ".join(beaten)
            below = analysis.compare({primary: reference}, beaten)
            clear = [n for n in beaten if below[n][primary].significant]
            tested = f"significantly above {', '.join(clear)}" if clear else "none of these differences is significant"
            notes.append(
                f"Caution: {what} scores {label} {_value(primary, score.value)} {_span(primary, score)}, "
                f"above {share} ({tested})."
            )
        if reference == ZERO_SHOT:
            above = analysis.compare({primary: reference}, trained)
            gains = {n: above[n][primary] for n in trained}
            no_gain = [n for n, gain in gains.items() if not (gain.significant and gain.interval.value > 0)]
            if no_gain:
                notes.append(
                    f"Caution: {', '.join(no_gain)} {'is' if len(no_gain) == 1 else 'are'} not "
                    f"significantly better than {what} ({label} {_value(primary, score.value)})."
                )
    configs = [r.config for runs in section.trained for r in runs.results]
    if configs and not any(config.get("search") for config in configs):
        rates = ", ".join(f"{runs.method} {runs.results[0].config['lr']:g}" for runs in section.trained if runs.results)
        notes.append(
            f"Caution: learning rates were not tuned per method ({rates}); a method's ranking may reflect "
            "how well its default suits this task."
        )
    edges = {
        runs.method: edge for runs in section.trained for edge in {_lr_edge(r.search) for r in runs.results} if edge
    }
    if edges:
        listed = ", ".join(f"{method} ({edge})" for method, edge in edges.items())
        notes.append(
            f"Caution: the learning rate selected on validation lies at an end of its grid for {listed}: "
            "that method's best may lie beyond it; widen --lr-grid to be sure each method is compared at "
            "its best."
        )
    busy = _contended(section)
    if busy:
        notes.append(
            f"Caution: other processes used a large share of this machine's CPU time while {busy}: those "
            "speed and latency figures are inflated by the contention; measure them on an idle machine."
        )
    widths = [analysis.scores[name][primary].width for name in trained]
    if widths:
        width = statistics.median(widths)
        points = width if METRICS[primary].corpus else 100 * width  # 0-1 scores read as points out of 100
        notes.append(
            f"Caution: {analysis.examples} test examples: a method's {CONFIDENCE:.0%} interval of {label} is "
            f"about {points:.1f} points wide ({_value(primary, width)} on its own scale); smaller "
            "differences cannot be told apart here. Raise --test-size to narrow it."
        )
    if analysis.seeds < 2:
        notes.append(
            "Caution: one seed: the intervals cover the test set's sampling noise, not the training noise "
            "between seeds; run with --seeds 0,1,2 to include it."
        )
    if not analysis.paired:
        notes.append("Caution: the rows were scored on different test examples: differences are unpaired.")
    return notes
