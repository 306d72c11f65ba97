"""The per-method search (--search): each method's trials (learning rates, and ranks) trained and validated like a
method of its own (its directory, fingerprint, checkpoints, process), the best on validation selected, and that one
alone tested: its result becomes the method's.

The search brackets: it starts from a log-spaced grid around the method's own value and, while the best trial lies at
an end of the points tried, goes a step beyond it (up to --search-limit); with trials of its budget left, it refines
between the best and its better neighbour. Every method gets the same budget (--search-trials), so that none is
favoured by a larger search. With successive halving (the default), the grid is shaped on one epoch, and after each
epoch only a third of the trials (at least two) go on, so that the final choice is still made at the full budget.

Everything the search decides follows from the trials' records (trial.json), so a rerun redoes no finished trial,
reaches the same decisions, and recomputes the method's result only when the selection changes.
"""

from __future__ import annotations

import math
import time
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


@dataclass(frozen=True)
class Axis:
    """A searched setting: the factor between neighbouring points of its default grid (log-spaced; also one step of
    an extension beyond a grid of one point), and whether its values are whole numbers."""

    step: float
    whole: bool


AXES = {"lr": Axis(3.0, whole=False), "lora_r": Axis(2.0, whole=True)}
GRID_OF = {setting: grid for grid, setting in GRIDS.items()}
LOSS = "loss"  # --select-by's validation loss (lower is better); any other choice is a metric (higher is better)
ROOM = 2  # the default budget: the largest starting grid, and room to extend it twice
KEEP = 3  # successive halving keeps a third of the trials after each epoch (Hyperband's eta = 3), at least two


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
    """One point of one method's search: its learning rate, and its rank where the rank is searched."""

    lr: float
    lora_r: int | None = None

    @property
    def name(self) -> str:
        return trial_name(self.lr, self.lora_r)

    def value(self, setting: str) -> float:
        return getattr(self, setting)

    def moved(self, setting: str, value: float) -> Trial:
        """The same point with one setting changed (rounded as trials are: three digits, or a whole number)."""
        return replace(self, **{setting: int(value) if AXES[setting].whole else _round(value)})

    def config(self, config: RunConfig) -> RunConfig:
        """The configuration the trial runs with: the method's, at this point (--force acts on the whole search)."""
        return replace(config, lr=self.lr, lora_r=self.lora_r or config.lora_r, force=False)


def _own_value(config: RunConfig, method: Method, setting: str) -> float:
    """The method's own value of a setting: its learning rate (or --lr), or --lora-r."""
    return learning_rate(method, config.lr) if setting == "lr" else config.lora_r


def grid(config: RunConfig, method: Method, setting: str) -> list[float] | list[int]:
    """One setting's starting grid for a method: the one given for it (YAML: per method), the one given for all, or
    the method's own value and one step either way (lr x 1/3, 1, 3; rank x 1/2, 1, 2)."""
    given = getattr(config, GRID_OF[setting])
    if isinstance(given, dict):
        given = given.get(method.name)
    own, axis = _own_value(config, method, setting), AXES[setting]
    values = given or [own / axis.step, own, own * axis.step]
    if axis.whole:
        return sorted({max(1, round(value)) for value in values})
    return sorted({_round(value) for value in values})


def start_of(config: RunConfig, method: Method) -> list[Trial]:
    """The trials a method's search starts from: every point of its starting grids, by learning rate, then rank."""
    settings = searched(method, config.search)
    rates = grid(config, method, "lr") if "lr" in settings else [_round(learning_rate(method, config.lr))]
    ranks = grid(config, method, "lora_r") if "lora_r" in settings else [None]
    return [Trial(lr, rank) for lr in rates for rank in ranks]


def _largest_start(config: RunConfig) -> tuple[str, int]:
    """The method with the largest starting grid among config's methods, and that grid's trials."""
    sizes = {name: len(start_of(config, METHODS[name])) for name in config.methods}
    largest = max(sizes, key=sizes.get)
    return largest, sizes[largest]


def budget(config: RunConfig) -> int:
    """The trials every method's search gets: --search-trials, or the largest starting grid among the methods with
    room to extend it twice."""
    return config.search_trials or _largest_start(config)[1] + ROOM


@dataclass(frozen=True)
class Plan:
    """What a method's search will do: its starting trials, its budget of trials, how far each searched setting may
    go (low, high) and whether it halves."""

    settings: list[str]
    start: list[Trial]
    budget: int
    bounds: dict[str, tuple[float, float]]
    halving: bool

    def to_dict(self) -> dict[str, Any]:
        bounds = {setting: list(limits) for setting, limits in self.bounds.items()}
        return {"start": [t.name for t in self.start], "budget": self.budget, "bounds": bounds, "halving": self.halving}


