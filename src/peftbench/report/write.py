"""Report: figures and the comparison report, drawn from results on disk (metrics.json, predictions.jsonl).

This module reads files only, never a model: data flows results -> report, so a report can be rebuilt at any time
from the output directories of finished (or partly failed) runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from peftbench.config.run_config import ConfigError  # noqa: E402
from peftbench.methods.registry import METHODS  # noqa: E402
from peftbench.report.document import (  # noqa: E402
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from peftbench.report.load import MethodRuns, Run, Section, load_sections  # noqa: E402
from peftbench.report.stats import Estimate, Interval, estimate  # noqa: E402
from peftbench.report.table import (  # noqa: E402
    MEANINGLESS,
    NO_DIFFERENCE,
    NOT_TESTED,
    deployed_latency,
    deployed_memory_mib,
    failures,
    peak_memory_mib,
    random_weights,
    results_table,
    several_seeds,
    sig,
)
from peftbench.report.verdict import Analysis, analyse, verdict_lines  # noqa: E402
from peftbench.store import rundir  # noqa: E402
from peftbench.store.records import PHASES, RANDOM_WEIGHTS, Efficiency, MethodResult  # noqa: E402
from peftbench.store.rundir import write_atomic, write_files  # noqa: E402
from peftbench.task.metrics import METRICS  # noqa: E402

EXAMPLES = 3
SOURCE_EXCERPT = 300  # characters of each example's article shown
LATENCY_SPREAD = 1.25  # base latencies further apart than this (max / min) are flagged as a busy machine


def plot_curves(result: MethodResult, path: Path, log: list[dict] | None = None) -> Path:
    """Loss (train and validation) and the validation metrics against epoch (scores on a 0-1 scale in one panel,
    corpus scores on 0-100 in another); epoch 0 is the base model. With the method's log.jsonl records, the training
    loss of every optimizer step too, placed within its epoch."""
    epochs = [e.epoch for e in result.epochs]
    groups = [[m for m in result.metrics if not METRICS[m].corpus], [m for m in result.metrics if METRICS[m].corpus]]
    groups = [group for group in groups if group]
    figure, axes = plt.subplots(1, 1 + len(groups), figsize=(4.4 * (1 + len(groups)), 3.8), squeeze=False)
    loss_ax, *metric_axes = axes[0]
    steps = [record for record in log or [] if record.get("split") == "train"]
    if steps:
        per_epoch = {epoch: sum(r["epoch"] == epoch for r in steps) for epoch in {r["epoch"] for r in steps}}
        first = {epoch: min(r["step"] for r in steps if r["epoch"] == epoch) for epoch in per_epoch}
        where = [r["epoch"] - 1 + (r["step"] - first[r["epoch"]] + 1) / per_epoch[r["epoch"]] for r in steps]
        loss_ax.plot(where, [r["loss"] for r in steps], "-", color="tab:blue", alpha=0.35, label="train, per step")
    trained = [e for e in result.epochs if e.train_loss is not None]
    loss_ax.plot([e.epoch for e in trained], [e.train_loss for e in trained], "o-", label="train, epoch mean")
    loss_ax.plot(epochs, [e.val_loss for e in result.epochs], "s-", label="validation")
    loss_ax.set(title="Loss per target token", xlabel="epoch", ylabel="cross-entropy")
    for ax, group in zip(metric_axes, groups, strict=True):
        for metric in group:
            ax.plot(epochs, [e.scores.get(metric) for e in result.epochs], "o-", label=METRICS[metric].label)
        scale = "0-100" if METRICS[group[0]].corpus else "0-1"
        ax.set(title="Validation " + ", ".join(METRICS[m].label for m in group), xlabel="epoch", ylabel=scale)
        # Under the axes: nearby rising lines leave no empty corner inside them.
        ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    for ax in axes[0]:
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    figure.suptitle(f"{result.method} on {result.model}")
    write_atomic(path, _png(figure, dpi=110))
    return path


# ---------------------------------------------------------------------------------------------- figures


def _png(figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


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
    return _png(figure)


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


def _pareto_points(section: Section, analysis: Analysis, cost: Callable) -> list[tuple[str, Estimate, Interval]]:
    """(method, its cost over seeds, its primary score and interval) for every trained method with both."""
    points = []
    for runs in section.trained:
        x = runs.estimate(cost)
        if x is not None and runs.method in analysis.scores:
            points.append((runs.method, x, analysis.scores[runs.method][analysis.primary]))
    return points


def pareto_sets(section: Section, analysis: Analysis) -> dict[str, list[str]]:
    """For each cost axis, the methods on the Pareto front of the primary score (higher) against that cost (lower)."""
    fronts = {}
    for label, cost, _ in PARETO_PANELS:
        points = _pareto_points(section, analysis, cost)
        optimal = pareto_optimal([(x.mean, y.value) for _, x, y in points])
        fronts[label] = [method for (method, _, _), best in zip(points, optimal, strict=True) if best]
    return fronts


def _y_error(interval: Interval) -> list[list[float]]:
    return [[interval.value - interval.low], [interval.high - interval.value]]


def plot_pareto(section: Section, analysis: Analysis) -> bytes:
    """The primary test score against each cost, with its bootstrap interval (and the cost's interval over seeds);
    Pareto-optimal methods (on the point values) are filled stars joined by a line; references are dashed lines."""
    figure, axes = plt.subplots(1, len(PARETO_PANELS), figsize=(4.4 * len(PARETO_PANELS), 4))
    colors = _colors(section)
    label = METRICS[analysis.primary].label
    for ax, (cost_label, cost, log) in zip(axes, PARETO_PANELS, strict=True):
        points = _pareto_points(section, analysis, cost)
        optimal = pareto_optimal([(x.mean, y.value) for _, x, y in points])
        for index, ((method, x, y), best) in enumerate(zip(points, optimal, strict=True)):
            marker = dict(fmt="*", markersize=14) if best else dict(fmt="o", markersize=8, markerfacecolor="white")
            ax.errorbar(x.mean, y.value, xerr=_half(x), yerr=_y_error(y), capsize=3, color=colors[method], **marker)
            # Alternate label heights: methods with close figures would otherwise print over each other.
            ax.annotate(method, (x.mean, y.value), textcoords="offset points", xytext=(8, 6 - 18 * (index % 2)))
        front = sorted((x.mean, y.value) for (_, x, y), best in zip(points, optimal, strict=True) if best)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="grey", alpha=0.6, zorder=0)
        for runs in section.methods:
            if runs.reference and analysis.primary in analysis.scores.get(runs.method, {}):
                level = analysis.scores[runs.method][analysis.primary].value
                ax.axhline(level, linestyle=":", color=colors[runs.method], label=runs.label)
        ax.set(xlabel=cost_label, ylabel=f"test {label}", xscale="log" if log else "linear")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: decades only, no crowded minor labels
        ax.grid(alpha=0.3)
    if any(runs.reference for runs in section.methods):
        axes[0].legend(loc="lower left", fontsize="small")
    figure.suptitle(f"Quality against cost: {section.label} (stars: Pareto-optimal; bars: 95% intervals)")
    return _png(figure)


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
    return _png(figure)


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
    return _png(figure)


# ---------------------------------------------------------------------------------------------- examples


def _predictions(run: Run | None) -> dict[str, dict]:
    rows = run.directory.read_predictions() if run and run.directory else []
    return {row["id"]: row for row in rows}


def examples_table(section: Section, count: int = EXAMPLES) -> Table | None:
    """The first test examples: source excerpt, reference and each method's prediction, side by side."""
    predictions = {runs.label: _predictions(runs.first) for runs in section.methods}
    rows = next((rows for rows in predictions.values() if rows), {})
    table = Table(["source (excerpt)", "reference", *predictions], [], prose=True)
    for row in list(rows.values())[:count]:
        source = row["source"] if len(row["source"]) <= SOURCE_EXCERPT else row["source"][:SOURCE_EXCERPT] + "…"
        outputs = [by_id.get(row["id"], {}).get("prediction", "-") for by_id in predictions.values()]
        table.rows.append([source, row["reference"], *outputs])
    return table if table.rows else None


# ---------------------------------------------------------------------------------------------- the document


def _dates(results: list[MethodResult]) -> str:
    dates = sorted(r.environment["date"] for r in results if r.environment and r.environment.get("date"))
    return "not recorded" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"


def _hardware(env: dict | None) -> str:
    if not env:
        return "not recorded (results written before peftbench recorded it)"
    gpu = env.get("cuda_device") or "no GPU"
    processes = env.get("processes", 1)
    launched = f", {processes} processes (DDP)" if processes > 1 else ""
    return f"{env.get('platform')}, {env.get('cpu_count')} CPUs, {gpu}{launched}"


def _libraries(env: dict | None) -> str:
    if not env:
        return "not recorded"
    return ", ".join(
        f"{name} {env.get(name, '?')}" for name in ("python", "torch", "transformers", "peft", "accelerate")
    )


def _searches(section: Section) -> list[tuple[MethodRuns, Run]]:
    """Each searched method with the run whose search is shown (its first finished seed)."""
    return [(runs, runs.first) for runs in section.trained if runs.first and runs.first.result.search]


def _select_label(select_by: str) -> str:
    return "validation loss" if select_by == "loss" else f"validation {METRICS[select_by].label}"


def _final_figure(trial: dict, select_by: str) -> float | None:
    """A trial's selection figure after its last epoch (None where it failed, or halving stopped it earlier)."""
    if trial["error"] or trial["stopped_after"] is not None or not trial["epochs"]:
        return None
    last = trial["epochs"][-1]
    return last["val_loss"] if select_by == "loss" else last.get(select_by)


def plot_sensitivity(section: Section) -> bytes:
    """The search's selection figure against learning rate (log axis), one line per method and rank searched, the
    selected trial ringed: how forgiving each method is of its learning rate."""
    figure, ax = plt.subplots(figsize=(6.4, 4.2))
    colors, styles = _colors(section), ["-", "--", ":", "-."]
    select_by = ""
    for runs, run in _searches(section):
        search = run.result.search
        select_by = search["select_by"]
        ranks = list(dict.fromkeys(trial["lora_r"] for trial in search["trials"]))
        for index, rank in enumerate(ranks):
            points = sorted(
                (t["lr"], y, t["name"] == search["selected"])
                for t in search["trials"]
                if t["lora_r"] == rank and (y := _final_figure(t, select_by)) is not None
            )
            if not points:
                continue
            label = runs.method + (f", r {rank}" if rank is not None else "")
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o" + styles[index % len(styles)],
                color=colors[runs.method],
                label=label,
            )
            ax.plot(
                [p[0] for p in points if p[2]],
                [p[1] for p in points if p[2]],
                "o",
                markersize=14,
                markerfacecolor="none",
                markeredgecolor="black",
            )
    ax.set(xscale="log", xlabel="learning rate", ylabel=_select_label(select_by))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    figure.suptitle(f"Learning-rate sensitivity (ringed: selected)\n{section.label}", fontsize="medium")
    return _png(figure)


