"""The comparison: every configured method at every seed on the same model, data and budget, each a unit of work that
the executor runs in its own process (here, or on a Ray cluster): the references of every seed first, then every
method; failures isolated per method, finished work skipped, and the summary and report written at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import traceback
from pathlib import Path

from peftbench import parallel
from peftbench.config.run_config import ALL_TRACKERS, TRACKERS, RunConfig
from peftbench.data.retention import HeldOut, load_held_out
from peftbench.data.splits import Splits, load_splits
from peftbench.errors import MethodsFailed, UserError
from peftbench.pipeline.console import Console
from peftbench.pipeline.executor import Executor, ExecutorOptions, Unit, executor
from peftbench.pipeline.method_run import write_records
from peftbench.pipeline.preflight import check_before_loading, dry_run, preflight
from peftbench.pipeline.recording import epoch_line
from peftbench.pipeline.references import REFERENCE_ROWS
from peftbench.pipeline.search import settled
from peftbench.pipeline.units import Failure, describe_failure, method_unit, zero_shot_unit
from peftbench.report.write import Published, publish
from peftbench.store import fingerprints, rundir
from peftbench.store.records import MethodResult
from peftbench.store.rundir import ZERO_SHOT, MethodDir
from peftbench.task.presets import TASKS
from peftbench.training import checkpoint
from peftbench.training.tracking import resolve_trackers


def references_recorded(
    pool: Executor, splits: Splits, held_out: HeldOut, configs: list[RunConfig], console: Console
) -> dict[int, MethodResult | Exception]:
    """Every seed's reference rows, read back where this configuration already wrote them, else computed and
    written: the zero-shot base model (a unit each, all seeds at once: its validation is every method's epoch 0 and
    its figures on held_out every method's forgetting's start; its result is returned per seed, or the exception
    that stopped it) and the task's trivial reference (Lead-3, the majority class)."""
    units = []
    for config in configs:
        zero_shot = rundir.reference_dir(Path(config.output), ZERO_SHOT)
        if not reusable(ZERO_SHOT, zero_shot, config, console):
            _start_reference(zero_shot, config)
            name = _unit_name(ZERO_SHOT, config, configs)
            units.append(Unit(name, zero_shot, zero_shot_unit, (splits, held_out, config)))
    parallel.wait_for_everyone()  # every process decided, and the directories are ready, before any unit runs
    errors = pool.run_all(units)
    parallel.wait_for_everyone()  # the main process wrote what the others read back
    bases: dict[int, MethodResult | Exception] = {}
    for config in configs:
        name = _unit_name(ZERO_SHOT, config, configs)
        try:
            if errors.get(name) is not None:
                raise errors[name]
            result = rundir.reference_dir(Path(config.output), ZERO_SHOT).read_result()
            if name in errors:
                primary = config.primary_metric
                console.say(
                    f"[{ZERO_SHOT}] {epoch_line(result.epochs[0])}; test {primary} {result.test.scores[primary]:.4f}"
                )
            _trivial_recorded(splits, config, result.model, console)
            bases[config.seed] = result
        except Exception as exc:  # reported as each pending method's failure
            bases[config.seed] = exc
    parallel.wait_for_everyone()
    return bases


def _trivial_recorded(splits: Splits, config: RunConfig, model: str, console: Console) -> None:
    """The task's trivial reference row, where its preset names one (no model: built here, by its builder in
    references.REFERENCE_ROWS), unless already written."""
    name = TASKS[config.task].trivial_reference
    if name is None:
        return
    directory = rundir.reference_dir(Path(config.output), name)
    if not reusable(name, directory, config, console):
        _start_reference(directory, config)
        if parallel.is_main():
            write_records(directory, *REFERENCE_ROWS[name](splits, model, config), None)


def _start_reference(directory: MethodDir, config: RunConfig) -> None:
    if parallel.is_main():
        directory.remove()
        fingerprints.write_fingerprint(directory, config)


