"""Report: figures and the comparison report, drawn from results on disk (metrics.json, predictions.jsonl).

This module reads files only, never a model: data flows results -> report, so a report can be rebuilt at any time
from the output directories of finished (or partly failed) runs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from peftbench import rundir  # noqa: E402
from peftbench.config import ConfigError  # noqa: E402
from peftbench.document import (  # noqa: E402
    FILES_DIR,
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from peftbench.methods import METHODS  # noqa: E402
from peftbench.results import RANDOM_WEIGHTS, MethodResult  # noqa: E402
from peftbench.rundir import MethodDir, write_atomic  # noqa: E402
from peftbench.stats import CONFIDENCE, Estimate, estimate, overlaps  # noqa: E402

NO_DIFFERENCE = "no significant difference"
EXAMPLES = 3
SOURCE_EXCERPT = 300  # characters of each example's article shown
LATENCY_SPREAD = 1.25  # base latencies further apart than this (max / min) are flagged as a busy machine
MEANINGLESS = "n/a (random)"  # a quality cell of a model with random weights


def plot_curves(result: MethodResult, path: Path) -> Path:
    """Loss (train and validation), ROUGE-1/2/L and BLEU against epoch; epoch 0 is the base model."""
    epochs = [e.epoch for e in result.epochs]
    figure, (loss_ax, rouge_ax, bleu_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    trained = [e for e in result.epochs if e.train_loss is not None]
    loss_ax.plot([e.epoch for e in trained], [e.train_loss for e in trained], "o-", label="train")
    loss_ax.plot(epochs, [e.val_loss for e in result.epochs], "s-", label="validation")
    loss_ax.set(title="Loss per target token", xlabel="epoch", ylabel="cross-entropy")
    for kind, label in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L")):
        rouge_ax.plot(epochs, [getattr(e, kind) for e in result.epochs], "o-", label=label)
    rouge_ax.set(title="Validation ROUGE (F1)", xlabel="epoch", ylabel="F1 (0-1)")
    bleu_ax.plot(epochs, [e.bleu for e in result.epochs], "o-", color="tab:purple")
    bleu_ax.set(title="Validation BLEU", xlabel="epoch", ylabel="BLEU (0-100)")
    for ax in (loss_ax, rouge_ax, bleu_ax):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    # Under the axes: three nearby rising lines leave no empty corner inside them.
    rouge_ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    figure.suptitle(f"{result.method} on {result.model}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One method at one seed: its results, or why there are none (error)."""

    method: str
    seed: int | None
    model: str | None
    result: MethodResult | None = None
    directory: MethodDir | None = None
    error: str | None = None


@dataclass
class MethodRuns:
    """One method of one model, over all seeds; runs without a result are failed or missing."""

    method: str
    runs: list[Run]

    @property
    def results(self) -> list[MethodResult]:
        return [run.result for run in self.runs if run.result is not None]

    @property
    def first(self) -> Run | None:
        """The successful run with the lowest seed (its predictions and curves are shown)."""
        done = [run for run in self.runs if run.result is not None]
        return min(done, key=lambda run: run.seed or 0) if done else None

    def estimate(self, value: Callable[[MethodResult], float | None]) -> Estimate | None:
        """Mean and confidence interval of one figure over the successful runs (None where no run has it)."""
        values = [v for v in map(value, self.results) if v is not None]
        return estimate(values) if values else None


@dataclass
class Section:
    """One model from one OUTPUT directory: its methods, each over the seeds run."""

    model: str
    output: Path
    seeds: list[int]
    methods: list[MethodRuns]
    label: str = ""  # short name in the combined table

    @property
    def results(self) -> list[MethodResult]:
        return [result for runs in self.methods for result in runs.results]


def _load_run(directory: MethodDir) -> Run:
    """A method directory: its metrics.json, else what failed.json says, else 'failed or missing'."""
    if directory.finished():
        try:
            result = directory.read_result()
            return Run(result.method, result.config.get("seed"), result.model, result, directory)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return Run(directory.name, None, None, None, directory, f"failed: unreadable metrics.json ({exc})")
    failure = directory.read_failure()
    error = failure.get("error", "no metrics.json (the run failed or was interrupted)")
    return Run(directory.name, failure.get("seed"), failure.get("model"), None, directory, f"failed: {error}")


