"""The run configuration: one typed dataclass, filled from defaults, a YAML file and command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import math
import stat
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.config.fields import RANGES, SETTINGS
from peftbench.errors import ConfigError
from peftbench.task.metrics import GROUPS, METRICS, expand
from peftbench.task.presets import EMBEDDED_TASKS, NEWS, TASKS, WIKIPEDIA, template_fields

EMBEDDED = "embedded"
SEARCHABLE = ("lr", "lora_r")  # what --search can tune: the learning rate, and the rank of methods that have one
GRIDS = {"lr_grid": "lr", "rank_grid": "lora_r"}  # each grid and the setting it searches
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZE = ("4bit", "8bit")
PROMPT_FORMATS = ("auto", "chat", "plain")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # --report-to; each is an optional extra (see tracking.py)
ALL_TRACKERS, NO_TRACKER = "all", "none"  # --report-to as HF Trainer takes it: every installed tracker, or none
ALL_LINEAR = "all-linear"  # --lora-targets as peft spells it: every linear layer but the output head
TARGET_FIELDS = ("lora_targets", "ia3_targets", "ia3_feedforward")  # module names, all-linear, or one pattern
# Other spellings of a key, as HF Trainer, peft and LLaMA-Factory name it (each with dashes or underscores).
ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "output_dir": "output",
    "lora_rank": "lora_r",
    "lora_target": "lora_targets",
}
TARGET_ALIASES = {"all": ALL_LINEAR}  # LLaMA-Factory's lora_target: all
EXECUTORS = ("local", "ray")  # where the trials run (executor.py); ray is an optional extra
AUTO, NONE = "auto", "none"
# What a task decides unless given: reset where another task is scored (RunConfig.for_retention_task).
TASK_SETTINGS = (
    "task",
    "metrics",
    "primary_metric",
    "instruction",
    "prompt_template",
    "source_column",
    "target_column",
    "choices",
    "choices_column",
)
RETENTION = (AUTO, NONE, WIKIPEDIA, NEWS)  # --retention: the task's default sample, none, or a named one


@dataclass
class RunConfig:
    """Everything that decides what a run does. Flag `--lora-r` is key `lora_r` (or `lora-r`) in YAML."""

    model: str = EMBEDDED
    dataset: str = EMBEDDED
    dataset_config: str | None = None
    source_column: str | None = None  # one column as the source: shorthand for prompt_template "{column}"
    target_column: str | None = None
    prompt_template: str | None = None  # Python format string over columns; None: the task's, for the data's columns
    task: str | None = None  # summarization, qa, classification; None: the embedded dataset's, else summarization
    metrics: list[str] | None = None  # task metrics (metrics.METRICS, or "rouge"); None: the task's
    primary_metric: str | None = None  # what the verdict and rankings use; None: the task's
    comparator: str | None = None  # the method the verdict asks the others to match; None: full fine-tuning
    margin: float = 1.0  # how far below the comparator a method may score and count as good: points out of 100
    choices: list[str] | None = None  # a fixed label set (accuracy, accuracy_ll)
    choices_column: str | None = None  # or a column holding each example's options
    train_split: str = "train"  # for datasets with their own splits (hub, save_to_disk folders); slices allowed
    validation_split: str = "validation"
    test_split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["full", "lora", "ia3"])

    epochs: int = 2
    batch_size: int = 4  # examples per micro-batch across all processes (global): a step takes batch_size x grad_accum
    per_device_batch_size: int | None = None  # instead of batch_size: batch_size = this x processes
    grad_accum: int = 1
    lr: float | None = None  # None: the method's own default (see methods.py)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    seeds: list[int] | None = None  # several seeds: one complete run per seed under OUTPUT/seed-<s>; overrides seed

    train_size: int = 64
    eval_size: int = 16
    test_size: int = 32
    prompt_format: str = "auto"  # causal models: chat (the tokenizer's template), plain, or auto (chat if it has one)
    instruction: str | None = None  # the chat format's request before the source; None: the task's
    max_source_tokens: int = 192
    max_target_tokens: int = 64
    max_new_tokens: int = 64
    num_beams: int = 1
    eval_batch_size: int = 16
    eval_every: int = 1  # validate every N epochs (and always after the last)
    eval_generate_size: int | None = None  # validation examples generated per epoch; None: all of them
    latency_prompts: int = 3  # test prompts the latency rounds cycle through
    latency_rounds: int = 6
    latency_new_tokens: int = 16
    # Forgetting (data.retention): the per-token loss on general text the task never trains on, before and after.
    retention: str = AUTO  # RETENTION: auto is the task's default sample (task.presets); none measures nothing
    retention_data: str | None = None  # the user's own texts instead: a .txt (a text per line) or a table's column
    retention_column: str | None = None  # that column (default: text, or a table's only column)
    retention_size: int = 128  # texts of the sample (and test examples of the retention task)
    retention_task: str | None = None  # an embedded dataset scored with its own task before and after training

    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp32

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: the architecture family's default
    ia3_targets: list[str] | None = None
    ia3_feedforward: list[str] | None = None
    loraplus_lr_ratio: float = 16.0  # LoRA+: the B matrices' learning rate over the A matrices'
    num_virtual_tokens: int = 20  # prefix and prompt tuning
    # Any field of a method's own peft config, by method: {"lora": {"r": 16}} (flag: lora.r=16,vera.r=256); over the
    # flags above, which are shorthands for some of them. Checked against peft's config class (methods.method_args).
    method_args: dict[str, dict[str, Any]] | None = None
    quantize: str | None = None  # "4bit" (NF4) or "8bit": a bitsandbytes base on CUDA, for LoRA-family methods

    trust_remote_code: bool = False
    output: str | None = None  # None: runs/<timestamp>
    quiet: bool = False
    in_process: bool = False  # run methods in this process (debugging; memory peaks then share one process)
    force: bool = False  # rerun finished methods, and accept an OUTPUT holding another configuration's results
    allow_other_files: bool = False  # write into an OUTPUT holding files peftbench did not write (never over them)
    dry_run: bool = False  # print the plan (config, trainable parameters, tokens, time estimate) and exit
    allow_pickle: bool = False  # load pickle-only weights (.bin): unpickling a file from elsewhere can run code
    report_to: list[str] | None = None  # trackers (TRACKERS); None: log only to the output directory
    executor: str = "local"  # EXECUTORS: one trial after another here, or all at once on a Ray cluster
    ray_address: str = "auto"  # auto: an existing Ray cluster, else a local one; local: always a new one; HOST:PORT
    gpus_per_trial: float | None = None  # Ray: None is 1 where the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    ray_scratch: str | None = None  # Ray: where a worker writes its trial (default: its node's temp folder)

    # Per-method search (search.py): each grid point is a trial, chosen on validation only.
    search: list[str] | None = None  # settings searched (SEARCHABLE); None: each method at its one learning rate
    lr_grid: list[float] | dict[str, list[float]] | None = None  # one grid, or one per method; None: default x 1/3,1,3
    rank_grid: list[int] | dict[str, list[int]] | None = None  # lora_r values, for methods that have a rank
    select_by: str = "loss"  # validation loss (lower is better) or a validation metric of --metrics (higher is better)
    search_halving: bool = True  # successive halving: after each epoch a third of the trials (at least two) go on
    search_trials: int | None = None  # trials per method, the same for all; None: largest starting grid + 2
    search_limit: float = 100.0  # how far a search may go from a method's own value, as a factor either way

    def __post_init__(self) -> None:
        # What the task decides unless given: every RunConfig (a default one too) is complete from here on.
        self.task = self.task or EMBEDDED_TASKS.get(self.dataset, "summarization")
        preset = TASKS.get(self.task)
        if preset is None:
            return  # validate() names the bad task
        self.metrics = expand(self.metrics) if self.metrics else list(preset.metrics)
        self.primary_metric = self.primary_metric or (
            preset.primary if preset.primary in self.metrics else self.metrics[0]
        )
        if self.instruction is None:
            choices = ", ".join(self.choices or []) or "the options given"
            self.instruction = preset.instruction.replace("{choices}", choices)

    def validate(self) -> None:
        """Raise ConfigError naming the first value out of range, and the range."""
        for name, valid in RANGES.items():
            value = getattr(self, name)
            if value is None and FIELDS[name].default is None:
                continue  # optional: the default applies
            whole = _kind(name) is int
            number = not isinstance(value, bool) and isinstance(value, int if whole else int | float)
            if not number or not valid.holds(value):
                raise ConfigError(f"--{_flag(name)} must be {valid.describe(whole)}, got {value!r}")
        if self.seeds is not None:
            self._validate_seeds()
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        self._validate_task()
        self._validate_search()
        if not self.instruction.strip():
            raise ConfigError("--instruction is empty; give the request the chat format puts before each source")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        self._validate_executor()
        if not self.methods:
            raise ConfigError("--methods is empty; give a comma list such as full,lora,ia3")
        if self.comparator is not None and self.comparator not in self.methods:
            raise ConfigError(
                f"--comparator {self.comparator!r} is not one of the methods run: choose from {', '.join(self.methods)}"
            )
        self._validate_trackers()
        self._validate_retention()
        for name in TARGET_FIELDS:
            _check_target_spec(name, getattr(self, name))

    def _validate_trackers(self) -> None:
        choices = (*TRACKERS, ALL_TRACKERS, NO_TRACKER)
        for tracker in self.report_to or []:
            if tracker not in choices:
                close = difflib.get_close_matches(tracker, choices, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"--report-to {tracker!r} is not a tracker: choose from {', '.join(choices)}{hint}")
        if len(self.report_to or []) > 1 and {ALL_TRACKERS, NO_TRACKER} & set(self.report_to):
            raise ConfigError(f"--report-to {','.join(self.report_to)}: 'all' and 'none' stand alone")

    def _validate_task(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        unknown = [name for name in self.metrics if name not in METRICS]
        if unknown:
            valid = ", ".join([*GROUPS, *METRICS])
            raise ConfigError(f"--metrics {', '.join(unknown)}: no such metric; choose from {valid}")
        if self.primary_metric not in self.metrics:
            raise ConfigError(
                f"--primary-metric {self.primary_metric} is not among --metrics "
                f"{','.join(self.metrics)}; add it there, or choose one of those"
            )
        if self.choices is not None and len(set(self.choices)) < 2:
            raise ConfigError(f"--choices needs at least two different choices, got {','.join(self.choices)!r}")
        needing = [name for name in self.metrics if METRICS[name].choices]
        if needing and not self.choices and not self.choices_column:
            raise ConfigError(
                f"--metrics {','.join(needing)} score choices: give --choices (e.g. True,False) or "
                "--choices-column (a column of each example's options)"
            )
        if self.prompt_template is not None:
            if not self.prompt_template.strip():
                raise ConfigError("--prompt-template is empty; give a format string such as '{question}\\nAnswer:'")
            try:
                fields = template_fields(self.prompt_template)
            except ValueError as exc:
                raise ConfigError(f"--prompt-template {self.prompt_template!r}: {exc}") from None
            if not fields:
                raise ConfigError(f"--prompt-template {self.prompt_template!r} names no column; write {{column}}")
        for name in ("train_split", "validation_split", "test_split"):
            if not getattr(self, name).strip():
                raise ConfigError(f"--{_flag(name)} is empty; name a split, e.g. train or train[:2000]")

    def _validate_retention(self) -> None:
        """The retention settings that can be checked without reading a file (data.retention reads it)."""
        if self.retention not in RETENTION:
            raise ConfigError(f"--retention must be one of {', '.join(RETENTION)}, got {self.retention!r}")
        if self.retention_data is not None:
            if not self.retention_data.strip():
                raise ConfigError("--retention-data is empty; give a .txt, .jsonl, .json, .csv or .parquet file")
            if self.retention != AUTO:
                raise ConfigError(
                    f"--retention {self.retention} and --retention-data both say which text to measure on; give one"
                )
        elif self.retention_column is not None:
            raise ConfigError("--retention-column names a column of --retention-data; give the file too")
        if self.retention_task is not None:
            valid = [name for name in EMBEDDED_TASKS if name != self.dataset]
            if self.retention_task not in valid:
                raise ConfigError(
                    f"--retention-task {self.retention_task!r} is not a task to score beside this one: choose from "
                    f"{', '.join(valid)} (an embedded dataset, scored with its own task; not the data trained on)"
                )

    def for_retention_task(self) -> RunConfig:
        """The configuration that scores --retention-task: its embedded dataset with its own task's prompt, metrics
        and answers, retention_size test examples, no training examples; the model, budget and decoding this run's."""
        return dataclasses.replace(
            self,
            dataset=self.retention_task,
            **dict.fromkeys(TASK_SETTINGS),
            train_size=0,
            eval_size=0,
            test_size=self.retention_size,
            retention=NONE,
            retention_data=None,
            retention_column=None,
            retention_task=None,
        )

    def _validate_executor(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not self.ray_address.strip():
            raise ConfigError("--ray-address is empty; give auto, local or HOST:PORT of a Ray head")

    def _validate_search(self) -> None:
        """The search's own settings; what depends on the methods (ranks, per-method grids) is search.check's."""
        for name in self.search or []:
            if name not in SEARCHABLE:
                what = "is not searchable" if name in FIELDS else "is not a setting"
                raise ConfigError(f"--search {name} {what}; choose from {', '.join(SEARCHABLE)}")
        if self.search is not None and not self.search:
            raise ConfigError(f"--search is empty; give a comma list of {', '.join(SEARCHABLE)}")
        for grid, setting in GRIDS.items():
            values = getattr(self, grid)
            if values is None:
                continue
            if setting not in (self.search or []):
                raise ConfigError(
                    f"--{_flag(grid)} is given but --search does not tune {setting}: add "
                    f"--search {','.join([*(self.search or []), setting])}"
                )
            for points in values.values() if isinstance(values, dict) else [values]:
                if not points:
                    raise ConfigError(f"--{_flag(grid)} is empty; give a comma list of positive numbers")
                bad = [value for value in points if not (value > 0 and math.isfinite(value))]
                if bad:
                    raise ConfigError(
                        f"--{_flag(grid)} {','.join(f'{value:g}' for value in points)}: {bad[0]:g} is "
                        "not a positive number; every grid value must be one"
                    )
        valid = ("loss", *self.metrics)
        if self.select_by not in valid:
            raise ConfigError(
                f"--select-by {self.select_by!r} is not computed on validation; choose from "
                f"{', '.join(valid)} (loss: validation loss; a metric of --metrics)"
            )
        if self.search is None and self.select_by != "loss":
            raise ConfigError("--select-by needs a search: add --search lr (or lr,lora_r)")

    def _validate_seeds(self) -> None:
        if not self.seeds:
            raise ConfigError("--seeds is empty; give a comma list such as 0,1,2")
        if any(seed < 0 for seed in self.seeds):
            raise ConfigError(f"--seeds must be non-negative, got {','.join(map(str, self.seeds))}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds lists a seed twice: {','.join(map(str, self.seeds))}")

    def to_dict(self) -> dict[str, Any]:
        """The fields, and which batch size the user gave (batch_size is the global one either way)."""
        given_as = "global" if self.per_device_batch_size is None else "per_device"
        return dataclasses.asdict(self) | {"batch_size_given_as": given_as}


PATTERN_CHARACTERS = set("^$*+?()[]{}|\\")  # a target holding one is a regular expression


def is_pattern(target: str) -> bool:
    """Whether a target is a regular expression (peft's target_modules as a string) rather than a module name:
    module names hold letters, digits, underscores and dots only."""
    return any(char in PATTERN_CHARACTERS for char in target)


def _check_target_spec(name: str, targets: list[str] | None) -> None:
    """all-linear and a regular expression each stand alone: peft takes one or the other, not in a list."""
    if targets and len(targets) > 1 and any(t == ALL_LINEAR or is_pattern(t) for t in targets):
        raise ConfigError(
            f"--{_flag(name)} {','.join(targets)}: {ALL_LINEAR} or a regular expression stands alone (join "
            "alternatives in one expression with |, e.g. '.*\\.(q_proj|v_proj)')"
        )


EXCLUSIVE = {"per_device_batch_size": "batch_size"}  # given together in one source, they are an error
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
if set(FIELDS) != set(SETTINGS):  # a field without metadata would have no flag; metadata without a field, no value
    raise RuntimeError(f"RunConfig and fields.SETTINGS disagree: {sorted(set(FIELDS) ^ set(SETTINGS))}")
HINTS = typing.get_type_hints(RunConfig)
NUMBER_LIST_FIELDS = {"seeds": int, "rank_grid": int, "lr_grid": float}  # comma lists of numbers; grids: or per method
LIST_FIELDS = {
    "methods",
    "lora_targets",
    "ia3_targets",
    "ia3_feedforward",
    "report_to",
    "metrics",
    "choices",
    "search",
    *NUMBER_LIST_FIELDS,
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _kind(name: str) -> type:
    """The type of a (not list) field's values, as its annotation says (`float | None`: float)."""
    hint = HINTS[name]
    return next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML or flag value into the field's type, or raise ConfigError naming the key."""
    if value is None:
        if FIELDS[name].default is not None:  # a YAML key with nothing after it
            shown = getattr(RunConfig(), name)
            raise ConfigError(f"{name} has no value; give one, or leave the key out for the default ({shown!r})")
        return None
    if name == "method_args":
        return _method_args(value)
    if name in GRIDS and isinstance(value, dict):  # YAML: a grid per method
        return {str(method): _coerce(name, values) for method, values in value.items()}
    if name in LIST_FIELDS:
        whole = name in TARGET_FIELDS and isinstance(value, str) and is_pattern(value)  # commas of {m,n} stay
        items = [value] if whole else value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name} must be a comma list or a YAML list, got {value!r}")
        items = _items(name, value, items)
        if name in TARGET_FIELDS:
            items = [TARGET_ALIASES.get(item.lower(), item) for item in items]
        return _numbers(name, items, NUMBER_LIST_FIELDS[name]) if name in NUMBER_LIST_FIELDS else items
    kind = _kind(name)
    if kind in (int, float) and isinstance(value, bool):  # YAML's yes/no/true/false: int(True) would be 1
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1"):
                return True
            if str(value).lower() in ("false", "no", "0"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}") from None


def _method_args(value: Any) -> dict[str, dict[str, Any]]:
    """--method-args lora.r=16,vera.r=256 (each value read as YAML reads it: 16 a number, true a boolean, [a, b] a
    list) or YAML's {lora: {r: 16}}, as {method: {field: value}}; ConfigError naming what is not of that form."""
    form = "give method.field=value items (lora.r=16,vera.r=256), or a YAML mapping {lora: {r: 16}}"
    if isinstance(value, str):
        parsed: dict[str, dict[str, Any]] = {}
        for item in _top_level_items(value):
            key, equals, text = item.partition("=")
            method, dot, name = key.strip().partition(".")
            if not (equals and dot and method and name.strip()):
                raise ConfigError(f"--method-args {value!r}: {item!r} is not method.field=value; {form}")
            if name.strip() in parsed.setdefault(method, {}):
                raise ConfigError(f"--method-args {value!r} gives {method}.{name.strip()} twice: give it once")
            parsed[method][name.strip()] = _yaml_value(key.strip(), text)
        return parsed
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"method_args {value!r} is not a mapping of methods to their fields; {form}")
    return {str(method): {str(k): v for k, v in args.items()} for method, args in value.items()}


