"""The comparison table: its columns, each cell with its interval, and the 'best' row, which names a winner only
where a test says the difference is real. summary.md, the terminal and the report all render this one table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peftbench.report.analysis import Analysis
from peftbench.report.document import Table
from peftbench.report.load import MethodRuns, Section
from peftbench.report.stats import ALPHA, Interval, holm, paired_t_p
from peftbench.store.records import Efficiency, MethodResult
from peftbench.store.rundir import ZERO_SHOT
from peftbench.task.metrics import METRICS

NO_DIFFERENCE = "no significant difference"
NOT_TESTED = ""  # a figure measured once: nothing to test (how_to_read says why the cell is blank)
MEANINGLESS = "n/a (random)"  # a quality cell of a model with random weights


def sig(x: float) -> str:
    """Three significant digits without an exponent, thousands separated: 12,345 / 540 / 5.40 / 0.0123."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _fixed(decimals: int) -> Callable[[float], str]:
    return lambda x: f"{x:,.{decimals}f}"


def _efficiency(get: Callable) -> Callable[[MethodResult], float | None]:
    return lambda r: None if r.efficiency is None else get(r.efficiency)


def _test_loss(r: MethodResult) -> float | None:
    return None if r.test is None else r.test.loss


def _test(metric: str) -> Callable[[MethodResult], float | None]:
    return lambda r: None if r.test is None else r.test.scores.get(metric)


def _final_val_loss(r: MethodResult) -> float | None:
    return r.epochs[-1].val_loss if r.epochs and r.trainable_params else None  # a reference trains no epoch


peak_memory_mib = _efficiency(lambda e: e.peak_train_memory_bytes / 2**20)


def steady_speed(e: Efficiency) -> float:
    """Training tokens/s at steady state (the first steps of each epoch left out: Efficiency.steady_steps); over the
    whole training time in older results, which recorded no steps."""
    steady = e.steady_tokens_per_s
    return e.train_tokens_per_s if steady is None else steady


def deployed_latency(r: MethodResult) -> float | None:
    """Inference latency as deployed: merged where the method can merge, else as trained."""
    return None if r.efficiency is None else r.efficiency.latency_ms[r.efficiency.deployed]


def deployed_memory_mib(r: MethodResult) -> float | None:
    """Inference memory as deployed (merged where the method can merge, else as trained): the model's weights plus
    its generation's working memory (results.Efficiency.model_memory_bytes)."""
    if r.efficiency is None:
        return None
    memory = r.efficiency.model_memory_bytes(r.efficiency.deployed)
    return None if memory is None else memory / 2**20


@dataclass(frozen=True)
class Column:
    """One figure of the main table; better is 'high' or 'low', or None where no value is better than another.

    metric: a test metric with per-example scores (its cells and tests come from the bootstrap, verdict.Analysis).
    exact: the same on every run (counts, sizes), so one run compares as it is; other figures vary between runs and
    are compared only over several seeds (paired t-test).
    quality: a loss or score, which means nothing for a model with random weights.
    """

    label: str
    value: Callable[[MethodResult], float | None]
    format: Callable[[float], str]
    better: str | None
    exact: bool = False
    metric: str | None = None
    quality: bool = False
    choice: bool = False  # a setting a search chose: its distinct values over the runs, never ranked
    held_out: str | None = None  # FORGETTING or TASK: its cells and tests come from the analysis's held-out figures


FORGETTING, TASK = "forgetting", "retention task"


COST_COLUMNS = [
    Column("trainable params", lambda r: r.trainable_params, _fixed(0), "low", exact=True),
    Column(
        "trainable %",
        lambda r: 100 * r.trainable_params / r.total_params if r.total_params else None,
        sig,
        None,
        exact=True,
    ),
    Column("peak train memory (MiB)", peak_memory_mib, sig, "low"),
    Column("train tokens/s (steady)", _efficiency(steady_speed), sig, "high"),
    Column("latency base (ms)", _efficiency(lambda e: e.latency_ms["base"]), sig, None),
    Column("latency unmerged (ms)", _efficiency(lambda e: e.latency_ms["unmerged"]), sig, "low"),
    Column("latency merged (ms)", _efficiency(lambda e: e.latency_ms.get("merged")), sig, "low"),
    Column("inference memory (MiB)", deployed_memory_mib, sig, "low"),
    Column("adapter size (MiB)", _efficiency(lambda e: e.adapter_size_bytes / 2**20), sig, "low", exact=True),
    Column("adapter load (ms)", _efficiency(lambda e: e.adapter_load_ms), sig, "low"),
    Column("final val loss", _final_val_loss, _fixed(4), "low", quality=True),
    Column("test loss", _test_loss, _fixed(4), "low", quality=True),
]


def _searched(setting: str) -> Callable[[MethodResult], float | None]:
    return lambda r: r.search[setting] if r.search and setting in r.search["settings"] else None


SEARCH_COLUMNS = {
    "lr": Column("selected lr", _searched("lr"), "{:g}".format, None, choice=True),
    "lora_r": Column("selected rank", _searched("lora_r"), "{:g}".format, None, choice=True),
}


