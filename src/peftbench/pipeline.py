"""The comparison: every configured method at every seed on the same model, data and budget, each method in its own
process; failures isolated per method, finished work skipped, and the summary and report written at the end."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from peftbench import checkpoint, parallel, rundir
from peftbench.config import RunConfig
from peftbench.data import Splits, load_splits
from peftbench.errors import MethodsFailed, UserError
from peftbench.export import EXPORT_KINDS, write_exports
from peftbench.method_run import WHOLE, Stage, epoch_line, run_method, run_zero_shot
from peftbench.preflight import check_before_loading, dry_run, preflight
from peftbench.references import lead_3
from peftbench.report import write_report, write_summary
from peftbench.results import EpochMetrics, MethodResult
from peftbench.rundir import LEAD_3, ZERO_SHOT, MethodDir
from peftbench.search import run_search
from peftbench.tasks import TASKS

T = TypeVar("T")


def isolated(config: RunConfig, function: Callable[..., T], *args) -> T:
    """function(*args) in a fresh process, so that one method's memory peak cannot leak into another's figures.

    Under torchrun or accelerate launch the work runs in the launched processes, which form the process group;
    with --in-process, in this one.
    """
    if config.in_process or parallel.processes() > 1:
        return function(*args)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def references_recorded(splits: Splits, config: RunConfig, comparison: Path) -> EpochMetrics:
    """This seed's reference rows, read back where this configuration already wrote them, else computed and written:
    the zero-shot base model (in its own process: its validation is every method's epoch 0, which is returned) and,
    for summarisation, Lead-3."""
    zero_shot, lead = (rundir.reference_dir(comparison, name) for name in (ZERO_SHOT, LEAD_3))
    if config.force or not (zero_shot.finished() and checkpoint.matches(zero_shot, config)):
        result, rows = isolated(config, run_zero_shot, splits, config)
        _write_reference(zero_shot, config, result, rows)
        if not config.quiet and parallel.is_main():
            primary = config.primary_metric
            print(f"[{ZERO_SHOT}] {epoch_line(result.epochs[0])}; test {primary} {result.test.scores[primary]:.4f}")
    result = zero_shot.read_result()
    extractive = TASKS[config.task].extractive_reference
    if extractive and (config.force or not (lead.finished() and checkpoint.matches(lead, config))):
        _write_reference(lead, config, *lead_3(splits, result.model, config.to_dict()))
    parallel.wait_for_everyone()
    return result.epochs[0]


def _write_reference(directory: MethodDir, config: RunConfig, result: MethodResult, rows: list[dict]) -> None:
    if parallel.is_main():
        directory.remove()
        checkpoint.write_fingerprint(directory, config)
        directory.write_predictions(rows)
        directory.write_result(result)
    parallel.wait_for_everyone()


@dataclass
class Failure:
    message: str
    user_facing: bool  # a cause the user can fix (exit code 2), not a bug (exit code 1, with a traceback)


def describe_failure(exc: BaseException, config: RunConfig) -> Failure:
    """What to tell the user about a failed method: the error, and for running out of memory what to change."""
    smaller = (
        f"lower --batch-size (now {config.batch_size}; raise --grad-accum to keep the effective batch), "
        "--eval-batch-size or --max-source-tokens, or add --gradient-checkpointing"
    )
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return Failure(f"out of GPU memory ({str(exc).splitlines()[0] if str(exc) else 'CUDA'}); {smaller}", True)
    if isinstance(exc, BrokenProcessPool):
        return Failure(
            f"its process died (out of memory, or killed); {smaller}. Rerunning the same command resumes it "
            "from its last checkpoint",
            True,
        )
    if isinstance(exc, UserError):
        return Failure(str(exc), True)
    return Failure(f"{type(exc).__name__}: {exc}", False)


def run_method_recorded(name: str, splits: Splits, config: RunConfig, directory: MethodDir,
                        zero_shot: EpochMetrics | Exception) -> None:  # fmt: skip
    """run_method_isolated, unless the method already finished here (check_output made sure it is this config's);
    a failure leaves failed.json in its directory (then propagates) for the summary and the report."""
    main = parallel.is_main()  # the one process that writes; the others read what it wrote (a shared filesystem)
    finished = not config.force and directory.finished()
    parallel.wait_for_everyone()  # every process decided before the main one changes the directory
    if finished:
        if main:
            checkpoint.remove(directory)  # left behind if the run was killed between metrics.json and its clean-up
            if not config.quiet:
                print(f"[{name}] already finished in {directory.path}; skipped (--force reruns it)")
        return
    if main:
        if config.force:
            directory.remove()  # start over: no checkpoint, result or failure of before
        checkpoint.write_fingerprint(directory, config)
    parallel.wait_for_everyone()  # and before the others look for a checkpoint to resume from
    run_recorded(name, splits, zero_shot, config, directory)


def run_recorded(name: str, splits: Splits, zero_shot: EpochMetrics | Exception, config: RunConfig,
                 directory: MethodDir, stage: Stage = WHOLE) -> None:  # fmt: skip
    """run_method (or the stage of it a search asks for) in its own process; a failure leaves failed.json in
    directory (then propagates) for the summary and the report, a success removes an earlier one."""
    main = parallel.is_main()
    try:
        if isinstance(zero_shot, Exception):  # the base model's evaluation failed: no method can start without it
            raise zero_shot
        isolated(config, run_method, name, splits, config, directory, zero_shot, stage)
    except Exception as exc:
        if main:
            directory.write_failure(name, config.model, config.seed, describe_failure(exc, config).message)
        raise
    if main:
        directory.clear_failure()  # a success replaces an earlier failure in the same place


def run_seed(config: RunConfig, splits: Splits, comparison: Path) -> dict[str, Failure]:
    """One complete comparison with config.seed: every method in its directory under comparison, then its summary.md.

    A failing method does not stop the others: it is reported, marked failed in the summary, and returned.
    """
    failures = {}
    zero_shot: EpochMetrics | Exception
    try:
        zero_shot = references_recorded(splits, config, comparison)
    except Exception as exc:  # reported as each pending method's failure, below
        zero_shot = exc
    for name in config.methods:
        directory = rundir.method_dir(comparison, name)
        try:
            if config.search:  # trials in their own processes, then the selected one tested (search.py)
                run_search(name, config, directory, functools.partial(run_recorded, name, splits, zero_shot))
            else:
                run_method_recorded(name, splits, config, directory, zero_shot)
        except Exception as exc:  # one method's failure must not cost the others their results
            failures[name] = describe_failure(exc, config)
            if not failures[name].user_facing:
                traceback.print_exception(exc)  # a bug: its traceback (the method process's too) helps fix it
            if parallel.is_main():
                print(f"peftbench: {name} failed: {failures[name].message}", file=sys.stderr)
    if parallel.is_main():
        shown = write_summary(comparison)
        if not config.quiet:
            print("\n" + shown + f"\nResults in {comparison}/")
    return failures


def run(config: RunConfig) -> Path:
    """Run every configured method and write OUTPUT/<method>/, OUTPUT/summary.md and the report; returns OUTPUT.

    Everything that can be checked before loading a model is checked first. Finished methods are skipped and
    interrupted ones resume from their last epoch's checkpoint. With several --seeds, each seed is a complete run in
    OUTPUT/seed-<s>/, and OUTPUT/summary.md and the report give each figure's mean and confidence interval over the
    seeds. The data split is the same for every seed. Methods that fail are reported after the others finished.
    """
    output = check_before_loading(config)
    splits = load_splits(config)  # bad data fails here, before a model is loaded
    plan = preflight(config, splits)  # the model's architecture only: targets, lengths, parameter and token counts
    checkpoint.check_output(output, config)  # another configuration's results are never mixed with, or lost to, ours
    if config.dry_run:
        if parallel.is_main():
            dry_run(config, plan, output)
        return output
    seeds = config.seeds or [config.seed]
    if not config.quiet and parallel.is_main():
        print(
            f"peftbench: {', '.join(config.methods)} on {config.model}; data: {splits.description}; "
            f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)} train/val/test examples; "
            f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}; output {output}"
            + ("" if config.output else " (to resume after an interruption, rerun with --output set to it)")
        )
    failures = {}
    several = len(seeds) > 1
    for seed in seeds:
        comparison = rundir.seed_dir(output, seed, several)
        failed = run_seed(dataclasses.replace(config, seed=seed, output=str(comparison)), splits, comparison)
        failures |= {(f"{name} (seed {seed})" if several else name): f for name, f in failed.items()}
    if several and parallel.is_main():
        shown = write_summary(output)
        if not config.quiet:
            print("\nOver all seeds:\n\n" + shown)
    if parallel.is_main():
        write_exports([output], output, EXPORT_KINDS)
        markdown, page = write_report([output])
        if not config.quiet:
            print(f"Report: {markdown} and {page}")
    if failures:
        runs = len(seeds) * len(config.methods)
        listed = "; ".join(f"{name}: {failure.message}" for name, failure in failures.items())
        raise MethodsFailed(
            f"{len(failures)} of {runs} method runs failed ({listed}). The others' results, summary.md and the "
            f"report are in {output}",
            exit_code=2 if all(f.user_facing for f in failures.values()) else 1,
        )
    return output
