"""Measurement: peak memory, the matmul rate, phase times, latency, merged-vs-unmerged agreement, the memory a model's
weights hold, and what serving adapters costs (loading one onto a base model, switching between two, merging)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from peft import PeftModel
from torch import nn

from peftbench.data.splits import to_device
from peftbench.model.layout import Encoded, Layout

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> bool:
    """Start a new peak-memory window: CUDA's allocator peak, and on Linux the process's resident high-water mark.
    Returns whether the window is fresh (False: on a CPU outside Linux the peak covers the whole process)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return torch.cuda.is_available()  # elsewhere each method's own process keeps the training peak its own
    return True


def _status_bytes(field: str) -> int | None:
    """A memory figure of this process from Linux's /proc/self/status (VmHWM, VmRSS), None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory_bytes() -> int:
    """Peak since reset_peak_memory(): CUDA max_memory_allocated on a GPU, else peak resident memory (RSS)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def memory_now_bytes() -> int | None:
    """What the process holds now, as peak_memory_bytes counts it: CUDA memory_allocated on a GPU, else the resident
    memory (Linux VmRSS); None where it cannot be read."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return _status_bytes("VmRSS")


T = TypeVar("T")


@dataclass(frozen=True)
class MemoryWindow:
    """The peak of a fresh memory window (peak_memory_bytes: all the process holds), and how far it rose above what
    the process held as the window opened (None where no fresh window could be opened)."""

    peak_bytes: int
    increase_bytes: int | None


def _return_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim), so that memory freed earlier and
    reused by the work counts in its resident increase, as it would in a process of its own; elsewhere nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def in_memory_window(work: Callable[[], T]) -> tuple[T, MemoryWindow]:
    """work() in a fresh peak-memory window; returns its result and the window's peak and increase."""
    _return_free_memory()
    fresh = reset_peak_memory()
    start = memory_now_bytes() if fresh else None
    result = work()
    peak = peak_memory_bytes()
    return result, MemoryWindow(peak, None if start is None else max(peak - start, 0))


@torch.no_grad()
def read_weights(model: nn.Module) -> nn.Module:
    """model, each of its weights read once: a model loaded from safetensors may map its file lazily and read it at
    first use, which would then fall into whatever is measured first."""
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.sum()
    return model


def weights_bytes(model: nn.Module) -> int:
    """Bytes a model's parameters and buffers hold in memory, each tensor once (tied weights count once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


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


def merged_copy(model):
    """A copy of a PEFT model with its adapter merged into the weights (merge_and_unload); the original is kept."""
    return copy.deepcopy(model).merge_and_unload()


def prompt_batch(items: list[Encoded], layout: Layout, device) -> dict[str, torch.Tensor]:
    """The prompts of items as one generation batch on device."""
    return to_device(layout.collate(items, with_targets=False), device)


@torch.inference_mode()
def warm_up(model, items: list[Encoded], layout: Layout, device) -> None:
    """One forward pass over the first of items, prompt and target: the weights are read into memory (a model loaded
    from safetensors may map its file lazily) and the compute paths set up, so that a memory window opened next holds
    what the model's own work adds."""
    model.eval()
    inputs, _ = layout.logit_inputs(to_device(layout.collate(items[:1]), device))
    model(**inputs)


@torch.inference_mode()
def latency_ms(model, items: list[Encoded], layout: Layout, new_tokens: int, device) -> float:
    """Median milliseconds to generate exactly new_tokens tokens for one prompt at batch size 1 (after a warm-up)."""
    model.eval()
    # A full-length warm-up: a short one left the first timed prompt paying for cold caches and allocations.
    layout.generate(model, prompt_batch(items[:1], layout, device), new_tokens, fixed_length=True)
    times = []
    for item in items:
        batch = prompt_batch([item], layout, device)
        sync_device()
        start = time.perf_counter()
        layout.generate(model, batch, new_tokens, fixed_length=True)
        sync_device()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def merge_agreement(unmerged, merged, items: list[Encoded], layout: Layout, new_tokens: int, device):
    """Whether merged and unmerged adapters give the same greedy tokens, and their largest logit difference."""
    unmerged.eval()
    merged.eval()
    prompts = prompt_batch(items, layout, device)
    same_tokens = layout.generate(unmerged, prompts, new_tokens) == layout.generate(merged, prompts, new_tokens)
    inputs, real = layout.logit_inputs(to_device(layout.collate(items), device))
    diff = (unmerged(**inputs).logits.float() - merged(**inputs).logits.float()).abs()
    return {"tokens_equal": same_tokens, "max_logit_diff": float(diff[real].max())}