def plan_of(config: RunConfig, method: Method) -> Plan:
    """A method's search plan: its starting grid, the common budget, and each setting's limit, --search-limit times
    the method's own value either way (widened to hold a grid given beyond it; ranks from 1)."""
    start, settings = start_of(config, method), searched(method, config.search)
    bounds = {}
    for setting in settings:
        own, values = _own_value(config, method, setting), [t.value(setting) for t in start]
        low, high = min(own / config.search_limit, *values), max(own * config.search_limit, *values)
        bounds[setting] = (max(1, low) if AXES[setting].whole else low, high)
    return Plan(settings, start, budget(config), bounds, config.search_halving)


def _line(best: Trial, tried: list[Trial], setting: str, settings: list[str]) -> list[Trial]:
    """The trials tried that differ from best in setting alone (best included), by that setting's value."""
    others = [other for other in settings if other != setting]
    same = [t for t in tried if all(t.value(other) == best.value(other) for other in others)]
    return sorted(set(same) | {best}, key=lambda t: t.value(setting))


def _beyond(best: Trial, line: list[Trial], setting: str, upward: bool) -> Trial:
    """One step past best along setting: the widest spacing of the points on its line, at least the axis's own step
    (so that refined points between do not shorten it)."""
    value, axis = best.value(setting), AXES[setting]
    values = [t.value(setting) for t in line]
    step = max([axis.step, *(high / low for low, high in zip(values, values[1:], strict=False))])
    moved = value * step if upward else value / step
    if axis.whole:  # a whole step at least, so that the point is new
        moved = max(value + 1, round(moved)) if upward else min(value - 1, round(moved))
    return best.moved(setting, moved)


def _ends(best: Trial, line: list[Trial]) -> list[bool]:
    """Which ends of its line best lies at: [True] the upper, [False] the lower, both where it is alone."""
    return [upward for upward in (True, False) if best == (line[-1] if upward else line[0])]


def edges(best: Trial, tried: list[Trial], plan: Plan) -> dict[str, str]:
    """For each searched setting, where best lies among the trials tried: "interior" (a point tried on either side),
    "limit" (at an end, and a step beyond would cross the search's limit) or "end" (at an end the search could still
    have gone past, had its budget allowed)."""
    found = {}
    for setting in plan.settings:
        line = _line(best, tried, setting, plan.settings)
        beyond = [_beyond(best, line, setting, upward) for upward in _ends(best, line)]
        low, high = plan.bounds[setting]
        inside = any(low <= step.value(setting) <= high for step in beyond)
        found[setting] = "end" if inside else "limit" if beyond else "interior"
    return found


def _extension(best: Trial, tried: list[Trial], plan: Plan) -> Trial | None:
    """A step past best along a setting where it lies at an end of the points tried, within the limit; None where it
    is bracketed (or at the limit) along every setting."""
    for setting in plan.settings:
        line = _line(best, tried, setting, plan.settings)
        low, high = plan.bounds[setting]
        for upward in _ends(best, line):
            step = _beyond(best, line, setting, upward)
            if low <= step.value(setting) <= high and step not in tried:
                return step
    return None


def _refinement(
    best: Trial, tried: list[Trial], plan: Plan, figures: dict[Trial, float], select_by: str
) -> Trial | None:
    """A point between best and a neighbour on its line (the log midpoint), the better neighbour first, along the
    first setting where one is new; None where none is."""
    key = _ranking(select_by)
    for setting in plan.settings:
        line = _line(best, tried, setting, plan.settings)
        at = line.index(best)
        neighbours = [t for t in (line[at - 1] if at else None, line[at + 1] if at + 1 < len(line) else None) if t]
        for neighbour in sorted(neighbours, key=lambda t: key(figures.get(t, math.nan))):
            middle = best.moved(setting, math.sqrt(best.value(setting) * neighbour.value(setting)))
            if middle not in tried and middle.value(setting) not in (best.value(setting), neighbour.value(setting)):
                return middle
    return None


