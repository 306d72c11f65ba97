"""Text metrics: ROUGE-1/2/L F1 per example (rouge-score, stemmed) and corpus BLEU (sacrebleu), with BLEU's
per-example sufficient statistics so that resamples of examples can be scored as a corpus again."""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_BLEU = BLEU()  # sacrebleu's defaults: 13a tokenisation, exponential smoothing, 4-grams


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 (stemmed, 0 to 1) of each prediction against its reference."""
    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references,
                                                                                    strict=True)]  # fmt: skip
    return {kind: [score[kind].fmeasure for score in scores] for kind in ROUGE_TYPES}


def bleu_statistics(predictions: list[str], references: list[str]) -> np.ndarray:
    """Each example's BLEU sufficient statistics (n-gram matches and totals, lengths), one row per example: summing
    any selection of rows and scoring the sum (bleu_score) is the corpus BLEU of that selection."""
    _check(predictions, references)
    return np.asarray(_BLEU._extract_corpus_statistics(predictions, [references]), dtype=np.int64)


def bleu_score(statistics: np.ndarray) -> float:
    """Corpus BLEU (0 to 100) of summed sufficient statistics, as sacrebleu computes it."""
    return _BLEU._compute_score_from_stats(np.asarray(statistics).tolist()).score


def text_metrics(predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """ROUGE-1/2/L F1 averaged over all examples and corpus BLEU; and each example's ROUGE-1/2/L."""
    per_example = rouge_per_example(predictions, references)
    metrics = {kind: sum(values) / len(values) for kind, values in per_example.items()}
    metrics["bleu"] = bleu_score(bleu_statistics(predictions, references).sum(axis=0))
    return metrics, per_example
