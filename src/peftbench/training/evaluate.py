"""Evaluation: loss over target tokens, batched generation, the text metrics of what was generated, and the choice
each example's model finds likeliest (plain and length-normalised, for the likelihood metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, to_device
from peftbench.measure.latency import prompt_batch
from peftbench.measure.timing import PhaseTimer
from peftbench.model.layout import Encoded, Layout
from peftbench.task.metrics import METRICS, first_line, same_choice, score
from peftbench.task.presets import TASKS


@dataclass
class Scores:
    """Quality of one split: its loss per target token and its task metrics (metrics.METRICS name -> value), and what
    each example contributed: its summed target loss and target tokens (the loss is their ratio of sums), its scores
    on the mean metrics of the examples generated."""

    loss: float
    metrics: dict[str, float]
    per_example: dict[str, list[float]] = field(default_factory=dict)


# This process's share of examples' target losses: item index -> (summed cross-entropy, target tokens).
ItemLosses = dict[int, tuple[float, int]]


def _item_losses(indices: list[int], sums: torch.Tensor, counts: torch.Tensor) -> ItemLosses:
    return {i: (s, int(c)) for i, s, c in zip(indices, sums.tolist(), counts.tolist(), strict=True)}


def _gathered(losses: ItemLosses, count: int) -> tuple[list[float], list[int]]:
    """Every process's shares of count items' losses, in the items' order: summed losses, and target tokens."""
    for shares in parallel.everyone(losses):
        losses |= shares
    return [losses[i][0] for i in range(count)], [losses[i][1] for i in range(count)]


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
    likely_choices_norm: list[str] | None = None  # the same per character of the choice (accuracy_ll_norm)


