"""Reference rows that cost no training, scored like the methods on the test split: each task's trivial reference
(task.presets: Lead-3 for summarisation, the majority class for classification), built by the builder REFERENCE_ROWS
names for it; the zero-shot base model is evaluated in method_run.run_zero_shot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, Splits
from peftbench.errors import ConfigError
from peftbench.model.load import ModelSource
from peftbench.store.records import MethodResult, TestMetrics, prediction_rows
from peftbench.task.metrics import METRICS, same_choice, score
from peftbench.task.presets import LEAD_3, MAJORITY
from peftbench.task.sentences import sentences

LEAD_SENTENCES = 3
# A reference's builder: (test splits, the model's name as its results give it, the run's config) -> its result and
# its prediction rows.
Builder = Callable[[Splits, str, RunConfig], tuple[MethodResult, list[dict[str, Any]]]]


def lead(source: str, count: int = LEAD_SENTENCES, tokenizer=None, budget: int | None = None) -> str:
    """The first count sentences of a source (task.sentences), cut to at most budget tokens of tokenizer where
    both are given."""
    text = " ".join(sentences(source)[:count])
    if tokenizer is None or budget is None:
        return text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return text if len(ids) <= budget else tokenizer.decode(ids[:budget], skip_special_tokens=True).strip()


def lead_3(splits: Splits, model: str, config: RunConfig) -> tuple[MethodResult, list[dict[str, Any]]]:
    """Lead-3 on the test split: each source's first three sentences, on the methods' token budget: at most
    config.max_new_tokens tokens of the run's model tokenizer, as many as a method may generate, so that the
    reference wins nothing by being longer than a method can be. Scored on the run's metrics that read text (not
    the likelihood ones: there is no model)."""
    tokenizer = ModelSource.from_config(config).tokenizer()
    predictions = [lead(ex.source, tokenizer=tokenizer, budget=config.max_new_tokens) for ex in splits.test]
    names = [name for name in config.metrics if not METRICS[name].likelihood]
    metrics, per_example = score(names, predictions, [ex.references for ex in splits.test])
    return _reference(LEAD_3, splits, model, config, names, metrics, predictions, per_example)


def majority_label(train: list[Example]) -> str:
    """The most frequent reference answer of the training examples; of equally frequent ones, the first in sorted
    order (the same label every run)."""
    counts = Counter(ex.target for ex in train)
    if not counts:
        raise ConfigError("the majority-class reference needs training examples (--train-size of at least 1)")
    return max(sorted(counts), key=counts.__getitem__)


def majority_class(splits: Splits, model: str, config: RunConfig) -> tuple[MethodResult, list[dict[str, Any]]]:
    """The majority class on the test split: the training split's most frequent label (majority_label) as every
    test example's answer, scored on all the run's metrics; for the likelihood ones, that label is its choice, right
    where it is the example's reference (as accuracy scores it)."""
    test, label = splits.test, majority_label(splits.train)
    predictions = [label] * len(test)
    choices = [ex.choices for ex in test] if all(ex.choices for ex in test) else None
    generated = [name for name in config.metrics if not METRICS[name].likelihood]
    metrics, per_example = score(generated, predictions, [ex.references for ex in test], choices)
    right = [same_choice(label, ex.references[0]) for ex in test]
    for name in config.metrics:
        if METRICS[name].likelihood:
            metrics[name], per_example[name] = sum(right) / len(right), right
    return _reference(MAJORITY, splits, model, config, list(config.metrics), metrics, predictions, per_example)


def _reference(
    name: str,
    splits: Splits,
    model: str,
    config: RunConfig,
    names: list[str],
    metrics: dict[str, float],
    predictions: list[str],
    per_example: dict[str, list[float]],
) -> tuple[MethodResult, list[dict[str, Any]]]:
    """A reference's result (under model's name, so that it joins that model's comparison; scored on names, in the
    run's order) and its prediction rows."""
    result = MethodResult(name, model, splits.description, 0, 0, config.to_dict() | {"metrics": names})
    result.test = TestMetrics(None, {metric: metrics[metric] for metric in names})
    return result, prediction_rows(splits.test, predictions, per_example)


# Every trivial reference a task preset can name (Task.trivial_reference), and its builder.
REFERENCE_ROWS: dict[str, Builder] = {LEAD_3: lead_3, MAJORITY: majority_class}
