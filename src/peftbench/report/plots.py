"""Figures, drawn from records: a run's learning curves, and per section the per-epoch scores, test scores with
intervals, quality against each cost and forgetting (Pareto), where the time went and the search's sensitivity. Each
returns PNG bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from peftbench.report.analysis import Analysis
from peftbench.report.curves import png
from peftbench.report.load import MethodRuns, Run, Section
from peftbench.report.selection import TrialFigure, trial_figures
from peftbench.report.stats import Estimate, Interval, estimate
from peftbench.report.table import (
    deployed_latency,
    deployed_memory_mib,
    peak_memory_mib,
)
from peftbench.store.records import PHASES
from peftbench.task.metrics import METRICS


def _colors(section: Section) -> dict[str, str]:
    return {runs.method: f"C{i % 10}" for i, runs in enumerate(section.methods)}


def _half(value: Estimate) -> float:
    return value.half_width or 0.0  # error bar: none for a single run


def _epoch_value(epoch, metric: str) -> float | None:
    return epoch.val_loss if metric == "val_loss" else epoch.scores.get(metric)


def plot_epochs(section: Section, metrics: list[str]) -> bytes:
    """Validation loss and up to two task metrics (the primary first) against epoch (0 = the zero-shot base model),
    one line per method; error bars are 95% confidence intervals over seeds."""
    panels = [("val_loss", "Validation loss per target token")]
    panels += [(metric, f"Validation {METRICS[metric].label}") for metric in metrics[:2]]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    axes = axes[0]
    colors = _colors(section)
    for runs in section.trained:
        epochs = sorted({e.epoch for result in runs.results for e in result.epochs})
        for ax, (metric, _) in zip(axes, panels, strict=True):
            values = [
                estimate(
                    [
                        v
                        for result in runs.results
                        for e in result.epochs
                        if e.epoch == epoch and (v := _epoch_value(e, metric)) is not None
                    ]
                    or [float("nan")]
                )
                for epoch in epochs
            ]
            means, halves = [v.mean for v in values], [_half(v) for v in values]
            ax.errorbar(epochs, means, yerr=halves, fmt="o-", capsize=3, color=colors[runs.method], label=runs.method)
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Per-epoch validation scores: {section.label}")
    return png(figure)


PARETO_PANELS = [
    ("trainable parameters", lambda r: r.trainable_params, True),
    ("peak training memory (MiB)", peak_memory_mib, False),
    ("inference latency (ms; merged where possible)", deployed_latency, False),
    ("inference memory (MiB; merged where possible)", deployed_memory_mib, False),
]


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For each (cost, quality) point: no other point costs no more and scores no less, being better in one."""
    return [
        not any(c <= cost and q >= quality and (c < cost or q > quality) for c, q in points) for cost, quality in points
    ]


FORGETTING_AXIS = "forgetting (nats/token over the base model)"


@dataclass(frozen=True)
class ParetoPoint:
    """One method on a quality-against-cost panel: its cost (x) with the error bar's extent below and above it, and
    its primary test score with its interval (y)."""

    method: str
    x: float
    x_error: tuple[float, float]
    y: Interval


def _cost_points(section: Section, analysis: Analysis, cost: Callable) -> list[ParetoPoint]:
    """Every trained method with both a cost (its mean over seeds, bars its t-interval) and a primary score."""
    points = []
    for runs in section.trained:
        x = runs.estimate(cost)
        if x is not None and runs.method in analysis.scores:
            y = analysis.scores[runs.method][analysis.primary]
            points.append(ParetoPoint(runs.method, x.mean, (_half(x), _half(x)), y))
    return points


def _forgetting_points(section: Section, analysis: Analysis) -> list[ParetoPoint]:
    """Every trained method with a forgetting figure and a primary score: forgetting with its paired bootstrap
    interval over the texts (and seeds), as the verdict gives it."""
    names = [runs.method for runs in section.trained if runs.method in analysis.scores]
    changes = analysis.forgetting.differences(names) if analysis.forgetting is not None else {}
    points = []
    for name, change in changes.items():
        span = change.interval
        below, above = span.value - span.low, span.high - span.value
        points.append(ParetoPoint(name, span.value, (below, above), analysis.scores[name][analysis.primary]))
    return points


def _pareto_axes(section: Section, analysis: Analysis) -> list[tuple[str, list[ParetoPoint], bool]]:
    """Each axis the primary score is set against, with its points and whether it is drawn on a log scale: the
    costs (PARETO_PANELS), then forgetting where it was measured."""
    axes = [(label, _cost_points(section, analysis, cost), log) for label, cost, log in PARETO_PANELS]
    if analysis.forgetting is not None:
        axes.append((FORGETTING_AXIS, _forgetting_points(section, analysis), False))
    return axes