def _load_comparison(comparison: Path) -> list[Run]:
    """The runs of one single-seed comparison directory. Failures take the model of their siblings (failed.json
    has the model as given, e.g. 'embedded', not as loaded), and their seed where failed.json lacks one."""
    runs = [_load_run(directory) for directory in rundir.method_dirs(comparison) if directory.has_results()]
    known = next((run for run in runs if run.result is not None), None)
    for run in runs:
        run.model = known.model if known else run.model or "unknown model"
        run.seed = run.seed if run.seed is not None or known is None else known.seed
    return runs


def _order(method: str) -> tuple[int, str]:
    """The registry's order (the baseline first); methods it does not know after them, by name."""
    names = list(METHODS)
    return (names.index(method) if method in names else len(names)), method


def _section(output: Path, model: str, runs: list[Run]) -> Section:
    """Group one model's runs by method; a method without a run for one of the section's seeds is 'missing'."""
    seeds = {run.seed for run in runs if run.seed is not None}
    for run in runs:
        if run.result is not None:
            seeds.update(run.result.config.get("seeds") or [])
    methods = []
    for method in sorted({run.method for run in runs}, key=_order):
        mine = [run for run in runs if run.method == method]
        absent = seeds - {run.seed for run in mine}
        mine += [Run(method, seed, model, error="missing: no directory for this seed") for seed in sorted(absent)]
        methods.append(MethodRuns(method, sorted(mine, key=lambda run: run.seed or 0)))
    return Section(model, output, sorted(seeds), methods)


def load_sections(outputs: list[Path]) -> list[Section]:
    """Every model's results under each OUTPUT (OUTPUT/<method>/ and OUTPUT/seed-<s>/<method>/), one section each."""
    sections = []
    for output in outputs:
        if not output.is_dir():
            raise ConfigError(f"{str(output)!r} is not a directory; give peftbench run's output directory")
        runs = [run for comparison, _ in rundir.comparisons(output) for run in _load_comparison(comparison)]
        if not runs:
            raise ConfigError(
                f"no results in {str(output)!r}: expected <method>/metrics.json or seed-<s>/<method>/metrics.json "
                "(the output directory of peftbench run)"
            )
        for model in dict.fromkeys(run.model for run in runs):
            sections.append(_section(output, model, [run for run in runs if run.model == model]))
    _label(sections)
    return sections


def _label(sections: list[Section]) -> None:
    """Short names for the combined table: the model's last path component, with its OUTPUT where ambiguous."""
    short = [section.model.rstrip("/").split("/")[-1] for section in sections]
    for section, name in zip(sections, short, strict=True):
        section.label = name if short.count(name) == 1 else f"{name} ({section.output})"


# ---------------------------------------------------------------------------------------------- the table