def _outcome(trial: dict, selected: str) -> str:
    if trial["error"]:
        return f"failed: {trial['error']}"
    if trial["stopped_after"] is not None:
        return f"stopped after epoch {trial['stopped_after']} (halving)"
    return "selected: tested" if trial["name"] == selected else "trained, not selected"


def search_table(section: Section) -> Table:
    """Every trial of every searched method (first finished seed): its settings, last validation and outcome."""
    metrics = next(run.result.metrics for _, run in _searches(section))
    table = Table(
        [
            "method",
            "trial",
            "lr",
            "rank",
            "epochs",
            "val loss",
            *(f"val {METRICS[m].label}" for m in metrics),
            "outcome",
        ],
        [],
    )
    for runs, run in _searches(section):
        search = run.result.search
        for trial in search["trials"]:
            last = trial["epochs"][-1] if trial["epochs"] else {}
            scores = [_score(m, last.get(m)) for m in metrics]
            table.rows.append(
                [
                    runs.method,
                    trial["name"],
                    f"{trial['lr']:g}",
                    _value(trial["lora_r"] or "-"),
                    str(last.get("epoch", "-")),
                    _score("val_loss", last.get("val_loss")),
                    *scores,
                    _outcome(trial, search["selected"]),
                ]
            )
    return table