def _forgetting(r: MethodResult) -> float | None:
    return r.retention.forgetting if r.retention else None


def _task_score(r: MethodResult) -> float | None:
    return r.retention_task.scores[r.retention_task.primary_metric] if r.retention_task else None


def held_out_columns(results: list[MethodResult]) -> list[Column]:
    """What training cost the model, where these results measured it: forgetting on the held-out text, and the
    retention task's primary score."""
    shown = []
    if any(r.retention and r.retention.base_loss is not None for r in results):
        shown.append(
            Column("forgetting (nats/token)", _forgetting, "{:+.3f}".format, "low", quality=True, held_out=FORGETTING)
        )
    task = next((r.retention_task for r in results if r.retention_task), None)
    if task:
        metric = METRICS[task.primary_metric]
        label = f"{task.dataset} {metric.label}"
        shown.append(Column(label, _task_score, _fixed(metric.decimals), "high", quality=True, held_out=TASK))
    return shown


def columns(metrics: list[str], searched: Sequence[str] = (), results: Sequence[MethodResult] = ()) -> list[Column]:
    """The table's columns for results scored on these task metrics: what a search chose (the settings searched),
    the costs and losses, one column each, then what training cost the model (held_out_columns of results)."""
    chosen = [column for setting, column in SEARCH_COLUMNS.items() if setting in searched]
    return (
        chosen
        + COST_COLUMNS
        + [
            Column(f"test {METRICS[m].label}", _test(m), _fixed(METRICS[m].decimals), "high", metric=m, quality=True)
            for m in metrics
        ]
        + held_out_columns(list(results))
    )


def searched_settings(rows: list[MethodRuns]) -> list[str]:
    """The settings any of these rows' results searched (--search), in the order searched."""
    return list(
        dict.fromkeys(s for runs in rows for result in runs.results for s in (result.search or {}).get("settings", []))
    )


def metrics_of(rows: list[MethodRuns]) -> list[str]:
    """The task metrics of these rows' results, in the order chosen (the union where runs differ)."""
    return list(dict.fromkeys(metric for runs in rows for result in runs.results for metric in result.metrics))


def random_weights(results: list[MethodResult]) -> bool:
    """Whether any of these results comes from a model with random weights (its quality figures mean nothing)."""
    return any(result.random_weights for result in results)


def _interval_text(column: Column, interval: Interval) -> str:
    return f"{column.format(interval.value)} ({column.format(interval.low)}–{column.format(interval.high)})"


def _held_out_cell(runs: MethodRuns, column: Column, analysis: Analysis) -> str | None:
    """A held-out column's cell from the analysis (None where it has none for this row): a method's forgetting with
    its interval (the base model's row: its loss, which forgetting is measured from), a row's retention task score."""
    forgetting, task = analysis.forgetting, analysis.retention_task
    if column.held_out == FORGETTING and forgetting is not None and runs.method in forgetting.losses:
        if runs.method == ZERO_SHOT:
            return f"loss {forgetting.loss(ZERO_SHOT).value:.3f}"
        return _interval_text(column, forgetting.differences([runs.method])[runs.method].interval)
    if column.held_out == TASK and task is not None and task.primary in task.scores.get(runs.method, {}):
        return _interval_text(column, task.scores[runs.method][task.primary])
    return None


def _cell(runs: MethodRuns, column: Column, analysis: Analysis | None) -> str:
    if column.quality and random_weights(runs.results):
        return MEANINGLESS
    if column.held_out and analysis is not None:
        shown = _held_out_cell(runs, column, analysis)
        if shown is not None:
            return shown
    if column.choice:  # each seed's search chose on its own: every value chosen, not their mean
        chosen = [value for value in dict.fromkeys(map(column.value, runs.results)) if value is not None]
        return "/".join(map(column.format, chosen)) or "-"
    if column.quality and random_weights(runs.results):
        return MEANINGLESS
    if column.metric and analysis is not None and runs.method in analysis.scores:
        return _interval_text(column, analysis.scores[runs.method][column.metric])
    value = runs.estimate(column.value)
    if value is None:
        return "-"
    if not value.half_width:  # one run, or every run gave the same value
        return column.format(value.mean)
    return f"{column.format(value.mean)} ± {column.format(value.half_width)}"


def _held_out_best(column: Column, analysis: Analysis) -> tuple[str | None, str]:
    """_tested_best for a held-out column: the method with the least forgetting, or the best retention task score,
    where the paired test says it beats every other."""
    if column.held_out == FORGETTING:
        figures = analysis.forgetting
        values = {name: figures.losses[name][0] for name in figures.methods} if figures else {}
        best = min(values, key=values.get) if len(values) > 1 else None
        tests = figures.differences(list(values), best) if best else {}
    else:
        task = analysis.retention_task
        present = [n for n in task.trained if task.primary in task.scores[n]] if task else []
        best = max(present, key=lambda n: task.scores[n][task.primary].value) if len(present) > 1 else None
        tests = {n: d[task.primary] for n, d in task.compare({task.primary: best}, present).items()} if best else {}
    if best is None:
        return None, ""
    tied = [best] + [name for name, test in tests.items() if not test.significant]
    return (best, "") if tied == [best] else (None, f"{NO_DIFFERENCE}: {', '.join(tied)}")


