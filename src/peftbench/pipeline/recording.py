"""What a method's run records besides its scores: the config as it ran (resolved), where and with what it ran
(environment, provenance), its log.jsonl lines, its predictions' rows and the figures sent to trackers."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import version
from typing import Any

import torch

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, Splits
from peftbench.methods.apply import (
    given_options,
    module_options,
)
from peftbench.methods.registry import Method
from peftbench.methods.settings import MethodSettings
from peftbench.model.load import LoadedModel, model_provenance
from peftbench.store.records import (
    GIVEN,
    PRETRAINED,
    RANDOM_WEIGHTS,
    Efficiency,
    EpochMetrics,
    TestMetrics,
    prediction_rows,
)
from peftbench.task.metrics import METRICS
from peftbench.training.evaluate import Generation


def resolved_config(
    config: RunConfig, method: Method, loaded: LoadedModel, settings: MethodSettings, lr: float, precision: str
) -> dict[str, Any]:
    """The config as this method actually ran: effective learning rate, module options (resolved, and as given where
    they differ: all-linear, a regular expression) and compute precision. Call it before peft wraps the model."""
    resolved = config.to_dict() | model_settings(loaded, precision)
    resolved["lr"] = lr
    resolved["methods"] = [method.name]
    if method.peft_config is not None:
        for key, value in module_options(method, loaded, settings).items():
            resolved[f"{method.name}_{key}"] = value
        for key, value in given_options(method, loaded, settings).items():
            resolved[f"{method.name}_{key}{GIVEN}"] = value
    return resolved


def model_settings(loaded: LoadedModel, precision: str) -> dict[str, str]:
    """What the run resolved about the model and hardware: its kind, family and prompt format, and the compute
    precision."""
    return {
        "model_kind": loaded.layout.kind,
        "model_family": loaded.family.name,
        "model_weights": RANDOM_WEIGHTS if loaded.random_weights else PRETRAINED,
        "prompt_format": loaded.layout.prompt_format,  # as used: "auto" resolved
        "compute_precision": "fp32" if precision == "no" else precision,
    }


def environment() -> dict[str, Any]:
    """Where and with what a method ran, for the report's header."""
    libraries = {name: version(name) for name in ("torch", "transformers", "peft", "accelerate")}
    return {
        "python": platform.python_version(),
        **libraries,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "processes": parallel.processes(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def provenance(model: str, splits: Splits) -> dict[str, Any]:
    """What exactly was compared: the model's revision or a hash of its weights (model as given), and the data's."""
    return {"model": model_provenance(model), "dataset": splits.provenance}


def log_record(split: str, epoch: int, step: int, scores: EpochMetrics | TestMetrics) -> dict[str, Any]:
    """One evaluation as a line of log.jsonl: where in training it ran, its loss per target token (validation: and
    the epoch's mean training loss) and its task metrics."""
    where = {"split": split, "epoch": epoch, "step": step}
    if isinstance(scores, EpochMetrics):
        return where | {"loss": scores.val_loss, "train_loss": scores.train_loss} | scores.scores
    return where | {"loss": scores.loss} | scores.scores


def generation_rows(examples: list[Example], generation: Generation) -> list[dict[str, Any]]:
    """predictions.jsonl's rows of a generation: each prediction with its own scores (and its most likely choice)."""
    return prediction_rows(
        examples,
        generation.predictions,
        generation.per_example,
        generation.likely_choices,
        generation.likely_choices_norm,
    )


def epoch_line(scores: EpochMetrics) -> str:
    shown = "-" if scores.train_loss is None else f"{scores.train_loss:.4f}"
    return f"epoch {scores.epoch}: train loss {shown}, val loss {scores.val_loss:.4f}, {scores_text(scores.scores)}"


def scores_text(scores: dict[str, float]) -> str:
    return ", ".join(f"{METRICS[name].label} {value:.{METRICS[name].decimals}f}" for name, value in scores.items())


def validation_figures(scores: EpochMetrics) -> dict[str, float]:
    """One epoch's validation scores as tracker figures (val/loss, val/rougeL, ...)."""
    return {"val/loss": scores.val_loss} | {f"val/{k}": v for k, v in scores.scores.items()}


def tracker_numbers(efficiency: Efficiency) -> dict[str, float]:
    """The efficiency figures a tracker can plot (numbers only; latencies flattened)."""
    flat = {f"efficiency/{k}": v for k, v in asdict(efficiency).items() if isinstance(v, int | float)}
    flat |= {f"efficiency/latency_ms_{k}": v for k, v in efficiency.latency_ms.items() if v is not None}
    return flat
