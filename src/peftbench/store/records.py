"""Results: what a method's run measured, as typed records with a stable JSON form (metrics.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from peftbench.config.typecheck import check_value

SCHEMA_VERSION = 4  # 3: retention and retention_task; 4: latency rounds, training steps, memory account
# config["model_weights"]: a pretrained model's, or random ones of a config's shape (older files: pretrained).
PRETRAINED = "pretrained"
RANDOM_WEIGHTS = "random weights: speed and memory only"
# config["<method>_targets_given"] (and other module options): as the user gave them, where the recorded
# config["<method>_targets"] is their resolution on the model (all-linear, a regular expression).
GIVEN = "_given"


@dataclass
class EpochMetrics:
    """One validation: its losses and its task metrics (metrics.METRICS name -> value), stored flat in JSON, and what
    each validation example contributed (evaluate.Scores.per_example: "loss" and "tokens", each example's summed
    target loss and target tokens, and its score on each mean metric), from which a search's selection gets its
    uncertainty."""

    epoch: int  # 0 is the base model before any training
    train_loss: float | None
    val_loss: float
    scores: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        own = {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss}
        return own | self.scores | ({"per_example": self.per_example} if self.per_example else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochMetrics:
        own = ("epoch", "train_loss", "val_loss", "per_example")
        scores = {k: v for k, v in data.items() if k not in own}
        return cls(data["epoch"], data["train_loss"], data["val_loss"], scores, data.get("per_example") or {})


@dataclass
class TestMetrics:
    """The test split's loss (None for a reference with no model: Lead-3) and task metrics, stored flat in JSON."""

    loss: float | None
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, **self.scores}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestMetrics:
        return cls(data.get("loss"), {k: v for k, v in data.items() if k != "loss"})


# The phases of a method's run, in the order they first run. Zero-shot evaluation is not among them: it runs once per
# seed for every method, in its own process (method_run.run_zero_shot).
PHASES = (
    "model_load",
    "training",
    "validation_loss",
    "validation_generation",
    "test_loss",
    "test_generation",
    "retention",
    "merge_check",
    "latency",
    "saving",
    "serving",
)


WARM_STEPS = 2  # training steps at the start of each epoch left out of the steady-state throughput
INFERENCE_MODELS = ("base", "unmerged", "merged")  # Efficiency.latency_ms's and inference_memory's keys
LATENCY_PARTS = ("prefill_ms", "decode_ms")  # Efficiency.latency_rounds' keys: the two parts of a generation