def _score(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "val_loss" else f"{value:.{METRICS[metric].decimals}f}"


def search_blocks(section: Section, stem: str) -> list[Block]:
    """The search's section: what was searched and how chosen, the sensitivity plot and every trial."""
    searches = _searches(section)
    if not searches:
        return []
    search = searches[0][1].result.search
    seeds = {run.seed for _, run in searches}
    shown = f" (seed {min(seeds)}; each seed searched on its own)" if len(section.seeds) > 1 else ""
    halving = (
        "; successive halving: after each epoch only the better half of the trials went on" if search["halving"] else ""
    )
    return [
        Heading(3, "Search"),
        Paragraph(
            f"Each method was trained at every point of its grid ({', '.join(search['settings'])}), each "
            f"trial on the training split; the one with the best {_select_label(search['select_by'])} after "
            f"the last epoch was selected and alone evaluated on the test split{halving}{shown}."
        ),
        Figure(
            f"{stem}-sensitivity.png",
            plot_sensitivity(section),
            f"{_select_label(search['select_by'])} after "
            "the last epoch against learning rate, per method (and rank); ringed: the selected trial",
        ),
        search_table(section),
    ]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _hyperparameters(section: Section) -> str:
    """The training budget the methods share, from the first method's recorded config."""
    config = next(r for runs in section.trained for r in runs.results).config
    return (
        f"{_plural(config['epochs'], 'epoch')}, batch size {config['batch_size']}, gradient accumulation "
        f"{config['grad_accum']}, warmup {config['warmup_ratio']:g}, weight decay {config['weight_decay']:g}, "
        f"clipping {config['max_grad_norm']:g}; tokens: source {config['max_source_tokens']}, target "
        f"{config['max_target_tokens']}, generated {config['max_new_tokens']} "
        f"({_plural(config['num_beams'], 'beam')}); precision {config.get('compute_precision', config['precision'])}; "
        f"prompt format: {config.get('prompt_format', 'plain')}"
        + (f"; base quantized to {config['quantize']}" if config.get("quantize") else "")
    )


def _value(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_settings(result: MethodResult) -> str:
    """What one method actually trained with, from its recorded config: learning rate, its own settings (the
    registry's list for it) and its module options (targets, feed-forward modules)."""
    config, method = result.config, METHODS.get(result.method)
    names = list(method.settings) if method else []
    names += [key for key in config if key.startswith(f"{result.method}_") and key not in names]
    shown = [f"lr {config['lr']:g}"] + [f"{name} {_value(config[name])}" for name in names if name in config]
    return ", ".join(shown)


def header(section: Section) -> Bullets:
    """Model, data, split sizes, hyperparameters, seeds, hardware, libraries and dates of one section."""
    results = [result for runs in section.trained for result in runs.results]
    if not results:
        return Bullets([f"Output: {section.output}", "No method finished: nothing to describe."])
    first, config = results[0], results[0].config
    env = next((r.environment for r in results if r.environment), None)
    memory = first.efficiency.memory_measure if first.efficiency else "not recorded"
    seeds = ", ".join(map(str, section.seeds)) or "unknown"
    weights = f"; {RANDOM_WEIGHTS}" if first.random_weights else ""
    return Bullets(
        [
            f"Model: {first.model} ({config.get('model_kind', '?')}, {first.total_params:,} parameters{weights})",
            f"Data: {first.dataset}; {config['train_size']} train / {config['eval_size']} validation / "
            f"{config['test_size']} test examples",
            f"Hyperparameters: {_hyperparameters(section)}",
            "Methods: "
            + "; ".join(
                f"{runs.method}: {method_settings(runs.results[0])}" for runs in section.trained if runs.results
            ),
            f"Seeds: {seeds}",
            f"Hardware: {_hardware(env)}; training memory measured as {memory}",
            f"Libraries: {_libraries(env)}",
            f"Run date: {_dates(results)}",
            f"Output: {section.output}",
        ]
    )


def _how_to_read(several_seeds: bool) -> Paragraph:
    over = "over seeds and test examples" if several_seeds else "over test examples"
    spread = (
        "Other cells are the mean ± the half-width of the 95% t-interval over seeds; they are compared with "
        "paired t-tests over seeds (Holm-adjusted)."
        if several_seeds
        else "Other cells are one run's measurement: counts and sizes are exact and compared as they are; memory, "
        f"speed, latency and losses vary between runs, and with one seed the 'best' row says '{NOT_TESTED}' "
        "(run with --seeds 0,1,2 to test them)."
    )
    return Paragraph(
        f"Test-metric cells are the score and its 95% bootstrap interval {over} (paired: every row resampled "
        "on the same examples). A column's best value is in bold, and named in the 'best' row, only when a test says "
        f"it beats every other method (Holm-adjusted p < 0.05); otherwise the row says '{NO_DIFFERENCE}' and lists "
        f"the methods it cannot tell apart. {spread} Reference rows (zero-shot base model, Lead-3) train nothing "
        "and are never ranked."
    )


def latency_caution(section: Section) -> Paragraph | None:
    """A warning when the base model's latency, the same measurement in every method's process, disagrees with
    itself by more than LATENCY_SPREAD: the machine was busy, and latency differences of that size are noise."""
    base = [r.efficiency.latency_ms["base"] for r in section.results if r.efficiency and r.efficiency.latency_ms]
    base = [value for value in base if value]
    if len(base) < 2 or max(base) <= LATENCY_SPREAD * min(base):
        return None
    return Paragraph(
        f"Caution: the base model's latency, measured the same way before every method, ranged from "
        f"{sig(min(base))} to {sig(max(base))} ms ({max(base) / min(base):.1f}x). Something else was running "
        "during some measurements, so latency differences of that size are noise: rerun on an idle machine."
    )


def _pareto_text(section: Section, analysis: Analysis) -> Paragraph:
    fronts = pareto_sets(section, analysis)
    listed = "; ".join(f"against {label}: {', '.join(methods) or '-'}" for label, methods in fronts.items())
    label = METRICS[analysis.primary].label
    return Paragraph(
        f"Pareto-optimal (on the point values of test {label}; no other method is cheaper and at least as good; the "
        f"intervals show which of these differences are noise) {listed}."
    )


def random_note(results: list[MethodResult]) -> Paragraph | None:
    """What a model with random weights can tell, where one is in the table."""
    if not random_weights(results):
        return None
    return Paragraph(
        f"{MEANINGLESS}: {RANDOM_WEIGHTS}. A model given by its config alone starts from random weights, so its "
        "speed, memory and size figures are real, while its loss and task metrics mean nothing and are not shown."
    )


SERVING_TASKS = (1, 10, 100)


def _serving_sizes(runs: MethodRuns) -> Efficiency | None:
    """The efficiency record of the first of runs' results that measured the sizes serving is derived from."""
    return next((r.efficiency for r in runs.results if r.efficiency and r.efficiency.serving_bytes(1)), None)


def serving_blocks(section: Section) -> list[Block]:
    """Serving N tasks, derived from the measured sizes in memory (Efficiency.serving_bytes): one base model with N
    adapters against N fully fine-tuned copies, for N in SERVING_TASKS; none where no method measured them."""
    measured = {runs.method: sizes for runs in section.trained if (sizes := _serving_sizes(runs))}
    if not measured:
        return []
    copies = [next(iter(measured.values())).serving_bytes(n)[1] for n in SERVING_TASKS]
    header = ["method", "served as", *(f"{_plural(n, 'task')} (MiB)" for n in SERVING_TASKS)]
    table = Table(header, [["full fine-tuning", "N fine-tuned copies", *(sig(c / 2**20) for c in copies)]])
    for method, sizes in measured.items():
        if sizes.adapter_memory_bytes is None:  # full fine-tuning: the copies row
            continue
        shared = [sizes.serving_bytes(n)[0] for n in SERVING_TASKS]
        cells = [f"{sig(s / 2**20)} ({s / c:.1%})" for s, c in zip(shared, copies, strict=True)]
        table.rows.append([method, "one base + N adapters", *cells])
    return [
        Heading(3, "Serving N tasks (derived)"),
        table,
        Paragraph(
            "Derived, not measured as such: the weights held in memory to serve N tasks, from the measured sizes: "
            "N fully fine-tuned copies of the base model's parameters and "
            "buffers, against one base model plus the memory the first and each further loaded adapter added to it "
            "(in parentheses: the share of the N copies). Adapters on a shared base run unmerged (their latency is "
            "the unmerged one) or are merged and unmerged at each switch (the merge + unmerge time). The working "
            "memory of each request (activations, KV cache) comes on top of both."
        ),
    ]


def verdict_blocks(section: Section, analysis: Analysis | None) -> list[Block]:
    """The verdict, one bullet per sentence, and how its figures were computed; none for random weights."""
    if random_weights(section.results):
        return [Paragraph(f"No verdict: {RANDOM_WEIGHTS} (the model was given by its config alone).")]
    blocks: list[Block] = [Bullets(verdict_lines(section, analysis))]
    return blocks + ([Paragraph(analysis.note)] if analysis is not None else [])


def section_blocks(section: Section, analysis: Analysis | None, index: int) -> list[Block]:
    """Everything about one model: header, verdict, table, failures, scores, curves, trade-offs and examples."""
    several = several_seeds([section])
    blocks: list[Block] = [
        Heading(2, f"Model: {section.model}"),
        header(section),
        Heading(3, "Verdict"),
        *verdict_blocks(section, analysis),
        Heading(3, "Results"),
    ]
    rows = [([runs.method], runs) for runs in section.methods]
    blocks.append(results_table(rows, ["method"], several, analysis))
    blocks += filter(None, [random_note(section.results), latency_caution(section)])
    blocks += serving_blocks(section)
    missing = failures(section)
    if missing:
        blocks += [Paragraph("Failed or missing runs (left out of the figures above):"), Bullets(missing)]
    if not section.results:
        return blocks
    stem = f"{index}-{''.join(ch if ch.isalnum() else '-' for ch in section.label)[:40]}"
    bars = "; error bars: 95% confidence intervals over seeds" if several else ""
    first = next((r for runs in section.trained for r in runs.results), None)
    metrics = [first.primary_metric, *(m for m in first.metrics if m != first.primary_metric)] if first else []
    blocks += [
        Heading(3, "Per-epoch scores"),
        Figure(
            f"{stem}-epochs.png",
            plot_epochs(section, metrics),
            f"Validation scores against epoch (0: before training){bars}",
        ),
    ]
    phases = plot_phases(section)
    if phases is not None:
        blocks += [
            Heading(3, "Where the time went"),
            Figure(
                f"{stem}-phases.png",
                phases,
                "Each method's wall time by phase (metrics.json's "
                "efficiency.phase_seconds); the mark is its wall time. The zero-shot evaluation, shared "
                "by all methods, is not in any of them",
            ),
        ]
    if analysis is not None and not random_weights(section.results):  # random weights: no quality to show
        label = METRICS[analysis.primary].label
        blocks += [
            Heading(3, f"Test {label} with intervals"),
            Figure(
                f"{stem}-scores.png",
                plot_scores(section, analysis),
                f"Test {label} of every method and reference, with its 95% bootstrap interval",
            ),
            Heading(3, "Quality against cost"),
            Figure(
                f"{stem}-pareto.png",
                plot_pareto(section, analysis),
                f"Test {label} against each cost; "
                "vertical bars: 95% bootstrap intervals; horizontal bars: 95% intervals over seeds",
            ),
            _pareto_text(section, analysis),
        ]
    blocks += search_blocks(section, stem)
    examples = examples_table(section)
    if examples is not None:
        blocks += [Heading(3, "Test examples" + (" (each method's first finished seed)" if several else "")), examples]
    curves = [_curves(runs, stem) for runs in section.trained]
    if any(curves):
        blocks += [Heading(3, "Learning curves per run"), *filter(None, curves)]
    return blocks


def _curves(runs: MethodRuns, stem: str) -> Figure | None:
    """The run's own curves.png (written by peftbench run), for its first finished seed."""
    run = runs.first
    path = run.directory.curves if run and run.directory else None
    if path is None or not path.is_file():
        return None
    caption = f"{runs.method}, seed {run.seed}: loss and validation metrics against epoch"
    return Figure(f"{stem}-{runs.method}-curves.png", path.read_bytes(), caption)


def report_blocks(sections: list[Section], analyses: list[Analysis | None]) -> list[Block]:
    """The whole report: how to read it, the verdict per model, a combined table where there are several models,
    then a section each."""
    several = several_seeds(sections)
    sources = ", ".join(map(str, dict.fromkeys(section.output for section in sections)))
    blocks: list[Block] = [
        Heading(1, "peftbench comparison report"),
        Paragraph(f"Generated {datetime.now().astimezone().isoformat(timespec='seconds')} from {sources}."),
        _how_to_read(several),
    ]
    if len(sections) > 1:
        rows = [([section.label, runs.method], runs) for section in sections for runs in section.methods]
        blocks += [
            Heading(2, "All models"),
            results_table(rows, ["model", "method"], several, rank=False),
            Paragraph(
                "Each model's own section ranks its methods; across models the test sets and "
                "intervals are the models' own."
            ),
        ]
        blocks += filter(None, [random_note([r for section in sections for r in section.results])])
    for index, (section, analysis) in enumerate(zip(sections, analyses, strict=True), 1):
        blocks += section_blocks(section, analysis, index)
    return blocks


# ---------------------------------------------------------------------------------------------- writing


def write_report(outputs: list[Path], destination: Path | None = None) -> list[Path]:
    """Write report.md (figures in report_files/) and a self-contained report.html into destination (default:
    the first OUTPUT), all files or none of them; returns both paths."""
    sections = load_sections(outputs)
    destination = destination or outputs[0]
    blocks = report_blocks(sections, [analyse(section) for section in sections])
    markdown, html, figures = rundir.report_paths(destination)
    files = {rundir.inside(figures, block.name, "figure"): block.png for block in blocks if isinstance(block, Figure)}
    try:
        write_files({**files, markdown: to_markdown(blocks), html: to_html(blocks, "peftbench comparison report")})
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {str(destination)!r}: {exc.strerror or exc}") from None
    return [markdown, html]


def write_summary(output: Path) -> str:
    """OUTPUT/summary.md: for each model in OUTPUT the verdict, the header, the comparison table (over the seeds where
    there are several) and the failed runs; returns the verdict and the tables as Markdown (what `peftbench run`
    prints at the end)."""
    sections = load_sections([output])
    several = several_seeds(sections)
    blocks: list[Block] = [Heading(1, "peftbench summary")]
    shown: list[Block] = []
    for section in sections:
        analysis = analyse(section)
        table = results_table([([runs.method], runs) for runs in section.methods], ["method"], several, analysis)
        verdict = verdict_blocks(section, analysis)
        shown += [Heading(2, f"Model: {section.model}"), table, Heading(3, "Verdict"), verdict[0]]
        blocks += [Heading(2, f"Model: {section.model}"), Heading(3, "Verdict"), *verdict, header(section), table]
        blocks += filter(None, [random_note(section.results)])
        missing = failures(section)
        if missing:
            blocks += [Paragraph("Failed or missing runs (see <method>/failed.json):"), Bullets(missing)]
    write_atomic(rundir.summary_path(output), to_markdown([*blocks, _how_to_read(several)]))
    return to_markdown(shown)
