"""Inference: the latency of a model's variants (the base model, the adapter unmerged and merged) at batch size 1,
timed in paired, interleaved rounds with prefill and per-token decode apart; each variant's inference memory; and
whether a merged adapter generates what the unmerged one does."""

from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria

from peftbench.data.splits import to_device
from peftbench.measure.memory import in_memory_window, weights_bytes
from peftbench.measure.timing import sync_device
from peftbench.model.layout import Encoded, Layout
from peftbench.store.records import LATENCY_PARTS


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


class TokenClock(StoppingCriteria):
    """The moment each new token is made: generate calls its stopping criteria once per token. It never stops one."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __deepcopy__(self, memo: dict) -> TokenClock:
        return self  # peft deep-copies generate's arguments for prompt tuning: the copy must stamp this clock

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        sync_device()  # the token exists once the device has made it
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Timing:
    """One generation at batch size 1: prefill_ms (reading the prompt and making the first token), decode_ms (each
    later token, on average) and the new tokens."""

    prefill_ms: float
    decode_ms: float
    tokens: list[int]


def timed_generation(model, batch: dict[str, torch.Tensor], layout: Layout, new_tokens: int) -> Timing:
    """Generate exactly new_tokens (at least 2) greedy tokens for one prompt, timing each token."""
    clock = TokenClock()
    sync_device()
    start = time.perf_counter()
    (tokens,) = layout.generate(model, batch, new_tokens, fixed_length=True, watch=clock)
    first, last = clock.stamps[0], clock.stamps[-1]
    return Timing(1000 * (first - start), 1000 * (last - first) / (len(clock.stamps) - 1), tokens)


@dataclass(frozen=True)
class LatencyPlan:
    """What latency is timed on: prompts (cycled through, one per round), rounds, and new tokens per generation."""

    prompts: list[Encoded]
    rounds: int
    new_tokens: int

    @property
    def used(self) -> list[Encoded]:
        """The prompts the rounds reach, in order."""
        return self.prompts[: self.rounds]


@dataclass
class LatencyRounds:
    """Per part ("prefill_ms", "decode_ms"), per model, each round's figure (Efficiency.latency_rounds); and each
    model's tokens for the plan's prompts, from the first round that generated each."""

    times: dict[str, dict[str, list[float]]]
    tokens: dict[str, list[list[int]]]

    def median_ms(self, name: str, new_tokens: int) -> float:
        """The median over rounds of one whole generation's milliseconds."""
        parts = zip(self.times["prefill_ms"][name], self.times["decode_ms"][name], strict=True)
        return statistics.median(prefill + (new_tokens - 1) * decode for prefill, decode in parts)


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off (after one collection), as timeit runs: a collection that happens to fall
    inside one model's generation would be charged to that model alone."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@torch.inference_mode()
def paired_latency(models: dict[str, torch.nn.Module], plan: LatencyPlan, layout: Layout, device) -> LatencyRounds:
    """Time each of models in rounds: in round r every model generates the plan's tokens for prompt r (cycling), one
    model after another, the first one rotating from round to round. A round's figures share the machine's state
    (clock frequency, caches, whatever else runs), so each round gives one paired reading of every ratio."""
    names = list(models)
    for model in models.values():
        model.eval()
    rounds = LatencyRounds({part: {name: [] for name in names} for part in LATENCY_PARTS}, {})
    with no_collection():
        for index in range(plan.rounds):
            batch = prompt_batch([plan.prompts[index % len(plan.prompts)]], layout, device)
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                timing = timed_generation(models[name], batch, layout, plan.new_tokens)
                rounds.times["prefill_ms"][name].append(timing.prefill_ms)
                rounds.times["decode_ms"][name].append(timing.decode_ms)
                if index < len(plan.prompts):
                    rounds.tokens.setdefault(name, []).append(timing.tokens)
    return rounds


@torch.inference_mode()
def inference_memory(model, plan: LatencyPlan, layout: Layout, device) -> dict[str, int | None]:
    """A model's warm-up before its timing, measured (Efficiency.inference_memory's form): a forward pass (its weights
    read) outside the window, then one full-length generation of the first prompt in a fresh memory window: the bytes
    of its weights, the window's peak and its increase (the generation's own working memory)."""
    warm_up(model, plan.prompts, layout, device)
    batch = prompt_batch(plan.prompts[:1], layout, device)
    _, window = in_memory_window(lambda: layout.generate(model, batch, plan.new_tokens, fixed_length=True))
    return {
        "weights_bytes": weights_bytes(model),
        "peak_bytes": window.peak_bytes,
        "increase_bytes": window.increase_bytes,
    }


@torch.inference_mode()
def merge_agreement(unmerged, merged, rounds: LatencyRounds, prompts: list[Encoded], layout: Layout, device):
    """Whether merged and unmerged adapters made the same greedy tokens in the latency rounds (for prompts), and the
    largest difference of their logits over those prompts and their targets."""
    inputs, real = layout.logit_inputs(to_device(layout.collate(prompts), device))
    diff = (unmerged(**inputs).logits.float() - merged(**inputs).logits.float()).abs()
    return {
        "tokens_equal": rounds.tokens["unmerged"] == rounds.tokens["merged"],
        "max_logit_diff": float(diff[real].max()),
    }