def _yaml_value(key: str, text: str) -> Any:
    """One --method-args value as YAML reads it (None where it is empty)."""
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--method-args: the value of {key} ({text.strip()!r}) does not read as YAML") from None


def _top_level_items(text: str) -> list[str]:
    """text split at the commas outside brackets (a list value keeps its own), an empty item an error."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text + ","):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    if depth:
        raise ConfigError(f"--method-args {text!r}: a bracket is not closed")
    if "" in items:
        raise ConfigError(f"--method-args {text!r} has an empty item (item {items.index('') + 1}): remove it")
    return items


def _items(name: str, value: Any, items: list) -> list[str]:
    """A list's items as text. An empty item (`lora,,ia3`, a trailing comma, a YAML null) is an error: dropping it
    would run something else than asked, and it is often a value left out. A value that is empty as a whole gives an
    empty list, which validate() names."""
    if isinstance(value, str) and not value.strip():
        return []
    texts = ["" if item is None else str(item).strip() for item in items]
    if "" in texts:
        raise ConfigError(
            f"--{_flag(name)} {value!r} has an empty item (item {texts.index('') + 1}): remove it (an extra comma?), "
            "or give the missing value"
        )
    return texts


def _numbers(name: str, items: list[str], kind: type) -> list:
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            what = "integers" if kind is int else "numbers"
            raise ConfigError(
                f"{name} must be a comma list of {what}: {item!r} in {','.join(items)!r} is not one"
            ) from None
    return values


FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_file(path: Path, what: str) -> None:
    """Raise ConfigError unless path is a regular file (what: how the message names it): a missing path, a folder, a
    named pipe or a device each say which."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    kind = next((k for test, k in FILE_KINDS if test(mode)), "a special file")
    raise ConfigError(f"{what} {str(path)!r} is {kind}, not a regular file: give a regular file")


