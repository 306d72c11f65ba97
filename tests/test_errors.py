"""Bad input: a clear message naming the bad value and what is valid, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from tests.conftest import tiny_run_args


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("peftbench: error:")
    return err


def test_missing_column_lists_existing_columns(capsys, tiny_models, articles, tmp_path):
    err = _fails(
        capsys,
        tiny_run_args(
            tiny_models["gpt2"], articles, tmp_path / "o", "--source-column", "story", "--target-column", "highlights"
        ),
    )
    assert "'story'" in err and "article" in err and "highlights" in err and "id" in err


def test_unknown_columns_without_names_ask_for_them(capsys, tiny_models, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,summary\nan article,a summary\n")
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "--source-column" in err and "text" in err and "summary" in err


def test_unknown_method_lists_valid_ones(capsys, tiny_models, articles, tmp_path):
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--methods", "lora,qlora9"))
    assert "qlora9" in err and "full" in err and "ia3" in err


def test_unknown_target_lists_candidates(capsys, tiny_models, articles, tmp_path):
    err = _fails(
        capsys,
        tiny_run_args(tiny_models["t5"], articles, tmp_path / "o", "--methods", "lora", "--lora-targets", "q_proj"),
    )
    assert "q_proj" in err and "--lora-targets" in err
    assert "q" in err.split("candidates:")[1] and "wo" in err


def test_sizes_larger_than_the_data(capsys, tiny_models, articles, tmp_path):
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--train-size", "5000"))
    assert "--train-size 5000" in err and "train split" in err


def test_malformed_jsonl_names_the_line(capsys, tiny_models, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"article": "a", "highlights": "b"}) + "\n{not json\n")
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "line 2" in err


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "-1"), ("--batch-size", "four")])
def test_bad_values_are_named(capsys, tiny_models, articles, tmp_path, flag, value):
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", flag, value))
    assert value in err


def test_unknown_yaml_key_suggests_the_nearest(capsys, tiny_models, articles, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lora_rank: 4\n")
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--config", str(config)))
    assert "lora_rank" in err and "lora_r" in err


def test_mixed_precision_on_cpu_is_refused_before_loading(capsys, articles, tmp_path):
    err = _fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, tmp_path / "o", "--precision", "bf16"))
    assert "--precision bf16" in err and "GPU" in err