def _sig(x: float) -> str:
    """Three significant digits without an exponent, thousands separated: 12,345 / 540 / 5.40 / 0.0123."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _fixed(decimals: int) -> Callable[[float], str]:
    return lambda x: f"{x:,.{decimals}f}"


def _efficiency(get: Callable) -> Callable[[MethodResult], float | None]:
    return lambda r: None if r.efficiency is None else get(r.efficiency)


def _test(name: str) -> Callable[[MethodResult], float | None]:
    return lambda r: None if r.test is None else getattr(r.test, name)


def _final_val_loss(r: MethodResult) -> float | None:
    return r.epochs[-1].val_loss if r.epochs else None


_peak_memory_mib = _efficiency(lambda e: e.peak_train_memory_bytes / 2**20)
_rouge_l = _test("rougeL")


def _deployed_latency(r: MethodResult) -> float | None:
    """Inference latency as deployed: merged where the method can merge, else as trained."""
    if r.efficiency is None:
        return None
    latency = r.efficiency.latency_ms
    return latency["merged"] if latency.get("merged") is not None else latency["unmerged"]


@dataclass(frozen=True)
class Column:
    """One figure of the main table; better is 'high' or 'low', or None where no value is better than another.
    A quality figure (loss, ROUGE, BLEU) means nothing for a model with random weights."""

    label: str
    value: Callable[[MethodResult], float | None]
    format: Callable[[float], str]
    better: str | None
    quality: bool = False


COLUMNS = [
    Column("trainable params", lambda r: r.trainable_params, _fixed(0), "low"),
    Column("trainable %", lambda r: 100 * r.trainable_params / r.total_params, _sig, None),
    Column("peak train memory (MiB)", _peak_memory_mib, _sig, "low"),
    Column("train tokens/s", _efficiency(lambda e: e.train_tokens_per_s), _sig, "high"),
    Column("latency base (ms)", _efficiency(lambda e: e.latency_ms["base"]), _sig, None),
    Column("latency unmerged (ms)", _efficiency(lambda e: e.latency_ms["unmerged"]), _sig, "low"),
    Column("latency merged (ms)", _efficiency(lambda e: e.latency_ms.get("merged")), _sig, "low"),
    Column("adapter size (MiB)", _efficiency(lambda e: e.adapter_size_bytes / 2**20), _sig, "low"),
    Column("final val loss", _final_val_loss, _fixed(4), "low", quality=True),
    Column("test loss", _test("loss"), _fixed(4), "low", quality=True),
    Column("test ROUGE-1", _test("rouge1"), _fixed(4), "high", quality=True),
    Column("test ROUGE-2", _test("rouge2"), _fixed(4), "high", quality=True),
    Column("test ROUGE-L", _rouge_l, _fixed(4), "high", quality=True),
    Column("test BLEU", _test("bleu"), _fixed(2), "high", quality=True),
]


def _random(results: list[MethodResult]) -> bool:
    return any(result.random_weights for result in results)


def _meaningless(runs: MethodRuns, column: Column) -> bool:
    return column.quality and _random(runs.results)


def _random_note(results: list[MethodResult]) -> Paragraph | None:
    """What a model with random weights can tell, where one is in the table."""
    if not _random(results):
        return None
    return Paragraph(
        f"{MEANINGLESS}: {RANDOM_WEIGHTS}. A model given by its config alone starts from random weights, so its "
        "speed, memory and size figures are real, while its loss, ROUGE and BLEU mean nothing and are not shown."
    )


def _cell(value: Estimate | None, column: Column) -> str:
    if value is None:
        return "-"
    if not value.half_width:  # one run, or every run gave the same value
        return column.format(value.mean)
    return f"{column.format(value.mean)} ± {column.format(value.half_width)}"


def pick_best(values: list[Estimate | None], better: str, several_seeds: bool) -> tuple[int | None, str]:
    """The index of the best value, or None and a verdict: NO_DIFFERENCE where the best interval overlaps any
    other, "" where fewer than two values compete. With several seeds a single run's interval is unknown, so it
    never differs significantly; where every method ran once, the values compare as they are."""
    present = [i for i, value in enumerate(values) if value is not None]
    if len(present) < 2:
        return None, ""
    if several_seeds:
        values = [v if v is None or v.n > 1 else Estimate(v.mean, math.inf, v.n) for v in values]
    best = (max if better == "high" else min)(present, key=lambda i: values[i].mean)
    if any(overlaps(values[best], values[i]) for i in present if i != best):
        return None, NO_DIFFERENCE
    return best, ""


def results_table(rows: list[tuple[list[str], MethodRuns]], labels: list[str], several_seeds: bool) -> Table:
    """One row per method (its labels first, then with several seeds how many finished), then a 'best' row naming
    each column's winner or NO_DIFFERENCE."""
    values = [[None if _meaningless(runs, column) else runs.estimate(column.value) for column in COLUMNS]
              for _, runs in rows]  # fmt: skip
    lead = [*labels, *(["seeds"] if several_seeds else [])]
    table = Table([*lead, *(column.label for column in COLUMNS)], [], verdict_row=True)
    verdicts = []
    for c, column in enumerate(COLUMNS):
        index, verdict = None, ""
        if column.better:
            index, verdict = pick_best([row[c] for row in values], column.better, several_seeds)
        if index is not None:
            table.best.add((index, len(lead) + c))
            verdict = " / ".join(rows[index][0])
        verdicts.append(verdict)
    for (names, runs), row in zip(rows, values, strict=True):
        cells = [MEANINGLESS if _meaningless(runs, column) else _cell(value, column)
                 for value, column in zip(row, COLUMNS, strict=True)]  # fmt: skip
        if not runs.results:
            cells = ["failed/missing"] + ["-"] * (len(COLUMNS) - 1)
        counts = [f"{len(runs.results)} of {len(runs.runs)}"] if several_seeds else []
        table.rows.append([*names, *counts, *cells])
    table.rows.append(["best", *[""] * (len(lead) - 1), *verdicts])
    return table


