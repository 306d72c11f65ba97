"""Exports: every model x method x seed (references included) as one flat row of scalar figures, resolved settings
and provenance, written as results.csv and results.jsonl, or loaded as a pandas DataFrame."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from peftbench.report.load import Run, Section
from peftbench.store import rundir
from peftbench.store.records import MethodResult
from peftbench.store.rundir import write_files

EXPORT_KINDS = ("csv", "json")
LEADING = ("model", "method", "reference", "seed", "status", "error")  # the columns that identify a row, first


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts as prefix_key columns; lists as comma-joined text; other values as they are."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(f"{prefix}_{key}", item).items()}
    if isinstance(value, list):
        return {prefix: ",".join(map(str, value))}
    return {prefix: value}


def retention_columns(result: MethodResult) -> dict[str, Any]:
    """What training cost the model, as scalars: the held-out text's sample, its size, the loss on it and the base
    model's, forgetting (absolute and relative), and the retention task's scores with the base model's. The per-text
    figures stay in metrics.json: a row holds one value per column."""
    row: dict[str, Any] = {}
    held_out, task = result.retention, result.retention_task
    if held_out is not None:
        base, forgetting = held_out.base_loss, held_out.forgetting
        row |= {"retention_sample": held_out.sample, "retention_texts": len(held_out.ids)}
        row |= {"retention_loss": held_out.loss, "retention_base_loss": base, "forgetting": forgetting}
        row |= {"forgetting_relative": held_out.forgetting_relative}
    if task is not None:
        row |= {"retention_task_dataset": task.dataset, "retention_task_task": task.task}
        row |= {"retention_task_examples": task.examples}
        row |= {f"retention_task_{metric}": value for metric, value in task.scores.items()}
        row |= {f"retention_task_base_{metric}": value for metric, value in (task.base_scores or {}).items()}
    return row


def row_of(section: Section, run: Run, reference: bool) -> dict[str, Any]:
    """One run as a flat row: identity and status, then every scalar figure, resolved setting and provenance."""
    row: dict[str, Any] = {
        "model": section.model,
        "method": run.method,
        "reference": reference,
        "seed": run.seed,
        "status": "finished" if run.result else "failed",
        "error": run.error,
    }
    result = run.result
    if result is None:
        return row
    row |= {"trainable_params": result.trainable_params, "total_params": result.total_params, "dataset": result.dataset}
    row |= _flat("test", result.test.to_dict() if result.test else {})
    trained = [epoch for epoch in result.epochs if epoch.train_loss is not None]
    if trained:
        row |= {"final_val_loss": trained[-1].val_loss, "final_train_loss": trained[-1].train_loss}
    if result.epochs:
        row |= {"zero_shot_val_loss": result.epochs[0].val_loss}
    row |= retention_columns(result)
    row |= _flat("efficiency", vars(result.efficiency) if result.efficiency else {})
    row |= _flat("config", {k: v for k, v in result.config.items() if k not in ("methods", "seeds")})
    chosen = ("settings", "select_by", "halving", "selected", "lr", "lora_r")  # every trial: metrics.json, report
    row |= _flat("search", {k: v for k, v in result.search.items() if k in chosen} if result.search else {})
    row |= _flat("provenance", result.provenance or {})
    row |= _flat("environment", result.environment or {})
    return row


def rows(sections: list[Section]) -> list[dict[str, Any]]:
    return [
        row_of(section, run, runs.reference) for section in sections for runs in section.methods for run in runs.runs
    ]


def columns(table: list[dict[str, Any]]) -> list[str]:
    seen = dict.fromkeys(LEADING)
    for row in table:
        seen |= dict.fromkeys(row)
    return list(seen)


def to_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(table), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_jsonl(table: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table)


def write_exports(sections: list[Section], destination: Path, kinds: tuple[str, ...] = EXPORT_KINDS) -> list[Path]:
    """results.csv and/or results.jsonl of every run of sections, into destination (all or none); returns the
    paths."""
    table = rows(sections)
    write = {"csv": to_csv, "json": to_jsonl}
    files = {rundir.export_path(destination, kind): write[kind](table) for kind in kinds}
    write_files(files)
    return list(files)
