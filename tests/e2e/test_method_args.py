"""A method's own peft fields by name (--method-args, YAML method_args): set on the peft config it trains with,
recorded, part of the fingerprint, shown in the report and the card; bad names, fields and values refused before
anything loads, naming the method, the field and what is valid."""

from __future__ import annotations

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peftbench.cli import main
from tests.helpers import fails, tiny_run_args


def test_method_args_reach_peft_and_every_record(tiny_models, articles, tmp_path, capsys):
    output = tmp_path / "out"
    given = ("--methods", "lora,vera", "--epochs", "1", "--in-process")
    args = tiny_run_args(tiny_models["gpt2"], articles, output, *given, "--method-args", "lora.r=2,vera.r=64")
    assert main(args) == 0
    lora = json.loads((output / "lora" / "metrics.json").read_text())
    assert lora["config"]["method_args"] == {"lora": {"r": 2}, "vera": {"r": 64}}
    adapter = json.loads((output / "lora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 16  # the field given; the shorthand's others stay
    assert json.loads((output / "vera" / "adapter" / "adapter_config.json").read_text())["r"] == 64
    for shown in (output / "report.md", output / "lora" / "adapter" / "README.md"):
        assert "peft r=2" in shown.read_text()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    assert PeftModel.from_pretrained(base, output / "lora" / "adapter").peft_config["default"].r == 2
    capsys.readouterr()
    changed = tiny_run_args(tiny_models["gpt2"], articles, output, *given, "--method-args", "lora.r=4,vera.r=64")
    err = fails(capsys, changed)  # another configuration: the fingerprint holds the fields given
    assert "different configuration" in err and "method_args" in err


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("lora.rank=4", "LoraConfig has no field 'rank'; valid fields:"),
        ("lora.r=four", "lora.r='four': LoraConfig.r takes int"),
        ("lora.init_lora_weights=pisa", "takes bool or one of 'gaussian'"),
        ("lora.target_modules=[c_attn]", "peftbench sets it from --lora-targets"),
        ("full.r=4", "full has no peft config"),
        ("loar.r=4", "unknown method 'loar'; choose from full, lora"),
        ("lora.r", "'lora.r' is not method.field=value"),
        ("lora.r=4,lora.r=8", "gives lora.r twice"),
        ("lora.init_lora_weights=eva", "which lora does not run: use --methods eva"),
        ("dora.init_lora_weights=loftq", "LoftQ is not offered"),
    ],
)
def test_bad_method_args_are_refused_before_anything_loads(given, said, tiny_models, articles, tmp_path, capsys):
    args = tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--method-args", given)
    assert said in fails(capsys, args)
    assert not (tmp_path / "o").exists()


def test_method_args_from_yaml(tiny_models, articles, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("methods: [oft]\nmethod_args:\n  oft:\n    oft_block_size: 8\n    r: 0\n")
    args = tiny_run_args(tiny_models["t5"], articles, tmp_path / "o", "--epochs", "1", "--in-process", "--dry-run")
    assert main(["run", "--config", str(config), *args[1:]]) == 0
    assert "oft" in capsys.readouterr().out
    config.write_text("method_args: {oft: [8]}\n")
    assert "not a mapping of methods to their fields" in fails(capsys, ["run", "--config", str(config), *args[1:]])


def test_a_default_size_the_model_cannot_take_is_refused_before_anything_trains(
    tiny_models, articles, tmp_path, capsys
):
    """C3A's default block of 256 does not divide the tiny model's width of 32: pre-flight says so, naming the sizes,
    before any method trains; --method-args gives a size that fits."""
    args = tiny_run_args(tiny_models["t5"], articles, tmp_path / "o", "--methods", "lora,c3a", "--in-process")
    err = fails(capsys, args)
    assert "peft cannot apply c3a" in err and "the input size is 32 and the block size is 256" in err
    assert not (tmp_path / "o" / "lora").exists()
    assert main([*args, "--method-args", "c3a.block_size=8", "--dry-run"]) == 0