def _several_seeds(sections: list[Section]) -> bool:
    return any(len(runs.runs) > 1 for section in sections for runs in section.methods)


def _failures(section: Section) -> list[str]:
    return [
        f"{run.method}, seed {run.seed}: {run.error}"
        for runs in section.methods
        for run in runs.runs
        if run.result is None
    ]


# ---------------------------------------------------------------------------------------------- figures


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _colors(section: Section) -> dict[str, str]:
    return {runs.method: f"C{i % 10}" for i, runs in enumerate(section.methods)}


def _half(value: Estimate) -> float:
    return value.half_width or 0.0  # error bar: none for a single run


EPOCH_PANELS = (
    ("val_loss", "Validation loss per target token"),
    ("rougeL", "Validation ROUGE-L"),
    ("bleu", "Validation BLEU"),
)


def plot_epochs(section: Section) -> bytes:
    """Validation loss, ROUGE-L and BLEU against epoch (0 = before training), one line per method;
    error bars are 95% confidence intervals over seeds."""
    figure, axes = plt.subplots(1, len(EPOCH_PANELS), figsize=(13, 3.8))
    colors = _colors(section)
    for runs in section.methods:
        epochs = sorted({e.epoch for result in runs.results for e in result.epochs})
        for ax, (metric, _) in zip(axes, EPOCH_PANELS, strict=True):
            values = [
                estimate([getattr(e, metric) for result in runs.results for e in result.epochs if e.epoch == epoch])
                for epoch in epochs
            ]
            means, halves = [v.mean for v in values], [_half(v) for v in values]
            ax.errorbar(epochs, means, yerr=halves, fmt="o-", capsize=3, color=colors[runs.method], label=runs.method)
    for ax, (_, title) in zip(axes, EPOCH_PANELS, strict=True):
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Per-epoch validation scores: {section.label}")
    return _png(figure)