def _unit_name(name: str, config: RunConfig, configs: list[RunConfig]) -> str:
    """A method's (or reference's) name, with its seed where the run has several."""
    return f"{name} (seed {config.seed})" if len(configs) > 1 else name


def reusable(name: str, directory: MethodDir, config: RunConfig, console: Console) -> bool:
    """Whether directory holds this configuration's finished work, whole: never with --force. Whatever of it is
    damaged (fingerprints.damage) is set aside first by the main process, with a warning naming each file: the work
    is then done again, the same way for methods, references and their every record."""
    if config.force:
        return False
    damaged = fingerprints.damage(directory)
    if damaged and parallel.is_main():
        lines = fingerprints.set_aside(directory, damaged)
        console.warn(f"warning: {name} is done again: " + "; ".join(lines))
    return not damaged and directory.finished() and fingerprints.matches(directory, config)


def prepare_method(name: str, config: RunConfig, directory: MethodDir, console: Console) -> bool:
    """Ready a method's directory for this run, and say whether the method runs: not when it already finished whole
    (check_output made sure it is this config's) with --search over the grid asked for; then its checkpoints (left by
    a run killed after metrics.json) go. A method that runs gets peftbench's files in its directory removed with
    --force, and its fingerprint written."""
    main = parallel.is_main()  # the one process that writes; the others read what it wrote (a shared filesystem)
    finished = reusable(name, directory, config, console) and settled(config, directory.read_result())
    parallel.wait_for_everyone()  # every process decided before the main one changes the directory
    if finished:
        if main:
            checkpoint.remove(directory)  # left behind if the run was killed between metrics.json and its clean-up
        console.say(f"[{name}] already finished in {directory.path}; skipped (--force reruns it)")
        return False
    if main:
        if config.force:
            directory.remove()  # start over: no checkpoint, result or failure of before
        fingerprints.write_fingerprint(directory, config)
    parallel.wait_for_everyone()  # and before the others look for a checkpoint to resume from
    return True


def record_outcome(
    name: str, config: RunConfig, directory: MethodDir, error: Exception | None, console: Console
) -> Failure | None:
    """A finished method clears an earlier failure in its directory; a failed one leaves failed.json there, for the
    summary and the report, and is reported here."""
    main = parallel.is_main()
    if error is None:
        if main:
            directory.clear_failure()  # a success replaces an earlier failure in the same place
        return None
    failure = describe_failure(error, config.batch_size)
    if main:
        directory.write_failure(directory.name, config.model, config.seed, failure.message)
    if not failure.user_facing:
        traceback.print_exception(error)  # a bug: its traceback (the method process's too) helps fix it
    console.warn(f"{name} failed: {failure.message}")
    return failure


def methods_recorded(
    pool: Executor,
    splits: Splits,
    held_out: HeldOut,
    configs: list[RunConfig],
    bases: dict[int, MethodResult | Exception],
    console: Console,
) -> dict[str, Failure]:
    """Every method at every seed that has not finished yet, run as units all at once; a failing method does not
    stop the others: it is reported, marked failed in the summary, and returned (by name, with its seed if several)."""
    pending: dict[str, tuple[RunConfig, MethodDir]] = {}
    units, errors = [], {}
    for config in configs:
        for method in config.methods:
            name = _unit_name(method, config, configs)
            directory = rundir.method_dir(Path(config.output), method)
            if not prepare_method(name, config, directory, console):
                continue
            pending[name] = (config, directory)
            base = bases[config.seed]
            if isinstance(base, Exception):  # the base model's evaluation failed: no method can start without it
                errors[name] = base
            else:
                carried = directory.search_state() if config.search else {}  # a Ray worker resumes the search from it
                args = (method, splits, held_out, config, base)
                units.append(Unit(name, directory, method_unit, args, carried))
    errors |= pool.run_all(units)
    failures = {name: record_outcome(name, *pending[name], errors[name], console) for name in pending}
    return {name: failure for name, failure in failures.items() if failure is not None}


