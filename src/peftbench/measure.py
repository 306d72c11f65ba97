"""Measurement: peak memory, throughput, latency, merged-vs-unmerged agreement and size on disk."""

from __future__ import annotations

import copy
import resource
import sys
import time
from pathlib import Path

import torch

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
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def directory_size(path: Path) -> int:
    """Bytes of all files under path (an adapter or a saved model)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def merged_copy(model):
    """A copy of a PEFT model with its adapter merged into the weights (merge_and_unload); the original is kept."""
    return copy.deepcopy(model).merge_and_unload()