@dataclass
class Efficiency:
    """What a method costs. Memory: CUDA max_memory_allocated over training on a GPU, else the peak resident
    memory (RSS) of the process that trained this method alone, over its training epochs."""

    trainable_params: int
    trainable_pct: float
    peak_train_memory_bytes: int
    memory_measure: str  # "cuda_max_memory_allocated" or "peak_rss"
    train_seconds: float
    train_tokens_per_s: float  # real (non-padding) tokens
    train_samples_per_s: float
    eval_generate_tokens_per_s: float  # new tokens/s in batched evaluation generation (the trained model, unmerged)
    # Per model, the median over latency rounds of one generation's ms at batch size 1 (exactly latency_new_tokens new
    # tokens): "base" is the pretrained model without adapter, "unmerged" the trained model as it trains (for full: the
    # fine-tuned model), "merged" after merge_and_unload (None where the method cannot merge or has nothing to merge).
    latency_ms: dict[str, float | None]
    latency_new_tokens: int
    # Merged vs unmerged on the latency prompts: same greedy tokens, and the largest absolute logit difference.
    merge_check: dict[str, float | bool] | None
    adapter_size_bytes: int  # the saved adapter's weights and config on disk; for full, the saved model's
    adapter_files: list[str] | None = None  # the files adapter_size_bytes counts (None in older results)
    # Wall seconds per phase of the method's run (PHASES; summed over its epochs and resumed sessions), and the run's
    # own wall time, which they add up to at most: the rest is bookkeeping between phases (None in older results).
    phase_seconds: dict[str, float] | None = None
    wall_seconds: float | None = None
    # Per phase, the share of the machine's CPU time that other processes used during it (PhaseTimer): where it is
    # large, that phase's times (and the speed and latency figures taken in it) are inflated by contention.
    other_cpu_share: dict[str, float] | None = None
    # Inference memory per model, keyed like latency_ms (None where not measured; the whole field None in older
    # results), each over the generation of the latency prompts: weights_bytes (its parameters and buffers),
    # peak_bytes (the peak of a fresh window, memory_measure's way: on a CPU the process's whole RSS, everything else
    # it holds at that moment included), increase_bytes (that peak minus what the process held as the window opened:
    # the generation's own working memory; None where no fresh window could be opened).
    inference_memory: dict[str, dict[str, int | None] | None] | None = None
    # Serving, medians of measure.SERVING_REPEATS timings (None where it does not apply, and in older results):
    # PeftModel.from_pretrained of the saved adapter onto a loaded base model (for full, loading the saved model);
    # set_adapter between two loaded adapters; merge_adapter + unmerge_adapter of the active one.
    adapter_load_ms: float | None = None
    adapter_swap_ms: float | None = None
    merge_unmerge_ms: float | None = None
    adapter_memory_bytes: dict[str, int] | None = None  # what the "first" and the "next" loaded adapter add in memory
    # The latency rounds (measure.latency.paired_latency) the intervals come from: per part, "prefill_ms" (reading the
    # prompt and making the first token) and "decode_ms" (each later token, on average), per model keyed like
    # latency_ms, each round's mean over its prompt. Within a round the models ran one after another (in an order that
    # rotates from round to round) on the same prompt, so a round's figures share the machine's state and pair.
    latency_rounds: dict[str, dict[str, list[float]]] | None = None
    # Every optimizer step of training, in order: its "epoch", the real tokens it trained on ("tokens", all processes')
    # and its wall "seconds" (steady_steps says which count as steady state).
    train_steps: dict[str, list[float]] | None = None
    # What training holds, in bytes (None in older results): "weights" (parameters and buffers), "gradients" (one per
    # trainable parameter, its size), "optimizer" (every tensor the optimizer keeps), counted from the model and the
    # optimizer; "runtime" (what the process held before it loaded the model: on CPU the interpreter and libraries'
    # resident memory, on a GPU nothing); and "rest" = peak_train_memory_bytes minus all of those (activations, the
    # data, caches, the allocator's held memory).
    train_memory: dict[str, int] | None = None

    def steady_steps(self) -> list[int]:
        """The training steps that count as steady state: all but the first WARM_STEPS of each epoch (the first
        steps of a run, and those after each validation, pay for cold caches and allocations)."""
        if not self.train_steps:
            return []
        epochs = self.train_steps["epoch"]
        firsts = {epoch: epochs.index(epoch) for epoch in set(epochs)}
        return [i for i, epoch in enumerate(epochs) if i - firsts[epoch] >= WARM_STEPS]

    @property
    def steady_tokens_per_s(self) -> float | None:
        """Training tokens per second over the steady steps (None where none were recorded)."""
        steps = self.steady_steps()
        if not steps:
            return None
        seconds = sum(self.train_steps["seconds"][i] for i in steps)
        return sum(self.train_steps["tokens"][i] for i in steps) / seconds

    @property
    def deployed(self) -> str:
        """The model as deployed: "merged" where the method merges, else "unmerged" (as trained)."""
        return "merged" if self.latency_ms.get("merged") is not None else "unmerged"

    def model_memory_bytes(self, model: str) -> int | None:
        """What serving one model alone needs beyond the runtime: its weights plus its generation's working memory
        (None where either was not measured)."""
        record = (self.inference_memory or {}).get(model)
        if not record or record.get("increase_bytes") is None:
            return None
        return record["weights_bytes"] + record["increase_bytes"]

    def serving_bytes(self, tasks: int) -> tuple[int | None, int] | None:
        """Derived: the weights held to serve `tasks` tasks, as (one base model plus `tasks` adapters, `tasks` fully
        fine-tuned copies, each the base model's size); the first None for full fine-tuning; None where the sizes
        were not measured. Per-request working memory (the KV cache) comes on top of both."""
        base = (self.inference_memory or {}).get("base")
        if not base:
            return None
        copies = tasks * base["weights_bytes"]
        adapters = self.adapter_memory_bytes
        if adapters is None:
            return None, copies
        return base["weights_bytes"] + adapters["first"] + (tasks - 1) * adapters["next"], copies


