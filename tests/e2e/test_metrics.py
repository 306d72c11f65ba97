"""Metric functions against values worked out by hand, over one or several references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from peftbench.task.metrics import (
    corpus_score,
    expand,
    first_line,
    matched_choice,
    normalise_answer,
    normalise_choice,
    per_example,
    score,
    statistics,
)
from peftbench.task.presets import TASKS
from peftbench.task.sentences import sentences


def _one(names, prediction, references, choices=None):
    means, _ = score(names, [prediction], [references], [choices] if choices else None)
    return means


def test_rouge_and_bleu_hand_checked():
    prediction, reference = "the cat sat on the mat", "the cat is on the mat"
    metrics = _one(expand(["rouge", "bleu"]), prediction, [reference])
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
    means, examples = score(["rouge1"], ["cats running", "completely different"], [["cat runs"], ["cat runs"]])
    assert means["rouge1"] == pytest.approx(0.5)  # (1.0 stemmed match + 0.0) / 2
    assert examples["rouge1"] == pytest.approx([1.0, 0.0])


def test_identical_text_scores_perfectly():
    text = "police arrest two men after a robbery in the city centre on friday night ."
    metrics = _one(expand(["rouge", "bleu", "chrf"]), text, [text])
    assert metrics["rouge1"] == metrics["rouge2"] == metrics["rougeL"] == pytest.approx(1.0)
    assert metrics["bleu"] == pytest.approx(100.0) and metrics["chrf"] == pytest.approx(100.0)


def test_squad_normalisation_exact_match_and_f1():
    assert normalise_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert normalise_answer("An apple, a pear") == "apple pear"
    assert _one(["exact_match"], "The Eiffel Tower!", ["eiffel tower"])["exact_match"] == 1.0
    # "in the city of Paris" -> in, city, of, paris; reference: paris. Precision 1/4, recall 1: F1 = 0.4.
    assert _one(["f1"], "in the city of Paris", ["Paris"])["f1"] == pytest.approx(0.4)
    assert _one(["f1"], "nothing", ["Paris"])["f1"] == 0.0


def test_several_references_take_the_best():
    # F1 against "London" 0; against "Paris, France" (paris, france): precision 1, recall 1/2 -> 2/3.
    metrics = _one(["exact_match", "f1", "rougeL"], "Paris", ["London", "Paris, France"])
    assert metrics["exact_match"] == 0.0 and metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["rougeL"] == pytest.approx(max(0.0, 2 / 3))  # ROUGE-L: the best reference too
    assert _one(["exact_match"], "paris", ["London", "Paris"])["exact_match"] == 1.0


def test_corpus_metrics_use_every_reference():
    predictions = ["the cat sat on the mat today", "a dog barks", "hello world"]
    references = [["the cat sat on a mat", "a cat sat on the mat"], ["the dog barks loudly"], ["hello there world"]]
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(2)]
    assert _one_corpus("bleu", predictions, references) == pytest.approx(
        sacrebleu.corpus_bleu(predictions, streams).score, abs=1e-12
    )
    assert _one_corpus("chrf", predictions, references) == pytest.approx(
        sacrebleu.corpus_chrf(predictions, streams).score, abs=1e-12
    )


def _one_corpus(name, predictions, references):
    return score([name], predictions, references)[0][name]


def test_summed_statistics_score_any_selection_as_a_corpus():
    """Any selection of examples, with repeats (a bootstrap resample), scores as sacrebleu scores that corpus."""
    predictions = ["the cat sat on the mat today", "a dog barks", "hello world", "nothing alike here"]
    references = ["the cat sat on a mat", "the dog barks loudly", "hello there world", "a bird sings"]
    stats = statistics("bleu", predictions, [[r] for r in references])
    for selection in ([0, 1, 2, 3], [0, 0, 2], [3, 1, 1, 1]):
        expected = sacrebleu.corpus_bleu([predictions[i] for i in selection], [[references[i] for i in selection]])
        assert corpus_score("bleu", stats[np.array(selection)].sum(axis=0)) == pytest.approx(expected.score, abs=1e-12)


def test_accuracy_maps_the_generated_answer_to_a_choice():
    choices = ["True", "False"]
    assert matched_choice("True.", choices) == "True"
    assert matched_choice("false, because the text says so", choices) == "False"
    assert matched_choice("maybe", choices) is None
    assert matched_choice("not sure", ["no", "not sure"]) == "not sure"  # the longest choice it starts with
    values = per_example("accuracy", ["True.", "maybe", "False"], [["True"], ["False"], ["True"]], [choices] * 3)
    assert values == [1.0, 0.0, 0.0]


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="equally many"):
        score(["rouge1"], ["a"], [["a"], ["b"]])


def test_metric_groups_expand():
    assert expand(["rouge", "bleu", "rougeL"]) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"]


def test_sentences_split_with_abbreviations_initials_and_quotes():
    text = 'Mr. Smith went to Washington. He met Dr. J. Doe at 5 p.m. on Monday. "It was great," he said. Then more.'
    assert sentences(text) == [
        "Mr. Smith went to Washington.",
        "He met Dr. J. Doe at 5 p.m. on Monday.",
        '"It was great," he said.',
        "Then more.",
    ]
    assert sentences("  Lead space. Second one.  ") == ["Lead space.", "Second one."]  # no white space kept around
    assert sentences("Line one\nLine two.") == ["Line one", "Line two."]  # a line break ends a sentence too
    assert sentences("No full stop at all") == ["No full stop at all"] and sentences("  ") == []


def test_rouge_lsum_is_the_lcs_over_sentences():
    prediction, reference = "The dog ran away. The cat sat.", "The cat sat. The dog ran away."
    metrics = _one(["rougeL", "rougeLsum"], prediction, [reference])
    # Plain ROUGE-L: one LCS over the whole text, "the dog ran away" or "the cat sat" plus a "the": 4 of 7 tokens.
    assert metrics["rougeL"] == pytest.approx(4 / 7)
    # ROUGE-Lsum: each reference sentence's LCS against every predicted sentence (union): all 7 tokens.
    assert metrics["rougeLsum"] == pytest.approx(1.0)
    # The same as rouge_score itself with one sentence a line (the literature's CNN/DailyMail figure).
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    long = "Mr. Smith met Dr. J. Doe at 5 p.m. today. They talked. Nothing came of it."
    short = "Mr. Smith and Dr. Doe met. Nothing came of the talks."
    expected = scorer.score("\n".join(sentences(long)), "\n".join(sentences(short)))["rougeLsum"].fmeasure
    assert _one(["rougeLsum"], short, [long])["rougeLsum"] == pytest.approx(expected)
    assert expected != pytest.approx(scorer.score(long, short)["rougeLsum"].fmeasure)  # unsplit, it differs


def test_summarisation_ranks_by_rouge_lsum():
    summarisation = TASKS["summarization"]
    assert summarisation.primary == "rougeLsum"
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"} == set(summarisation.metrics)


def test_choices_keep_their_words():
    """A choice "A" is not an article to delete: an empty answer names no choice, and "a." names A."""
    choices = ["A", "B", "C"]
    assert normalise_answer("A") == ""  # SQuAD's normalisation, which exact match and F1 keep
    assert normalise_choice("A") == "a" and normalise_choice('  "The  answer." ') == "the answer"
    assert matched_choice("", choices) is None and matched_choice("   ", choices) is None
    assert matched_choice("A", choices) == "A" and matched_choice("a.", choices) == "A"
    assert matched_choice("B) because", choices) == "B"
    assert matched_choice("an apple", choices) is None  # "a" only as a word of its own
    assert per_example("accuracy", ["", "a.", "C"], [["A"], ["A"], ["B"]], [choices] * 3) == [0.0, 1.0, 0.0]


def test_one_line_answers_are_their_first_line():
    assert first_line("\n  Paris\nThe capital of France.") == "Paris"
    assert first_line(" Paris, France ") == "Paris, France" and first_line("\n\n") == ""
    assert TASKS["qa"].one_line and TASKS["classification"].one_line and not TASKS["summarization"].one_line
