"""Time: wall seconds per phase with the CPU share other processes took meanwhile, timed steps, and the machine's matmul
rate."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from peftbench.measure.memory import T


def matmul_flops_per_s(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate (FLOP/s), the denominator of MFU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    sync_device()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync_device()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def sync_device() -> None:
    """Wait for queued GPU work, so wall-clock timings cover it; nothing to wait for on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine_cpu_seconds() -> float | None:
    """The CPU seconds every process on this machine has used so far (Linux /proc/stat: all but idle and iowait);
    None where there is no /proc."""
    try:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """The CPU seconds this process (all its threads) has used so far."""
    times = os.times()
    return times.user + times.system


class PhaseTimer:
    """Wall seconds per phase of a run (model load, training, validation, ...), added into seconds: a phase that runs
    several times (validation each epoch) is summed, and a resumed run passes in what earlier sessions measured.

    others: per phase, the CPU seconds that other processes used meanwhile (other work on a shared machine, or under
    torchrun this run's other processes): the times of a phase where that is a large share of the machine's CPU time
    are inflated by the contention, not by the method (other_cpu_share).
    """

    def __init__(self, seconds: dict[str, float] | None = None, others: dict[str, float] | None = None):
        self.seconds = {} if seconds is None else seconds
        self.others = {} if others is None else others

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        sync_device()  # queued GPU work belongs to the phase that queued it
        started, machine, own = time.perf_counter(), machine_cpu_seconds(), own_cpu_seconds()
        try:
            yield
        finally:
            sync_device()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            if machine is not None and (now := machine_cpu_seconds()) is not None:
                other = max(0.0, now - machine - (own_cpu_seconds() - own))
                self.others[name] = self.others.get(name, 0.0) + other

    def other_cpu_share(self) -> dict[str, float] | None:
        """Per phase, the share of the machine's CPU time (wall seconds x CPUs) that other processes used during it:
        0 where the machine was this run's alone; None where it cannot be measured (no /proc)."""
        if self.seconds and not self.others:  # phases ran, none could read /proc/stat
            return None
        cpus = os.cpu_count() or 1
        # /proc/stat counts in ticks (10 ms): one tick in a phase of a few milliseconds would read as over 100%
        return {
            name: round(min(1.0, self.others.get(name, 0.0) / (seconds * cpus)), 3) if seconds > 0 else 0.0
            for name, seconds in self.seconds.items()
        }


def timed_ms(step: Callable[[], T]) -> tuple[T, float]:
    """step's result and the milliseconds it took, queued GPU work included."""
    sync_device()
    start = time.perf_counter()
    result = step()
    sync_device()
    return result, 1000 * (time.perf_counter() - start)