@dataclass(frozen=True)
class EvalOptions:
    """Batching and decoding for evaluation (from RunConfig and its task's preset). one_line: a generated answer is
    its first line (metrics.first_line): what is scored and stored, for tasks whose answers are short."""

    batch_size: int
    max_new_tokens: int
    num_beams: int
    metrics: tuple[str, ...]
    one_line: bool = False

    @classmethod
    def from_config(cls, config: RunConfig) -> EvalOptions:
        return cls(
            config.eval_batch_size,
            config.max_new_tokens,
            config.num_beams,
            tuple(config.metrics),
            TASKS[config.task].one_line,
        )


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
    def loss_sums(self, model, items: list[Encoded], offset: int = 0, desc: str | None = None) -> ItemLosses:
        """Each target's summed cross-entropy and token count, for this process's share of items' batches, by index
        in items (plus offset); desc: a progress bar's label, where evaluation shows progress."""
        model.eval()
        losses: ItemLosses = {}
        batches = parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: it.length))
        for indices in tqdm(batches, desc=desc, unit="batch", disable=not (self.progress and desc), leave=False):
            batch = self.layout.collate([items[i] for i in indices])
            sums, counts = self.layout.token_loss(model, to_device(batch, self.device))
            losses |= _item_losses([offset + i for i in indices], sums, counts)
        return losses

    @torch.inference_mode()
    def generate(
        self,
        model,
        items: list[Encoded],
        desc: str = "generate",
        timer: PhaseTimer | None = None,
        phase: str = "evaluation",
    ) -> tuple[Generation, ItemLosses]:
        """Batched generation (KV cache on, left padding for causal models); predictions in the items' order. With
        one_pass, also the items' target losses from the same reading of the prompts: as loss_sums, this process's
        share (empty without one_pass).

        Each process generates its share of the batches; every process returns all predictions. timer, when given,
        records the prompts' reading and the decoding as <phase>_generation and the targets' loss as <phase>_loss;
        Generation.seconds is the first of them: the generation's wall time, the loss left out.

        With options.one_line generation stops at the first line break after the answer began and each prediction
        is cut there (metrics.first_line), as lm-evaluation-harness generates and scores short answers; the new
        tokens counted end at that line break.
        """
        model.eval()
        timer, generation = timer or PhaseTimer(), f"{phase}_generation"
        before = timer.seconds.get(generation, 0.0)
        new: dict[int, list[int]] = {}
        losses: ItemLosses = {}
        batches = parallel.share(_batches_by_length(items, self.options.batch_size, lambda it: len(it.prompt)))
        for indices in tqdm(batches, desc=desc, unit="batch", disable=not self.progress, leave=False):
            rows, read = self._read_batch(model, [items[i] for i in indices], timer, phase)
            new |= dict(zip(indices, rows, strict=True))
            losses |= {indices[row]: loss for row, loss in read.items()}
        with timer.phase(generation):  # the text, and waiting for the slowest process's share
            decode, stops = self.layout.tokenizer.decode, self.layout.stop_ids
            if self.options.one_line:  # a row stopped at its line break is padded from there on
                stops = [*stops, self.layout.pad_id]
            cut = first_line if self.options.one_line else str.strip
            predictions = {i: cut(decode(ids, skip_special_tokens=True)) for i, ids in new.items()}
            new_tokens = int(parallel.totals(sum(count_new_tokens(ids, stops) for ids in new.values()))[0])
            for shares in parallel.everyone(predictions):
                predictions |= shares
        seconds = parallel.highest(timer.seconds[generation] - before)
        return Generation([predictions[i] for i in range(len(items))], new_tokens, seconds), losses

    def _read_batch(
        self, model, items: list[Encoded], timer: PhaseTimer, phase: str
    ) -> tuple[list[list[int]], ItemLosses]:
        """One batch's new tokens, and with one_pass each target's summed loss and count from generation's own reading
        of the prompts, by row (empty without)."""
        options, layout = self.options, self.layout
        prompts = prompt_batch(items, layout, self.device)
        tokens, one_line = options.max_new_tokens, options.one_line
        if not self.one_pass:
            with timer.phase(f"{phase}_generation"):
                return layout.generate(model, prompts, tokens, options.num_beams, one_line=one_line), {}
        with timer.phase(f"{phase}_generation"):
            prefilled = layout.prefill(model, prompts)
        with timer.phase(f"{phase}_loss"):
            if prefilled:
                sums, counts = layout.prefilled_loss(model, prompts, [item.target for item in items], prefilled)
            else:  # nothing to go on from (generate reads the prompts itself): prompt and target read together
                sums, counts = layout.token_loss(model, to_device(layout.collate(items), self.device))
            loss = _item_losses(list(range(len(items))), sums, counts)
        with timer.phase(f"{phase}_generation"):
            return layout.generate(model, prompts, tokens, prefilled=prefilled, one_line=one_line), loss

    @torch.inference_mode()
    def item_losses(self, model, items: list[Encoded], desc: str = "retention") -> list[float]:
        """Each item's summed cross-entropy over its target tokens (nats: minus its target's log-likelihood), in the
        items' order, every process's share gathered: the loss forgetting compares (Layout.text_items), and each
        choice's score (likely_choices)."""
        return _gathered(self.loss_sums(model, items, desc=desc), len(items))[0]

    @torch.inference_mode()
    def likely_choices(
        self, model, items: list[Encoded], examples: list[Example], desc: str = "score choices"
    ) -> tuple[list[str], list[str]]:
        """Each example's choice of highest log-likelihood under the model as the answer to its prompt, and its choice
        of highest log-likelihood per character of the choice (lm-evaluation-harness's acc and acc_norm: the
        continuation's summed log-likelihood, over len(choice)), both from one forward pass over all choices of a
        batch of examples. Of equally likely choices, the first."""
        rows = [
            (index, choice, choice_item)
            for index, (item, ex) in enumerate(zip(items, examples, strict=True))
            for choice, choice_item in zip(ex.choices, self.layout.choice_items(item, ex.choices), strict=True)
        ]
        losses = self.item_losses(model, [row[2] for row in rows], desc)  # minus each choice's log-likelihood
        plain: dict[int, tuple[float, str]] = {}
        normed: dict[int, tuple[float, str]] = {}
        for position, (index, choice, _) in enumerate(rows):
            loss = losses[position]
            if index not in plain or loss < plain[index][0]:  # strictly lower: the first of equal ones stays
                plain[index] = (loss, choice)
            per_character = loss / max(len(choice), 1)
            if index not in normed or per_character < normed[index][0]:
                normed[index] = (per_character, choice)
        return [plain[i][1] for i in range(len(items))], [normed[i][1] for i in range(len(items))]

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
        generation, losses = self.generate(model, items[:count], desc, timer, phase)
        with timer.phase(f"{phase}_loss"):
            losses |= self.loss_sums(model, items[count:], count) if self.one_pass else self.loss_sums(model, items)
            summed, tokens = _gathered(losses, len(items))
        with timer.phase(f"{phase}_generation"):
            choices = [ex.choices for ex in shown] if all(ex.choices for ex in shown) else None
            metrics, generation.per_example = score(
                list(self.options.metrics), generation.predictions, [ex.references for ex in shown], choices
            )
            if any(METRICS[name].likelihood for name in self.options.metrics):
                chosen = self.likely_choices(model, items[:count], shown, f"{desc}: choices")
                generation.likely_choices, generation.likely_choices_norm = chosen
                for name, choices in zip(("accuracy_ll", "accuracy_ll_norm"), chosen, strict=True):
                    if name not in self.options.metrics:
                        continue
                    right = [same_choice(choice, ex.references[0]) for choice, ex in zip(choices, shown, strict=True)]
                    metrics[name], generation.per_example[name] = sum(right) / len(right), right
        loss = sum(summed) / max(sum(tokens), 1)
        per_example = {"loss": summed, "tokens": tokens} | (generation.per_example or {})
        return Scores(loss, {name: metrics[name] for name in self.options.metrics}, per_example), generation
