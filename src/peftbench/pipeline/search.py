"""The per-method search (--search): each method's grid of learning rates (and ranks) as trials, each trained and
validated like a method of its own (its directory, fingerprint, checkpoints, process), the best on validation
selected, and that one alone tested: its result becomes the method's. With --search-halving, successive halving over
epochs: after each epoch only the better half of the trials goes on.

Everything the search decides follows from the trials' records (trial.json), so a rerun redoes no finished trial, a
grid point added later runs alone, and the method's result is recomputed only when the selection changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from peftbench import parallel
from peftbench.config.run_config import GRIDS, RunConfig
from peftbench.errors import ConfigError
from peftbench.methods.registry import METHODS, Method, learning_rate
from peftbench.pipeline.console import Console
from peftbench.pipeline.method_run import Stage
from peftbench.store import fingerprints, rundir
from peftbench.store.records import EpochMetrics, MethodResult
from peftbench.store.rundir import MethodDir, TrialDir
from peftbench.training import checkpoint

# The default grid around a method's own value: its learning rate (or --lr) x 1/3, 1, 3; its rank (--lora-r) x 1/2,
# 1, 2.
DEFAULT_FACTORS = {"lr": (1 / 3, 1.0, 3.0), "lora_r": (0.5, 1.0, 2.0)}
GRID_OF = {setting: grid for grid, setting in GRIDS.items()}
LOSS = "loss"  # --select-by's validation loss (lower is better); any other choice is a metric (higher is better)


def searched(method: Method, search: list[str] | None) -> list[str]:
    """The settings searched for this method: the learning rate for every method, the rank where it has one."""
    return [setting for setting in search or [] if setting == "lr" or setting in method.settings]


def _round(lr: float) -> float:
    """Three significant digits: one value per trial name, and the value the trial runs at."""
    return float(f"{lr:.3g}")


def trial_name(lr: float, rank: int | None) -> str:
    """A trial's directory name: lr-5e-04, lr-1.67e-04, or with a rank lr-5e-04_r-8."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"lr-{mantissa}e{exponent}" + (f"_r-{rank}" if rank is not None else "")


@dataclass(frozen=True)
class Trial:
    """One grid point of one method: its learning rate, and its rank where the rank is searched."""

    lr: float
    lora_r: int | None = None

    @property
    def name(self) -> str:
        return trial_name(self.lr, self.lora_r)

    def config(self, config: RunConfig) -> RunConfig:
        """The configuration the trial runs with: the method's, at this point (--force acts on the whole search)."""
        return replace(config, lr=self.lr, lora_r=self.lora_r or config.lora_r, force=False)


def grid(config: RunConfig, method: Method, setting: str) -> list[float] | list[int]:
    """One setting's grid for a method: the one given for it (YAML: per method), the one given for all, or the
    default factors around the method's own value."""
    given = getattr(config, GRID_OF[setting])
    if isinstance(given, dict):
        given = given.get(method.name)
    if setting == "lr":
        values = given or [learning_rate(method, config.lr) * f for f in DEFAULT_FACTORS["lr"]]
        return sorted({_round(value) for value in values})
    values = given or [max(1, round(config.lora_r * f)) for f in DEFAULT_FACTORS["lora_r"]]
    return sorted({int(value) for value in values})


def trials_of(config: RunConfig, method: Method) -> list[Trial]:
    """Every grid point of a method, by learning rate, then rank."""
    settings = searched(method, config.search)
    rates = grid(config, method, "lr") if "lr" in settings else [_round(learning_rate(method, config.lr))]
    ranks = grid(config, method, "lora_r") if "lora_r" in settings else [None]
    return [Trial(lr, rank) for lr in rates for rank in ranks]


def check(config: RunConfig) -> None:
    """What config.validate cannot check without the registry: a rank search needs a method with a rank, and a
    per-method grid must name a method (and, for ranks, one that has a rank)."""
    if not config.search:
        return
    ranked = [name for name, method in METHODS.items() if "lora_r" in method.settings]
    if "lora_r" in config.search and not any(name in ranked for name in config.methods):
        raise ConfigError(
            f"--search lora_r: none of --methods {','.join(config.methods)} has a rank; methods with "
            f"one: {', '.join(ranked)}"
        )
    for grid_name, setting in GRIDS.items():
        per_method = getattr(config, grid_name)
        for name in per_method if isinstance(per_method, dict) else []:
            valid = ranked if setting == "lora_r" else list(METHODS)
            if name not in valid:
                what = "has no rank" if name in METHODS else "is not a method"
                raise ConfigError(
                    f"{grid_name} gives a grid for {name!r}, which {what}; choose from {', '.join(valid)}"
                )


