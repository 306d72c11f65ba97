"""Results: the stable on-disk form of a run (metrics.json, predictions.jsonl, summary.md)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
FAILED_FILE = "failed.json"


@dataclass
class EpochMetrics:
    epoch: int  # 0 is the base model before any training
    train_loss: float | None
    val_loss: float
    rouge1: float
    rouge2: float
    rougeL: float
    bleu: float


@dataclass
class TestMetrics:
    loss: float
    rouge1: float
    rouge2: float
    rougeL: float
    bleu: float


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
    eval_generate_tokens_per_s: float  # new tokens per second in batched evaluation generation
    # Median ms per example at batch size 1, fixed new-token count: "base" is the pretrained model without adapter,
    # "unmerged" the trained model as it trains (for full: the fine-tuned model), "merged" after merge_and_unload
    # (None where the method cannot merge or has nothing to merge).
    latency_ms: dict[str, float | None]
    latency_new_tokens: int
    # Merged vs unmerged on the latency prompts: same greedy tokens, and the largest absolute logit difference.
    merge_check: dict[str, float | bool] | None
    adapter_size_bytes: int  # saved adapter on disk; for full, the saved model


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
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodResult:
        data = dict(data)
        data["epochs"] = [EpochMetrics(**e) for e in data.get("epochs", [])]
        data["test"] = TestMetrics(**data["test"]) if data.get("test") else None
        data["efficiency"] = Efficiency(**data["efficiency"]) if data.get("efficiency") else None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(temp, 0o644)  # mkstemp makes owner-only files; results are meant to be read and served
    os.replace(temp, path)


def write_metrics(directory: Path, result: MethodResult) -> Path:
    path = directory / "metrics.json"
    write_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def read_metrics(directory: Path) -> MethodResult:
    return MethodResult.from_dict(json.loads((directory / "metrics.json").read_text()))


def write_failure(directory: Path, method: str, model: str, seed: int, error: str) -> Path:
    """Leave failed.json in a method's directory, so that a report names the failure instead of skipping it."""
    path = directory / FAILED_FILE
    write_atomic(path, json.dumps({"method": method, "model": model, "seed": seed, "error": error}, indent=2) + "\n")
    return path


def write_predictions(directory: Path, rows: list[dict[str, str]]) -> Path:
    """One JSON object per test example: id, source, reference, prediction."""
    path = directory / "predictions.jsonl"
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


LATENCY_KINDS = ("base", "unmerged", "merged")


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _ms(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


SUMMARY_COLUMNS = [
    ("method", lambda r: r.method),
    ("trainable params", lambda r: _count(r.trainable_params)),
    ("trainable %", lambda r: f"{100 * r.trainable_params / r.total_params:.3f}"),
    ("peak train mem (MiB)", lambda r: _mb(r.efficiency.peak_train_memory_bytes)),
    ("train tok/s", lambda r: f"{r.efficiency.train_tokens_per_s:,.1f}"),
    (
        "latency base / unmerged / merged (ms)",
        lambda r: " / ".join(_ms(r.efficiency.latency_ms[k]) for k in LATENCY_KINDS),
    ),
    ("adapter size (MiB)", lambda r: f"{r.efficiency.adapter_size_bytes / 2**20:,.2f}"),
    ("final val loss", lambda r: f"{r.epochs[-1].val_loss:.4f}"),
    ("test loss", lambda r: f"{r.test.loss:.4f}"),
    ("test ROUGE-1", lambda r: f"{r.test.rouge1:.4f}"),
    ("test ROUGE-2", lambda r: f"{r.test.rouge2:.4f}"),
    ("test ROUGE-L", lambda r: f"{r.test.rougeL:.4f}"),
    ("test BLEU", lambda r: f"{r.test.bleu:.2f}"),
]


def summary_table(results: list[MethodResult], failed: dict[str, str] | None = None) -> str:
    """A Markdown table of all methods: trainable params, final validation loss, test ROUGE and BLEU; a failed
    method is a row saying so."""
    lines = [
        "| " + " | ".join(name for name, _ in SUMMARY_COLUMNS) + " |",
        "|---|" + "---:|" * (len(SUMMARY_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(cell(r) for _, cell in SUMMARY_COLUMNS) + " |" for r in results]
    lines += [f"| {name} | **failed** |" + " - |" * (len(SUMMARY_COLUMNS) - 2) for name in failed or {}]
    return "\n".join(lines) + "\n"


def write_summary(output: Path, results: list[MethodResult], header: str, failed: dict[str, str] | None = None) -> Path:
    """summary.md: the header, the table, and why each failed method failed."""
    reasons = "".join(f"- {name}: {error}\n" for name, error in (failed or {}).items())
    text = f"# peftbench summary\n\n{header}\n\n{summary_table(results, failed)}"
    path = output / "summary.md"
    write_atomic(path, text + (f"\nFailed methods (see <method>/failed.json):\n\n{reasons}" if reasons else ""))
    return path
