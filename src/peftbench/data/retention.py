"""Held-out data for forgetting: the general-text sample the model's per-token loss is read on before and after
training (the task's embedded default, or --retention-data), and the second task scored without training on it
(--retention-task). Everything is read and checked here, before a model loads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from peftbench.config.run_config import AUTO, NONE, RunConfig, check_file
from peftbench.data.splits import (
    EMBEDDED_DATA_PACKAGE,
    LOCAL_SUFFIXES,
    Splits,
    embedded_data_path,
    load_splits,
    read_rows,
)
from peftbench.errors import ConfigError
from peftbench.task.presets import NEWS, TASKS, WIKIPEDIA

TEXT_COLUMN = "text"  # --retention-column's default
# Each named sample: the embedded dataset it is read from, its column, and what it is.
SAMPLES = {
    WIKIPEDIA: ("embedded-qa", "knowledge", "Wikipedia sentences (HotpotQA's supporting facts, HaluEval QA rows)"),
    NEWS: ("embedded", "document", "CNN/DailyMail news articles (HaluEval summarization rows)"),
}


@dataclass(frozen=True)
class TextSample:
    """The retention texts, in a fixed order: each one's id (a hash of its text) and text, and what they are."""

    ids: list[str]
    texts: list[str]
    description: str


@dataclass(frozen=True)
class HeldOut:
    """What forgetting is measured on: the text sample (None: --retention none) and the retention task's test
    examples with the configuration that scores them (None without --retention-task)."""

    texts: TextSample | None = None
    task: Splits | None = None
    task_config: RunConfig | None = None


def load_held_out(config: RunConfig) -> HeldOut:
    """The held-out data the configuration asks for, read and checked (bad input: ConfigError, before any model)."""
    texts = None if config.retention == NONE else _text_sample(config)
    if config.retention_task is None:
        return HeldOut(texts)
    other = config.for_retention_task()
    return HeldOut(texts, load_splits(other), other)


def _text_sample(config: RunConfig) -> TextSample:
    if config.retention_data is not None:
        path = Path(config.retention_data)
        texts = _file_texts(path, config.retention_column)
        what = f"{path.name} ({config.retention_column or 'its texts'})"
    else:
        name = TASKS[config.task].retention if config.retention == AUTO else config.retention
        dataset, column, what = SAMPLES[name]
        texts = [row.get(column) for row in read_rows(embedded_data_path(dataset), f"{EMBEDDED_DATA_PACKAGE} file")]
    return _sample(texts, config.retention_size, what, config.retention_data)


def _file_texts(path: Path, column: str | None) -> list:
    """A .txt file's lines, or one column of a table file's rows."""
    if path.suffix == ".txt":
        check_file(path, "--retention-data file")
        if column is not None:
            raise ConfigError(f"--retention-column {column!r}: a .txt file has no columns (each line is a text)")
        try:
            return path.read_bytes().decode("utf-8-sig").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --retention-data file {str(path)!r}: {exc}") from None
    if path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"--retention-data file {str(path)!r} must end in .txt or one of {', '.join(LOCAL_SUFFIXES)}")
    rows = read_rows(path, "--retention-data file")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    chosen = column or (TEXT_COLUMN if TEXT_COLUMN in columns or len(columns) != 1 else columns[0])
    if chosen not in columns:
        flag = "--retention-column" if column else f"the default column {TEXT_COLUMN!r}"
        raise ConfigError(
            f"--retention-data {str(path)!r} has no column {chosen!r} ({flag}); its columns: {', '.join(columns)}"
        )
    return [row.get(chosen) for row in rows]


def _sample(values: list, size: int, what: str, given: str | None) -> TextSample:
    """size texts out of values (strings with words; each text once), chosen by the hash of their text: a fixed
    pseudo-random sample, whatever the file's order."""
    texts = {value.strip() for value in values if isinstance(value, str) and value.strip()}
    keyed = sorted((hashlib.sha256(text.encode()).hexdigest(), text) for text in texts)
    source = f"--retention-data {given!r}" if given else what
    if len(keyed) < 2:
        raise ConfigError(f"{source} holds {len(keyed)} usable texts (non-empty strings); forgetting needs at least 2")
    if size > len(keyed):
        raise ConfigError(f"--retention-size {size} is more than the {len(keyed)} different texts in {source}")
    chosen = keyed[:size]
    return TextSample([f"text-{digest[:12]}" for digest, _ in chosen], [text for _, text in chosen], what)
