"""Memory: peak-memory windows (CUDA's allocator, or the process's resident high-water mark on Linux) and the bytes a
model's weights hold."""

from __future__ import annotations

import ctypes
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

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
    return _tensor_bytes(tensors.values())


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What training holds besides its activations, counted from the model and optimizer: the weights (parameters and
    buffers), a gradient per trainable parameter (its size: what backward fills before the optimizer steps), and every
    tensor the optimizer keeps (Adam: two per trainable parameter)."""
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    kept = {id(t): t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)}
    return {
        "weights": weights_bytes(model),
        "gradients": _tensor_bytes(trainable.values()),
        "optimizer": _tensor_bytes(kept.values()),
    }


def memory_account(peak: int, runtime: int, state: dict[str, int]) -> dict[str, int]:
    """The peak of training split into what the process held before the model (runtime), the counted training state
    (training_state_bytes) and the rest (activations, data, caches, the allocator's held memory): they add up to
    peak (Efficiency.train_memory)."""
    return {"runtime": runtime, **state, "rest": peak - runtime - sum(state.values())}
