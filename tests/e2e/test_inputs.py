"""Bad input a reader would resolve silently or report as something else: a column or key given twice, an empty list
item, a binary config, an answer column of the wrong shape, a missing local model, a named pipe, and weights cut short
or of another model's shapes. Each is exit code 2, no traceback, and a message naming the bad value."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import fails, tiny_run_args


def _rows(articles: Path) -> list[dict]:
    return [json.loads(line) for line in articles.read_text().splitlines()]


def test_a_csv_column_named_twice_is_refused(capsys, tiny_models, articles, tmp_path):
    data = tmp_path / "d.csv"
    with data.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["doc", "tldr", "tldr"])  # csv.DictReader would keep the second tldr
        writer.writerows([row["article"], row["highlights"], "other"] for row in _rows(articles))
    args = tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o", "--source-column", "doc", "--target-column", "tldr")
    err = fails(capsys, args)
    assert "d.csv" in err and "'tldr' 2 times" in err and "line 1" in err


def test_a_jsonl_key_given_twice_names_the_line(capsys, tiny_models, articles, tmp_path):
    data = tmp_path / "d.jsonl"
    lines = [json.dumps(row) for row in _rows(articles)]
    lines[2] = lines[2][:-1] + ', "highlights": "another"}'  # json.loads would keep this one
    data.write_text("\n".join(lines) + "\n")
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "d.jsonl: line 3 gives key 'highlights' twice" in err


def test_a_parquet_column_named_twice_is_refused(capsys, tiny_models, articles, tmp_path):
    rows = _rows(articles)
    columns = [pa.array([r[name] for r in rows]) for name in ("article", "highlights", "highlights")]
    data = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_arrays(columns, names=["article", "highlights", "highlights"]), data)
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "d.parquet" in err and "'highlights' 2 times" in err


def test_an_empty_item_in_a_comma_list_is_refused(capsys, tiny_models, articles, tmp_path):
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--methods", "lora,,ia3"))
    assert "--methods 'lora,,ia3' has an empty item" in err


def test_a_binary_config_file_is_not_yaml(capsys, tiny_models, articles, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(256)))
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--config", str(config)))
    assert "c.yaml' is not UTF-8 text" in err


def test_a_list_of_lists_of_answers_is_named_as_such(capsys, tiny_models, articles, tmp_path):
    rows = _rows(articles)
    table = pa.table({"article": [r["article"] for r in rows], "highlights": [[[r["highlights"]]] for r in rows]})
    pq.write_table(table, tmp_path / "d.parquet")
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], tmp_path / "d.parquet", tmp_path / "o"))
    assert "has a list of lists in column 'highlights'" in err and "a list of texts" in err
    assert "empty" not in err


def test_answers_in_an_object_without_text_say_why_none_are_left(capsys, tiny_models, articles, tmp_path):
    rows = _rows(articles)
    table = pa.table({"article": [r["article"] for r in rows], "highlights": [{"gist": r["highlights"]} for r in rows]})
    pq.write_table(table, tmp_path / "d.parquet")
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], tmp_path / "d.parquet", tmp_path / "o"))
    assert "--train-size 8 is more than the 0 examples" in err
    assert "100 with 'highlights' not text (dict without 'text')" in err and "an object with a 'text' list" in err


@pytest.mark.parametrize("written", ["./no/such/dir", "missing-model"])
def test_a_missing_local_model_is_said_to_be_missing(written, capsys, articles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = written if written.startswith(".") else str(tmp_path / written)  # relative, and absolute
    err = fails(capsys, tiny_run_args(model, articles, tmp_path / "o"))  # as written: no Path to normalise it
    assert f"model {model!r} does not exist" in err and "Repo id" not in err


def test_a_named_pipe_as_data_is_not_a_regular_file(capsys, tiny_models, tmp_path):
    data = tmp_path / "d.jsonl"
    os.mkfifo(data)
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "d.jsonl' is a named pipe, not a regular file" in err and "does not exist" not in err


def _copy(model: Path, directory: Path) -> Path:
    shutil.copytree(model, directory)
    return directory / "model.safetensors"


@pytest.mark.parametrize("prefixed", [True, False], ids=["as-saved", "base-model-keys"])
def test_weights_of_another_shape_fail_before_the_data(prefixed, capsys, tiny_models, articles, tmp_path):
    weights = _copy(tiny_models["gpt2"], tmp_path / "model")
    tensors = load_file(weights)
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(16, 16)  # the config says 32 x 128
    if not prefixed:  # a checkpoint of GPT2Model: transformers adds the prefix as it loads
        tensors = {key.removeprefix("transformer."): tensor for key, tensor in tensors.items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    err = fails(capsys, tiny_run_args(tmp_path / "model", articles, tmp_path / "o", "--methods", "lora"))
    key = "transformer.h.1.mlp.c_fc.weight" if prefixed else "h.1.mlp.c_fc.weight"
    assert f"tensor {key!r} in model.safetensors has shape [16, 16]" in err and "expects [32, 128]" in err
    assert not (tmp_path / "o").exists()  # refused before the output folder, the data or any method


def test_truncated_weights_fail_before_the_data(capsys, tiny_models, articles, tmp_path):
    weights = _copy(tiny_models["gpt2"], tmp_path / "model")
    size = weights.stat().st_size
    with weights.open("r+b") as stream:
        stream.truncate(size - 1000)
    err = fails(capsys, tiny_run_args(tmp_path / "model", articles, tmp_path / "o", "--methods", "lora"))
    assert f"{str(weights)!r} are damaged: the file holds {size - 1000:,} bytes" in err and f"{size:,}" in err
    assert not (tmp_path / "o").exists()
