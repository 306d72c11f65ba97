"""Measurement: peak memory, throughput, latency, merged-vs-unmerged agreement and size on disk."""

from __future__ import annotations

import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from peftbench.data import IGNORE_INDEX, Encoded, collate, to_device
from peftbench.models import generate_ids

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


def directory_size(path: Path) -> int:
    """Bytes of all files under path (an adapter or a saved model)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def merged_copy(model):
    """A copy of a PEFT model with its adapter merged into the weights (merge_and_unload); the original is kept."""
    return copy.deepcopy(model).merge_and_unload()


def prompt_batch(items: list[Encoded], tokenizer, is_seq2seq: bool, device) -> dict[str, torch.Tensor]:
    """The prompts of items as one generation batch (left-padded for causal models) on device."""
    return to_device(collate(items, tokenizer.pad_token_id, is_seq2seq, False), device)


@torch.inference_mode()
def latency_ms(model, items: list[Encoded], tokenizer, is_seq2seq: bool, new_tokens: int, device) -> float:
    """Median milliseconds to generate exactly new_tokens tokens for one prompt at batch size 1 (after a warm-up)."""
    model.eval()
    # A full-length warm-up: a short one left the first timed prompt paying for cold caches and allocations.
    warm_up = prompt_batch(items[:1], tokenizer, is_seq2seq, device)
    generate_ids(model, warm_up, tokenizer, is_seq2seq, new_tokens, fixed_length=True)
    times = []
    for item in items:
        batch = prompt_batch([item], tokenizer, is_seq2seq, device)
        sync_device()
        start = time.perf_counter()
        generate_ids(model, batch, tokenizer, is_seq2seq, new_tokens, fixed_length=True)
        sync_device()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def merge_agreement(unmerged, merged, items: list[Encoded], tokenizer, is_seq2seq: bool, new_tokens: int, device):
    """Whether merged and unmerged adapters give the same greedy tokens, and their largest logit difference."""
    unmerged.eval()
    merged.eval()
    prompts = prompt_batch(items, tokenizer, is_seq2seq, device)
    same_tokens = generate_ids(unmerged, prompts, tokenizer, is_seq2seq, new_tokens) == generate_ids(
        merged, prompts, tokenizer, is_seq2seq, new_tokens
    )
    full = to_device(collate(items, tokenizer.pad_token_id, is_seq2seq), device)
    if not is_seq2seq:
        full.pop("labels")  # a causal model needs no labels for logits; seq2seq builds its decoder input from them
    diff = (unmerged(**full).logits.float() - merged(**full).logits.float()).abs()
    mask = full["attention_mask"].bool() if not is_seq2seq else full["labels"] != IGNORE_INDEX
    return {"tokens_equal": same_tokens, "max_logit_diff": float(diff[mask].max())}
