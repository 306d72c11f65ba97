"""Where units of work run: one after another on this machine, each in a fresh process (local), or all at once as
tasks on a Ray cluster (ray), with their files shipped back into --output through Ray's object store.

A unit is one reference or one method (a trial) at one seed: a function that writes one MethodDir. The caller
(pipeline.py) decides what runs and keeps the bookkeeping (skipping finished work, fingerprints, failed.json);
an executor only runs the units it is given and says, per unit, whether it raised.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from peftbench import parallel
from peftbench.config.run_config import EXECUTORS, RunConfig
from peftbench.errors import ConfigError
from peftbench.pipeline import lifecycle
from peftbench.store import rundir
from peftbench.store.rundir import MethodDir

T = TypeVar("T")
PROGRESS_EVERY_S = 30.0  # a progress line at least this often while trials run, and at every change


@dataclass(frozen=True)
class Unit:
    """One unit of work: function(directory, *args) writes its results into directory, and nothing else.

    function must be a module-level function (it is pickled into another process, maybe on another machine), and
    name is unique among the units run together (it keys the outcomes and the progress line).
    """

    name: str
    directory: MethodDir
    function: Callable[..., Any]
    args: tuple = ()
    carried: dict[str, bytes] = field(default_factory=dict)  # files it resumes from, by path in its directory


class WorkerDied(Exception):
    """A unit's process died (killed, out of memory, its machine lost) on every try."""


@dataclass(frozen=True)
class ExecutorOptions:
    """Where units run, and with what (--executor and the --ray-* / --*-per-trial flags)."""

    kind: str = "local"
    in_process: bool = False  # local: every unit in this process (debugging)
    quiet: bool = False
    ray_address: str = "auto"  # auto: an existing cluster, else a local one for this run; local: always a new one
    gpus_per_trial: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    scratch: str | None = None  # where Ray workers write a unit before shipping it; None: the node's temp folder
    fresh: bool = False  # --force: a worker starts from nothing, not from a checkpoint left in its scratch folder

    @classmethod
    def from_config(cls, config: RunConfig) -> ExecutorOptions:
        return cls(
            config.executor,
            config.in_process,
            config.quiet,
            config.ray_address,
            config.gpus_per_trial,
            config.cpus_per_trial,
            config.ray_scratch,
            config.force,
        )


class Executor(Protocol):
    def run_all(self, units: list[Unit]) -> dict[str, Exception | None]:
        """Run every unit; for each unit's name, the exception it raised, or None where it finished."""
        ...


def isolated(function: Callable[..., T], *args, in_process: bool = False) -> T:
    """function(*args) in a fresh process, so that one method's memory peak cannot leak into another's figures.

    Under torchrun or accelerate launch the work runs in the launched processes, which form the process group;
    with in_process (--in-process), in this one. The fresh process ends with this one, however this one ends.
    """
    if in_process or parallel.processes() > 1:
        return function(*args)
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=lifecycle.die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        future = pool.submit(function, *args)
        try:
            return future.result()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the work now; a method's last checkpoint resumes it
            lifecycle.stop_workers(pool)
            raise


class LocalExecutor:
    """Today's behaviour: one unit after another on this machine, each in its own process (isolated)."""

    def __init__(self, options: ExecutorOptions):
        self.in_process = options.in_process

    def run_all(self, units: list[Unit]) -> dict[str, Exception | None]:
        outcomes: dict[str, Exception | None] = {}
        for unit in units:
            try:
                isolated(unit.function, unit.directory, *unit.args, in_process=self.in_process)
                outcomes[unit.name] = None
            except Exception as exc:  # one unit's failure must not cost the others their results
                outcomes[unit.name] = exc
        return outcomes


@contextmanager
def executor(options: ExecutorOptions) -> Iterator[Executor]:
    """The executor options ask for, ready to run units until the block ends (Ray: connected, then let go)."""
    if options.kind == "ray":
        with RayExecutor.connected(options) as ray_executor:
            yield ray_executor
    else:
        yield LocalExecutor(options)


