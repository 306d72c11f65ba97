"""Failures during a run stop only their method; safety (pickle weights, writes outside --output); --dry-run;
trackers."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
import yaml

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.methods.apply import apply_method, count_parameters
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import CausalLayout
from peftbench.model.load import load_model
from tests.helpers import tiny_run_args


def _peft_type(model) -> str | None:
    config = getattr(model, "peft_config", None)
    return config["default"].peft_type.value if isinstance(config, dict) and "default" in config else None


def test_failing_methods_do_not_stop_the_others(capsys, tiny_models, articles, tmp_path, monkeypatch):
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--epochs", "1", "--in-process")
    assert main([*args, "--methods", "full"]) == 0
    before = (output / "full" / "metrics.json").read_bytes()

    # LoRA's loss turns infinite (as a bad batch or a diverging update would); IA3 runs out of GPU memory.
    real = CausalLayout.token_loss

    def faulty(layout, model, batch):
        if _peft_type(model) == "IA3":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        summed, count = real(layout, model, batch)
        return (summed * math.inf if _peft_type(model) == "LORA" else summed), count

    monkeypatch.setattr(CausalLayout, "token_loss", faulty)
    capsys.readouterr()
    assert main([*args, "--methods", "lora,ia3,full"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"lora failed: training loss is inf at step 1 \(epoch 1\): .*lower --lr \(now 0.0005\)", err)
    assert "ia3 failed: out of GPU memory" in err and "--batch-size" in err and "--gradient-checkpointing" in err
    assert "2 of 3 method runs failed" in err

    assert (output / "full" / "metrics.json").read_bytes() == before  # finished earlier: skipped, untouched
    for method, text in (("lora", "training loss is inf"), ("ia3", "out of GPU memory")):
        assert not (output / method / "metrics.json").exists()
        assert text in json.loads((output / method / "failed.json").read_text())["error"]
    summary = (output / "summary.md").read_text()
    assert "| full |" in summary and "| lora | failed/missing |" in summary and "| ia3 | failed/missing |" in summary
    assert "failed" in (output / "report.md").read_text()


def test_diverging_learning_rate_stops_with_a_message(capsys, tiny_models, articles, tmp_path):
    args = tiny_run_args(
        tiny_models["gpt2"],
        articles,
        tmp_path / "o",
        "--methods",
        "full",
        "--lr",
        "1e30",
        "--epochs",
        "1",
        "--in-process",
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "full failed: training loss is" in err and "--lr (now 1e+30)" in err and "Traceback" not in err


def test_a_bug_in_a_method_exits_1_with_its_traceback(capsys, tiny_models, articles, tmp_path, monkeypatch):
    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(CausalLayout, "token_loss", broken)
    args = tiny_run_args(
        tiny_models["gpt2"], articles, tmp_path / "o", "--methods", "lora", "--epochs", "1", "--in-process"
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "1 of 1 method runs failed" in err


# ---------------------------------------------------------------------------------------------- safety


@pytest.fixture(scope="module")
def pickle_only_gpt2(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 with its weights in pytorch_model.bin only."""
    directory = tmp_path_factory.mktemp("pickled")
    for path in tiny_gpt2.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    model = load_model(str(tiny_gpt2)).model
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def test_pickle_weights_need_allow_pickle(capsys, pickle_only_gpt2, articles, tmp_path):
    args = tiny_run_args(
        pickle_only_gpt2, articles, tmp_path / "o", "--methods", "lora", "--epochs", "1", "--in-process"
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "--allow-pickle" in err and "save_pretrained" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "lora").exists()  # refused before any method ran
    assert main([*args, "--allow-pickle"]) == 0
    assert (tmp_path / "o" / "lora" / "metrics.json").is_file()


def test_nothing_is_written_outside_output(capsys, tiny_models, articles, tmp_path):
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / "lora").symlink_to(elsewhere, target_is_directory=True)  # a method directory pointing away
    assert main(tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora", "--in-process")) == 2
    err = capsys.readouterr().err
    assert f"{output / 'lora'}' is a symlink leading out of" in err and "Traceback" not in err
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tiny_models, articles, tmp_path):
    output = tmp_path / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "full,lora", "--dry-run")
    args.remove("--quiet")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert not output.exists()
    assert "Resolved configuration:" in printed and "lora_r: 8" in printed
    lora = apply_method(METHODS["lora"], load_model(str(tiny_models["gpt2"])), MethodSettings.from_config(RunConfig()))
    trainable, total = count_parameters(lora)
    assert re.search(rf"lora\s+{trainable:,} of {total:,} parameters trainable", printed)
    assert re.search(r"Tokens \(prompt \+ target, no padding\): train [\d,]+ in 8 examples", printed)
    assert "Estimated total: ~" in printed and f"{output / 'lora'}: runs" in printed


# ---------------------------------------------------------------------------------------------- trackers


def test_report_to_tensorboard_logs_steps_epochs_and_efficiency(tiny_models, articles, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "out"
    args = tiny_run_args(
        tiny_models["gpt2"],
        articles,
        output,
        "--methods",
        "lora",
        "--epochs",
        "2",
        "--report-to",
        "tensorboard",
        "--in-process",
    )
    assert main(args) == 0
    (run,) = (output / "trackers").iterdir()
    assert run.name == "lora-seed0"
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # 2 batches per epoch, across epochs
    assert all(loss > 0 for _, loss in scalars["train/loss"]) and len(scalars["train/lr"]) == 4
    metrics = json.loads((output / "lora" / "metrics.json").read_text())
    logged = [(step, pytest.approx(loss)) for step, loss in scalars["val/loss"]]
    assert logged == [(2 * e["epoch"], e["val_loss"]) for e in metrics["epochs"]]  # epochs 0, 1, 2 at their steps
    assert scalars["test/rougeL"][0][1] == pytest.approx(metrics["test"]["rougeL"])
    efficiency = metrics["efficiency"]
    assert scalars["efficiency/train_tokens_per_s"][0][1] == pytest.approx(efficiency["train_tokens_per_s"])
    assert scalars["efficiency/latency_ms_merged"][0][1] == pytest.approx(efficiency["latency_ms"]["merged"])
    # The resolved config goes along as the run's hyperparameters (accelerate also keeps them as YAML).
    (hparams,) = run.glob("*/hparams.yml")
    config = yaml.safe_load(hparams.read_text())
    assert config["lora_r"] == 8 and config["methods"] == "lora" and config["lr"] == metrics["config"]["lr"]
