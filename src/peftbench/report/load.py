"""Results on disk, grouped for comparison: one section per model and output directory, one row per method (and per
reference: the zero-shot base model, Lead-3), each over the seeds run, with every test example's scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from peftbench.errors import ConfigError
from peftbench.methods.registry import METHODS
from peftbench.report.curves import plot_curves
from peftbench.report.stats import Estimate, estimate
from peftbench.store import rundir
from peftbench.store.records import MethodResult
from peftbench.store.rundir import REFERENCES, MethodDir
from peftbench.task.metrics import METRICS, per_example, statistics


@dataclass
class ExampleScores:
    """One run's test examples, by id: each example's score on every mean metric, and its sufficient statistics on
    every corpus metric (metrics.statistics), as arrays whose first axis is the example (after stacking seeds, the
    seed and then the example)."""

    ids: list[str]
    values: dict[str, np.ndarray]  # mean metric -> one value per example
    statistics: dict[str, np.ndarray]  # corpus metric -> one row of statistics per example

    def reordered(self, ids: list[str]) -> ExampleScores:
        """The same scores in the order of ids (which must be this run's ids)."""
        position = {example: index for index, example in enumerate(self.ids)}
        order = np.array([position[example] for example in ids])
        return ExampleScores(
            ids, {k: v[order] for k, v in self.values.items()}, {k: v[order] for k, v in self.statistics.items()}
        )


def _example_scores(rows: list[dict], metrics: list[str]) -> ExampleScores | None:
    """Per-example scores from predictions.jsonl rows: mean metrics as stored (those of the generated text recomputed
    for older files), corpus metrics' statistics from the texts and every reference."""
    if not rows:
        return None
    predictions = [row["prediction"] for row in rows]
    references = [row.get("references") or [row["reference"]] for row in rows]
    values, stats = {}, {}
    for name in metrics:
        if METRICS[name].corpus:
            stats[name] = statistics(name, predictions, references)
        elif all(name in row for row in rows):
            values[name] = np.asarray([row[name] for row in rows], dtype=float)
        elif not METRICS[name].likelihood and not METRICS[name].choices:
            values[name] = np.asarray(per_example(name, predictions, references), dtype=float)
    return ExampleScores([str(row["id"]) for row in rows], values, stats)


@dataclass
class Run:
    """One method (or reference) at one seed: its results, or why there are none (error)."""

    method: str
    seed: int | None
    model: str | None
    result: MethodResult | None = None
    directory: MethodDir | None = None
    error: str | None = None
    damaged: dict[str, str] = field(default_factory=dict)  # file -> why it cannot be used (MethodDir.damage)

    @cached_property
    def examples(self) -> ExampleScores | None:
        """Its test examples' scores (None without predictions)."""
        if self.result is None or self.directory is None:
            return None
        return _example_scores(self.directory.read_predictions(), self.result.metrics)

    @cached_property
    def task_examples(self) -> ExampleScores | None:
        """Its retention task's examples' scores (None where it scored none)."""
        if self.result is None or self.directory is None or self.result.retention_task is None:
            return None
        metrics = list(self.result.retention_task.scores)
        return _example_scores(self.directory.read_predictions(retention_task=True), metrics)

    @cached_property
    def curves(self) -> bytes | None:
        """Its learning curves as PNG bytes, drawn once from its records (None without a result)."""
        if self.result is None or self.directory is None:
            return None
        return plot_curves(self.result, self.directory.read_log())


@dataclass
class MethodRuns:
    """One method (or reference) of one model, over all seeds; runs without a result are failed or missing."""

    method: str
    runs: list[Run]
    reference: bool = False  # a reference row (no training): the zero-shot base model or Lead-3

    @property
    def label(self) -> str:
        return f"{self.method} (reference)" if self.reference else self.method

    @property
    def results(self) -> list[MethodResult]:
        return [run.result for run in self.runs if run.result is not None]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.result is not None]

    @property
    def first(self) -> Run | None:
        """The successful run with the lowest seed (its predictions and curves are shown)."""
        done = self.finished
        return min(done, key=lambda run: run.seed or 0) if done else None

    def estimate(self, value: Callable[[MethodResult], float | None]) -> Estimate | None:
        """Mean and confidence interval of one figure over the successful runs (None where no run has it)."""
        values = [v for v in map(value, self.results) if v is not None]
        return estimate(values) if values else None