def check_executor(options: ExecutorOptions) -> None:
    """Executor settings that cannot work, found before anything loads: Ray missing, or combined with torchrun."""
    if options.kind != "ray":
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed: pip install 'peftbench[ray]' (or choose "
            f"--executor {' or '.join(e for e in EXECUTORS if e != 'ray')})"
        ) from None
    if parallel.processes() > 1:
        raise ConfigError(
            "--executor ray runs each trial as one process: launch it without torchrun or accelerate "
            "launch (DDP inside one trial needs --executor local)"
        )
    if options.in_process:
        raise ConfigError("--in-process runs every trial in this process: it cannot be combined with --executor ray")


# ---------------------------------------------------------------------------------------------- Ray


def scratch_name(directory: MethodDir) -> str:
    """The worker's folder for a unit: the same for the same unit and configuration (so that a retry or a rerun on
    that node resumes from the checkpoint left there), another for another output folder or configuration."""
    fingerprint = directory.fingerprint.read_text() if directory.fingerprint.is_file() else ""
    digest = hashlib.sha256(f"{directory.path.resolve()}\n{fingerprint}".encode()).hexdigest()[:16]
    return f"peftbench-{directory.name}-{digest}"


def run_on_worker(unit: Unit, folder: str, scratch: str | None, fresh: bool, tracker: Any) -> dict[str, bytes]:
    """A Ray task: run the unit in a scratch copy of its comparison folder on this node (folder: scratch_name, made
    by the driver, starting from the files the unit carries), and return every file it wrote there (by path relative
    to that folder, checkpoints left out) for the driver to write into --output."""
    tracker.started.remote(unit.name)
    comparison = Path(scratch or tempfile.gettempdir()) / folder
    if fresh:
        shutil.rmtree(comparison, ignore_errors=True)
    directory = MethodDir(comparison / unit.directory.name)
    # What the driver's copy holds (a search's finished trials), where this folder (left by a killed try) has none.
    rundir.write_tree(
        directory.path,
        {name: content for name, content in unit.carried.items() if not (directory.path / name).exists()},
    )
    unit.function(directory, *unit.args)
    files = rundir.read_tree(comparison)
    shutil.rmtree(comparison, ignore_errors=True)  # shipped: the driver owns them now
    return files