SERVING_REPEATS = 3  # each serving figure is the median of this many timings


@dataclass(frozen=True)
class ServingCosts:
    """What serving a trained method costs, medians over SERVING_REPEATS, in milliseconds: loading it (an adapter onto
    a loaded base model; for full fine-tuning the saved model), switching between two loaded adapters, and merging
    then unmerging the active adapter (None where it does not apply); and the bytes the first and a second loaded
    adapter add to the base model in memory (None for full fine-tuning); everything None where the saved adapter
    does not load back."""

    load_ms: float | None = None
    swap_ms: float | None = None
    merge_unmerge_ms: float | None = None
    adapter_bytes: dict[str, int] | None = None


def timed_ms(step: Callable[[], T]) -> tuple[T, float]:
    """step's result and the milliseconds it took, queued GPU work included."""
    sync_device()
    start = time.perf_counter()
    result = step()
    sync_device()
    return result, 1000 * (time.perf_counter() - start)


def load_adapters(base: nn.Module, paths: list[Path]) -> PeftModel:
    """The adapters saved at paths on one base model (changed in place), named "0", "1", ... in that order: the first
    loaded with PeftModel.from_pretrained and active, the others added with load_adapter; in eval mode."""
    model = PeftModel.from_pretrained(base, paths[0], adapter_name="0")
    for index, path in enumerate(paths[1:], 1):
        model.load_adapter(path, adapter_name=str(index))
    return model.eval()


def merge_and_unmerge(model: PeftModel) -> None:
    """Fold the active adapter into the base weights, then take it out again (how a merged server swaps tasks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # peft warns that IA3's unmerge is inexact; this only times it
        model.merge_adapter()
        model.unmerge_adapter()


def model_load_costs(load: Callable[[], nn.Module], repeats: int = SERVING_REPEATS) -> ServingCosts:
    """Full fine-tuning's serving cost: loading the saved model (load) onto the device."""
    return ServingCosts(statistics.median(timed_ms(load)[1] for _ in range(repeats)))


def adapter_costs(
    load_base: Callable[[], nn.Module], path: Path, mergeable: bool, repeats: int = SERVING_REPEATS
) -> ServingCosts:
    """An adapter's serving costs: PeftModel.from_pretrained of the adapter saved at path onto a loaded base model (a
    fresh one from load_base each time, untimed); then, with a second copy of the same adapter loaded under another
    name, set_adapter from one to the other and back, and merge_and_unmerge where the method merges."""
    loads = []
    for _ in range(repeats):
        base = load_base()
        base_bytes = weights_bytes(base)  # before from_pretrained adds the adapter to it in place
        served, ms = timed_ms(partial(load_adapters, base, [path]))
        loads.append(ms)
    one = weights_bytes(served)
    served.load_adapter(path, adapter_name="1")
    two = weights_bytes(served)
    swaps = [timed_ms(partial(served.set_adapter, name))[1] for _ in range(repeats) for name in ("1", "0")]
    merges = [timed_ms(partial(merge_and_unmerge, served))[1] for _ in range(repeats)] if mergeable else None
    return ServingCosts(
        load_ms=statistics.median(loads),
        swap_ms=statistics.median(swaps),
        merge_unmerge_ms=statistics.median(merges) if merges else None,
        adapter_bytes={"first": one - base_bytes, "next": two - one},
    )