class _DuplicateKey(Exception):
    """A YAML mapping that gives a key twice, and the lines that give it."""

    def __init__(self, key: Any, lines: tuple[int, int]):
        super().__init__(key)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a key given twice; YAML forbids it, and here it is a value silently lost."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}  # key -> the line that gave it
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` and the keys that override it are not duplicates
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # the base class names an unhashable key
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _DuplicateKey(key, (first[key], line))
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (UTF-8) into a flat dict of its keys as written (build_config accepts hyphens or
    underscores, and the aliases); a key given twice in a mapping is an error naming it and its lines."""
    path = Path(path)
    check_file(path, "config file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}): "
            "give a YAML file of keys and values"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        first, again = exc.lines
        raise ConfigError(
            f"config file {str(path)!r} gives key {exc.key!r} twice (lines {first} and {again}): give it once"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return {str(key): value for key, value in data.items()}


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], processes: int = 1) -> RunConfig:
    """Merge defaults < YAML file < flags and validate. Keys may be spelt with dashes or underscores, with a flag's
    leading dashes, or as an alias (ALIASES); a flag given as None is absent, a YAML key with no value an error (where
    its default is not None). processes is how many
    processes share a step's batch (for --per-device-batch-size)."""
    merged: dict[str, Any] = {}
    for source, spell, none_is_absent in ((file_values, str, False), (flag_values, _as_flag, True)):
        values = _canonical(source, spell, none_is_absent)
        for pair in EXCLUSIVE.items():  # a flag giving either of a pair overrides the file's one of them
            merged = {k: v for k, v in merged.items() if not (set(pair) & set(values) and k in pair)}
        merged |= values
    config = RunConfig(**merged)
    config.validate()
    if config.per_device_batch_size is not None:
        config.batch_size = config.per_device_batch_size * processes
    return config


def _as_flag(key: str) -> str:
    return key if key.startswith("-") else "--" + _flag(key)


def _canonical(values: dict[str, Any], spell, none_is_absent: bool) -> dict[str, Any]:
    """One source's values by field name; spellings of one field that disagree, or exclusive fields given together,
    are a ConfigError naming both as the user spelt them (spell: how a key is shown)."""
    found: dict[str, Any] = {}
    given: dict[str, str] = {}  # field -> the spelling that set it
    for key, value in values.items():
        if value is None and none_is_absent:
            continue
        name = key.lstrip("-").replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in FIELDS:
            close = difflib.get_close_matches(name, [*FIELDS, *ALIASES], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        coerced = _coerce(name, value)
        if coerced is None:
            continue  # a YAML key with no value where the default is None: the default
        if name in found and found[name] != coerced:
            raise ConfigError(
                f"{spell(given[name])} and {spell(key)} are two names for one setting and give it different values "
                f"({found[name]!r} and {coerced!r}): give one of them"
            )
        found[name], given[name] = coerced, key
    for name, other in EXCLUSIVE.items():
        if name in found and other in found:
            raise ConfigError(f"{spell(given[name])} and {spell(given[other])} exclude each other: give one of them")
    return found


def flags_for(values: dict[str, Any]) -> list[str]:
    """Command-line flags that give these field values (those that differ from the defaults): how a recorded
    config is run again."""
    defaults = RunConfig()
    flags: list[str] = []
    for name, value in values.items():
        if name not in FIELDS or value == getattr(defaults, name):
            continue
        if name == "batch_size" and values.get("per_device_batch_size") is not None:
            continue  # the user gave it per device: batch_size is derived from that
        if isinstance(value, bool):  # a switch on by default is turned off as --no-<flag>
            flags.append(f"--{_flag(name)}" if value else f"--no-{_flag(name)}")
        else:
            flags += [f"--{_flag(name)}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return flags
