"""The reference rows without a model: Lead-3 on the methods' token budget, the majority class of the training
split scored on every metric of a classification run, and a builder for every task's trivial reference."""

from __future__ import annotations

import pytest

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, Rows, Splits
from peftbench.model.load import load_model
from peftbench.pipeline.references import REFERENCE_ROWS, lead, lead_3, majority_class, majority_label
from peftbench.task.presets import LEAD_3, MAJORITY, TASKS

ARTICLE = (
    'Mr. Smith went to Washington. He met Dr. J. Doe at 5 p.m. on Monday. "It was great," he said. Then more. '
    "And a fifth sentence."
)
CHOICES = ["A", "B", "C"]


def _splits(train: list[Example], test: list[Example]) -> Splits:
    return Splits(train, [], test, "hand-made examples", Rows("hand-made"))


def test_lead_takes_the_first_three_sentences():
    first = 'Mr. Smith went to Washington. He met Dr. J. Doe at 5 p.m. on Monday. "It was great," he said.'
    assert lead(ARTICLE) == first
    assert lead("No full stop at all") == "No full stop at all"


def test_lead_3_keeps_to_the_methods_token_budget(tiny_gpt2):
    tokenizer = load_model(str(tiny_gpt2)).tokenizer
    test = [Example("long", ARTICLE, "Smith met Doe."), Example("short", "Rain. Then sun.", "Rain and sun.")]
    config = RunConfig(model=str(tiny_gpt2), max_new_tokens=8, metrics=["rouge1", "rougeLsum"])
    result, rows = lead_3(_splits(test, test), "tiny", config)
    predictions = [row["prediction"] for row in rows]
    assert len(tokenizer(predictions[0], add_special_tokens=False).input_ids) == 8  # cut to the budget
    assert lead(ARTICLE).startswith(predictions[0]) and len(predictions[0]) < len(lead(ARTICLE))
    assert predictions[1] == "Rain. Then sun."  # within the budget: whole
    assert result.method == LEAD_3 and result.test.loss is None and set(result.test.scores) == {"rouge1", "rougeLsum"}
    assert result.test.scores["rouge1"] == pytest.approx((rows[0]["rouge1"] + rows[1]["rouge1"]) / 2)


def test_majority_class_answers_the_most_frequent_training_label(tiny_gpt2):
    train = [Example(f"t{i}", f"text {i}", label, choices=CHOICES) for i, label in enumerate("BBCCA")]
    assert majority_label(train) == "B"  # B and C twice each: the first in sorted order
    test = [Example(f"e{i}", f"test {i}", label, choices=CHOICES) for i, label in enumerate("BABC")]
    metrics = ["accuracy", "accuracy_ll", "accuracy_ll_norm"]
    config = RunConfig(model=str(tiny_gpt2), task="classification", choices=CHOICES, metrics=metrics)
    result, rows = majority_class(_splits(train, test), "tiny", config)
    assert result.method == MAJORITY and result.metrics == metrics
    assert all(row["prediction"] == "B" for row in rows)
    assert result.test.scores == {name: pytest.approx(2 / 4) for name in metrics}  # two of the four are B
    assert [row["accuracy_ll"] for row in rows] == [1.0, 0.0, 1.0, 0.0]


def test_every_trivial_reference_has_a_builder():
    named = {task.trivial_reference for task in TASKS.values()} - {None}
    assert named == {LEAD_3, MAJORITY} and named <= set(REFERENCE_ROWS)
    assert TASKS["summarization"].trivial_reference == LEAD_3 and TASKS["qa"].trivial_reference is None