@dataclass
class Retention:
    """The model's loss on held-out general text (data.retention): each text's summed cross-entropy (nats) over the
    tokens the model predicts, and their count, in the sample's order (ids). For a method, base_loss is the base model's
    loss on the same texts, measured in the same seed's zero-shot run."""

    sample: str  # what the texts are
    ids: list[str]
    nats: list[float]
    tokens: list[int]
    base_loss: float | None = None

    @property
    def loss(self) -> float:
        """Per token over the whole sample (as the training loss is), in nats."""
        return sum(self.nats) / max(sum(self.tokens), 1)

    @property
    def forgetting(self) -> float | None:
        """The loss's rise over the base model's, nats per token (negative: the method lowered it)."""
        return None if self.base_loss is None else self.loss - self.base_loss

    @property
    def forgetting_relative(self) -> float | None:
        """forgetting as a share of the base model's loss (None where there is no base loss to divide by)."""
        return self.forgetting / self.base_loss if self.base_loss else None

    def to_dict(self) -> dict[str, Any]:
        figures = {"loss": self.loss, "forgetting": self.forgetting}
        if self.base_loss:
            figures["forgetting_relative"] = self.forgetting_relative
        return figures | asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Retention:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class TaskRetention:
    """Scores on the retention task (--retention-task), which the model never trained on: its dataset, task and test
    examples, the scores on its own metrics, and for a method the base model's beside them. Each example's prediction
    and scores are in the method's retention_task.jsonl."""

    dataset: str
    task: str
    examples: int
    primary_metric: str
    scores: dict[str, float]
    base_scores: dict[str, float] | None = None


@dataclass
class MethodResult:
    method: str
    model: str
    dataset: str
    trainable_params: int
    total_params: int
    config: dict[str, Any]
    epochs: list[EpochMetrics] = field(default_factory=list)
    test: TestMetrics | None = None
    efficiency: Efficiency | None = None
    # Where and with what it ran: library versions, platform, CPU count, CUDA device, date (None in older files).
    environment: dict[str, Any] | None = None
    # The rows read from the data and those dropped, by reason: {"rows": 786, "dropped": {"no 'highlights'": 3}}
    # (None in older files).
    data: dict[str, Any] | None = None
    # What exactly ran: the model's revision or a hash of its weights files, and the data's (None in older files).
    provenance: dict[str, Any] | None = None
    # With --search: the settings searched, the selection rule, the selected trial and every trial's validation
    # figures (search.SearchRecord as a dict; None without a search).
    search: dict[str, Any] | None = None
    # Forgetting: the loss on held-out general text, and the scores on another task (None where not measured).
    retention: Retention | None = None
    retention_task: TaskRetention | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def random_weights(self) -> bool:
        """Trained from random weights: its speed and memory figures hold, its loss, ROUGE and BLEU mean nothing."""
        return self.config.get("model_weights", PRETRAINED) == RANDOM_WEIGHTS

    @property
    def metrics(self) -> list[str]:
        """The task metrics it was scored on, in the order chosen (older results: ROUGE-1/2/L and BLEU)."""
        return list(self.config.get("metrics") or (self.test.scores if self.test else {}))

    @property
    def primary_metric(self) -> str:
        """The metric its verdict and rankings use (older results: ROUGE-L)."""
        return self.config.get("primary_metric") or "rougeL"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["epochs"] = [epoch.to_dict() for epoch in self.epochs]
        data["test"] = self.test.to_dict() if self.test else None
        data["retention"] = self.retention.to_dict() if self.retention else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodResult:
        """The record metrics.json holds (TypeError where its parts are not of their JSON shape; check_fields checks
        every value after)."""
        check_value(data, dict[str, Any], "metrics")
        for part, shape in PARTS.items():
            if data.get(part):
                check_value(data[part], shape, part)
        data = dict(data)
        data["epochs"] = [EpochMetrics.from_dict(e) for e in data.get("epochs", [])]
        data["test"] = TestMetrics.from_dict(data["test"]) if data.get("test") else None
        data["efficiency"] = Efficiency(**data["efficiency"]) if data.get("efficiency") else None
        data["retention"] = Retention.from_dict(data["retention"]) if data.get("retention") else None
        data["retention_task"] = TaskRetention(**data["retention_task"]) if data.get("retention_task") else None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# MethodResult's parts that JSON holds in a shape of their own, and that shape.
