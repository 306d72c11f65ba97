"""Forgetting's statistics: each row's per-token loss on the held-out text (store.records.Retention) with a bootstrap
interval over the texts (crossed with the seeds), and each method's rise over the base model's, paired: every row is
resampled on the same texts. Differences between two methods come from the same resamples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftbench.report.load import MethodRuns, Section
from peftbench.report.stats import (
    RESAMPLES,
    Difference,
    Interval,
    bootstrap_distribution,
    bootstrap_p,
    holm,
    intervals,
)
from peftbench.store.rundir import ZERO_SHOT

BASE = ZERO_SHOT  # the row every method's forgetting is measured from: the base model before training


@dataclass
class Forgetting:
    """The held-out text's figures of one section: sample (what the texts are), texts and seeds counted, and each
    row's loss (nats per token over the sample) with its bootstrap distribution over the same resamples."""

    sample: str
    texts: int
    seeds: int
    losses: dict[str, tuple[float, np.ndarray]]  # row -> (loss, bootstrap distribution)

    @property
    def methods(self) -> list[str]:
        """The rows that trained, in the section's order."""
        return [name for name in self.losses if name != BASE]

    def loss(self, row: str) -> Interval:
        """A row's loss per token with its 95% interval."""
        value, spread = self.losses[row]
        return intervals(np.array([value]), spread[None, :])[0]

    def differences(self, rows: list[str], against: str = BASE) -> dict[str, Difference]:
        """Each row's loss minus against's (against=BASE: its forgetting), paired, with two-sided p-values of "no
        difference" adjusted with Holm's method over the rows."""
        rows = [name for name in rows if name != against and name in self.losses]
        if against not in self.losses or not rows:
            return {}
        value = np.array([self.losses[name][0] - self.losses[against][0] for name in rows])
        spread = np.stack([self.losses[name][1] - self.losses[against][1] for name in rows])
        raw = bootstrap_p(spread)
        spans = intervals(value, spread)
        return {
            name: Difference(span, float(p), q)
            for name, span, p, q in zip(rows, spans, raw, holm(raw.tolist()), strict=True)
        }

    def relative(self, row: str) -> Interval:
        """A row's forgetting as a share of the base model's loss, with its interval (from the same resamples)."""
        (value, spread), (base, base_spread) = self.losses[row], self.losses[BASE]
        return intervals(np.array([value / base - 1]), (spread / base_spread - 1)[None, :])[0]


def loss_distributions(
    nats: dict[str, np.ndarray], tokens: dict[str, np.ndarray], resamples: int = RESAMPLES
) -> dict[str, tuple[float, np.ndarray]]:
    """Each row's loss per token (summed nats over summed tokens of the texts drawn, averaged over the seeds drawn)
    on the full sample and over bootstrap resamples shared by every row. nats and tokens: row -> array [seed, text],
    the same texts in the same order for every row."""
    names = list(nats)
    seeds, texts = next(iter(nats.values())).shape

    def statistic(chosen_seeds: np.ndarray, chosen_texts: np.ndarray) -> np.ndarray:
        picked = (chosen_seeds[..., None], chosen_texts)
        out = [nats[n][picked].sum(-1) / np.maximum(tokens[n][picked].sum(-1), 1) for n in names]
        return np.stack([per_seed.mean(axis=-1) for per_seed in out])

    full, distribution = bootstrap_distribution(statistic, seeds, texts, resamples)
    return {name: (float(full[i]), distribution[i]) for i, name in enumerate(names)}


def _rows(runs: MethodRuns, seeds: list[int], ids: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A row's nats and tokens [seed, text] over the seeds (the base model's one run stands for a seed it lacks),
    None where a seed has no retention record on these texts."""
    by_seed = {run.seed: run.result.retention for run in runs.finished if run.result.retention is not None}
    if runs.method == BASE and by_seed:
        by_seed = {seed: by_seed.get(seed, next(iter(by_seed.values()))) for seed in seeds}
    records = [by_seed.get(seed) for seed in seeds]
    if any(record is None or record.ids != ids for record in records):
        return None
    return np.array([r.nats for r in records], dtype=float), np.array([r.tokens for r in records], dtype=float)


def forgetting(section: Section, resamples: int = RESAMPLES) -> Forgetting | None:
    """The section's forgetting figures: the base model and every method measured on the same texts at every seed
    the methods share; None where the base model or every method lacks them."""
    base = next((runs for runs in section.methods if runs.method == BASE), None)
    first = next((run.result.retention for run in base.finished if run.result.retention), None) if base else None
    if first is None:
        return None
    sets = [{run.seed for run in runs.finished if run.result.retention} for runs in section.trained]
    seeds = sorted(set.intersection(*sets), key=lambda s: s or 0) if sets else []
    rows = {runs.method: _rows(runs, seeds, first.ids) for runs in [base, *section.trained]} if seeds else {}
    rows = {name: arrays for name, arrays in rows.items() if arrays is not None}
    if BASE not in rows or len(rows) < 2:
        return None
    losses = loss_distributions({n: a[0] for n, a in rows.items()}, {n: a[1] for n, a in rows.items()}, resamples)
    return Forgetting(first.sample, len(first.ids), len(seeds), losses)
