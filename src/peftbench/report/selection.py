"""How sure a search's selection is: each trial's validation figure with its bootstrap interval over the validation
examples, and whether the selected trial is distinguishable from the runner-up (the best other trial validated as
far). Read from the search's record (MethodResult.search) alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftbench.report.stats import CONFIDENCE, Interval, bootstrap_distribution, bootstrap_p, intervals
from peftbench.task.metrics import METRICS

LOSS = "loss"
# Where a selection lies among the points tried (the search record's "edges"), as the report and the verdict say it.
EDGES = {
    "interior": "interior (a worse trial on either side)",
    "limit": "at the search's limit",
    "end": "at an end of the points tried (the budget ran out)",
}


@dataclass(frozen=True)
class TrialFigure:
    """A trial's selection figure after its last validation, with its interval (None where the record holds no
    per-example values: older records, corpus metrics)."""

    name: str
    lr: float
    lora_r: int | None
    epoch: int
    figure: Interval | None
    value: float


@dataclass(frozen=True)
class Certainty:
    """The selected trial against the runner-up on the same validation: their difference (selected minus runner-up)
    with its interval and p-value, on how many examples."""

    selected: TrialFigure
    runner_up: TrialFigure
    difference: Interval
    p: float
    examples: int

    @property
    def distinguishable(self) -> bool:
        return self.p < 1 - CONFIDENCE


def _values(epoch: dict[str, Any], select_by: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-example values a figure is computed from: (numerators, weights); the loss is summed loss over target
    tokens, a mean metric the mean of its scores."""
    per_example = epoch.get("per_example") or {}
    if select_by == LOSS and "loss" in per_example:
        return np.asarray(per_example["loss"], float), np.asarray(per_example["tokens"], float)
    if select_by != LOSS and select_by in per_example and not METRICS[select_by].corpus:
        values = np.asarray(per_example[select_by], float)
        return values, np.ones_like(values)
    return None


def _statistic(rows: list[tuple[np.ndarray, np.ndarray]]):
    def figures(_seeds: np.ndarray, examples: np.ndarray) -> np.ndarray:
        picked = examples[:, 0, :]  # one seed: [B, N]
        return np.stack(
            [values[picked].sum(-1) / np.maximum(weights[picked].sum(-1), 1e-12) for values, weights in rows]
        )

    return figures


def _last(trial: dict[str, Any], epoch: int | None = None) -> dict[str, Any] | None:
    """A trial's validation at epoch (default: its last; None where it has none there, or failed)."""
    if trial["error"] or not trial["epochs"]:
        return None
    return trial["epochs"][-1] if epoch is None else next((e for e in trial["epochs"] if e["epoch"] == epoch), None)


def trial_figures(search: dict[str, Any], epoch: int | None = None) -> list[TrialFigure]:
    """Every trial that validated (at epoch, default its last): its figure there, with a 95% interval over the
    validation examples."""
    select_by, shown = search["select_by"], []
    for trial in search["trials"]:
        last = _last(trial, epoch)
        if last is None:
            continue
        value = last["val_loss"] if select_by == LOSS else last.get(select_by)
        rows = _values(last, select_by)
        interval = None
        if rows is not None and len(rows[0]) > 1:
            full, distribution = bootstrap_distribution(_statistic([rows]), 1, len(rows[0]))
            interval = intervals(full, distribution)[0]
            if not math.isclose(interval.value, value, rel_tol=1e-6):  # its parts do not give the figure recorded
                interval = None
        shown.append(TrialFigure(trial["name"], trial["lr"], trial["lora_r"], last["epoch"], interval, value))
    return shown


def certainty(search: dict[str, Any]) -> Certainty | None:
    """The selected trial against the best other trial validated at the same epoch, paired over the same validation
    examples; None where there is no such trial, or no per-example values that give the figures recorded."""
    select_by, trials = search["select_by"], {t["name"]: t for t in search["trials"]}
    shown = {f.name: f for f in trial_figures(search) if f.figure is not None}
    chosen = shown.get(search["selected"])
    rivals = [f for f in shown.values() if chosen and f.name != chosen.name and f.epoch == chosen.epoch]
    if not rivals:
        return None
    runner_up = min(rivals, key=lambda f: f.value if select_by == LOSS else -f.value)
    rows = [_values(_last(trials[f.name]), select_by) for f in (chosen, runner_up)]
    if len(rows[0][0]) != len(rows[1][0]):
        return None
    full, distribution = bootstrap_distribution(_statistic(rows), 1, len(rows[0][0]))
    differences = distribution[0:1] - distribution[1:2]
    difference = intervals(full[0:1] - full[1:2], differences)[0]
    return Certainty(chosen, runner_up, difference, float(bootstrap_p(differences)[0]), len(rows[0][0]))
