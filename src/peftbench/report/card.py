"""Model cards: the README.md of each method's adapter folder (where peft leaves a placeholder), saying what was
trained, on what, how well and at what cost, and how to run it again, with a metadata block the Hugging Face Hub reads
(built with huggingface_hub's ModelCard). Written when the method finishes, and again with the intervals of its test
scores once the comparison's statistics exist."""

from __future__ import annotations

import shlex
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from peftbench.config.embedded import EMBEDDED_MODEL_HUB_ID, EMBEDDED_MODEL_WEIGHTS
from peftbench.config.fields import NOT_REPRODUCED
from peftbench.config.run_config import EMBEDDED, FIELDS, flags_for
from peftbench.methods.registry import METHODS
from peftbench.report.blocks import method_settings
from peftbench.report.stats import Interval
from peftbench.store.records import GIVEN, MethodResult
from peftbench.task.metrics import METRICS

# The Hub's task names (pipeline tags and model-index task types) of peftbench's tasks.
HUB_TASKS = {"summarization": "summarization", "qa": "question-answering", "classification": "text-classification"}
# The Hub dataset each embedded dataset's rows come from (HaluEval rows of CNN/DailyMail and of HotpotQA, re-split).
EMBEDDED_SOURCES = {"embedded": "cnn_dailymail", "embedded-qa": "hotpot_qa"}
# The Hub's metric type of each metric; else its name.
METRIC_TYPES = {"rouge1": "rouge", "rouge2": "rouge", "rougeL": "rouge", "rougeLsum": "rouge"} | {
    "accuracy_ll": "accuracy",
    "accuracy_ll_norm": "accuracy",
}


def base_model(result: MethodResult) -> str | None:
    """The base model's Hub id where it has one (a hub id, or the embedded SmolLM2); None for local folders."""
    if result.config.get("model") == EMBEDDED:
        return EMBEDDED_MODEL_HUB_ID
    return ((result.provenance or {}).get("model") or {}).get("hub_id")


def _hub_dataset(result: MethodResult) -> str | None:
    return ((result.provenance or {}).get("dataset") or {}).get("hub_id")


def _evaluated_on(result: MethodResult) -> str | None:
    """The Hub dataset type of the test split, where the Hub knows it: a hub dataset's id, or the one an embedded
    sample's rows come from; None for local files."""
    return EMBEDDED_SOURCES.get(result.config.get("dataset")) or _hub_dataset(result)


def _task(result: MethodResult) -> str:
    return HUB_TASKS.get(result.config.get("task") or "summarization", "text-generation")


def _label(metric: str) -> str:
    return METRICS[metric].label if metric in METRICS else metric


def command(result: MethodResult) -> str:
    """The peftbench command that trains this method again with these settings (into an --output of your choice)."""
    values = {key: value for key, value in result.config.items() if key in FIELDS and key not in NOT_REPRODUCED}
    for key, value in result.config.items():  # the user's spec (all-linear, a pattern) over its resolution
        if key.endswith(GIVEN) and key.removesuffix(GIVEN) in values:
            values[key.removesuffix(GIVEN)] = value
    values["methods"] = [result.method]
    return shlex.join(["peftbench", "run", *flags_for(values)])


