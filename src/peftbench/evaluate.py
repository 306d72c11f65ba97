"""Evaluation: loss over target tokens, batched generation, and the text metrics of what was generated."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from peftbench import parallel
from peftbench.config import RunConfig
from peftbench.data import to_device
from peftbench.layout import Encoded, Layout
from peftbench.measure import PhaseTimer
from peftbench.metrics import text_metrics


@dataclass
class Scores:
    """Quality of one split. ROUGE F1 on a 0-1 scale, BLEU on sacrebleu's 0-100 scale."""

    loss: float
    rouge1: float
    rouge2: float
    rougeL: float
    bleu: float


def _batches_by_length(items: list[Encoded], size: int, key) -> list[list[int]]:
    """Index batches of similar length (less padding); callers put results back in the original order."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def count_new_tokens(ids: list[int], stop_ids: list[int]) -> int:
    """Generated tokens up to and including the first stop token (EOS, end of turn); what follows is padding."""
    return next((i + 1 for i, token in enumerate(ids) if token in stop_ids), len(ids))


@dataclass
class Generation:
    predictions: list[str]
    new_tokens: int
    seconds: float
    per_example: dict[str, list[float]] | None = None  # each prediction's text metrics, once scored


@dataclass(frozen=True)
class EvalOptions:
    """Batching and decoding for evaluation (from RunConfig)."""

    batch_size: int
    max_new_tokens: int
    num_beams: int

    @classmethod
    def from_config(cls, config: RunConfig) -> EvalOptions:
        return cls(config.eval_batch_size, config.max_new_tokens, config.num_beams)


class Evaluator:
    """Evaluates models on encoded splits with one layout and options."""

    def __init__(self, layout: Layout, options: EvalOptions, device, progress: bool = False):
        self.layout, self.options, self.device, self.progress = layout, options, device, progress

    @torch.inference_mode()
    def loss(self, model, items: list[Encoded]) -> float:
        """Mean cross-entropy per target token over a whole split (each process takes its share of the batches)."""
        model.eval()
        total, count = 0.0, 0
        for indices in parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: it.length)):
            batch = self.layout.collate([items[i] for i in indices])
            summed, n_tokens = self.layout.token_loss(model, to_device(batch, self.device))
            total += summed.item()
            count += n_tokens
        total, count = parallel.totals(total, count)
        return total / max(count, 1)

    @torch.inference_mode()
    def generate(self, model, items: list[Encoded], desc: str = "generate") -> Generation:
        """Batched generation (KV cache on, left padding for causal models); predictions in the items' order.

        Each process generates its share of the batches; every process returns all predictions.
        """
        model.eval()
        predictions: dict[int, str] = {}
        new_tokens, started = 0, time.perf_counter()
        batches = parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: len(it.prompt)))
        for indices in tqdm(batches, desc=desc, unit="batch", disable=not self.progress, leave=False):
            batch = self.layout.collate([items[i] for i in indices], with_targets=False)
            new = self.layout.generate(model, to_device(batch, self.device), self.options.max_new_tokens,
                                       self.options.num_beams)  # fmt: skip
            for index, ids in zip(indices, new, strict=True):
                predictions[index] = self.layout.tokenizer.decode(ids, skip_special_tokens=True).strip()
                new_tokens += count_new_tokens(ids, self.layout.stop_ids)
        seconds = parallel.highest(time.perf_counter() - started)  # wall time: until the slowest share is done
        new_tokens = int(parallel.totals(new_tokens)[0])
        for shares in parallel.everyone(predictions):
            predictions |= shares
        return Generation([predictions[i] for i in range(len(items))], new_tokens, seconds)

    def evaluate(self, model, items: list[Encoded], references: list[str], generation_model=None,
                 generate_count: int | None = None, desc: str = "evaluate", timer: PhaseTimer | None = None,
                 phase: str = "evaluation") -> tuple[Scores, Generation]:  # fmt: skip
        """Loss over all items; generation and text metrics over the first generate_count items (default all).

        generation_model, when given, generates instead of model (e.g. a copy with the adapter merged in). timer,
        when given, records the two parts as phases <phase>_loss and <phase>_generation (its text metrics included).
        """
        timer = timer or PhaseTimer()
        with timer.phase(f"{phase}_loss"):
            loss = self.loss(model, items)
        count = len(items) if generate_count is None else min(generate_count, len(items))
        with timer.phase(f"{phase}_generation"):
            generation = self.generate(generation_model or model, items[:count], desc)
            metrics, generation.per_example = text_metrics(generation.predictions, references[:count])
        return Scores(loss=loss, **metrics), generation
