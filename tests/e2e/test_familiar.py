"""What a Hugging Face user types works: HF Trainer's, peft's and LLaMA-Factory's names for flags and YAML keys,
peft's all-linear and regular-expression targets, --report-to all/none, a per-device batch size, a model card in
every adapter folder and a per-step log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftbench.cli import main
from peftbench.config.run_config import RunConfig, build_config
from peftbench.errors import ConfigError
from peftbench.methods.apply import all_linear, apply_method, resolve_targets, targeted_layers
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.model.load import skeleton
from peftbench.report import card
from peftbench.store import records as results
from peftbench.store.records import MethodResult
from peftbench.store.rundir import MethodDir
from peftbench.training.tracking import AVAILABLE, resolve_trackers
from tests.helpers import QUICK_LATENCY, tiny_run_args


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftbench: error:") and "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------- names


def test_aliases_and_underscores_set_the_same_fields():
    flags = {
        "--learning_rate": "2e-4",
        "--num_train_epochs": "1",
        "--output_dir": "x",
        "--lora_target": "all",
        "--gradient_accumulation_steps": "2",
        "--lora_rank": "4",
        "--max_new_tokens": "8",
        "--lora-r": "4",
    }
    config = build_config({}, flags)
    assert (config.lr, config.epochs, config.output, config.grad_accum) == (2e-4, 1, "x", 2)
    assert config.lora_targets == ["all-linear"]  # LLaMA-Factory's `all`
    assert (config.lora_r, config.max_new_tokens) == (4, 8)
    from_yaml = build_config({"learning_rate": 2e-4, "num-train-epochs": 1, "lora_target": "all-linear"}, {})
    assert (from_yaml.lr, from_yaml.epochs, from_yaml.lora_targets) == (2e-4, 1, ["all-linear"])
    assert build_config({}, {"--lr": "2e-4", "--learning-rate": "0.0002"}).lr == 2e-4  # the same value twice


@pytest.mark.parametrize(
    "file,flags,expected",
    [
        ({}, {"--lr": "1e-4", "--learning_rate": "2e-4"}, "--lr and --learning_rate"),
        ({"lr": 1e-4, "learning-rate": 2e-4}, {}, "lr and learning-rate"),
        ({}, {"--epochs": "2", "--num_train_epochs": "1"}, "--epochs and --num_train_epochs"),
        ({}, {"--batch-size": "4", "--per_device_train_batch_size": "2"}, "exclude each other"),
    ],
)
def test_two_names_for_one_setting_must_agree(file, flags, expected):
    with pytest.raises(ConfigError, match="give one of them") as error:
        build_config(file, flags)
    assert expected in str(error.value)


def test_alias_conflict_and_misspelt_alias_fail_before_anything_runs(capsys, tmp_path):
    args = ["run", "--output", str(tmp_path / "o"), "--methods", "lora"]
    err = _fails(capsys, [*args, "--lr", "1e-4", "--learning_rate", "2e-4"])
    assert "--lr and --learning_rate" in err and "0.0001" in err and "0.0002" in err
    err = _fails(capsys, [*args, "--learning_rat", "2e-4"])  # no silent abbreviation: a suggestion
    assert "unknown flag --learning_rat; did you mean --learning_rate?" in err
    assert not (tmp_path / "o").exists()


def test_per_device_batch_size_is_multiplied_by_the_processes():
    config = build_config({}, {"--per-device-batch-size": "2"}, processes=3)
    assert config.batch_size == 6 and config.to_dict()["batch_size_given_as"] == "per_device"
    assert build_config({}, {}).to_dict()["batch_size_given_as"] == "global"
    assert build_config({"per_device_batch_size": 2}, {"--batch-size": "8"}).batch_size == 8  # the flag wins


def test_help_lists_aliases_with_their_option_and_the_true_batch_size():
    done = subprocess.run(
        [sys.executable, "-m", "peftbench", "run", "--help"], capture_output=True, text=True, timeout=120
    )
    text = " ".join(done.stdout.split())
    assert "--lr, --learning-rate, --learning_rate LR" in text
    assert "--epochs, --num-train-epochs, --num_train_epochs EPOCHS" in text
    assert "--output, --output-dir, --output_dir OUTPUT" in text
    assert "--lora-targets, --lora_targets, --lora-target, --lora_target TARGETS" in text
    assert "--max-new-tokens, --max_new_tokens TOKENS" in text
    assert "(per device)" not in text and "across all processes (the global batch, not per device)" in text
    assert "--per_device_train_batch_size" in text
    top = subprocess.run([sys.executable, "-m", "peftbench", "--help"], capture_output=True, text=True, timeout=120)
    count = f"{len(METHODS) - 1} PEFT methods"
    assert "(LoRA, IA3)" not in top.stdout and count in " ".join(top.stdout.split())


# ---------------------------------------------------------------------------------------------- targets


def _wrapped(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


@pytest.mark.parametrize(
    "arch,expected", [("gpt2", ["c_attn", "c_fc", "c_proj"]), ("t5", ["k", "o", "q", "v", "wi", "wo"])]
)
def test_all_linear_selects_what_peft_selects(arch, expected, tiny_models):
    base = skeleton(str(tiny_models[arch])).model
    names = resolve_targets(base, ["all-linear"], "--lora-targets")
    assert names == expected
    by_peft = _wrapped(
        get_peft_model(skeleton(str(tiny_models[arch])).model, LoraConfig(target_modules="all-linear")).base_model.model
    )
    assert set(targeted_layers(base, names)) == by_peft == set(all_linear(base))
    assert not any("lm_head" in name for name in by_peft)  # the output head stays as it is


def test_regular_expressions_match_whole_paths_as_peft_does(tiny_models):
    base = skeleton(str(tiny_models["t5"])).model
    names = resolve_targets(base, [r".*decoder.*SelfAttention\.(q|v)"], "--lora-targets")
    assert set(targeted_layers(base, names)) == {
        f"decoder.block.{i}.layer.0.SelfAttention.{p}" for i in (0, 1) for p in "qv"
    }
    by_peft = _wrapped(
        get_peft_model(
            skeleton(str(tiny_models["t5"])).model, LoraConfig(target_modules=r".*decoder.*SelfAttention\.(q|v)")
        ).base_model.model
    )
    assert set(targeted_layers(base, names)) == by_peft
    with pytest.raises(ConfigError, match="matches no layer"):
        resolve_targets(base, [r"SelfAttention\.q"], "--lora-targets")  # a part of the path is not a full match
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        resolve_targets(base, ["q(v"], "--lora-targets")


def test_all_linear_without_linear_layers_is_refused():
    with pytest.raises(ConfigError, match="no linear layer peft can wrap"):
        resolve_targets(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), ["all-linear"], "--lora-targets")


def test_ia3_on_all_linear_keeps_its_feedforward_layers(tiny_models):
    settings = MethodSettings.from_config(RunConfig(ia3_targets=["all-linear"]))
    model = apply_method(METHODS["ia3"], skeleton(str(tiny_models["gpt2"])), settings)
    scaled = {name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    assert len(scaled) == 8  # every linear layer of both blocks
    feedforward = {name for name in scaled if model.get_submodule(name).is_feedforward}
    assert feedforward == {f"base_model.model.transformer.h.{i}.mlp.c_proj" for i in (0, 1)}


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--lora-targets", "(q"], ["--lora-targets '(q' is not a valid regular expression"]),
        (["--lora-targets", r"nothing\..*"], ["matches no layer", "candidates:"]),
        (["--lora_target", "all,q"], ["stands alone"]),
        (["--report-to", "none,tensorboard"], ["stand alone"]),
    ],
)
def test_bad_targets_fail_before_any_weights_load(flags, expected, capsys, tiny_models, articles, tmp_path):
    err = _fails(capsys, tiny_run_args(tiny_models["t5"], articles, tmp_path / "o", "--methods", "lora", *flags))
    for text in expected:
        assert text in err
    assert not (tmp_path / "o" / "zero-shot").exists()  # nothing ran


def test_dry_run_shows_resolved_targets_and_trackers(capsys, tiny_models, articles, tmp_path):
    args = tiny_run_args(
        tiny_models["gpt2"],
        articles,
        tmp_path / "o",
        "--methods",
        "lora,ia3",
        "--dry-run",
        "--lora_target",
        "all",
        "--ia3-targets",
        r".*\.c_attn|.*mlp\.c_proj",
        "--report-to",
        "all",
    )
    args.remove("--quiet")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "targets: c_attn, c_fc, c_proj (8 layers from all-linear)" in printed
    assert r"targets: c_attn, mlp.c_proj (4 layers from .*\.c_attn|.*mlp\.c_proj)" in printed
    installed = [name for name, available in AVAILABLE.items() if available()]
    assert f"--report-to all: reporting to {', '.join(installed)}" in printed or not installed


def test_report_to_all_and_none_as_hf_takes_them():
    assert resolve_trackers(["none"]) is None and resolve_trackers(None) is None
    installed = [name for name, available in AVAILABLE.items() if available()]
    assert resolve_trackers(["all"]) == (installed or None)
    assert resolve_trackers(["tensorboard"]) == ["tensorboard"]


# ---------------------------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_models, articles):
    """The command a HF Trainer user types, on tiny GPT-2: LoRA on every linear layer, and full fine-tuning."""
    output = tmp_path_factory.mktemp("hf") / "x"
    args = [
        "run",
        "--model",
        str(tiny_models["gpt2"]),
        "--dataset",
        str(articles),
        "--train-size",
        "8",
        "--eval-size",
        "4",
        "--test-size",
        "4",
        "--max-source-tokens",
        "48",
        "--max-target-tokens",
        "16",
        "--max_new_tokens",
        "8",
        "--quiet",
        "--methods",
        "lora,full",
        "--in-process",
        *QUICK_LATENCY,
        "--learning_rate",
        "2e-4",
        "--num_train_epochs",
        "2",
        "--output_dir",
        str(output),
        "--lora_target",
        "all",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
    ]
    assert main(args) == 0
    return output


def test_hf_trainer_command_runs_with_its_settings(hf_run):
    config = json.loads((hf_run / "lora" / "metrics.json").read_text())["config"]
    assert (config["lr"], config["epochs"], config["output"]) == (2e-4, 2, str(hf_run))
    assert (config["batch_size"], config["per_device_batch_size"], config["grad_accum"]) == (2, 2, 2)
    assert config["batch_size_given_as"] == "per_device"
    assert config["lora_targets"] == ["c_attn", "c_fc", "c_proj"] and config["lora_targets_given"] == ["all-linear"]
    adapter = json.loads((hf_run / "lora" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["c_attn", "c_fc", "c_proj"]


def test_log_has_every_step_and_evaluation(hf_run):
    metrics = json.loads((hf_run / "lora" / "metrics.json").read_text())
    log = MethodDir(hf_run / "lora").read_log()
    train = [r for r in log if r["split"] == "train"]
    assert [(r["epoch"], r["step"]) for r in train] == [(1, 1), (1, 2), (2, 3), (2, 4)]  # 8 examples, 4 a step
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 and r["learning_rate"] > 0 for r in train)
    assert train[-1]["learning_rate"] < train[0]["learning_rate"]  # linear decay
    assert [r["seconds"] for r in train] == sorted(r["seconds"] for r in train)
    assert train[-1]["seconds"] == pytest.approx(metrics["efficiency"]["train_seconds"], rel=0.2)
    efficiency = metrics["efficiency"]
    assert sum(r["tokens"] for r in train) == round(efficiency["train_tokens_per_s"] * efficiency["train_seconds"])
    validation = [r for r in log if r["split"] == "validation"]
    assert [(r["epoch"], r["step"], r["loss"]) for r in validation] == [
        (e["epoch"], 2 * e["epoch"], e["val_loss"]) for e in metrics["epochs"]
    ]
    (test,) = [r for r in log if r["split"] == "test"]
    assert {k: test[k] for k in metrics["test"]} == metrics["test"] and test["step"] == 4
    assert log[0]["split"] == "validation" and log[-1] == test  # in the order they happened


def test_model_card_replaces_peft_placeholder(hf_run):
    for method, library in (("lora", "peft"), ("full", "transformers")):
        directory = MethodDir(hf_run / method)
        text = directory.card.read_text()
        assert "More Information Needed" not in text
        loaded = ModelCard.load(directory.card)
        assert loaded.data.library_name == library and "peftbench" in loaded.data.tags
        metrics = json.loads(directory.metrics.read_text())
        assert f"| ROUGE-L | {metrics['test']['rougeL']:.4g} |" in text
        assert "not computed yet" not in text and "95% percentile bootstrap" in text  # rewritten with intervals
        assert "peftbench run --model" in text and f"--methods {method}" in text
        assert "--per-device-batch-size 2" in text and "--batch-size" not in text.split("```bash")[1]
        assert f"peft: {metrics['environment']['peft']}" in text
        assert "README.md" not in metrics["efficiency"]["adapter_files"]
    assert "--lora-targets all-linear" in MethodDir(hf_run / "lora").card.read_text()


def test_model_card_metadata_is_valid_for_the_hub(hf_run):
    result = MethodResult.from_dict(json.loads((hf_run / "lora" / "metrics.json").read_text()))
    result.provenance = {"model": {"hub_id": "gpt2", "revision": "abc"}, "dataset": {"hub_id": "cnn_dailymail"}}
    parsed = ModelCard(card.render(result))
    assert parsed.data.base_model == "gpt2" and parsed.data.datasets == ["cnn_dailymail"]
    assert "base_model:adapter:gpt2" in parsed.data.tags
    scores = {r.metric_name: r.metric_value for r in parsed.data.eval_results}  # model-index, read back
    assert scores["ROUGE-L"] == result.test.scores["rougeL"] and scores["BLEU"] == result.test.scores["bleu"]
    assert {r.dataset_type for r in parsed.data.eval_results} == {"cnn_dailymail"}
    assert {r.task_type for r in parsed.data.eval_results} == {"summarization"}
    qa = MethodResult.from_dict(result.to_dict())  # the embedded QA sample's task and metrics
    qa.config |= {"dataset": "embedded-qa", "task": "qa", "metrics": ["exact_match", "f1"], "primary_metric": "f1"}
    qa.test, qa.provenance = results.TestMetrics(2.5, {"exact_match": 0.25, "f1": 0.5}), None
    evals = ModelCard(card.render(qa)).data.eval_results
    assert {(r.task_type, r.dataset_type) for r in evals} == {("question-answering", "hotpot_qa")}
    assert {(r.metric_type, r.metric_name, r.metric_value) for r in evals} == {
        ("loss", "loss", 2.5),
        ("exact_match", "exact match", 0.25),
        ("f1", "F1", 0.5),
    }
    embedded = MethodResult.from_dict(result.to_dict())
    embedded.config["model"], embedded.provenance = "embedded", None
    text = card.render(embedded)  # the Hub's id as base model, and that the weights are a dequantised copy of it
    assert ModelCard(text).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "dequantised" in text
    assert "dequantised" not in card.render(result)
    result.config["model_weights"] = "random weights: speed and memory only"
    assert ModelCard(card.render(result)).data.eval_results is None  # scores of random weights mean nothing


def test_curves_show_training_loss_per_step(hf_run):
    from peftbench.report.curves import plot_curves

    result = MethodResult.from_dict(json.loads((hf_run / "lora" / "metrics.json").read_text()))
    with_steps = plot_curves(result, MethodDir(hf_run / "lora").read_log())
    assert with_steps.startswith(b"\x89PNG") and with_steps != plot_curves(result)
    assert (hf_run / "lora" / "curves.png").read_bytes() == with_steps  # the end of the run drew the same