def _shown(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def metadata(result: MethodResult) -> ModelCardData:
    """The card's metadata block: base model, library, task, tags, datasets and the test scores as model-index
    (where the data is one the Hub knows and the weights were pretrained)."""
    base, dataset = base_model(result), _evaluated_on(result)
    method = METHODS.get(result.method)
    peft = method is not None and method.peft_config is not None
    task = _task(result)
    tags = ["peftbench", result.method, task]
    if base:
        tags.append(f"base_model:{'adapter' if peft else 'finetune'}:{base}")
    evals = []
    if result.test is not None and dataset is not None and not result.random_weights:
        for metric, value in result.test.to_dict().items():
            if value is not None:
                evals.append(
                    EvalResult(
                        task_type=task,
                        dataset_type=dataset,
                        dataset_name=result.dataset,
                        dataset_split="test",
                        metric_type=METRIC_TYPES.get(metric, metric),
                        metric_name=_label(metric),
                        metric_value=value,
                    )
                )
    return ModelCardData(
        base_model=base,
        library_name="peft" if peft else "transformers",
        pipeline_tag="text2text-generation" if result.config.get("model_kind") == "seq2seq" else "text-generation",
        tags=tags,
        datasets=[hub] if (hub := _hub_dataset(result)) else None,
        model_name=f"peftbench-{result.method}-{(base or Path(result.model).name).split('/')[-1]}" if evals else None,
        eval_results=evals or None,
    )


def _scores(result: MethodResult, intervals: dict[str, Interval] | None, note: str | None) -> list[str]:
    if result.test is None:
        return ["No test scores were recorded."]
    lines = ["| metric | value | 95% interval |", "|---|---|---|"]
    for metric, value in result.test.to_dict().items():
        span = (intervals or {}).get(metric)
        shown = f"{_shown(span.low)} to {_shown(span.high)}" if span else "-"
        lines.append(f"| {_label(metric)} | {_shown(value)} | {shown} |")
    corpus = [_label(m) for m in result.test.scores if m in METRICS and METRICS[m].corpus]
    scales = (
        "Loss: mean cross-entropy per target token. Scores are from 0 to 1"
        + (f", {' and '.join(corpus)} from 0 to 100" if corpus else "")
        + "; higher is better."
    )
    if result.random_weights:
        return [
            *lines,
            "",
            f"Trained from random weights ({result.config.get('model_weights')}): these scores mean "
            "nothing about the method's quality.",
        ]
    if intervals is None:
        note = (
            "Intervals: not computed yet. They come from the whole comparison's statistics, which `peftbench "
            "run` computes once every method has run, and then writes into this card."
        )
    return [*lines, "", scales, note or ""]


def _task_score(metric: str, value: float) -> str:
    return f"{value:.{METRICS[metric].decimals}f}" if metric in METRICS else _shown(value)


def _retention(result: MethodResult) -> list[str]:
    """What training cost the model, as this run measured it (one seed): forgetting on the held-out text, and the
    retention task's primary score against the base model's; empty where neither was measured."""
    held_out, task = result.retention, result.retention_task
    lines = []
    if held_out is not None:
        over = f"{len(held_out.ids):,} held-out texts of {held_out.sample}"
        if held_out.forgetting_relative is not None:
            lines.append(
                f"- Forgetting: {held_out.forgetting:+.4g} nats/token ({held_out.forgetting_relative:+.1%}): the loss "
                f"per token over {over} went from the base model's {held_out.base_loss:.4g} to {held_out.loss:.4g}"
            )
        else:
            lines.append(f"- Loss per token over {over}: {held_out.loss:.4g} nats")
    if task is not None:
        metric = task.primary_metric
        base = (task.base_scores or {}).get(metric)
        against = f" against the base model's {_task_score(metric, base)}" if base is not None else ""
        lines.append(
            f"- Retention task: {task.dataset} ({task.task}, {task.examples:,} test examples, no training on it): "
            f"{_label(metric)} {_task_score(metric, task.scores[metric])}{against}"
        )
    if not lines:
        return []
    said = (
        "From random weights, these figures mean nothing about the method."
        if result.random_weights
        else f"One seed's figures (seed {result.config.get('seed')}); their 95% intervals (over the texts, crossed "
        "with the seeds where there are several) and the tests against the base model are in the comparison's report "
        "and verdict.json."
    )
    return ["## Forgetting", "", *lines, "", said, ""]


def render(result: MethodResult, intervals: dict[str, Interval] | None = None, note: str | None = None) -> str:
    """The card of one finished method: intervals (metric -> Interval) and their note where the comparison's
    statistics exist (verdict.analyse)."""
    config = result.config
    base = base_model(result)
    method = METHODS.get(result.method)
    given_as = " (given per device)" if config.get("batch_size_given_as") == "per_device" else ""
    title = f"{result.method} {'adapter for' if method and method.peft_config else 'fine-tuning of'} {result.model}"
    lines = [
        f"# {title}",
        "",
        f"Trained and measured by peftbench, one method of a comparison on the same model, data and budget "
        f"({method.description if method else result.method}).",
        "",
        "## Training",
        "",
        f"- Base model: {result.model}"
        + (f" (Hub: `{base}`)" if base and base != result.model else "")
        + f"; {config.get('model_weights', 'pretrained')}; {_shown((result.provenance or {}).get('model'))}"
        + (f"; {EMBEDDED_MODEL_WEIGHTS}" if config.get("model") == EMBEDDED else ""),
        f"- Method: {result.method}: {method_settings(result)}",
        f"- Trainable parameters: {result.trainable_params:,} of {result.total_params:,}",
        f"- Data: {result.dataset}; {config.get('train_size')} train / {config.get('eval_size')} validation / "
        f"{config.get('test_size')} test examples; task {config.get('task') or 'summarization'} (primary metric "
        f"{_label(result.primary_metric)}); prompt format {config.get('prompt_format')}",
        f"- Budget: {config.get('epochs')} epoch{'' if config.get('epochs') == 1 else 's'}, batch size "
        f"{config.get('batch_size')}{given_as} x gradient accumulation {config.get('grad_accum')}, warmup "
        f"{config.get('warmup_ratio')}, weight decay {config.get('weight_decay')}, clipping "
        f"{config.get('max_grad_norm')}, precision {config.get('compute_precision', config.get('precision'))}, seed "
        f"{config.get('seed')}",
        "",
        "## Test results",
        "",
        *_scores(result, intervals, note),
        "",
        *_retention(result),
        "## Efficiency",
        "",
    ]
    if result.efficiency is not None:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {key} | {_shown(value)} |" for key, value in asdict(result.efficiency).items()]
        lines += ["", "Adapter size counts the weights and config only, not this card."]
    else:
        lines.append("Not recorded.")
    environment = dict(result.environment or {})
    environment.setdefault("huggingface_hub", version("huggingface_hub"))
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        command(result),
        "```",
        "",
        "## Environment",
        "",
        *[f"- {key}: {_shown(value)}" for key, value in environment.items()],
        "",
    ]
    return str(ModelCard(f"---\n{metadata(result).to_yaml()}\n---\n\n" + "\n".join(lines)))
