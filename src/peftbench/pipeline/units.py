"""The units of work a comparison hands its executor, each run in a process of its own (here or on a Ray worker): the
zero-shot reference, and one method at one seed (its whole run, or its search's stages); and what a failed unit tells
the user. Imports nothing of the report, so that a method's process loads no plotting or statistics library."""

from __future__ import annotations

import functools
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import torch

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.retention import HeldOut
from peftbench.data.splits import Splits
from peftbench.errors import UserError
from peftbench.pipeline.executor import WorkerDied, isolated
from peftbench.pipeline.method_run import Stage, run_method, run_zero_shot, write_records
from peftbench.pipeline.search import run_search
from peftbench.store.records import MethodResult
from peftbench.store.rundir import MethodDir


def zero_shot_unit(directory: MethodDir, splits: Splits, held_out: HeldOut, config: RunConfig) -> None:
    """The zero-shot reference as a unit of work (method_run.run_zero_shot), written into directory."""
    result, rows, task_rows = run_zero_shot(splits, held_out, config)
    if parallel.is_main():
        write_records(directory, result, rows, task_rows)


def method_unit(
    directory: MethodDir, name: str, splits: Splits, held_out: HeldOut, config: RunConfig, base: MethodResult
) -> None:
    """One method at one seed as a unit of work, written into directory: method_run.run_method, or with --search the
    method's search (search.run_search: every trial in a process of its own, then the selected one tested). base:
    the seed's zero-shot result."""
    if config.search:
        run_search(name, config, directory, functools.partial(stage_recorded, name, splits, held_out, base))
    else:
        run_method(name, splits, held_out, config, directory, base)


def stage_recorded(
    name: str,
    splits: Splits,
    held_out: HeldOut,
    base: MethodResult,
    config: RunConfig,
    directory: MethodDir,
    stage: Stage,
) -> None:
    """One stage of a search (a trial's stint, or the selected trial's test) in a process of its own, so that no
    trial's memory peak reaches another's figures; a failure leaves failed.json in directory, then propagates."""
    try:
        isolated(run_method, name, splits, held_out, config, directory, base, stage, in_process=config.in_process)
    except Exception as exc:
        if parallel.is_main():
            message = describe_failure(exc, config.batch_size).message
            directory.write_failure(name, config.model, config.seed, message)
        raise
    if parallel.is_main():
        directory.clear_failure()


@dataclass
class Failure:
    message: str
    user_facing: bool  # a cause the user can fix (exit code 2), not a bug (exit code 1, with a traceback)


def describe_failure(exc: BaseException, batch_size: int) -> Failure:
    """What to tell the user about a failed method: the error, and for running out of memory what to change (the
    run's --batch-size first)."""
    smaller = (
        f"lower --batch-size (now {batch_size}; raise --grad-accum to keep the effective batch), "
        "--eval-batch-size or --max-source-tokens, or add --gradient-checkpointing"
    )
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return Failure(f"out of GPU memory ({str(exc).splitlines()[0] if str(exc) else 'CUDA'}); {smaller}", True)
    if isinstance(exc, BrokenProcessPool | WorkerDied):
        how = str(exc) if isinstance(exc, WorkerDied) else "out of memory, or killed"
        return Failure(
            f"its process died ({how}); {smaller}. Rerunning the same command resumes it from its last checkpoint",
            True,
        )
    if isinstance(exc, UserError):
        return Failure(str(exc), True)
    return Failure(f"{type(exc).__name__}: {exc}", False)