PARETO_PANELS = [
    ("trainable parameters", lambda r: r.trainable_params, True),
    ("peak training memory (MiB)", _peak_memory_mib, False),
    ("inference latency (ms; merged where possible)", _deployed_latency, False),
]


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For each (cost, quality) point: no other point costs no more and scores no less, being better in one."""
    return [
        not any(c <= cost and q >= quality and (c < cost or q > quality) for c, q in points) for cost, quality in points
    ]


def _pareto_points(section: Section, cost: Callable) -> list[tuple[str, Estimate, Estimate]]:
    points = []
    for runs in section.methods:
        x, y = runs.estimate(cost), runs.estimate(_rouge_l)
        if x is not None and y is not None:
            points.append((runs.method, x, y))
    return points


def pareto_sets(section: Section) -> dict[str, list[str]]:
    """For each cost axis, the methods on the Pareto front of test ROUGE-L (higher) against that cost (lower)."""
    fronts = {}
    for label, cost, _ in PARETO_PANELS:
        points = _pareto_points(section, cost)
        optimal = pareto_optimal([(x.mean, y.mean) for _, x, y in points])
        fronts[label] = [method for (method, _, _), best in zip(points, optimal, strict=True) if best]
    return fronts


def plot_pareto(section: Section) -> bytes:
    """Test ROUGE-L against each cost; Pareto-optimal methods (on the means) are filled stars joined by a line."""
    figure, axes = plt.subplots(1, len(PARETO_PANELS), figsize=(13, 4))
    colors = _colors(section)
    for ax, (label, cost, log) in zip(axes, PARETO_PANELS, strict=True):
        points = _pareto_points(section, cost)
        optimal = pareto_optimal([(x.mean, y.mean) for _, x, y in points])
        for index, ((method, x, y), best) in enumerate(zip(points, optimal, strict=True)):
            marker = dict(fmt="*", markersize=14) if best else dict(fmt="o", markersize=8, markerfacecolor="white")
            ax.errorbar(x.mean, y.mean, xerr=_half(x), yerr=_half(y), capsize=3, color=colors[method], **marker)
            # Alternate label heights: methods with close figures would otherwise print over each other.
            ax.annotate(method, (x.mean, y.mean), textcoords="offset points", xytext=(8, 6 - 18 * (index % 2)))
        front = sorted((x.mean, y.mean) for (_, x, y), best in zip(points, optimal, strict=True) if best)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="grey", alpha=0.6, zorder=0)
        ax.set(xlabel=label, ylabel="test ROUGE-L", xscale="log" if log else "linear")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: decades only, no crowded minor labels
        ax.grid(alpha=0.3)
    figure.suptitle(f"Quality against cost: {section.label} (stars: Pareto-optimal)")
    return _png(figure)


# ---------------------------------------------------------------------------------------------- examples


def _predictions(run: Run | None) -> dict[str, dict]:
    rows = run.directory.read_predictions() if run and run.directory else []
    return {row["id"]: row for row in rows}


def examples_table(section: Section, count: int = EXAMPLES) -> Table | None:
    """The first test examples: source excerpt, reference and each method's prediction, side by side."""
    predictions = {runs.method: _predictions(runs.first) for runs in section.methods}
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


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _hyperparameters(section: Section) -> str:
    """The training budget the methods share, from the first result's recorded config."""
    config = section.results[0].config
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
    results = section.results
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
            "Methods: " + "; ".join(f"{runs.method}: {method_settings(runs.results[0])}" for runs in section.methods
                                    if runs.results),
            f"Seeds: {seeds}",
            f"Hardware: {_hardware(env)}; training memory measured as {memory}",
            f"Libraries: {_libraries(env)}",
            f"Run date: {_dates(results)}",
            f"Output: {section.output}",
        ]
    )


def _how_to_read(several_seeds: bool) -> Paragraph:
    text = (
        "In each column the best value is marked in bold: highest ROUGE, BLEU and training tokens/s; lowest loss, "
        "memory, latency, adapter size and trainable parameters. The 'best' row names the winner. "
    )
    if several_seeds:
        return Paragraph(
            text + f"Cells are the mean ± the half-width of the {CONFIDENCE:.0%} confidence interval over seeds "
            "(t-distribution, n - 1 degrees of freedom). A best value is marked only when its interval overlaps no "
            f"other method's (a single run has no interval and never counts as different); otherwise the 'best' row "
            f"says {NO_DIFFERENCE}."
        )
    return Paragraph(
        text + "One seed only: there are no confidence intervals, so a marked difference may be run-to-run noise; "
        f"run with --seeds 0,1,2 to test it (the 'best' row then says {NO_DIFFERENCE} where intervals overlap)."
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
        f"{_sig(min(base))} to {_sig(max(base))} ms ({max(base) / min(base):.1f}x). Something else was running "
        "during some measurements, so latency differences of that size are noise: rerun on an idle machine."
    )


def _pareto_text(section: Section) -> Paragraph:
    fronts = pareto_sets(section)
    listed = "; ".join(f"against {label}: {', '.join(methods) or '-'}" for label, methods in fronts.items())
    return Paragraph(f"Pareto-optimal (test ROUGE-L means; no other method is cheaper and at least as good) {listed}.")


