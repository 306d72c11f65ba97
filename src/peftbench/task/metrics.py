"""Task metrics: the registry of names that --metrics and --primary-metric accept, and how each scores predictions
against one or several references (or a set of choices). A metric is either the mean of per-example scores (ROUGE,
exact match, F1, accuracy) or a corpus score computed from summed per-example statistics (BLEU, chrF, with
sacrebleu), so that any resample of examples can be scored again exactly. Also what of a generated answer is scored
(first_line, for one-line answers) and how an answer is matched to a choice (normalise_choice)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from peftbench.task.sentences import sentences

# rougeLsum: the summary-level LCS over sentences (one a line), as the CNN/DailyMail literature reports ROUGE-L.
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# sacrebleu's defaults (BLEU: 13a tokenisation, exponential smoothing, 4-grams; chrF: character 6-grams, beta 2).
# Its per-sentence statistics (_extract_corpus_statistics) sum to the corpus score (_compute_score_from_stats): the
# same pair of calls sacrebleu's own paired significance tests use.
_CORPUS = {"bleu": BLEU(), "chrf": CHRF()}


@dataclass(frozen=True)
class Metric:
    """One task metric. Scores are on the metric's own scale (ROUGE, EM, F1, accuracy 0-1; BLEU, chrF 0-100);
    higher is better for all."""

    name: str
    label: str
    decimals: int  # shown in tables
    corpus: bool = False  # from summed statistics; else the mean of per-example scores
    choices: bool = False  # needs each example's choices (a label set or a column of options)
    likelihood: bool = False  # from the model's log-likelihood of each choice, not from the generated text


METRICS = {
    m.name: m
    for m in [
        Metric("rouge1", "ROUGE-1", 4),
        Metric("rouge2", "ROUGE-2", 4),
        Metric("rougeL", "ROUGE-L", 4),
        Metric("rougeLsum", "ROUGE-Lsum", 4),
        Metric("bleu", "BLEU", 2, corpus=True),
        Metric("chrf", "chrF", 2, corpus=True),
        Metric("exact_match", "exact match", 4),
        Metric("f1", "F1", 4),
        Metric("accuracy", "accuracy", 4, choices=True),
        Metric("accuracy_ll", "accuracy (log-likelihood)", 4, choices=True, likelihood=True),
        # lm-evaluation-harness's acc_norm: each choice's summed log-likelihood over its length in characters.
        Metric("accuracy_ll_norm", "accuracy (log-likelihood, length-normalised)", 4, choices=True, likelihood=True),
    ]
}
GROUPS = {"rouge": ROUGE_TYPES}  # --metrics rouge means all four


def expand(names: list[str]) -> list[str]:
    """Metric names with groups spelled out, in the order given, each once (unknown names kept for the caller)."""
    return list(dict.fromkeys(part for name in names for part in GROUPS.get(name, (name,))))


# ---------------------------------------------------------------------------------------------- per example


_PUNCTUATION = set(string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def _f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 between normalised answers."""
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected:
        return float(predicted == expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


_ENDS = string.punctuation + string.whitespace


def normalise_choice(text: str) -> str:
    """A choice or an answer as choices are compared: lower case, punctuation and white space stripped from the ends,
    single spaces. Unlike SQuAD's normalise_answer it keeps every word: with articles deleted, a choice "A" would be
    empty, and so equal to an empty answer."""
    return " ".join(text.lower().strip(_ENDS).split())


def matched_choice(prediction: str, choices: list[str]) -> str | None:
    """The choice a generated answer names: the one equal to it after normalise_choice, else the one it starts with
    as a whole word (the longest, so that 'no' does not take 'not sure'); None where it names none."""
    said = normalise_choice(prediction)
    normalised = {choice: normalise_choice(choice) for choice in choices}
    exact = [choice for choice, text in normalised.items() if text == said]
    if exact:
        return exact[0]
    starts = [
        choice
        for choice, text in normalised.items()
        if text and said.startswith(text) and not said[len(text)].isalnum()  # "false, because": a word of its own
    ]
    return max(starts, key=lambda choice: len(normalised[choice])) if starts else None


def same_choice(choice: str | None, reference: str) -> float:
    """1.0 where a choice (a generated answer's, or the likeliest) is the reference's, else 0.0 (also for None)."""
    return float(choice is not None and normalise_choice(choice) == normalise_choice(reference))


def _accurate(prediction: str, reference: str, choices: list[str]) -> float:
    return same_choice(matched_choice(prediction, choices), reference)


def first_line(text: str) -> str:
    """A one-line answer as it is scored: leading white space dropped, then everything from the first line break on
    (lm-evaluation-harness stops short answers at "\n" the same way), stripped."""
    return text.lstrip().split("\n", 1)[0].strip()


def sentence_lines(text: str) -> str:
    """A text with one sentence a line, as rouge_score's rougeLsum reads it (line breaks already there stay)."""
    return "\n".join(sentences(text))


def _rouge(kind: str) -> Callable[[str, str], float]:
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    # rougeLsum's LCS is over sentences, which rouge_score finds at line breaks only: the texts get one a line.
    lines = sentence_lines if kind == "rougeLsum" else str

    def fmeasure(prediction: str, reference: str) -> float:
        return scorer.score(lines(reference), lines(prediction))[kind].fmeasure

    return fmeasure


_PAIRWISE = {"exact_match": _exact_match, "f1": _f1} | {kind: _rouge(kind) for kind in ROUGE_TYPES}


def per_example(
    name: str, predictions: list[str], references: list[list[str]], choices: list[list[str]] | None = None
) -> list[float]:
    """Each example's score on a mean metric: the best over its references (ROUGE, EM, F1), or whether the generated
    answer names the reference's choice (accuracy)."""
    _check(predictions, references)
    if name == "accuracy":
        if choices is None:
            raise ValueError("accuracy needs each example's choices")
        return [
            _accurate(p, refs[0], options) for p, refs, options in zip(predictions, references, choices, strict=True)
        ]
    score = _PAIRWISE[name]
    return [
        max(score(prediction, reference) for reference in refs)
        for prediction, refs in zip(predictions, references, strict=True)
    ]


def statistics(name: str, predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Each example's sufficient statistics for a corpus metric, one row per example, over all its references:
    summing any selection of rows and scoring the sum (corpus_score) is the corpus score of that selection."""
    _check(predictions, references)
    streams = max(len(refs) for refs in references)
    # sacrebleu takes one stream per reference position; examples with fewer references have None there.
    padded = [[refs[i] if i < len(refs) else None for refs in references] for i in range(streams)]
    return np.asarray(_CORPUS[name]._extract_corpus_statistics(predictions, padded), dtype=np.int64)


def corpus_score(name: str, summed: np.ndarray) -> float:
    """A corpus metric (0 to 100) of summed statistics, as sacrebleu computes it."""
    return _CORPUS[name]._compute_score_from_stats(np.asarray(summed).tolist()).score


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")


def score(
    names: list[str], predictions: list[str], references: list[list[str]], choices: list[list[str]] | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The generated text's scores on the given metrics (likelihood metrics are the evaluator's) over all examples,
    and each example's own score on the mean metrics."""
    means, examples = {}, {}
    for name in names:
        if METRICS[name].likelihood:
            continue
        if METRICS[name].corpus:
            means[name] = corpus_score(name, statistics(name, predictions, references).sum(axis=0))
        else:
            values = per_example(name, predictions, references, choices)
            means[name], examples[name] = sum(values) / len(values), values
    return means, examples
