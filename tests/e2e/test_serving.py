"""Serving: two trained adapters on one tiny base model (outputs per adapter, back exactly after swapping), the
memory window and the weights' size measured independently, and the derived serving figure in the report."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftbench.cli import main
from peftbench.measure.memory import in_memory_window, weights_bytes
from peftbench.measure.serving import load_adapters
from peftbench.measure.timing import PhaseTimer
from peftbench.store.records import Efficiency
from tests.helpers import tiny_run_args


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny_models, articles) -> Path:
    """LoRA trained twice on tiny GPT-2 (seeds 0 and 1): two different adapters of the same config."""
    output = tmp_path_factory.mktemp("serving") / "out"
    args = tiny_run_args(
        tiny_models["gpt2"], articles, output, "--methods", "lora", "--seeds", "0,1", "--epochs", "1", "--in-process"
    )
    assert main(args) == 0
    return output


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(
        ["The mayor opened a new bridge over the river.", "Rain flooded the town."], padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return model(**batch).logits


def test_two_adapters_on_one_base_swap_and_swap_back_exactly(two_seeds, tiny_models):
    adapters = [two_seeds / f"seed-{seed}" / "lora" / "adapter" for seed in (0, 1)]
    base = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"], use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    tokenizer.pad_token = tokenizer.eos_token
    plain = _logits(base, tokenizer)
    served = load_adapters(base, adapters)
    assert served.active_adapter == "0" and set(served.peft_config) == {"0", "1"}

    first = _logits(served, tokenizer)
    served.set_adapter("1")
    second = _logits(served, tokenizer)
    served.set_adapter("0")
    again = _logits(served, tokenizer)

    assert not torch.equal(first, plain) and not torch.equal(second, plain)  # each adapter changes the base
    assert (first - second).abs().max() > 1e-6  # the two adapters give different outputs
    assert torch.equal(again, first)  # swapping back restores the first adapter's outputs exactly
    alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]), adapters[0]).eval()
    assert torch.equal(_logits(alone, tokenizer), first)  # and they are that adapter's when loaded on its own
    served.set_adapter("1")
    alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]), adapters[1]).eval()
    assert torch.equal(_logits(alone, tokenizer), _logits(served, tokenizer))


def test_serving_figures_of_a_run(two_seeds, tiny_models):
    metrics = json.loads((two_seeds / "seed-0" / "lora" / "metrics.json").read_text())
    efficiency = metrics["efficiency"]
    adapter_bytes = 4 * metrics["trainable_params"]  # fp32 LoRA matrices
    assert efficiency["adapter_memory_bytes"] == {"first": adapter_bytes, "next": adapter_bytes}
    assert efficiency["adapter_load_ms"] > 0 and efficiency["adapter_swap_ms"] > 0
    assert efficiency["merge_unmerge_ms"] > 0
    memory = efficiency["inference_memory"]
    # The weights' bytes against the saved files: the base's safetensors data (tied weights stored once), and the
    # trained adapter's on top of it; merged, the adapter is folded in.
    assert memory["base"]["weights_bytes"] == _safetensors_data_bytes(tiny_models["gpt2"] / "model.safetensors")
    assert memory["unmerged"]["weights_bytes"] == memory["base"]["weights_bytes"] + _safetensors_data_bytes(
        two_seeds / "seed-0" / "lora" / "adapter" / "adapter_model.safetensors"
    )
    assert memory["merged"]["weights_bytes"] == memory["base"]["weights_bytes"]
    for model in ("base", "unmerged", "merged"):
        # On a CPU the peak is the whole process's resident memory: the runtime and the weights at least.
        assert memory[model]["peak_bytes"] > memory[model]["weights_bytes"]
        assert 0 <= memory[model]["increase_bytes"] < memory[model]["peak_bytes"]

    summary = (two_seeds / "summary.md").read_text()
    assert "inference memory (MiB)" in summary and "adapter load (ms)" in summary
    shared = memory["base"]["weights_bytes"] + 100 * adapter_bytes
    copies = 100 * memory["base"]["weights_bytes"]
    assert f"one base model with 100 adapters holds {shared / 2**20:,.1f} MiB of weights against " in summary
    assert f"{copies / 2**20:,.1f} MiB for 100 fully fine-tuned copies" in summary
    report = (two_seeds / "report.md").read_text()
    assert "Serving N tasks (derived)" in report and f"({shared / copies:.1%})" in report


def _safetensors_data_bytes(path: Path) -> int:
    """The tensor bytes of a safetensors file: its size less the 8-byte length and the JSON header."""
    with path.open("rb") as stream:
        (header,) = struct.unpack("<Q", stream.read(8))
    return path.stat().st_size - 8 - header


def test_weights_bytes_counts_tied_weights_once(tiny_gpt2):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2, use_safetensors=True)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert weights_bytes(model) == _safetensors_data_bytes(tiny_gpt2 / "model.safetensors")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="a fresh CPU memory window needs Linux")
def test_a_memory_window_holds_only_its_own_peak():
    size = 256 * 2**20
    kept, window = in_memory_window(lambda: torch.ones(size // 4))  # ones() writes, so every page is resident
    assert window.increase_bytes >= 0.9 * size and window.peak_bytes > window.increase_bytes
    del kept  # memory returned: a window that kept the earlier peak would show it as an increase
    _, later = in_memory_window(lambda: torch.ones(1024))
    assert later.increase_bytes < size / 4


def test_serving_estimate_from_the_measured_sizes():
    efficiency = Efficiency(
        10,
        1.0,
        0,
        "peak_rss",
        1.0,
        1.0,
        1.0,
        1.0,
        {"base": 1.0, "unmerged": 1.0},
        4,
        None,
        40,
        inference_memory={"base": {"weights_bytes": 1000, "peak_bytes": 5000, "increase_bytes": 7}},
        adapter_memory_bytes={"first": 50, "next": 40},
    )
    assert efficiency.serving_bytes(1) == (1050, 1000)
    assert efficiency.serving_bytes(100) == (1000 + 50 + 99 * 40, 100_000)
    efficiency.adapter_memory_bytes = None  # full fine-tuning: copies only
    assert efficiency.serving_bytes(10) == (None, 10_000)
    efficiency.inference_memory = None  # older results: nothing to derive from
    assert efficiency.serving_bytes(10) is None


NEW_FIELDS = ("inference_memory", "adapter_load_ms", "adapter_swap_ms", "merge_unmerge_ms", "adapter_memory_bytes")


def test_results_without_serving_figures_still_report(two_seeds, tmp_path):
    """metrics.json written before these figures existed: read, shown as '-', no serving table or clause."""
    for method in ("lora", "zero-shot", "lead-3"):
        shutil.copytree(two_seeds / "seed-0" / method, tmp_path / method)
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    metrics["efficiency"] = {k: v for k, v in metrics["efficiency"].items() if k not in NEW_FIELDS}
    (tmp_path / "lora" / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    tables = [t for t in report.split("\n\n") if t.startswith("| method |")]
    costs = next(t for t in tables if "trainable params" in t.splitlines()[0])
    header, _, lora = costs.splitlines()[:3]  # the costs table (quality is the first)
    cells = dict(zip(header.split("|"), lora.split("|"), strict=True))
    assert cells[" inference memory (MiB) "].strip() == "-" and cells[" adapter load (ms) "].strip() == "-"
    assert "Serving N tasks" not in report and "fully fine-tuned copies" not in report


def test_phase_timer_counts_what_other_processes_use_meanwhile():
    """CPU time another process burns during a phase is counted as other processes' (this one sleeps)."""
    timer = PhaseTimer()
    burn = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass"
    burner = [sys.executable, "-c", burn]
    before = os.times()
    with timer.phase("busy"):
        subprocess.run(burner, check=True)
    after = os.times()
    burned = after.children_user + after.children_system - before.children_user - before.children_system
    assert timer.others["busy"] >= 0.8 * burned > 1.0
    share = timer.other_cpu_share()
    assert share["busy"] == pytest.approx(timer.others["busy"] / (timer.seconds["busy"] * os.cpu_count()), abs=1e-3)
