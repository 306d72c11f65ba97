"""The Python API: what `peftbench run` does, callable from a notebook with the same settings, and the results it
leaves behind, loaded. The CLI goes through `run` too.

    import peftbench
    results = peftbench.run(methods="lora,ia3", train_size=32, output="runs/try")
    results.frame()  # one row per model x method x seed (pandas)
    results.verdicts[0]["recommended"]  # the verdict as data (OUTPUT/verdict.json)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench import parallel
from peftbench.config.run_config import RunConfig, build_config, load_yaml
from peftbench.errors import ConfigError
from peftbench.pipeline import compare
from peftbench.pipeline.console import quiet_libraries
from peftbench.report.export import columns, rows
from peftbench.report.load import Section, load_sections
from peftbench.store import rundir


@dataclass
class Results:
    """A comparison's results as written under output: one section per model, each method's runs over the seeds
    with their records (metrics.json) and per-example scores."""

    output: Path
    sections: list[Section]

    def frame(self):
        """Every run as a pandas DataFrame (the rows of results.csv). Needs pandas."""
        return _frame(rows(self.sections))

    @property
    def verdicts(self) -> list[dict[str, Any] | None]:
        """Each model's verdict as written to OUTPUT/verdict.json: recommended, decisions, intervals."""
        return load_verdicts(self.output)


def run(config: RunConfig | str | Path | None = None, **settings: Any) -> Results:
    """Run a comparison as `peftbench run` does and return its results.

    config: a RunConfig, or the path of a YAML file with the CLI's keys; settings: the CLI's flags as keywords (lr=1e-4,
    methods="lora,ia3" or ["lora", "ia3"]), over the file's values. Raises errors.UserError for what the user can fix
    (ConfigError for a bad setting, MethodsFailed when some methods failed: the others' results are written).
    """
    if isinstance(config, RunConfig):
        if settings:
            raise ConfigError("give either a RunConfig or settings as keywords, not both")
    else:
        config = build_config(load_yaml(config) if config else {}, settings, parallel.processes())
    quiet_libraries()
    output = compare.run(config)
    return Results(output, [] if config.dry_run else load_sections([output]))


def load_results(paths: list[str | Path] | str | Path):
    """Every run under the given `peftbench run` output folders as a pandas DataFrame, one row per model x method x
    seed (references included; the columns of results.csv). Needs pandas."""
    outputs = [Path(paths)] if isinstance(paths, str | Path) else [Path(path) for path in paths]
    return _frame(rows(load_sections(outputs)))


def load_verdicts(output: str | Path) -> list[dict[str, Any] | None]:
    """The verdicts of a `peftbench run` output folder (OUTPUT/verdict.json): one per model, None where there was
    none to give. ConfigError where the folder has none (a run that did not finish, or one from before verdict.json)."""
    path = rundir.verdict_path(Path(output))
    try:
        return json.loads(path.read_text())["verdicts"]
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} does not exist: rebuild it with peftbench report {output}") from None


def _frame(table: list[dict[str, Any]]):
    try:
        import pandas as pd  # an optional dependency: only these two functions need it
    except ImportError:
        raise ConfigError("results as a DataFrame need pandas: pip install pandas") from None
    return pd.DataFrame(table, columns=columns(table))
