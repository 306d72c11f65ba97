"""Reference rows that cost no training, scored like the methods: Lead-3 here (each source's first three sentences,
summarisation's standard extractive reference); the zero-shot base model is evaluated in method_run.run_zero_shot."""

from __future__ import annotations

import re
from typing import Any

from peftbench.data.splits import Example, Splits
from peftbench.store.records import MethodResult, TestMetrics, prediction_rows
from peftbench.store.rundir import LEAD_3
from peftbench.task.metrics import METRICS, score

LEAD_SENTENCES = 3
# Titles and initials that end in a full stop without ending a sentence.
_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "gen",
    "gov",
    "sen",
    "rep",
    "lt",
    "col",
    "sgt",
    "capt",
    "mt",
    "no",
    "vs",
    "inc",
    "ltd",
    "co",
    "corp",
    "jan",
    "feb",
    "aug",
    "sept",
    "oct",
    "nov",
    "dec",
}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """The sentences of a text: a break after ., ! or ? (and closing quotes) before a capital or digit, except after
    a title, an abbreviation or a single initial."""
    found, start = [], 0
    for boundary in _BOUNDARY.finditer(text):
        before = text[start : boundary.start()].rstrip("\"')]")
        word = before.rsplit(None, 1)[-1].rstrip(".").lower() if before.split() else ""
        if word in _ABBREVIATIONS or len(word) == 1:
            continue
        found.append(text[start : boundary.end()].strip())
        start = boundary.end()
    return [*found, text[start:].strip()] if text[start:].strip() else found


def lead(source: str, count: int = LEAD_SENTENCES) -> str:
    """The first count sentences of a source."""
    return " ".join(sentences(source)[:count])


def lead_3(splits: Splits, model: str, config: dict[str, Any]) -> tuple[MethodResult, list[dict[str, Any]]]:
    """Lead-3 on the test split, scored on the run's metrics (config["metrics"]), as a result (under model's name,
    so that it joins that model's comparison) and its prediction rows."""
    test: list[Example] = splits.test
    predictions = [lead(ex.source) for ex in test]
    names = [name for name in config["metrics"] if not METRICS[name].likelihood]
    metrics, per_example = score(names, predictions, [ex.references for ex in test])
    result = MethodResult(LEAD_3, model, splits.description, 0, 0, config | {"metrics": names})
    result.test = TestMetrics(None, metrics)
    return result, prediction_rows(test, predictions, per_example)