def pareto_sets(section: Section, analysis: Analysis) -> dict[str, list[str]]:
    """For each axis (every cost, and forgetting where measured), the methods on the Pareto front of the primary
    score (higher) against it (lower)."""
    fronts = {}
    for label, points, _ in _pareto_axes(section, analysis):
        optimal = pareto_optimal([(p.x, p.y.value) for p in points])
        fronts[label] = [p.method for p, best in zip(points, optimal, strict=True) if best]
    return fronts


def _y_error(interval: Interval) -> list[list[float]]:
    return [[interval.value - interval.low], [interval.high - interval.value]]


def _draw_front(ax, points: list[ParetoPoint], colors: dict[str, str]) -> None:
    """The points of one panel, Pareto-optimal ones as filled stars joined by a dashed line."""
    optimal = pareto_optimal([(p.x, p.y.value) for p in points])
    for index, (point, best) in enumerate(zip(points, optimal, strict=True)):
        marker = dict(fmt="*", markersize=14) if best else dict(fmt="o", markersize=8, markerfacecolor="white")
        x_error = [[point.x_error[0]], [point.x_error[1]]]
        ax.errorbar(
            point.x,
            point.y.value,
            xerr=x_error,
            yerr=_y_error(point.y),
            capsize=3,
            color=colors[point.method],
            **marker,
        )
        # Alternate label heights: methods with close figures would otherwise print over each other.
        ax.annotate(
            point.method, (point.x, point.y.value), textcoords="offset points", xytext=(8, 6 - 18 * (index % 2))
        )
    front = sorted((p.x, p.y.value) for p, best in zip(points, optimal, strict=True) if best)
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="grey", alpha=0.6, zorder=0)


def _draw_references(ax, section: Section, analysis: Analysis, colors: dict[str, str]) -> None:
    """Each reference row's primary score as a dotted horizontal line."""
    for runs in section.methods:
        if runs.reference and analysis.primary in analysis.scores.get(runs.method, {}):
            level = analysis.scores[runs.method][analysis.primary].value
            ax.axhline(level, linestyle=":", color=colors[runs.method], label=runs.label)


def plot_pareto(section: Section, analysis: Analysis) -> bytes:
    """The primary test score against each cost, with its bootstrap interval (and the cost's interval over seeds),
    and where it was measured against forgetting (its paired bootstrap interval; the base model at x = 0: lower is
    better, as for a cost); Pareto-optimal methods (on the point values) are filled stars joined by a line; references
    are dotted lines."""
    panels = _pareto_axes(section, analysis)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4))
    colors = _colors(section)
    label = METRICS[analysis.primary].label
    for ax, (axis_label, points, log) in zip(axes, panels, strict=True):
        _draw_front(ax, points, colors)
        _draw_references(ax, section, analysis, colors)
        if axis_label == FORGETTING_AXIS:  # the base model forgets nothing: the axis's origin is a reference too
            ax.axvline(0.0, linestyle="-.", color="black", alpha=0.6, label="base model (no forgetting)")
            ax.legend(loc="lower left", fontsize="small")
        ax.set(xlabel=axis_label, ylabel=f"test {label}", xscale="log" if log else "linear")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: decades only, no crowded minor labels
        ax.grid(alpha=0.3)
    if any(runs.reference for runs in section.methods):
        axes[0].legend(loc="lower left", fontsize="small")
    against = "cost and forgetting" if analysis.forgetting is not None else "cost"
    figure.suptitle(f"Quality against {against}: {section.label} (stars: Pareto-optimal; bars: 95% intervals)")
    return png(figure)


def plot_scores(section: Section, analysis: Analysis) -> bytes:
    """The primary test score of every method and reference, with its bootstrap interval: one bar each."""
    names = [runs.method for runs in section.methods if analysis.primary in analysis.scores.get(runs.method, {})]
    references = {runs.method for runs in section.methods if runs.reference}
    colors = _colors(section)
    figure, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    for position, name in enumerate(names):
        interval = analysis.scores[name][analysis.primary]
        ax.barh(
            position,
            interval.value,
            xerr=[[interval.value - interval.low], [interval.high - interval.value]],
            capsize=4,
            color=colors[name],
            hatch="//" if name in references else None,
            alpha=0.5 if name in references else 0.9,
        )
        ax.annotate(f"{interval.value:.4f}", (interval.high, position), textcoords="offset points", xytext=(6, -4))
    ax.set_yticks(range(len(names)), [f"{n} (reference)" if n in references else n for n in names])
    ax.invert_yaxis()
    label = METRICS[analysis.primary].label
    ax.set(xlabel=f"test {label} (95% bootstrap interval)")
    ax.grid(alpha=0.3, axis="x")
    figure.suptitle(f"Test {label}: {section.label}")
    return png(figure)


