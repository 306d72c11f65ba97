"""Measurement: peak memory, the matmul rate, phase times, latency and merged-vs-unmerged agreement."""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from peftbench.data import to_device
from peftbench.layout import Encoded, Layout

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> None:
    """Start a new peak-memory window: CUDA's allocator peak, and on Linux the process's resident high-water mark."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # elsewhere the peak covers the whole process; each method runs in its own process anyway


def peak_memory_bytes() -> int:
    """Peak since reset_peak_memory(): CUDA max_memory_allocated on a GPU, else peak resident memory (RSS)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


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


class PhaseTimer:
    """Wall seconds per phase of a run (model load, training, validation, ...), added into seconds: a phase that runs
    several times (validation each epoch) is summed, and a resumed run passes in what earlier sessions measured."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = {} if seconds is None else seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        sync_device()  # queued GPU work belongs to the phase that queued it
        started = time.perf_counter()
        try:
            yield
        finally:
            sync_device()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def merged_copy(model):
    """A copy of a PEFT model with its adapter merged into the weights (merge_and_unload); the original is kept."""
    return copy.deepcopy(model).merge_and_unload()


def prompt_batch(items: list[Encoded], layout: Layout, device) -> dict[str, torch.Tensor]:
    """The prompts of items as one generation batch on device."""
    return to_device(layout.collate(items, with_targets=False), device)


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
