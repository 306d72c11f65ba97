"""The output folder: the one place that knows its layout, lists what it holds, and reads and writes its files.

    OUTPUT/                          one comparison (one seed), or several seeds:
      summary.md, report.md, report.html, report_files/, trackers/
      results.csv, results.jsonl     every model x method x seed as one row (export.py)
      zero-shot/, lead-3/            reference rows (MethodDir each): the base model before any method (also every
                                     method's epoch 0), and each source's first three sentences
      <method>/                      one method at one seed (MethodDir)
        metrics.json predictions.jsonl curves.png adapter/ fingerprint.json failed.json checkpoint/
        trials/<trial>/              with --search: one grid point each (TrialDir), e.g. lr-5e-04 or lr-5e-04_r-8:
          trial.json fingerprint.json failed.json checkpoint/     trained and validated, never tested
      seed-<s>/                      with several seeds: a one-seed comparison each, laid out as OUTPUT above

Every path handed out is checked to stay inside OUTPUT, and every file is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.config import ConfigError
from peftbench.results import MethodResult

SUMMARY_FILE = "summary.md"
TRACKERS_DIR = "trackers"
ZERO_SHOT = "zero-shot"  # the base model before any method: every method's epoch 0, and a reference on the test split
LEAD_3 = "lead-3"  # summarisation's extractive reference: each source's first three sentences
REFERENCES = (ZERO_SHOT, LEAD_3)  # reference rows, which cost no training
REPORT_FILES = "report_files"
RESERVED = (*REFERENCES, TRACKERS_DIR, REPORT_FILES)  # directories of a comparison that are not methods
EXPORTS = {"csv": "results.csv", "json": "results.jsonl"}  # one row per model x method x seed
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
PREDICTIONS_FILE = "predictions.jsonl"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_DIR = "checkpoint"
ADAPTER_DIR = "adapter"
CURVES_FILE = "curves.png"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
# What makes a directory a method's results, finished or failed.
METHOD_MARKERS = (METRICS_FILE, FAILED_FILE, PREDICTIONS_FILE, ADAPTER_DIR)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temp, 0o644)  # mkstemp makes owner-only files; results are meant to be read and served
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _inside_method(name: str) -> property:
    """A path in the method's directory, as a read-only attribute."""
    return property(lambda self: self.path / name, doc=f"the method's {name}")


