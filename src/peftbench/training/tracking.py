"""Experiment trackers (--report-to tensorboard, mlflow, wandb; all or none, as HF Trainer takes them) through
accelerate; optional extras.

By default nothing is tracked and nothing is written outside OUTPUT. With trackers, their local files go to
OUTPUT/trackers/ (TensorBoard: OUTPUT/trackers/<method>-seed<s>/; MLflow: OUTPUT/trackers/mlruns unless
MLFLOW_TRACKING_URI is set; W&B: its local files there, its runs in project "peftbench").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from peftbench import parallel
from peftbench.config.run_config import ALL_TRACKERS, NO_TRACKER, TRACKERS
from peftbench.errors import ConfigError

AVAILABLE = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}
USER_MLFLOW_URI = os.environ.get("MLFLOW_TRACKING_URI")  # read before peftbench points it into each OUTPUT


def resolve_trackers(report_to: list[str] | None) -> list[str] | None:
    """The trackers --report-to names: `all` is every installed one (none installed: none), `none` is none."""
    if report_to == [ALL_TRACKERS]:
        return [name for name in TRACKERS if AVAILABLE[name]()] or None
    return None if report_to == [NO_TRACKER] else report_to


def check_trackers(report_to: list[str] | None) -> None:
    """Every --report-to tracker must be installed (accelerate would silently drop a missing one)."""
    missing = [name for name in report_to or [] if name in TRACKERS and not AVAILABLE[name]()]
    if missing:
        raise ConfigError(
            f"--report-to {','.join(missing)} needs the package(s) installed: "
            + " ".join(f"pip install 'peftbench[{name}]'" for name in missing)
        )


def _tensorboard(name: str, directory: Path):
    from accelerate.tracking import TensorBoardTracker  # the tracker modules import their (optional) packages

    return TensorBoardTracker(name, directory)  # event files in directory/name


def _mlflow(name: str, directory: Path):
    from accelerate.tracking import MLflowTracker

    os.environ["MLFLOW_TRACKING_URI"] = USER_MLFLOW_URI or (directory / "mlruns").as_uri()  # not ./mlruns
    return MLflowTracker("peftbench", str(directory / "mlruns"), run_name=name)


def _wandb(name: str, directory: Path):
    from accelerate.tracking import WandBTracker

    return WandBTracker("peftbench", name=name, dir=str(directory))


BUILDERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def start(accelerator, report_to: list[str] | None, directory: Path, name: str, settings: dict[str, Any]) -> None:
    """Start one tracker run (name: `<method>-seed<s>`) with the resolved config as its parameters; local files go
    into directory.

    The trackers are built here rather than by Accelerator(log_with=...), so each method gets its own run name and
    log directory while the project stays "peftbench"; accelerator.log then reaches them.
    """
    if not report_to or not parallel.is_main():  # one run per method, not one per process
        return
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    accelerator.log_with = [BUILDERS[tracker](name, directory) for tracker in report_to]
    flat = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in settings.items()}
    accelerator.init_trackers("peftbench", config=flat)


def finish(accelerator) -> None:
    for tracker in accelerator.trackers:
        tracker.finish()
