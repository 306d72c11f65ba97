"""Inference: latency at batch size 1, the warm-up before a memory window, and whether a merged adapter generates what
the unmerged one does."""

from __future__ import annotations

import copy
import statistics
import time

import torch

from peftbench.data.splits import to_device
from peftbench.measure.timing import sync_device
from peftbench.model.layout import Encoded, Layout


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
