"""Metric functions against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from peftbench.metrics import bleu_score, bleu_statistics, text_metrics


def test_rouge_and_bleu_hand_checked():
    prediction, reference = "the cat sat on the mat", "the cat is on the mat"
    metrics, _ = text_metrics([prediction], [reference])
    # Unigrams shared: the x2, cat, on, mat = 5 of 6 each side.
    assert metrics["rouge1"] == pytest.approx(5 / 6)
    # Bigrams shared: "the cat", "on the", "the mat" = 3 of 5.
    assert metrics["rouge2"] == pytest.approx(3 / 5)
    # Longest common subsequence: "the cat on the mat" = 5 of 6.
    assert metrics["rougeL"] == pytest.approx(5 / 6)
    # BLEU n-gram precisions 5/6, 3/5, 1/4, 0/3; sacrebleu's default "exp" smoothing turns the zero 4-gram
    # count into 1 / (2 * 3); equal lengths, so no brevity penalty.
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert metrics["bleu"] == pytest.approx(expected, rel=1e-6)


def test_rouge_is_averaged_over_examples_and_stemmed():
    metrics, per_example = text_metrics(["cats running", "completely different"], ["cat runs", "cat runs"])
    assert metrics["rouge1"] == pytest.approx(0.5)  # (1.0 stemmed match + 0.0) / 2
    assert per_example["rouge1"] == pytest.approx([1.0, 0.0])
    assert metrics["bleu"] < 100


def test_identical_text_scores_perfectly():
    text = ["police arrest two men after a robbery in the city centre on friday night ."]
    metrics, _ = text_metrics(text, text)
    assert metrics["rouge1"] == metrics["rouge2"] == metrics["rougeL"] == pytest.approx(1.0)
    assert metrics["bleu"] == pytest.approx(100.0)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="equally many"):
        text_metrics(["a"], ["a", "b"])


def test_bleu_of_summed_statistics_is_corpus_bleu():
    """Any selection of examples, with repeats (a bootstrap resample), scores as sacrebleu scores that corpus."""
    predictions = ["the cat sat on the mat today", "a dog barks", "hello world", "nothing alike here"]
    references = ["the cat sat on a mat", "the dog barks loudly", "hello there world", "a bird sings"]
    statistics = bleu_statistics(predictions, references)
    for selection in ([0, 1, 2, 3], [0, 0, 2], [3, 1, 1, 1]):
        chosen_predictions = [predictions[i] for i in selection]
        chosen_references = [references[i] for i in selection]
        expected = sacrebleu.corpus_bleu(chosen_predictions, [chosen_references]).score
        assert bleu_score(statistics[np.array(selection)].sum(axis=0)) == pytest.approx(expected, abs=1e-12)
