"""Task presets: what --task sets unless a flag says otherwise: the prompt template (the first whose columns the data
has), the target column, the metrics and the primary metric, the chat instruction, and the plain format's cue; and
what the task is scored with besides: whether its answers are one line, and its trivial reference row."""

from __future__ import annotations

import string
from dataclasses import dataclass

# The trivial references (no model): a method that does not beat its task's has learned nothing useful. The names are
# their directories in OUTPUT too (store.rundir): they live here, the lowest layer that needs them.
LEAD_3 = "lead-3"  # summarisation's extractive reference: each source's first three sentences
MAJORITY = "majority-class"  # classification's: the training split's most frequent label, for every example
# The general-text samples forgetting is measured on unless --retention-data gives one (data.retention reads them). A
# task's default is never its own embedded data: summaries are trained on news, so their retention text is Wikipedia.
WIKIPEDIA = "wikipedia"  # the embedded HotpotQA rows' supporting Wikipedia sentences
NEWS = "news"  # the embedded CNN/DailyMail articles


@dataclass(frozen=True)
class Task:
    """One task's defaults and scoring."""

    name: str
    templates: tuple[str, ...]  # Python format strings over columns, tried in order
    targets: tuple[str, ...]  # target columns, tried in order
    metrics: tuple[str, ...]
    primary: str
    instruction: str  # the chat format's request before the source ({choices}: the choice list, where fixed)
    cue: str  # the plain format's text after the source (a template ending in a cue of its own needs none)
    trivial_reference: str | None = None  # its reference row without a model (LEAD_3, MAJORITY), if it has one
    # Answers are one line: generation is scored up to its first line break (as lm-evaluation-harness's until "\n").
    one_line: bool = False
    retention: str = WIKIPEDIA  # the general-text sample forgetting is measured on by default (WIKIPEDIA, NEWS)


TASKS = {
    task.name: task
    for task in [
        Task(
            "summarization",
            ("{article}", "{document}", "{text}"),
            ("highlights", "right_summary", "summary"),
            ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"),
            "rougeLsum",
            "Summarize the following news article in three or four sentences.",
            "\nTL;DR:",
            trivial_reference=LEAD_3,
        ),
        Task(
            "qa",
            (
                "{context}\nQuestion: {question}\nAnswer:",
                "{knowledge}\nQuestion: {question}\nAnswer:",
                "Question: {question}\nAnswer:",
            ),
            ("answers", "answer", "right_answer"),
            ("exact_match", "f1"),
            "f1",
            "Answer the question from the text given. Reply with the answer only, in a few words.",
            "",
            one_line=True,
            retention=NEWS,  # its embedded rows' contexts are Wikipedia sentences
        ),
        Task(
            "classification",
            ("{text}\nAnswer:", "{sentence}\nAnswer:", "{question}\nAnswer:"),
            ("label", "answer"),
            ("accuracy", "accuracy_ll", "accuracy_ll_norm"),
            "accuracy",
            "Answer with one of: {choices}. Reply with the answer only.",
            "",
            trivial_reference=MAJORITY,
            one_line=True,
        ),
    ]
}
EMBEDDED_TASKS = {"embedded": "summarization", "embedded-qa": "qa"}  # the task each embedded dataset is


def template_fields(template: str) -> list[str]:
    """The column names a format string fills in, in order; ValueError where it is not a valid format string."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    for name in names:
        if not name or not name.isidentifier():
            raise ValueError(f"{{{name}}} is not a column name (write {{column}}; a literal brace is {{{{ or }}}})")
    return names


def first_fitting(candidates: tuple[str, ...], columns: list[str]) -> str | None:
    """The first template whose columns are all present."""
    return next((t for t in candidates if set(template_fields(t)) <= set(columns)), None)
