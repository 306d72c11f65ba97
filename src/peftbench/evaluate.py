"""Evaluation: loss over target tokens, batched generation, ROUGE (rouge-score) and corpus BLEU (sacrebleu)."""

from __future__ import annotations

from dataclasses import dataclass

import sacrebleu
import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from peftbench.data import Encoded, collate
from peftbench.models import generate_ids, token_loss

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class Scores:
    """Quality of one split. ROUGE F1 on a 0-1 scale, BLEU on sacrebleu's 0-100 scale."""

    loss: float
    rouge1: float
    rouge2: float
    rougeL: float
    bleu: float


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (stemmed) averaged over all examples, and corpus BLEU."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    metrics = {kind: total / len(predictions) for kind, total in totals.items()}
    metrics["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    return metrics


def _batches_by_length(items: list[Encoded], size: int, key) -> list[list[int]]:
    """Index batches of similar length (less padding); callers put results back in the original order."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def mean_loss(model, items: list[Encoded], pad_id: int, is_seq2seq: bool, batch_size: int, device) -> float:
    """Mean cross-entropy per target token over a whole split."""
    model.eval()
    total, count = 0.0, 0
    for indices in _batches_by_length(items, batch_size, lambda it: len(it.prompt) + len(it.target)):
        batch = collate([items[i] for i in indices], pad_id, is_seq2seq)
        summed, n_tokens = token_loss(model, {k: v.to(device) for k, v in batch.items()}, is_seq2seq)
        total += summed.item()
        count += n_tokens
    return total / max(count, 1)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    items: list[Encoded],
    is_seq2seq: bool,
    batch_size: int,
    max_new_tokens: int,
    num_beams: int,
    device,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Batched generation (KV cache on, left padding for causal models); predictions in the items' order."""
    model.eval()
    predictions: list[str] = [""] * len(items)
    batches = _batches_by_length(items, batch_size, lambda it: len(it.prompt))
    for indices in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        batch = collate([items[i] for i in indices], tokenizer.pad_token_id, is_seq2seq, with_targets=False)
        new = generate_ids(
            model, {k: v.to(device) for k, v in batch.items()}, tokenizer, is_seq2seq, max_new_tokens, num_beams
        )
        for index, ids in zip(indices, new, strict=True):
            predictions[index] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return predictions


def evaluate(
    model,
    tokenizer,
    items: list[Encoded],
    references: list[str],
    is_seq2seq: bool,
    config,
    device,
    progress: bool = False,
    desc: str = "evaluate",
) -> tuple[Scores, list[str]]:
    """Loss, generation and text metrics on one split; returns the scores and the predictions."""
    loss = mean_loss(model, items, tokenizer.pad_token_id, is_seq2seq, config.eval_batch_size, device)
    predictions = generate(
        model,
        tokenizer,
        items,
        is_seq2seq,
        config.eval_batch_size,
        config.max_new_tokens,
        config.num_beams,
        device,
        progress,
        desc,
    )
    return Scores(loss=loss, **text_metrics(predictions, references)), predictions
