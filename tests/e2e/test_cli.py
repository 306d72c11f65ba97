"""End to end through the CLI on tiny GPT-2 and T5: every method, every output file and its schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from peftbench.cli import main
from peftbench.task.metrics import per_example
from tests.helpers import launched, tiny_run_args

EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}
TEST_KEYS = {"loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}


def _check_scores(scores: dict) -> None:
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0.0 <= scores[key] <= 1.0, (key, scores[key])
    assert 0.0 <= scores["bleu"] <= 100.0
    assert scores.get("loss", scores.get("val_loss")) > 0


def _check_efficiency(metrics: dict, directory) -> None:
    eff = metrics["efficiency"]
    assert eff["trainable_params"] == metrics["trainable_params"]
    assert eff["trainable_pct"] == pytest.approx(100 * metrics["trainable_params"] / metrics["total_params"])
    assert isinstance(eff["peak_train_memory_bytes"], int) and 50 * 2**20 < eff["peak_train_memory_bytes"] < 16 * 2**30
    assert eff["memory_measure"] == "peak_rss"
    assert eff["train_seconds"] > 0
    # 2 epochs of 8 examples: tokens/s and samples/s describe the same seconds.
    assert eff["train_samples_per_s"] * eff["train_seconds"] == pytest.approx(16)
    assert eff["train_tokens_per_s"] > eff["train_samples_per_s"]
    assert eff["eval_generate_tokens_per_s"] > 0
    latency = eff["latency_ms"]
    assert set(latency) == {"base", "unmerged", "merged"}
    assert latency["base"] > 0 and latency["unmerged"] > 0
    timed = [name for name, ms in latency.items() if ms is not None]
    rounds = eff["latency_rounds"]  # every timed model in each of the 2 rounds, prefill and decode apart
    assert set(rounds) == {"prefill_ms", "decode_ms"}
    assert all(sorted(part) == sorted(timed) and all(len(v) == 2 for v in part.values()) for part in rounds.values())
    assert all(ms > 0 for part in rounds.values() for values in part.values() for ms in values)
    steps = eff["train_steps"]  # 2 epochs of 2 steps, each step's real tokens adding up to the run's
    assert steps["epoch"] == [1, 1, 2, 2] and sum(steps["tokens"]) == pytest.approx(
        eff["train_tokens_per_s"] * eff["train_seconds"]
    )
    memory = eff["train_memory"]  # the account adds up to the measured peak; the counted parts are the model's
    assert sum(memory.values()) == eff["peak_train_memory_bytes"] and memory["runtime"] > 0
    assert memory["gradients"] == 4 * metrics["trainable_params"]  # fp32
    assert 2 * memory["gradients"] <= memory["optimizer"] < 2 * memory["gradients"] + 2**16  # AdamW: 2 moments, steps
    files = [f for f in (directory / "adapter").rglob("*") if f.is_file()]
    if metrics["method"] == "full":
        assert latency["merged"] is None and eff["merge_check"] is None
        weights = [
            f for f in files if f.suffix == ".safetensors" or f.name in ("config.json", "generation_config.json")
        ]
        assert eff["adapter_size_bytes"] == sum(f.stat().st_size for f in weights)
    else:
        assert latency["merged"] > 0
        assert eff["merge_check"]["tokens_equal"] is True
        assert 0 <= eff["merge_check"]["max_logit_diff"] < 1e-3
        counted = [f for f in files if f.name != "README.md"]  # peft's generated card is not the adapter
        assert eff["adapter_size_bytes"] == sum(f.stat().st_size for f in counted)
        assert sorted(eff["adapter_files"]) == sorted(f.name for f in counted)
    _check_serving(metrics)


def _check_serving(metrics: dict) -> None:
    """Inference memory of base, unmerged and merged models, and the serving costs of loading and swapping."""
    eff, full = metrics["efficiency"], metrics["method"] == "full"
    memory = eff["inference_memory"]
    assert set(memory) == {"base", "unmerged", "merged"} and (memory["merged"] is None) == full
    # fp32 parameters (tied ones once; these models have no buffers): the trained model's, of which the adapter's
    # (trainable) are added to the base model's.
    assert memory["unmerged"]["weights_bytes"] == 4 * metrics["total_params"]
    base = memory["base"]["weights_bytes"]
    added = 0 if full else 4 * metrics["trainable_params"]
    assert memory["unmerged"]["weights_bytes"] == base + added
    for model in filter(memory.get, memory):
        assert memory[model]["peak_bytes"] > memory[model]["weights_bytes"] and memory[model]["increase_bytes"] >= 0
    assert eff["adapter_load_ms"] > 0
    if full:
        assert eff["adapter_swap_ms"] is None and eff["merge_unmerge_ms"] is None
        assert eff["adapter_memory_bytes"] is None
    else:
        assert memory["merged"]["weights_bytes"] == base
        assert eff["adapter_swap_ms"] > 0 and eff["merge_unmerge_ms"] > 0
        assert eff["adapter_memory_bytes"] == {"first": added, "next": added}


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_run_all_methods_writes_documented_outputs(arch, tiny_models, articles, tmp_path):
    output = tmp_path / "out"  # in this process: the method processes' own outputs are the fault tests' concern
    assert main(tiny_run_args(tiny_models[arch], articles, output, "--in-process")) == 0

    summary = (output / "summary.md").read_text()
    for method in ("full", "lora", "ia3"):
        directory = output / method
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["method"] == method
        assert metrics["model"] == str(tiny_models[arch])
        assert metrics["config"]["epochs"] == 2 and metrics["config"]["methods"] == [method]
        assert metrics["config"]["model_kind"] == ("seq2seq" if arch == "t5" else "causal")
        assert 0 < metrics["trainable_params"] <= metrics["total_params"]
        assert [e["epoch"] for e in metrics["epochs"]] == [0, 1, 2]
        assert metrics["epochs"][0]["train_loss"] is None
        for epoch in metrics["epochs"]:
            parts = epoch.pop("per_example", None)
            assert set(epoch) == EPOCH_KEYS
            _check_scores(epoch)
            if epoch["epoch"]:  # each validation example's part: the validation loss is their ratio of sums
                assert sum(parts["loss"]) / sum(parts["tokens"]) == pytest.approx(epoch["val_loss"])
        assert all(e["train_loss"] > 0 for e in metrics["epochs"][1:])
        assert set(metrics["test"]) == TEST_KEYS
        _check_scores(metrics["test"])

        rows = [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        keys = {"id", "source", "reference", "prediction", "rouge1", "rouge2", "rougeL", "rougeLsum"}
        assert all(set(row) == keys for row in rows)
        recomputed = per_example("rougeL", [row["prediction"] for row in rows], [[row["reference"]] for row in rows])
        assert [row["rougeL"] for row in rows] == pytest.approx(recomputed)  # each example's own score
        assert sum(row["rougeL"] for row in rows) / 4 == pytest.approx(metrics["test"]["rougeL"])
        assert len({row["id"] for row in rows}) == 4

        assert (directory / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"| {method} |" in summary
        _check_efficiency(metrics, directory)

    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    full = auto.from_pretrained(output / "full" / "adapter", use_safetensors=True)
    assert (
        sum(p.numel() for p in full.parameters())
        == json.loads((output / "full" / "metrics.json").read_text())["total_params"]
    )
    for method in ("lora", "ia3"):
        adapter = output / method / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        weights = load_file(adapter / "adapter_model.safetensors")
        metrics = json.loads((output / method / "metrics.json").read_text())
        assert sum(t.numel() for t in weights.values()) == metrics["trainable_params"]
        peft_model = PeftModel.from_pretrained(auto.from_pretrained(tiny_models[arch]), adapter)
        assert peft_model.peft_config["default"].peft_type.value.lower() == method


def test_lora_and_ia3_use_family_default_targets(tiny_models, articles, tmp_path):
    output = tmp_path / "out"
    assert (
        main(
            tiny_run_args(
                tiny_models["gpt2"],
                articles,
                output,
                "--methods",
                "lora,ia3",
                "--epochs",
                "1",
                "--in-process",
            )
        )
        == 0
    )
    lora = json.loads((output / "lora" / "metrics.json").read_text())["config"]
    ia3 = json.loads((output / "ia3" / "metrics.json").read_text())["config"]
    assert lora["lora_targets"] == ["c_attn", "c_proj"]
    assert ia3["ia3_targets"] == ["c_attn", "mlp.c_proj"] and ia3["ia3_feedforward"] == ["mlp.c_proj"]


def test_same_command_twice_gives_same_metrics(tiny_models, articles, tmp_path):
    runs = []
    for name in ("a", "b"):
        output = tmp_path / name
        assert (
            main(
                tiny_run_args(
                    tiny_models["gpt2"],
                    articles,
                    output,
                    "--methods",
                    "lora,full",
                    "--seed",
                    "3",
                    "--in-process",
                )
            )
            == 0
        )
        runs.append({m: json.loads((output / m / "metrics.json").read_text()) for m in ("lora", "full")})
    for method in ("lora", "full"):
        assert runs[0][method]["epochs"] == runs[1][method]["epochs"]
        assert runs[0][method]["test"] == runs[1][method]["test"]
    # Training actually changed something, so equality above is not vacuous.
    assert runs[0]["full"]["epochs"][0]["val_loss"] != runs[0]["full"]["epochs"][2]["val_loss"]


def test_yaml_config_with_flag_override(tiny_models, articles, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_models['t5']}\nmethods: [lora]\nlora-r: 2\nepochs: 5\n")
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["t5"], articles, output, "--config", str(config), "--epochs", "1", "--in-process")
    assert main(args) == 0
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    assert metrics["config"]["lora_r"] == 2  # from the file
    assert metrics["config"]["epochs"] == 1  # the flag wins
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    assert not (output / "full").exists()


def test_console_script_help():
    for args in (["--help"], ["run", "--help"]):
        command = [sys.executable, "-m", "peftbench", *args]
        with launched(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as done:
            out, _ = done.communicate(timeout=120)
        assert done.returncode == 0
    assert "--lora-targets" in out and "--max-new-tokens" in out


def test_eval_every_generation_subset_and_checkpointing(tiny_models, articles, tmp_path):
    output = tmp_path / "out"
    extra = (
        "--methods",
        "lora",
        "--epochs",
        "3",
        "--eval-every",
        "2",
        "--eval-generate-size",
        "2",
        "--gradient-checkpointing",
        "--in-process",
    )
    assert main(tiny_run_args(tiny_models["gpt2"], articles, output, *extra)) == 0
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 2, 3]  # every 2nd epoch, and always the last
    assert metrics["config"]["gradient_checkpointing"] is True
    lines = (output / "lora" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the test split is always generated in full