def phase_means(runs: MethodRuns) -> tuple[dict[str, float], float] | None:
    """A method's mean seconds per phase over its seeds (PHASES first, then any a newer version records), and its
    mean wall time; None where no run recorded phases (older results)."""
    timed = [r.efficiency for r in runs.results if r.efficiency and r.efficiency.phase_seconds]
    if not timed:
        return None
    names = list(dict.fromkeys([*PHASES, *(name for e in timed for name in e.phase_seconds)]))
    means = {name: sum(e.phase_seconds.get(name, 0.0) for e in timed) / len(timed) for name in names}
    return {k: v for k, v in means.items() if v > 0}, sum(e.wall_seconds or 0.0 for e in timed) / len(timed)


def plot_phases(section: Section) -> bytes | None:
    """Where each method's wall time went: one stacked bar of its phases (mean over seeds), its wall time marked;
    None where no method recorded phases."""
    timed = [(runs.method, means) for runs in section.trained if (means := phase_means(runs))]
    if not timed:
        return None
    names = list(dict.fromkeys(name for _, (phases, _) in timed for name in phases))
    figure, ax = plt.subplots(figsize=(11, 0.5 * len(timed) + 2.5))
    for position, (_, (phases, wall)) in enumerate(timed):
        left = 0.0
        for index, name in enumerate(names):
            width = phases.get(name, 0.0)
            ax.barh(position, width, left=left, color=f"C{index % 10}", label=name if position == 0 else None)
            left += width
        ax.plot([wall], [position], "k|", markersize=18, label="wall time" if position == 0 else None)
    ax.set_yticks(range(len(timed)), [method for method, _ in timed])
    ax.invert_yaxis()
    ax.set(xlabel="seconds (mean over seeds)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")  # beside the bars
    figure.suptitle(f"Where the time went: {section.label}")
    return png(figure)


def searches(section: Section) -> list[tuple[MethodRuns, Run]]:
    """Each searched method with the run whose search is shown (its first finished seed)."""
    return [(runs, runs.first) for runs in section.trained if runs.first and runs.first.result.search]


def select_label(select_by: str) -> str:
    return "validation loss" if select_by == "loss" else f"validation {METRICS[select_by].label}"


def plot_sensitivity(section: Section) -> bytes:
    """The search's selection figure against learning rate (log axis), one line per method and rank searched, each
    point with its interval over the validation examples: on the epoch the grid was shaped on (the first, with
    halving), and for the trials that went on, after the last epoch (squares); the selected trial ringed."""
    figure, ax = plt.subplots(figsize=(6.4, 4.2))
    colors, styles = _colors(section), ["-", "--", ":", "-."]
    select_by = ""
    for runs, run in searches(section):
        search = run.result.search
        select_by, last = search["select_by"], max(e["epoch"] for t in search["trials"] for e in t["epochs"])
        shaped = 1 if search["halving"] else last
        on_shaped, on_last = trial_figures(search, shaped), trial_figures(search, last)  # each bootstrapped once
        for index, rank in enumerate(dict.fromkeys(trial["lora_r"] for trial in search["trials"])):
            label = runs.method + (f", r {rank}" if rank is not None else "")
            style = dict(color=colors[runs.method], capsize=2, elinewidth=0.8)
            points = sorted((f for f in on_shaped if f.lora_r == rank), key=lambda f: f.lr)
            _error_bars(ax, points, "o" + styles[index % len(styles)], label + f" (epoch {shaped})", style)
            if shaped != last:
                final = sorted((f for f in on_last if f.lora_r == rank), key=lambda f: f.lr)
                _error_bars(ax, final, "s", label + f" (epoch {last})", style)
            chosen = [f for f in on_last if f.name == search["selected"] and f.lora_r == rank]
            ax.plot(
                [f.lr for f in chosen],
                [f.value for f in chosen],
                "o",
                markersize=14,
                markerfacecolor="none",
                markeredgecolor="black",
            )
    ax.set(xscale="log", xlabel="learning rate", ylabel=select_label(select_by))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    figure.suptitle(f"Learning-rate sensitivity (ringed: selected)\n{section.label}", fontsize="medium")
    return png(figure)


def _error_bars(ax, points: list[TrialFigure], marker: str, label: str, style: dict) -> None:
    """Trials' figures against learning rate, each with its interval where it has one."""
    if not points:
        return
    low = [f.value - (f.figure.low if f.figure else f.value) for f in points]
    high = [(f.figure.high if f.figure else f.value) - f.value for f in points]
    ax.errorbar([f.lr for f in points], [f.value for f in points], yerr=[low, high], fmt=marker, label=label, **style)