def figure(epoch: EpochMetrics, select_by: str) -> float:
    """The validation figure trials are compared on."""
    return epoch.val_loss if select_by == LOSS else epoch.scores.get(select_by, math.nan)


def _ranking(select_by: str) -> Callable[[float], float]:
    """A sort key putting the best figure first (lower loss, higher metric) and a missing or NaN one last."""
    sign = 1 if select_by == LOSS else -1
    return lambda value: math.inf if math.isnan(value) else sign * value


def best_first(figures: dict[Trial, float], select_by: str) -> list[Trial]:
    """Trials by their figure, best first; ties keep the grid's order."""
    key = _ranking(select_by)
    return sorted(figures, key=lambda trial: key(figures[trial]))


def survivors(count: int) -> int:
    """How many of count trials go on after a halving rung: the better half, rounded up."""
    return math.ceil(count / 2)


def trial_epochs(trials: int, epochs: int, halving: bool) -> int:
    """The epochs all trials train together: trials x epochs, or with halving, each rung's survivors one epoch."""
    if not halving:
        return trials * epochs
    total = 0
    for _ in range(epochs):
        total += trials
        trials = survivors(trials) if trials > 1 else trials
    return total


@dataclass
class TrialOutcome:
    """One trial as the search left it: its validations, and when it stopped (halving) or why it failed."""

    name: str
    lr: float
    lora_r: int | None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics.to_dict() of each validation
    stopped_after: int | None = None  # halving stopped it after this epoch
    error: str | None = None


@dataclass
class SearchRecord:
    """What metrics.json keeps of a method's search (MethodResult.search)."""

    settings: list[str]
    select_by: str
    halving: bool
    selected: str
    lr: float
    lora_r: int | None
    trials: list[TrialOutcome]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Runs one stage of a method (run_method with a Stage) in its own process, recording a failure in its directory:
# units.stage_recorded, given (config, directory, stage).
Runner = Callable[[RunConfig, MethodDir, Stage], None]


def settled(config: RunConfig, result: MethodResult) -> bool:
    """Whether a method's finished result already holds the search config asks for (every trial of its grid, the
    same halving rule), so that nothing is left to run; True without a search."""
    if not config.search:
        return True
    if not result.search or result.search["halving"] != config.search_halving:
        return False
    grid = {trial.name for trial in trials_of(config, METHODS[result.method])}
    return grid == {trial["name"] for trial in result.search["trials"]}


def reached(directory: TrialDir, config: RunConfig) -> int:
    """The last epoch a trial has trained and validated to, in this configuration (0: none)."""
    if not fingerprints.matches(directory, config):
        return 0
    record = directory.read_record()
    return record.epochs[-1].epoch if record and record.epochs else 0


def _validation_at(record: MethodResult, epoch: int) -> EpochMetrics:
    """A trial's last validation up to epoch (a halving rung; the trial may have trained further before)."""
    return [validation for validation in record.epochs if validation.epoch <= epoch][-1]


