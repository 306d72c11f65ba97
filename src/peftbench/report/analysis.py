"""The comparison's statistics: every method's and reference's test scores with bootstrap intervals (paired over the
test examples and seeds), and differences between rows with paired tests, two-sided or of a one-sided claim (Holm-
adjusted over the rows tested)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftbench.report.forgetting import Forgetting, forgetting
from peftbench.report.load import ExampleScores, MethodRuns, Run, Section
from peftbench.report.stats import (
    ALPHA,
    CONFIDENCE,
    ONE_SIDED_ALPHA,
    RESAMPLES,
    Difference,
    Interval,
    bootstrap_distribution,
    bootstrap_p,
    holm,
    intervals,
    one_sided_p,
)
from peftbench.store.rundir import REFERENCES
from peftbench.task.metrics import METRICS, corpus_score

MIN_EXAMPLES = 2  # a bootstrap over one example has no spread to show


@dataclass
class Analysis:
    """The statistics of one section's test scores. figures holds each row's value and bootstrap distribution per
    metric; with paired rows the distributions come from the same resamples, so any two rows' difference is
    paired."""

    rows: list[str]  # rows (methods and references) with per-example test scores, in the section's order
    metrics: list[str]  # the task metrics, in the order chosen
    primary: str  # the metric the verdict uses
    seeds: int  # seeds every row has (the bootstrap resamples them when there are several)
    examples: int
    paired: bool  # every row scored on the same test examples
    figures: dict[str, dict[str, tuple[float, np.ndarray]]]  # row -> metric -> (value, bootstrap distribution)
    scores: dict[str, dict[str, Interval]]  # row -> metric -> value and interval
    trained: list[str]  # the rows that are methods (not references)
    note: str  # how the figures were computed, for the report
    # What training cost the model: the loss on held-out text (forgetting.py), and the retention task's scores (an
    # Analysis of their own, the base model a row of it); None where not measured.
    forgetting: Forgetting | None = None
    retention_task: Analysis | None = None
    dataset: str | None = None  # the retention task's analysis: its dataset, as run with --retention-task

    def _differences(self, metric: str, other: str, rows: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The rows compared with other on metric, their differences to it and those differences' distributions."""
        compared = [name for name in rows if name != other and metric in self.figures.get(name, {})]
        if metric not in self.figures.get(other, {}) or not compared:
            return [], np.empty(0), np.empty((0, 0))
        value = np.array([self.figures[n][metric][0] - self.figures[other][metric][0] for n in compared])
        spread = np.stack([self.figures[n][metric][1] - self.figures[other][metric][1] for n in compared])
        return compared, value, spread

    def compare(self, against: dict[str, str], rows: list[str] | None = None) -> dict[str, dict[str, Difference]]:
        """Each row's difference to against[metric] on every metric both have, with two-sided p-values adjusted with
        Holm's method over the rows compared on that metric (rows: these only; default every row)."""
        rows = self.rows if rows is None else rows
        result: dict[str, dict[str, Difference]] = {name: {} for name in rows}
        for metric, other in against.items():
            compared, value, spread = self._differences(metric, other, rows)
            if not compared:
                continue
            raw = bootstrap_p(spread)
            for name, span, p, q in zip(compared, intervals(value, spread), raw, holm(raw.tolist()), strict=True):
                result[name][metric] = Difference(span, float(p), q)
        return {name: values for name, values in result.items() if values}

    def claim(
        self, metric: str, other: str, rows: list[str], bound: float, above: bool = True
    ) -> dict[str, Difference]:
        """One-sided tests of "row minus other lies above bound" (above=False: below it) for each row, adjusted with
        Holm's method over the rows, so that the more rows make the claim, the harder it is for each to make it. The
        claim holds at ONE_SIDED_ALPHA: where it does at the raw p, the 95% interval's near end is past the bound."""
        compared, value, spread = self._differences(metric, other, rows)
        if not compared:
            return {}
        raw = one_sided_p(spread, bound) if above else one_sided_p(-spread, -bound)
        spans = intervals(value, spread)
        adjusted = holm(raw.tolist())
        return {
            name: Difference(span, float(p), q, ONE_SIDED_ALPHA)
            for name, span, p, q in zip(compared, spans, raw, adjusted, strict=True)
        }


def _examples(run: Run, task: bool) -> ExampleScores | None:
    return run.task_examples if task else run.examples


