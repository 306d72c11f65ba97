"""Evaluation: loss over target tokens, batched generation, and the text metrics of what was generated."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, to_device
from peftbench.measure.latency import prompt_batch
from peftbench.measure.timing import PhaseTimer
from peftbench.model.layout import Encoded, Layout
from peftbench.task.metrics import METRICS, normalise_answer, score


@dataclass
class Scores:
    """Quality of one split: its loss per target token and its task metrics (metrics.METRICS name -> value)."""

    loss: float
    metrics: dict[str, float]


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
    per_example: dict[str, list[float]] | None = None  # each prediction's own scores, once scored
    likely_choices: list[str] | None = None  # the choice of each example the model finds most likely (accuracy_ll)


@dataclass(frozen=True)
class EvalOptions:
    """Batching and decoding for evaluation (from RunConfig)."""

    batch_size: int
    max_new_tokens: int
    num_beams: int
    metrics: tuple[str, ...]

    @classmethod
    def from_config(cls, config: RunConfig) -> EvalOptions:
        return cls(config.eval_batch_size, config.max_new_tokens, config.num_beams, tuple(config.metrics))


class Evaluator:
    """Evaluates models on encoded splits with one layout and options.

    one_pass: the loss of the examples generated comes from the forward pass over their prompts that generation
    makes anyway (Layout.prefill, prefilled_loss), so that each prompt is read once; off for models that put virtual
    tokens before every input (prompt learning), and under beam search. The figures are the same either way, to float
    rounding; the time saved is the loss pass over the prompts (most of each example).
    """

    def __init__(self, layout: Layout, options: EvalOptions, device, progress: bool = False, one_pass: bool = True):
        self.layout, self.options, self.device, self.progress = layout, options, device, progress
        self.one_pass = one_pass and options.num_beams == 1

    @torch.inference_mode()
    def loss_sums(self, model, items: list[Encoded]) -> tuple[float, int]:
        """Summed cross-entropy over the target tokens of this process's share of items' batches, and their count."""
        model.eval()
        total, count = 0.0, 0
        for indices in parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: it.length)):
            batch = self.layout.collate([items[i] for i in indices])
            summed, n_tokens = self.layout.token_loss(model, to_device(batch, self.device))
            total += summed.item()
            count += n_tokens
        return total, count

    @torch.inference_mode()
    def generate(
        self,
        model,
        items: list[Encoded],
        desc: str = "generate",
        timer: PhaseTimer | None = None,
        phase: str = "evaluation",
    ) -> tuple[Generation, tuple[float, int]]:
        """Batched generation (KV cache on, left padding for causal models); predictions in the items' order. With
        one_pass, also the items' target loss from the same reading of the prompts: as loss_sums, this process's
        summed loss and token count ((0.0, 0) without one_pass).

        Each process generates its share of the batches; every process returns all predictions. timer, when given,
        records the prompts' reading and the decoding as <phase>_generation and the targets' loss as <phase>_loss;
        Generation.seconds is the first of them: the generation's wall time, the loss left out.
        """
        model.eval()
        timer, generation = timer or PhaseTimer(), f"{phase}_generation"
        before = timer.seconds.get(generation, 0.0)
        new: dict[int, list[int]] = {}
        total, count = 0.0, 0
        batches = parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: len(it.prompt)))
        for indices in tqdm(batches, desc=desc, unit="batch", disable=not self.progress, leave=False):
            rows, (summed, n_tokens) = self._read_batch(model, [items[i] for i in indices], timer, phase)
            new |= dict(zip(indices, rows, strict=True))
            total, count = total + summed, count + n_tokens
        with timer.phase(generation):  # the text, and waiting for the slowest process's share
            decode, stops = self.layout.tokenizer.decode, self.layout.stop_ids
            predictions = {i: decode(ids, skip_special_tokens=True).strip() for i, ids in new.items()}
            new_tokens = int(parallel.totals(sum(count_new_tokens(ids, stops) for ids in new.values()))[0])
            for shares in parallel.everyone(predictions):
                predictions |= shares
        seconds = parallel.highest(timer.seconds[generation] - before)
        return Generation([predictions[i] for i in range(len(items))], new_tokens, seconds), (total, count)

    def _read_batch(
        self, model, items: list[Encoded], timer: PhaseTimer, phase: str
    ) -> tuple[list[list[int]], tuple[float, int]]:
        """One batch's new tokens, and with one_pass its targets' summed loss and count from generation's own reading
        of the prompts ((0.0, 0) without)."""
        options, layout = self.options, self.layout
        prompts = prompt_batch(items, layout, self.device)
        if not self.one_pass:
            with timer.phase(f"{phase}_generation"):
                return layout.generate(model, prompts, options.max_new_tokens, options.num_beams), (0.0, 0)
        with timer.phase(f"{phase}_generation"):
            prefilled = layout.prefill(model, prompts)
        with timer.phase(f"{phase}_loss"):
            if prefilled:
                summed, count = layout.prefilled_loss(model, prompts, [item.target for item in items], prefilled)
            else:  # nothing to go on from (generate reads the prompts itself): prompt and target read together
                summed, count = layout.token_loss(model, to_device(layout.collate(items), self.device))
            loss = (summed.item(), count)
        with timer.phase(f"{phase}_generation"):
            return self.layout.generate(model, prompts, options.max_new_tokens, prefilled=prefilled), loss

    @torch.inference_mode()
    def likely_choices(
        self, model, items: list[Encoded], examples: list[Example], desc: str = "score choices"
    ) -> list[str]:
        """Each example's choice of highest log-likelihood under the model as the answer to its prompt (as
        lm-evaluation-harness scores multiple choice), all choices of a batch of examples in one forward pass."""
        model.eval()
        rows = [
            (index, choice, choice_item)
            for index, (item, ex) in enumerate(zip(items, examples, strict=True))
            for choice, choice_item in zip(ex.choices, self.layout.choice_items(item, ex.choices), strict=True)
        ]
        scored: dict[int, float] = {}
        batches = parallel.share(
            _batches_by_length([row[2] for row in rows], self.options.batch_size, lambda it: it.length)
        )
        for positions in tqdm(batches, desc=desc, unit="batch", disable=not self.progress, leave=False):
            batch = self.layout.collate([rows[p][2] for p in positions])
            losses = self.layout.row_losses(model, to_device(batch, self.device)).tolist()
            scored |= dict(zip(positions, losses, strict=True))
        for shares in parallel.everyone(scored):
            scored |= shares
        best: dict[int, tuple[float, str]] = {}
        for position, (index, choice, _) in enumerate(rows):
            if index not in best or scored[position] < best[index][0]:  # the first of equally likely choices
                best[index] = (scored[position], choice)
        return [best[index][1] for index in range(len(items))]

    def evaluate(
        self,
        model,
        items: list[Encoded],
        examples: list[Example],
        generate_count: int | None = None,
        desc: str = "evaluate",
        timer: PhaseTimer | None = None,
        phase: str = "evaluation",
    ) -> tuple[Scores, Generation]:
        """Loss over all items; generation and the task metrics over the first generate_count items (default all),
        against every reference of each example (and its choices).

        timer, when given, records the two parts as phases <phase>_loss and <phase>_generation (its scoring
        included; with one_pass, the prompts' reading too).
        """
        timer = timer or PhaseTimer()
        count = len(items) if generate_count is None else min(generate_count, len(items))
        shown = examples[:count]
        generation, (total, tokens) = self.generate(model, items[:count], desc, timer, phase)
        with timer.phase(f"{phase}_loss"):
            rest = self.loss_sums(model, items[count:] if self.one_pass else items)
            total, tokens = parallel.totals(total + rest[0], tokens + rest[1])
        with timer.phase(f"{phase}_generation"):
            choices = [ex.choices for ex in shown] if all(ex.choices for ex in shown) else None
            metrics, generation.per_example = score(
                list(self.options.metrics), generation.predictions, [ex.references for ex in shown], choices
            )
            if any(METRICS[name].likelihood for name in self.options.metrics):
                generation.likely_choices = self.likely_choices(model, items[:count], shown, f"{desc}: choices")
                right = [
                    float(normalise_answer(choice) == normalise_answer(ex.references[0]))
                    for choice, ex in zip(generation.likely_choices, shown, strict=True)
                ]
                metrics["accuracy_ll"], generation.per_example["accuracy_ll"] = sum(right) / len(right), right
        return Scores(total / max(tokens, 1), {name: metrics[name] for name in self.options.metrics}), generation