def next_trial(figures: dict[Trial, float], plan: Plan, select_by: str) -> Trial | None:
    """Where the search goes after the trials of figures: past its best where that lies at an end of the points tried
    (bracketing), else between the best and its better neighbour (refining); None where neither finds a new point."""
    tried = list(figures)
    best = best_first(figures, select_by)[0]
    return _extension(best, tried, plan) or _refinement(best, tried, plan, figures, select_by)


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
    largest, count = _largest_start(config)
    if config.search_trials is not None and config.search_trials < count:
        raise ConfigError(
            f"--search-trials {config.search_trials} is fewer than the {count} trials of {largest}'s starting grid; "
            f"give at least {count} (every method gets the same number of trials)"
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
    """How many of count trials go on after a halving rung: a third, rounded up, and at least two (so that the final
    choice is made at the full budget between trials that got there)."""
    return min(count, max(2, math.ceil(count / KEEP)))


def trial_epochs(trials: int, epochs: int, halving: bool) -> int:
    """The epochs all trials train together: trials x epochs, or with halving, each rung's survivors one epoch."""
    if not halving:
        return trials * epochs
    total = 0
    for _ in range(epochs):
        total += trials
        trials = survivors(trials)
    return total


@dataclass
class TrialOutcome:
    """One trial as the search left it: its validations, when it stopped (halving) or why it failed, and the wall
    time of its stints (each a process of its own: start, model load, training and validation)."""

    name: str
    lr: float
    lora_r: int | None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochMetrics.to_dict() of each validation
    stopped_after: int | None = None  # halving stopped it after this epoch
    error: str | None = None
    seconds: float = 0.0


@dataclass
class SearchRecord:
    """What metrics.json keeps of a method's search (MethodResult.search): its plan, the selected trial and where it
    lies in the points tried (edges), every trial, and what the search cost: trial-epochs and wall seconds (the
    trials', and the selected trial's test and measurement)."""

    settings: list[str]
    select_by: str
    halving: bool
    selected: str
    lr: float
    lora_r: int | None
    trials: list[TrialOutcome]
    plan: dict[str, Any]
    edges: dict[str, str]
    trial_epochs: int
    trial_seconds: float
    finish_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Runs one stage of a method (run_method with a Stage) in its own process, recording a failure in its directory:
# units.stage_recorded, given (config, directory, stage).
Runner = Callable[[RunConfig, MethodDir, Stage], None]


def settled(config: RunConfig, result: MethodResult) -> bool:
    """Whether a method's finished result already holds the search config asks for (the same plan: starting grid,
    budget, limits, halving), so that nothing is left to run; True without a search."""
    if not config.search:
        return True
    return bool(result.search) and result.search.get("plan") == plan_of(config, METHODS[result.method]).to_dict()


def reached(directory: TrialDir, config: RunConfig) -> int:
    """The last epoch a trial has trained and validated to, in this configuration (0: none)."""
    if not fingerprints.matches(directory, config):
        return 0
    record = directory.read_record()
    return record.epochs[-1].epoch if record and record.epochs else 0


def _validation_at(record: MethodResult, epoch: int) -> EpochMetrics:
    """A trial's last validation up to epoch (a halving rung; the trial may have trained further before)."""
    return [validation for validation in record.epochs if validation.epoch <= epoch][-1]


class Trials:
    """A method's trials as its search trains them: their directories, outcomes and the errors of those that failed.
    Each stint is timed from outside its process, so that a trial's cost includes starting it."""

    def __init__(self, name: str, config: RunConfig, directory: MethodDir, train: Runner) -> None:
        self.name, self.config, self.directory, self.train = name, config, directory, train
        self.console = Console(config.quiet)
        self.outcomes: dict[Trial, TrialOutcome] = {}
        self.errors: list[Exception] = []
        earlier = directory.read_result() if directory.finished() else None
        self.earlier = {
            t["name"]: t.get("seconds", 0.0) for t in ((earlier.search or {}).get("trials", []) if earlier else [])
        }

    def place(self, trial: Trial) -> TrialDir:
        return rundir.trial_dir(self.directory, trial.name)

    def run(self, trial: Trial, rung: int) -> bool:
        """Train trial up to epoch rung (unless it got there already); whether it has, or failed (recorded)."""
        outcome = self.outcomes.setdefault(
            trial, TrialOutcome(trial.name, trial.lr, trial.lora_r, seconds=self.earlier.get(trial.name, 0.0))
        )
        if outcome.error is not None:
            return False
        started = time.perf_counter()
        error = _train_trial(trial.config(self.config), self.place(trial), rung, self.train)
        outcome.seconds += time.perf_counter() - started
        if error is not None:  # one trial's failure (a diverging learning rate) must not end the search
            self.errors.append(error)
            outcome.error = self.place(trial).read_failure().get("error") or f"{type(error).__name__}: {error}"
            self.console.warn(f"{self.name} {trial.name} failed: {outcome.error}")
        return error is None

    def figures(self, trials: list[Trial], rung: int) -> dict[Trial, float]:
        """Each trial's validation figure at epoch rung (NaN for one that failed)."""
        select_by = self.config.select_by
        return {
            t: math.nan
            if self.outcomes[t].error
            else figure(_validation_at(self.place(t).read_record(), rung), select_by)
            for t in trials
        }


def run_search(name: str, config: RunConfig, directory: MethodDir, train: Runner) -> None:
    """Search one method at one seed: shape its grid on the first rung (bracketing, then refining, up to the budget),
    halve on to the last epoch, select on validation, and finish the selected trial into directory: its test, costs
    and files, with the search's record, as the method's result.

    A trial that fails is recorded and left out; the method fails only when every trial does.
    """
    method, main = METHODS[name], parallel.is_main()
    plan, trials = plan_of(config, method), Trials(name, config, directory, train)
    trials.console.say(
        f"[{name}] search over {', '.join(plan.settings)}: {plan.budget} trials, from "
        f"{', '.join(t.name for t in plan.start)}"
    )
    rungs = list(range(1, config.epochs + 1)) if plan.halving else [config.epochs]
    active = _shape(trials, plan, rungs[0])
    for before, rung in zip(rungs, rungs[1:], strict=False):
        active = _halve(active, trials.figures(active, before), config.select_by, trials.outcomes, before)
        active = [t for t in active if trials.run(t, rung)]
    if not active:
        if main:
            first = next(outcome.error for outcome in trials.outcomes.values() if outcome.error)
            directory.write_failure(name, config.model, config.seed, f"every trial failed (first: {first})")
        raise trials.errors[0]
    figures = trials.figures(active, rungs[-1])
    chosen = best_first(figures, config.select_by)[0]
    record = _record(trials, plan, chosen, config)
    trials.console.say(f"[{name}] selected {chosen.name} on validation {config.select_by} {figures[chosen]:.4f}")
    _finish(name, config, directory, train, chosen, trials.place(chosen), record, trials.console)
    if main:  # trained trials that lost can never be selected again (a new point can only win over them)
        for trial in active:
            if trial != chosen:
                checkpoint.remove(trials.place(trial))


def _shape(trials: Trials, plan: Plan, rung: int) -> list[Trial]:
    """The first rung: the starting grid, then the points next_trial places, until the budget is spent or no new
    point is left; the trials that did not fail."""
    for trial in plan.start:
        trials.run(trial, rung)
    while len(trials.outcomes) < plan.budget:
        tried = list(trials.outcomes)
        if all(trials.outcomes[t].error for t in tried):
            break
        new = next_trial(trials.figures(tried, rung), plan, trials.config.select_by)
        if new is None:
            break
        trials.console.say(f"[{trials.name}] the search goes on at {new.name}")
        trials.run(new, rung)
    return [t for t, outcome in trials.outcomes.items() if outcome.error is None]


def _halve(
    active: list[Trial], figures: dict[Trial, float], select_by: str, outcomes: dict[Trial, TrialOutcome], rung: int
) -> list[Trial]:
    """Successive halving's rung: the better trials on their validation at epoch rung go on (survivors); the others'
    outcomes say where they stopped."""
    kept = best_first(figures, select_by)[: survivors(len(active))]
    for trial in active:
        if trial not in kept:
            outcomes[trial].stopped_after = rung
    return [t for t in active if t in kept]


def _record(trials: Trials, plan: Plan, chosen: Trial, config: RunConfig) -> dict[str, Any]:
    """The search's record (SearchRecord) once it has selected, every trial's validations read from its directory."""
    for trial, outcome in trials.outcomes.items():
        record = trials.place(trial).read_record() if outcome.error is None else None
        outcome.epochs = [epoch.to_dict() for epoch in record.epochs] if record else []
    outcomes = sorted(trials.outcomes.values(), key=lambda o: (o.lr, o.lora_r or 0))
    trained = sum(max((e["epoch"] for e in o.epochs), default=0) for o in outcomes)
    return SearchRecord(
        plan.settings,
        config.select_by,
        plan.halving,
        chosen.name,
        chosen.lr,
        chosen.lora_r,
        outcomes,
        plan.to_dict(),
        edges(chosen, list(trials.outcomes), plan),
        trained,
        sum(o.seconds for o in outcomes),
    ).to_dict()


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
        search["finish_seconds"] = done.search.get("finish_seconds", 0.0)
        if done.search != search and parallel.is_main():
            done.search = search
            directory.write_result(done)
        console.say(f"[{name}] {chosen.name} already tested in {directory.path}; skipped (--force reruns it)")
        return
    trial_config, started = chosen.config(config), time.perf_counter()
    if checkpoint.latest(place) is None:  # tested for an earlier selection, then left behind: train it again
        train(trial_config, place, Stage(until_epoch=config.epochs))
    if parallel.is_main():
        directory.metrics.unlink(missing_ok=True)  # an earlier selection's result is no longer the method's
    train(trial_config, directory, Stage(resume_from=place, search=search))
    finished = directory.read_result() if parallel.is_main() else None
    if finished is not None and finished.search is not None:  # the finishing stage's own wall time, once known
        finished.search["finish_seconds"] = time.perf_counter() - started
        directory.write_result(finished)