def _stacked(runs: MethodRuns, seeds: list[int], ids: list[str] | None, task: bool = False) -> ExampleScores | None:
    """A row's per-example scores (task: on the retention task) over the given seeds, stacked [seed, example] (in
    the order of ids)."""
    by_seed = {run.seed: _examples(run, task) for run in runs.finished if _examples(run, task) is not None}
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


def _common_seeds(section: Section, task: bool) -> list[int]:
    trained = [runs for runs in section.trained if runs.finished]
    sets = [{run.seed for run in runs.finished if _examples(run, task) is not None} for runs in trained]
    common = set.intersection(*sets) if sets else set()
    return sorted(seed for seed in common if seed is not None) or sorted(common, key=lambda s: s or 0)


def _pairs(scores: ExampleScores, metrics: list[str]) -> list[str]:
    return [m for m in metrics if m in scores.values or m in scores.statistics]


def analyse(section: Section, resamples: int = RESAMPLES) -> Analysis | None:
    """Bootstrap intervals of every row's test scores on the task's metrics, from resamples shared by all rows (so
    that differences are paired), with what training cost the model beside them: forgetting on the held-out text
    (forgetting.py) and the retention task's scores, analysed the same way; None where no row has per-example scores
    on at least MIN_EXAMPLES test examples."""
    analysis = _analyse(section, resamples)
    if analysis is not None:
        analysis.forgetting = forgetting(section, resamples)
        analysis.retention_task = _analyse(section, resamples, task=True)
    return analysis


def _analyse(section: Section, resamples: int, task: bool = False) -> Analysis | None:
    """analyse's test scores (task: the retention task's) without what it adds."""
    seeds = _common_seeds(section, task)
    candidates = [runs for runs in section.methods if runs.finished]
    raw = {runs.method: _stacked(runs, seeds, None, task) for runs in candidates} if seeds else {}
    raw = {name: scores for name, scores in raw.items() if scores is not None}
    first = next((r for runs in section.trained for r in runs.results if r.retention_task or not task), None)
    if not raw or first is None or min(len(scores.ids) for scores in raw.values()) < MIN_EXAMPLES:
        return None
    paired = len({frozenset(scores.ids) for scores in raw.values()}) == 1
    if paired:
        order = next(iter(raw.values())).ids
        raw = {name: _stacked(next(r for r in candidates if r.method == name), seeds, order, task) for name in raw}
    metrics, primary = (
        (list(first.retention_task.scores), first.retention_task.primary_metric)
        if task
        else (first.metrics, first.primary_metric)
    )
    pairs = [(name, metric) for name in raw for metric in _pairs(raw[name], metrics)]
    full, distribution = _joint_distribution(raw, pairs, len(seeds), paired, resamples)
    span = intervals(full, distribution)
    figures: dict[str, dict[str, tuple[float, np.ndarray]]] = {name: {} for name in raw}
    scores: dict[str, dict[str, Interval]] = {name: {} for name in raw}
    for index, (name, metric) in enumerate(pairs):
        figures[name][metric] = (float(full[index]), distribution[index])
        scores[name][metric] = span[index]
    names = list(raw)
    trained = [name for name in names if name not in REFERENCES]
    primary = primary if primary in metrics else metrics[0]
    level = "seeds crossed with the test examples they share" if len(seeds) > 1 else "test examples"
    note = (
        f"Test scores: {CONFIDENCE:.0%} percentile bootstrap intervals over {level} ({resamples:,} resamples, "
        f"seeded), {'paired: every row resampled on the same examples' if paired else 'UNPAIRED'}. Differences: "
        "the same resamples of both rows; p-values from the bootstrap distribution of the difference, (1 + k) / "
        f"(B + 1) so never 0, adjusted with Holm's method over the rows tested together; a two-sided difference is "
        f"significant when the adjusted p is below {ALPHA:g}, a one-sided claim (better than, not worse than by more "
        f"than the margin) when it is below {ONE_SIDED_ALPHA:g}."
    )
    if not paired:
        note += (
            " The rows were scored on different test examples (their example ids differ), so paired statistics "
            "are refused: each row is resampled on its own, and differences compare independent resamples."
        )
    examples = len(next(iter(raw.values())).ids)
    dataset = first.retention_task.dataset if task else None
    return Analysis(
        names, metrics, primary, len(seeds), examples, paired, figures, scores, trained, note, dataset=dataset
    )


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