class _Started:
    """A Ray actor that the tasks tell when they start, so that the progress line can tell running from queued."""

    def __init__(self):
        self.names: set[str] = set()

    def started(self, name: str) -> None:
        self.names.add(name)

    def all(self) -> set[str]:
        return self.names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def progress_line(done: int, running: int, queued: int, failed: int, elapsed: float) -> str:
    """trials done / running / queued / failed, elapsed time and an estimate of the time left (from the pace so
    far, which already reflects how many run at once)."""
    finished = done + failed
    left = running + queued
    eta = f"ETA {_duration(elapsed / finished * left)}" if finished and left else "ETA -" if left else "all finished"
    return (
        f"[ray] trials: {done} done, {running} running, {queued} queued, {failed} failed; "
        f"{_duration(elapsed)} elapsed, {eta}"
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


class RayExecutor:
    """Every unit at once as a Ray task, each in its own worker process with the resources asked for."""

    def __init__(self, ray: Any, options: ExecutorOptions, gpus: float):
        self.ray = ray
        self.options = options
        self.resources = {"num_cpus": options.cpus_per_trial, "num_gpus": gpus}

    @classmethod
    @contextmanager
    def connected(cls, options: ExecutorOptions) -> Iterator[RayExecutor]:
        """Connected to the cluster at options.ray_address (or a local one started for the run) until the block ends."""
        import ray

        _connect(ray, options)
        try:
            yield cls(ray, options, _check_resources(ray, options))
        finally:
            ray.shutdown()  # stops the local Ray this run started; only disconnects from a cluster

    def run_all(self, units: list[Unit]) -> dict[str, Exception | None]:
        if not units:
            return {}
        ray = self.ray
        tracker = ray.remote(num_cpus=0)(_Started).remote()
        # max_calls=1: a fresh worker process per unit, as locally (peak memory is the process's own, and a unit
        # inherits nothing from the one before). max_retries: a worker that dies is retried once (where resources
        # are free); an exception the unit raises is its outcome, not a reason to retry.
        task = ray.remote(max_calls=1)(run_on_worker)
        options = self.options
        refs = {
            task.options(name=unit.name, max_retries=1, retry_exceptions=False, **self.resources).remote(
                unit, scratch_name(unit.directory), options.scratch, options.fresh, tracker
            ): unit
            for unit in units
        }
        outcomes: dict[str, Exception | None] = {}
        pending = list(refs)
        start = last_shown = time.monotonic()
        shown = None
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=PROGRESS_EVERY_S)
                for ref in done:
                    outcomes[refs[ref].name] = self._collect(ref, refs[ref])
                counts = self._counts(outcomes, len(units), ray.get(tracker.all.remote()))
                now = time.monotonic()
                if not self.options.quiet and (counts != shown or now - last_shown >= PROGRESS_EVERY_S):
                    print(progress_line(*counts, now - start), flush=True)
                    shown, last_shown = counts, now
        except KeyboardInterrupt:
            for ref in pending:  # the finished units' files are already in --output
                ray.cancel(ref, force=True)
            print(f"peftbench: cancelled {len(pending)} unfinished trial(s) on Ray", file=sys.stderr, flush=True)
            raise
        finally:
            ray.kill(tracker)
        return outcomes

    def _counts(self, outcomes: dict[str, Exception | None], total: int, started: set[str]) -> tuple[int, ...]:
        failed = sum(error is not None for error in outcomes.values())
        running = len(started - outcomes.keys())
        return len(outcomes) - failed, running, total - len(outcomes) - running, failed

    def _collect(self, ref: Any, unit: Unit) -> Exception | None:
        """A finished task's outcome; its files written into --output (beside the unit's directory)."""
        ray = self.ray
        try:
            files = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the unit raised: its own exception, with the remote traceback
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if cause is not exc:
                cause.add_note(str(exc))
            return cause
        except ray.exceptions.RayError as exc:  # its worker died on both tries (killed, out of memory, node lost)
            return WorkerDied(f"its Ray worker died on the first try and on the retry: {_first_line(exc)}")
        try:
            rundir.write_tree(unit.directory.path.parent, files)
        except (OSError, ConfigError) as exc:
            return exc
        return None


def _connect(ray: Any, options: ExecutorOptions) -> None:
    """ray.init at options.ray_address: auto tries an existing cluster first, then starts a local one."""
    quiet = {"logging_level": logging.ERROR if options.quiet else logging.WARNING, "log_to_driver": not options.quiet}
    address = options.ray_address
    if address == "auto":
        try:
            ray.init(address="auto", **quiet)
            return
        except ConnectionError:
            address = "local"
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError) as exc:
        raise ConfigError(
            f"--ray-address {address!r}: cannot connect to a Ray cluster there ({_first_line(exc)}); "
            "give HOST:PORT of a running head, auto or local (a cluster started with token "
            "authentication also needs RAY_AUTH_MODE=token and its token here)"
        ) from None


def _check_resources(ray: Any, options: ExecutorOptions) -> float:
    """The GPUs per trial (default: 1 where the cluster has GPUs), refused when no node could ever run a trial."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    has_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (1.0 if has_gpus else 0.0)
    if not any(node.get("CPU", 0) >= options.cpus_per_trial and node.get("GPU", 0) >= gpus for node in nodes):
        offered = "; ".join(f"{node.get('CPU', 0):g} CPUs, {node.get('GPU', 0):g} GPUs" for node in nodes)
        raise ConfigError(
            f"no node of the Ray cluster has {options.cpus_per_trial:g} CPUs and {gpus:g} GPUs for one trial "
            f"(nodes: {offered or 'none'}); lower --cpus-per-trial or --gpus-per-trial"
        )
    return gpus