@dataclass(frozen=True)
class MethodDir:
    """One method's directory at one seed, and the files in it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def comparison(self) -> Path:
        """The one-seed comparison directory it belongs to."""
        return self.path.parent

    metrics = _inside_method(METRICS_FILE)
    failed = _inside_method(FAILED_FILE)
    predictions = _inside_method(PREDICTIONS_FILE)
    fingerprint = _inside_method(FINGERPRINT_FILE)
    checkpoints = _inside_method(CHECKPOINT_DIR)
    adapter = _inside_method(ADAPTER_DIR)
    curves = _inside_method(CURVES_FILE)
    trials = _inside_method(TRIALS_DIR)

    def has_results(self) -> bool:
        """Whether it holds a method's results, finished or failed."""
        return any((self.path / marker).exists() for marker in METHOD_MARKERS)

    def finished(self) -> bool:
        """Whether the method's results are written (metrics.json is written last)."""
        return self.metrics.is_file()

    def holds_results(self) -> bool:
        """Whether it holds something a rerun could lose: finished results, a checkpoint or a search's trials."""
        return self.finished() or self.checkpoints.is_dir() or self.trials.is_dir()

    def read_result(self) -> MethodResult:
        return MethodResult.from_dict(json.loads(self.metrics.read_text()))

    def write_result(self, result: MethodResult) -> None:
        write_atomic(self.metrics, json.dumps(result.to_dict(), indent=2) + "\n")

    def read_failure(self) -> dict[str, Any]:
        """What failed.json says ({} where there is none, or it cannot be read)."""
        try:
            failure = json.loads(self.failed.read_text())
        except (OSError, ValueError):
            return {}
        return failure if isinstance(failure, dict) else {}

    def write_failure(self, method: str, model: str, seed: int, error: str) -> None:
        """Leave failed.json, so that the summary and the report name the failure instead of skipping it."""
        failure = {"method": method, "model": model, "seed": seed, "error": error}
        write_atomic(self.failed, json.dumps(failure, indent=2) + "\n")

    def clear_failure(self) -> None:
        self.failed.unlink(missing_ok=True)

    def read_predictions(self) -> list[dict[str, Any]]:
        if not self.predictions.is_file():
            return []
        lines = self.predictions.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_predictions(self, rows: list[dict[str, Any]]) -> None:
        """One JSON object per test example."""
        write_atomic(self.predictions, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def remove(self) -> None:
        """Everything of an earlier run of this method here (--force starts over)."""
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class TrialDir(MethodDir):
    """One trial of a method's search: its directory holds what a method's does while it trains, and trial.json
    (its validation figures so far, no test) instead of metrics.json."""

    record = _inside_method(TRIAL_FILE)

    @property
    def comparison(self) -> Path:
        return self.path.parents[2]  # <comparison>/<method>/trials/<trial>

    def read_record(self) -> MethodResult | None:
        """What the trial has trained and validated so far (None before its first stint ended, or unreadable)."""
        try:
            return MethodResult.from_dict(json.loads(self.record.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_record(self, result: MethodResult) -> None:
        write_atomic(self.record, json.dumps(result.to_dict(), indent=2) + "\n")


def trial_dir(method: MethodDir, name: str) -> TrialDir:
    """A trial's directory in its method's directory (the name comes from search.py's trial names)."""
    return TrialDir(_inside(method.trials, method.trials / name, "trial directory"))


def _inside(output: Path, path: Path, what: str) -> Path:
    """path, refused unless it resolves to a direct child of output (a name holding a path, or a symlink away)."""
    if path.resolve().parent != output.resolve():
        raise ConfigError(f"{what} {str(path)!r} would lie outside --output {str(output)!r}")
    return path


def seed_dir(output: Path, seed: int, several: bool) -> Path:
    """Where one seed's comparison goes: OUTPUT itself with one seed, OUTPUT/seed-<s> with several."""
    return _inside(output, output / f"seed-{seed}", "seed directory") if several else output


def method_dir(comparison: Path, name: str) -> MethodDir:
    """A method's directory in one seed's comparison directory."""
    return MethodDir(_inside(comparison, comparison / name, "method directory"))


def comparisons(output: Path) -> list[tuple[Path, int | None]]:
    """OUTPUT and its seed-<s> directories, each with its seed where the name gives it."""
    found: list[tuple[Path, int | None]] = [(output, None)]
    for path in sorted(output.glob("seed-*")):
        if path.is_dir() and path.name[5:].isdigit():
            found.append((path, int(path.name[5:])))
    return found


def method_dirs(comparison: Path) -> list[MethodDir]:
    """Every method's directory of one comparison directory, by name (callers ask what each holds)."""
    if not comparison.is_dir():
        return []
    paths = sorted(path for path in comparison.iterdir() if path.is_dir() and path.name not in RESERVED)
    return [MethodDir(path) for path in paths]


def reference_dir(comparison: Path, name: str) -> MethodDir:
    """Where one seed's reference row (REFERENCES) is kept."""
    return MethodDir(comparison / name)


def reference_dirs(comparison: Path) -> list[MethodDir]:
    return [reference_dir(comparison, name) for name in REFERENCES]


def export_path(output: Path, kind: str) -> Path:
    """Where the results table of kind ("csv" or "json") goes, beside summary.md."""
    return output / EXPORTS[kind]


def summary_path(comparison: Path) -> Path:
    return comparison / SUMMARY_FILE


def trackers_dir(comparison: Path) -> Path:
    return comparison / TRACKERS_DIR