PARTS = {
    "epochs": list[dict[str, Any]],
    "test": dict[str, Any],
    "efficiency": dict[str, Any],
    "retention": dict[str, Any],
    "retention_task": dict[str, Any],
}


@dataclass
class Progress:
    """What a method has measured so far, saved with each checkpoint so that a resumed run continues it."""

    epochs: list[EpochMetrics] = field(default_factory=list)
    generated_tokens: int = 0  # batched evaluation generation so far: new tokens and seconds
    generation_seconds: float = 0.0
    log_lines: int = 0  # lines of the method's log.jsonl so far: a resumed run cuts the log back to them
    phase_seconds: dict[str, float] = field(default_factory=dict)  # Efficiency.phase_seconds so far
    phase_other_cpu_seconds: dict[str, float] = field(default_factory=dict)  # PhaseTimer.others so far
    wall_seconds: float = 0.0  # the wall time of the sessions before this one, up to their last checkpoint

    def add_phases(self, seconds: dict[str, float], others: dict[str, float]) -> None:
        """Add a session's phase times and other processes' CPU seconds (measured before this progress was
        restored) to the recorded ones."""
        for recorded, session in ((self.phase_seconds, seconds), (self.phase_other_cpu_seconds, others)):
            for name, value in session.items():
                recorded[name] = recorded.get(name, 0.0) + value

    def add_generation(self, tokens: int, seconds: float) -> None:
        self.generated_tokens += tokens
        self.generation_seconds += seconds

    @property
    def generate_tokens_per_s(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"epochs": [epoch.to_dict() for epoch in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(**{**data, "epochs": [EpochMetrics.from_dict(e) for e in data["epochs"]]})


def prediction_rows(
    examples: list,
    predictions: list[str],
    per_example: dict[str, list[float]] | None,
    likely_choices: list[str] | None = None,
    likely_choices_norm: list[str] | None = None,
) -> list[dict]:
    """predictions.jsonl's rows, one per test example (data.Example): id, source, reference (the first), every
    reference where there are several, the choices where there are any, the prediction, the choice the model finds
    most likely where choices were scored (likely_choice; likely_choice_norm: per character of the choice), and the
    prediction's own scores (per_example: metric -> a value each)."""
    per_example = per_example or {}
    rows = []
    for index, (ex, prediction) in enumerate(zip(examples, predictions, strict=True)):
        row = {"id": ex.id, "source": ex.source, "reference": ex.target}
        row |= {"references": ex.references} if len(ex.references) > 1 else {}
        row |= {"choices": ex.choices} if ex.choices else {}
        row |= {"prediction": prediction}
        row |= {"likely_choice": likely_choices[index]} if likely_choices else {}
        row |= {"likely_choice_norm": likely_choices_norm[index]} if likely_choices_norm else {}
        rows.append(row | {name: values[index] for name, values in per_example.items()})
    return rows