def _tested_best(column: Column, rows: list[MethodRuns], analysis: Analysis | None) -> tuple[str | None, str]:
    """The method with the best value where a test says it beats every other, else None and why not."""
    if column.held_out and analysis is not None:
        return _held_out_best(column, analysis)
    if column.metric and analysis is not None:
        present = [name for name in analysis.trained if column.metric in analysis.scores[name]]
        if not present:
            return None, ""
        best = max(present, key=lambda name: analysis.scores[name][column.metric].value)
        below = analysis.compare({column.metric: best}, present)
        tied = [best] + [name for name in present if name != best and not below[name][column.metric].significant]
        return (best, "") if tied == [best] else (None, f"{NO_DIFFERENCE}: {', '.join(tied)}")
    by_seed = {runs.method: {run.seed: column.value(run.result) for run in runs.finished} for runs in rows}
    by_seed = {name: {s: v for s, v in values.items() if v is not None} for name, values in by_seed.items()}
    present = [name for name, values in by_seed.items() if values]
    if len(present) < 2:
        return None, ""
    mean = {name: sum(by_seed[name].values()) / len(by_seed[name]) for name in present}
    best = (max if column.better == "high" else min)(present, key=mean.get)
    if column.exact:
        return best, ""
    others = [name for name in present if name != best]
    common = [[seed for seed in by_seed[best] if seed in by_seed[name]] for name in others]
    if min(len(seeds) for seeds in common) < 2:
        return None, NOT_TESTED
    p = holm(
        [
            paired_t_p([by_seed[best][s] for s in seeds], [by_seed[name][s] for s in seeds])
            for name, seeds in zip(others, common, strict=True)
        ]
    )
    tied = [best] + [name for name, q in zip(others, p, strict=True) if q >= ALPHA]
    return (best, "") if len(tied) == 1 else (None, f"{NO_DIFFERENCE}: {', '.join(tied)}")


def results_tables(
    rows: list[tuple[list[str], MethodRuns]],
    labels: list[str],
    several_seeds: bool,
    analysis: Analysis | None = None,
    rank: bool = True,
) -> list[Table]:
    """The comparison in two tables that each fit a screen: quality (what a search chose, the test scores with the
    primary metric first, the losses) and costs. One row per method, then per reference (its labels first, then with
    several seeds how many finished); with rank, a last 'best' row naming each column's tested winner."""
    trained = [runs for _, runs in rows if not runs.reference]
    metrics = metrics_of(trained)
    if analysis is not None and analysis.primary in metrics:
        metrics.remove(analysis.primary)
        metrics.insert(0, analysis.primary)
    shown = columns(metrics, searched_settings(trained), [r for runs in trained for r in runs.results])
    # Quality: the test metrics first, then what a search chose and the losses; costs: every other column.
    quality = [c for c in shown if c.metric] + [c for c in shown if (c.quality or c.choice) and not c.metric]
    costs = [c for c in shown if not (c.quality or c.choice)]
    return [_table(rows, labels, several_seeds, analysis, rank, part) for part in (quality, costs)]


def _table(
    rows: list[tuple[list[str], MethodRuns]],
    labels: list[str],
    several_seeds: bool,
    analysis: Analysis | None,
    rank: bool,
    shown: list[Column],
) -> Table:
    lead = [*labels, *(["seeds"] if several_seeds else [])]
    trained = [runs for _, runs in rows if not runs.reference]
    table = Table([*lead, *(column.label for column in shown)], [], verdict_row=rank)
    for names, runs in rows:
        cells = [_cell(runs, column, analysis) for column in shown]
        if not runs.results:
            cells = ["failed/missing"] + ["-"] * (len(shown) - 1)
        counts = [f"{len(runs.results)} of {len(runs.runs)}"] if several_seeds else []
        table.rows.append([*names[:-1], runs.label, *counts, *cells])  # the last label names the row
    if not rank:
        return table
    meaningless = random_weights([result for runs in trained for result in runs.results])
    verdicts = []
    for c, column in enumerate(shown):
        ranked = column.better and not (column.quality and meaningless)  # no winner among meaningless figures
        best, verdict = _tested_best(column, trained, analysis) if ranked else (None, "")
        if best is not None:
            index = next(i for i, (_, runs) in enumerate(rows) if runs.method == best)
            table.best.add((index, len(lead) + c))
            verdict = best
        verdicts.append(verdict)
    table.rows.append(["best", *[""] * (len(lead) - 1), *verdicts])
    return table


def several_seeds(sections: list[Section]) -> bool:
    return any(len(runs.runs) > 1 for section in sections for runs in section.methods)


def failures(section: Section) -> list[str]:
    return [
        f"{run.method}, seed {run.seed}: {run.error}"
        for runs in section.methods
        for run in runs.runs
        if run.result is None
    ]