def run_search(name: str, config: RunConfig, directory: MethodDir, train: Runner) -> None:
    """Search one method at one seed: train each trial (skipping what is done), select on validation, and finish the
    selected trial into directory: its test, costs and files, with the search's record, as the method's result.

    A trial that fails is recorded and left out; the method fails only when every trial does.
    """
    method, main, console = METHODS[name], parallel.is_main(), Console(config.quiet)
    trials = trials_of(config, method)
    dirs = {trial: rundir.trial_dir(directory, trial.name) for trial in trials}
    active, outcomes = list(trials), {t: TrialOutcome(t.name, t.lr, t.lora_r) for t in trials}
    errors: list[Exception] = []
    console.say(
        f"[{name}] search over {', '.join(searched(method, config.search))}: "
        f"{len(trials)} trials ({', '.join(t.name for t in trials)})",
    )
    rungs = range(1, config.epochs + 1) if config.search_halving else [config.epochs]
    for rung in rungs:
        for trial in list(active):
            error = _train_trial(trial.config(config), dirs[trial], rung, train)
            if error is not None:  # one trial's failure (a diverging learning rate) must not end the search
                errors.append(error)
                outcomes[trial].error = dirs[trial].read_failure().get("error") or f"{type(error).__name__}: {error}"
                active.remove(trial)
                console.warn(f"{name} {trial.name} failed: {outcomes[trial].error}")
        if rung < config.epochs and len(active) > 1:
            active = _halve(active, dirs, rung, config.select_by, outcomes)
    records = {t: dirs[t].read_record() for t in trials if outcomes[t].error is None}
    for trial, record in records.items():
        outcomes[trial].epochs = [epoch.to_dict() for epoch in record.epochs] if record else []
    if not active:
        if main:
            first = next(outcome.error for outcome in outcomes.values() if outcome.error)
            directory.write_failure(name, config.model, config.seed, f"every trial failed (first: {first})")
        raise errors[0]
    figures = {t: figure(records[t].epochs[-1], config.select_by) for t in active}
    chosen = best_first(figures, config.select_by)[0]
    search = SearchRecord(
        searched(method, config.search),
        config.select_by,
        config.search_halving,
        chosen.name,
        chosen.lr,
        chosen.lora_r,
        [outcomes[t] for t in trials],
    ).to_dict()
    console.say(f"[{name}] selected {chosen.name} on validation {config.select_by} {figures[chosen]:.4f}")
    _finish(name, config, directory, train, chosen, dirs[chosen], search, console)
    if main:  # trained trials that lost can never be selected again (a new point can only win over them)
        for trial in active:
            if trial != chosen:
                checkpoint.remove(dirs[trial])


def _train_trial(config: RunConfig, place: TrialDir, rung: int, train: Runner) -> Exception | None:
    """Train one trial up to epoch rung unless it got there already (in this configuration; what of it is damaged
    set aside first, with a warning); the exception that stopped it, if one did."""
    damaged = fingerprints.damage(place) if parallel.is_main() else {}
    if damaged:
        lines = fingerprints.set_aside(place, damaged)
        Console(config.quiet).warn(f"warning: trial {place.name} trains again: " + "; ".join(lines))
    parallel.wait_for_everyone()  # the others look once it is set aside
    if reached(place, config) >= rung:
        return None
    if parallel.is_main():
        if not fingerprints.matches(place, config):
            place.remove()  # another configuration's trial: start it over
        fingerprints.write_fingerprint(place, config)
    parallel.wait_for_everyone()
    try:
        train(config, place, Stage(until_epoch=rung))
    except Exception as exc:
        return exc
    return None


def _halve(
    active: list[Trial], dirs: dict[Trial, TrialDir], rung: int, select_by: str, outcomes: dict[Trial, TrialOutcome]
) -> list[Trial]:
    """Successive halving's rung: the better half of the active trials on their validation at epoch rung goes on;
    the others' outcomes say where they stopped."""
    figures = {t: figure(_validation_at(dirs[t].read_record(), rung), select_by) for t in active}
    kept = best_first(figures, select_by)[: survivors(len(active))]
    for trial in active:
        if trial not in kept:
            outcomes[trial].stopped_after = rung
    return [t for t in active if t in kept]


def _finish(
    name: str,
    config: RunConfig,
    directory: MethodDir,
    train: Runner,
    chosen: Trial,
    place: TrialDir,
    search: dict[str, Any],
    console: Console,
) -> None:
    """Make the chosen trial the method's result: tested from its last checkpoint unless metrics.json already holds
    it (then only the search's record is brought up to date)."""
    done = directory.read_result() if directory.finished() else None
    if done is not None and done.search and done.search["selected"] == chosen.name:
        if done.search != search and parallel.is_main():
            done.search = search
            directory.write_result(done)
        console.say(f"[{name}] {chosen.name} already tested in {directory.path}; skipped (--force reruns it)")
        return
    trial_config = chosen.config(config)
    if checkpoint.latest(place) is None:  # tested for an earlier selection, then left behind: train it again
        train(trial_config, place, Stage(until_epoch=config.epochs))
    if parallel.is_main():
        directory.metrics.unlink(missing_ok=True)  # an earlier selection's result is no longer the method's
    train(trial_config, directory, Stage(resume_from=place, search=search))