def run(config: RunConfig) -> Path:
    """Run every configured method and write OUTPUT/<method>/, OUTPUT/summary.md and the report; returns OUTPUT.

    Everything that can be checked before loading a model is checked first. Finished methods are skipped and
    interrupted ones resume from their last epoch's checkpoint. With several --seeds, each seed is a complete run in
    OUTPUT/seed-<s>/, and OUTPUT/summary.md and the report give each figure's mean and confidence interval over the
    seeds. The data split is the same for every seed. Methods that fail are reported after the others finished.
    One run at a time holds OUTPUT (the main process, for the whole run; not a dry run, which writes nothing).
    """
    console = Console(config.quiet)
    if config.report_to == [ALL_TRACKERS]:
        found = resolve_trackers(config.report_to)
        installed = f"reporting to {', '.join(found)} (the trackers installed)"
        console.say(
            "peftbench: --report-to all: "
            + (installed if found else f"none of {', '.join(TRACKERS)} is installed: results only in --output")
        )
    config = dataclasses.replace(config, report_to=resolve_trackers(config.report_to))  # all, none: as named
    given = Path(config.output) if config.output else None
    existed = given is not None and given.exists()
    output = check_before_loading(config)
    try:
        with rundir.locked(output) if parallel.is_main() and not config.dry_run else contextlib.nullcontext():
            return compare(config, output, console)
    except UserError:
        if not existed and parallel.is_main():
            rundir.remove_if_unused(output)  # bad data or model: no empty folder left behind
        raise


def show_published(published: Published, console: Console) -> None:
    """What the end of a run prints: each seed's verdict and table, those over all seeds, where the report is."""
    for comparison, shown in published.summaries.items():
        console.say("\n" + shown + f"\nResults in {comparison}/")
    if published.over_seeds is not None:
        console.say("\nOver all seeds:\n\n" + published.over_seeds)
    markdown, page = published.report
    console.say(f"Report: {markdown} and {page}")


def compare(config: RunConfig, output: Path, console: Console) -> Path:
    """run's work once OUTPUT is checked and held: data, model checks, then every seed's comparison and the report."""
    splits = load_splits(config)  # bad data fails here, before a model is loaded
    held_out = load_held_out(config)  # and bad retention data
    note, loud = splits.rows.describe()
    if note and loud:
        console.warn(f"warning: {note}")
    elif note:
        console.say(f"peftbench: {note}")
    plan = preflight(config, splits)  # the model's architecture only: targets, lengths, parameter and token counts
    fingerprints.check_output(output, config)  # another configuration's results are never mixed with, or lost to, ours
    if config.dry_run:
        if parallel.is_main():
            dry_run(config, plan, output)
        return output
    seeds = config.seeds or [config.seed]
    console.say(
        f"peftbench: {', '.join(config.methods)} on {config.model}; data: {splits.description}; "
        f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)} train/val/test examples; "
        f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}; output {output}"
        + ("" if config.output else " (to resume after an interruption, rerun with --output set to it)")
    )
    several = len(seeds) > 1
    configs = [
        dataclasses.replace(config, seed=seed, output=str(rundir.seed_dir(output, seed, several))) for seed in seeds
    ]
    with executor(ExecutorOptions.from_config(config)) as pool:
        bases = references_recorded(pool, splits, held_out, configs, console)  # first: every method's epoch 0
        failures = methods_recorded(pool, splits, held_out, configs, bases, console)
    if parallel.is_main():
        show_published(publish(output, [Path(c.output) for c in configs]), console)
    if failures:
        runs = len(seeds) * len(config.methods)
        listed = "; ".join(f"{name}: {failure.message}" for name, failure in failures.items())
        raise MethodsFailed(
            f"{len(failures)} of {runs} method runs failed ({listed}). The others' results, summary.md and the "
            f"report are in {output}",
            exit_code=2 if all(f.user_facing for f in failures.values()) else 1,
        )
    return output
