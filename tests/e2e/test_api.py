"""The Python API (peftbench.run, Results, load_results) and the report's promise to read records only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import peftbench
from peftbench.config.run_config import RunConfig
from peftbench.errors import ConfigError

TINY = {
    "train_size": 8,
    "eval_size": 4,
    "test_size": 4,
    "epochs": 1,
    "batch_size": 4,
    "max_source_tokens": 48,
    "max_target_tokens": 16,
    "max_new_tokens": 8,
    "latency_prompts": 1,
    "latency_rounds": 2,
    "latency_new_tokens": 2,
    "quiet": True,
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_gpt2, articles):
    """One tiny comparison run through the API, as a notebook would."""
    output = tmp_path_factory.mktemp("api") / "out"
    results = peftbench.run(model=str(tiny_gpt2), dataset=str(articles), output=str(output), methods="lora", **TINY)
    return output, results


def test_run_returns_the_results_it_wrote(finished):
    output, results = finished
    assert results.output == output
    [section] = results.sections
    assert [runs.method for runs in section.methods] == ["lora", "zero-shot", "lead-3"]
    lora = section.methods[0].runs[0].result
    written = json.loads((output / "lora" / "metrics.json").read_text())
    assert lora.test.loss == written["test"]["loss"] and lora.config["train_size"] == 8
    frame = results.frame()
    assert set(frame["method"]) == {"lora", "lead-3", "zero-shot"}
    assert frame.equals(peftbench.load_results(output))  # the same rows as load_results, and results.csv
    assert (output / "lora" / "curves.png").read_bytes().startswith(b"\x89PNG")  # drawn at the end, from records
    [verdict] = results.verdicts  # the verdict as data, as verdict.json holds it
    assert verdict == peftbench.load_verdicts(output)[0] and verdict["comparator"] == "full"
    assert not verdict["comparator_ran"] and [m["method"] for m in verdict["methods"]] == ["lora"]
    assert verdict["headline"] in (output / "summary.md").read_text()
    with pytest.raises(ConfigError, match="verdict.json' does not exist"):
        peftbench.load_verdicts(output / "lora")


def test_run_takes_settings_as_the_cli_does():
    with pytest.raises(ConfigError, match="--epochs must be a whole number at least 1, got 0"):
        peftbench.run(epochs=0)
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        peftbench.run(learning_rat=1e-4)
    with pytest.raises(ConfigError, match="either a RunConfig or settings"):
        peftbench.run(RunConfig(), lr=1e-4)


def test_report_never_loads_torch(finished, tmp_path):
    """`peftbench report` reads JSON: it must not import torch, transformers or peft to do it."""
    output, _ = finished
    program = (
        "import sys; from peftbench.cli import main; code = main(['report', sys.argv[1], '--output', sys.argv[2]]); "
        "print(code, sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", program, str(output), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []"
    assert "## Model:" in (tmp_path / "report.md").read_text()