def section_blocks(section: Section, index: int) -> list[Block]:
    """Everything about one model: header, table, failures, curves, trade-offs and examples."""
    several = _several_seeds([section])
    blocks: list[Block] = [Heading(2, f"Model: {section.model}"), header(section), Heading(3, "Results")]
    blocks.append(results_table([([runs.method], runs) for runs in section.methods], ["method"], several))
    blocks += filter(None, [_random_note(section.results), latency_caution(section)])
    failures = _failures(section)
    if failures:
        blocks += [Paragraph("Failed or missing runs (left out of the figures above):"), Bullets(failures)]
    if not section.results:
        return blocks
    stem = f"{index}-{''.join(ch if ch.isalnum() else '-' for ch in section.label)[:40]}"
    bars = "; error bars: 95% confidence intervals over seeds" if several else ""
    blocks += [
        Heading(3, "Per-epoch scores"),
        Figure(
            f"{stem}-epochs.png", plot_epochs(section), f"Validation scores against epoch (0: before training){bars}"
        ),
    ]
    if not _random(section.results):  # random weights: no quality to trade against cost
        blocks += [
            Heading(3, "Quality against cost"),
            Figure(f"{stem}-pareto.png", plot_pareto(section), f"Test ROUGE-L against three costs{bars}"),
            _pareto_text(section),
        ]
    examples = examples_table(section)
    if examples is not None:
        blocks += [Heading(3, "Test examples" + (" (each method's first finished seed)" if several else "")), examples]
    curves = [_curves(runs, stem) for runs in section.methods]
    if any(curves):
        blocks += [Heading(3, "Learning curves per run"), *filter(None, curves)]
    return blocks


def _curves(runs: MethodRuns, stem: str) -> Figure | None:
    """The run's own curves.png (written by peftbench run), for its first finished seed."""
    run = runs.first
    path = run.directory.curves if run and run.directory else None
    if path is None or not path.is_file():
        return None
    caption = f"{runs.method}, seed {run.seed}: loss, ROUGE and BLEU against epoch"
    return Figure(f"{stem}-{runs.method}-curves.png", path.read_bytes(), caption)


def report_blocks(sections: list[Section]) -> list[Block]:
    """The whole report: how to read it, a combined table where there are several models, then a section each."""
    several = _several_seeds(sections)
    sources = ", ".join(map(str, dict.fromkeys(section.output for section in sections)))
    blocks: list[Block] = [
        Heading(1, "peftbench comparison report"),
        Paragraph(f"Generated {datetime.now().astimezone().isoformat(timespec='seconds')} from {sources}."),
        _how_to_read(several),
    ]
    if len(sections) > 1:
        rows = [([section.label, runs.method], runs) for section in sections for runs in section.methods]
        blocks += [Heading(2, "All models"), results_table(rows, ["model", "method"], several)]
        blocks += filter(None, [_random_note([r for section in sections for r in section.results])])
    for index, section in enumerate(sections, 1):
        blocks += section_blocks(section, index)
    return blocks


# ---------------------------------------------------------------------------------------------- writing


def write_report(outputs: list[Path], destination: Path | None = None) -> list[Path]:
    """Write report.md (figures in report_files/) and a self-contained report.html into destination (default:
    the first OUTPUT); returns both paths."""
    sections = load_sections(outputs)
    destination = destination or outputs[0]
    blocks = report_blocks(sections)
    try:
        (destination / FILES_DIR).mkdir(parents=True, exist_ok=True)
        for block in blocks:
            if isinstance(block, Figure):
                (destination / FILES_DIR / block.name).write_bytes(block.png)
        write_atomic(destination / "report.md", to_markdown(blocks))
        write_atomic(destination / "report.html", to_html(blocks, "peftbench comparison report"))
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {str(destination)!r}: {exc.strerror or exc}") from None
    return [destination / "report.md", destination / "report.html"]


def write_summary(output: Path) -> str:
    """OUTPUT/summary.md: the header, the comparison table (over the seeds where there are several) and the failed
    runs, for each model in OUTPUT; returns the tables as Markdown (what `peftbench run` prints at the end)."""
    sections = load_sections([output])
    several = _several_seeds(sections)
    blocks: list[Block] = [Heading(1, "peftbench summary"), _how_to_read(several)]
    tables = []
    for section in sections:
        table = results_table([([runs.method], runs) for runs in section.methods], ["method"], several)
        tables.append(table)
        blocks += [Heading(2, f"Model: {section.model}"), header(section), table]
        blocks += filter(None, [_random_note(section.results)])
        failures = _failures(section)
        if failures:
            blocks += [Paragraph("Failed or missing runs (see <method>/failed.json):"), Bullets(failures)]
    write_atomic(rundir.summary_path(output), to_markdown(blocks))
    return to_markdown(tables)