@dataclass
class Section:
    """One model from one OUTPUT directory: its methods and references, each over the seeds run."""

    model: str
    output: Path
    seeds: list[int]
    methods: list[MethodRuns]  # the methods first (in the registry's order), then the references
    label: str = ""  # short name in the combined table

    @property
    def results(self) -> list[MethodResult]:
        return [result for runs in self.methods for result in runs.results]

    @property
    def damaged(self) -> list[str]:
        """Each file the report could not use, with its path and why."""
        return [
            f"{run.directory.path / name}: {why}"
            for runs in self.methods
            for run in runs.runs
            if run.directory is not None
            for name, why in run.damaged.items()
        ]

    @property
    def trained(self) -> list[MethodRuns]:
        """The methods (rows that trained), without the references."""
        return [runs for runs in self.methods if not runs.reference]


# The files of a finished result that the report reads (and checks against their checksums: MethodDir.damage).
READ = (rundir.METRICS_FILE, rundir.PREDICTIONS_FILE, rundir.RETENTION_TASK_FILE, rundir.LOG_FILE)


def _load_run(directory: MethodDir) -> Run:
    """A method directory: its metrics.json, else what failed.json says, else 'failed or missing'. A result whose
    files the report reads are damaged is left out, each damaged file named in damaged."""
    if directory.finished():
        damaged = directory.damage(READ)
        if damaged:
            named = "; ".join(f"{name} {why}" for name, why in damaged.items())
            return Run(directory.name, None, None, None, directory, f"damaged: {named}", damaged)
        result = directory.read_result()
        return Run(result.method, result.config.get("seed"), result.model, result, directory)
    failure = directory.read_failure()
    error = failure.get("error", "no metrics.json (the run failed or was interrupted)")
    return Run(directory.name, failure.get("seed"), failure.get("model"), None, directory, f"failed: {error}")


def _load_comparison(comparison: Path) -> list[Run]:
    """The runs of one single-seed comparison directory, its references' included. Failures take the model of their
    siblings (failed.json has the model as given, e.g. 'embedded', not as loaded), and their seed where failed.json
    lacks one."""
    directories = [d for d in rundir.method_dirs(comparison) if d.has_run()]
    directories += [d for d in rundir.reference_dirs(comparison) if d.finished()]
    runs = [_load_run(directory) for directory in directories]
    known = next((run for run in runs if run.result is not None and run.method not in REFERENCES), None)
    for run in runs:
        run.model = known.model if known else run.model or "unknown model"
        run.seed = run.seed if run.seed is not None or known is None else known.seed
    return runs


def _order(method: str) -> tuple[int, str]:
    """The registry's order (the baseline first), then the references; methods it does not know after them."""
    names = [*METHODS, *REFERENCES]
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
        if method not in REFERENCES:
            mine += [Run(method, seed, model, error="missing: no directory for this seed") for seed in sorted(absent)]
        methods.append(MethodRuns(method, sorted(mine, key=lambda run: run.seed or 0), method in REFERENCES))
    return Section(model, output, sorted(seeds), methods)


def load_sections(outputs: list[Path]) -> list[Section]:
    """Every model's results under each OUTPUT (OUTPUT/<method>/ and OUTPUT/seed-<s>/<method>/), one section each."""
    sections = []
    for output in outputs:
        if not output.is_dir():
            raise ConfigError(f"{str(output)!r} is not a directory; give peftbench run's output directory")
        runs = [run for comparison, _ in rundir.comparisons(output) for run in _load_comparison(comparison)]
        if not any(run.method not in REFERENCES for run in runs):
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
