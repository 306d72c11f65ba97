"""Bad input: a clear message naming the bad value and what is valid, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from peftbench.store.rundir import LOCK_FILE
from tests.helpers import fails, tiny_run_args


def test_missing_column_lists_existing_columns(capsys, tiny_models, articles, tmp_path):
    err = fails(
        capsys,
        tiny_run_args(
            tiny_models["gpt2"], articles, tmp_path / "o", "--source-column", "story", "--target-column", "highlights"
        ),
    )
    assert "'story'" in err and "article" in err and "highlights" in err and "id" in err
    assert not (tmp_path / "o").exists()  # the folder this run made, with nothing in it, is gone


def test_unknown_columns_without_names_ask_for_them(capsys, tiny_models, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("body,gist\nan article,a summary\n")  # columns no task preset knows
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "--source-column" in err and "body" in err and "gist" in err


def test_unknown_method_lists_valid_ones(capsys, tiny_models, articles, tmp_path):
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--methods", "lora,qlora9"))
    assert "qlora9" in err and "full" in err and "ia3" in err


def test_unknown_target_lists_candidates(capsys, tiny_models, articles, tmp_path):
    err = fails(
        capsys,
        tiny_run_args(tiny_models["t5"], articles, tmp_path / "o", "--methods", "lora", "--lora-targets", "q_proj"),
    )
    assert "q_proj" in err and "--lora-targets" in err
    assert "q" in err.split("candidates:")[1] and "wo" in err


def test_sizes_larger_than_the_data(capsys, tiny_models, articles, tmp_path):
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--train-size", "5000"))
    assert "--train-size 5000" in err and "train split" in err


def test_malformed_jsonl_names_the_line(capsys, tiny_models, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"article": "a", "highlights": "b"}) + "\n{not json\n")
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], data, tmp_path / "o"))
    assert "line 2" in err


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "-1"), ("--batch-size", "four")])
def test_bad_values_are_named(capsys, tiny_models, articles, tmp_path, flag, value):
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", flag, value))
    assert value in err


# Values that type-check but make no sense: refused with the valid range, before any model loads (there is none).
NONSENSE = {
    "negative clipping": (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number greater than 0, got -1"),
    "zero clipping": (["--max-grad-norm", "0"], "--max-grad-norm must be a finite number greater than 0, got 0.0"),
    "NaN weight decay": (["--weight-decay", "nan"], "--weight-decay must be a finite number at least 0, got nan"),
    "infinite lr": (["--lr", "inf"], "--lr must be a finite number greater than 0, got inf"),
    "dropout 1": (["--lora-dropout", "1"], "--lora-dropout must be a number in [0, 1), got 1.0"),
    "whole number": (["--epochs", "2.5"], "epochs must be of type int, got '2.5'"),
    "YAML key without a value": (["yaml", "epochs:\n"], "epochs has no value"),
    "YAML boolean for a number": (["yaml", "lora_r: yes\n"], "lora_r must be a number, got True"),
    "YAML list for a number": (["yaml", "lr: [1, 2]\n"], "lr must be of type float, got [1, 2]"),
}


@pytest.mark.parametrize("case", list(NONSENSE))
def test_nonsense_values_are_refused_before_loading(case, capsys, articles, tmp_path):
    flags, message = NONSENSE[case]
    if flags[0] == "yaml":
        config = tmp_path / "c.yaml"
        config.write_text(flags[1])
        flags = ["--config", str(config)]
    err = fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, tmp_path / "o", *flags))
    assert message in err, err


def test_unknown_yaml_key_suggests_the_nearest(capsys, tiny_models, articles, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rat: 1e-4\n")  # aliases count as names to suggest
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--config", str(config)))
    assert "'learning_rat'" in err and "did you mean 'learning_rate'?" in err


def test_mixed_precision_on_cpu_is_refused_before_loading(capsys, articles, tmp_path):
    err = fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, tmp_path / "o", "--precision", "bf16"))
    assert "--precision bf16" in err and "GPU" in err


# ------------------------------------------------------------------------------------- against finished results


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_models, articles):
    """An OUTPUT holding one finished method, and a snapshot of every file in it."""
    output = tmp_path_factory.mktemp("finished") / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    return output, _snapshot(output)


def _snapshot(directory) -> dict[str, bytes]:
    """Every file's content but the lock's (each run writes its PID there)."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK_FILE]
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def _write(name: str, content: bytes):
    def make(directory):
        path = directory / name
        path.write_bytes(content)
        return path

    return make


BAD_INPUT = {
    "unknown flag": ([], ["--lora-alfa", "4"], ["unknown flag --lora-alfa", "did you mean --lora-alpha?"]),
    "unknown method": ([], ["--methods", "lora,../evil"], ["unknown method", "../evil", "full"]),
    "too long for the model": ([], ["--max-source-tokens", "600"], ["--max-source-tokens 600", "512 positions"]),
    "prefix leaves no room": (["t5"], ["--max-source-tokens", "3"], ["--max-source-tokens 3", "'summarize: '"]),
    "empty jsonl": ([_write("empty.jsonl", b"")], [], ["empty.jsonl", "holds no rows"]),
    "header-only csv": ([_write("head.csv", b"article,highlights\n")], [], ["head.csv", "holds no rows"]),
    "unreadable file": ([_write("binary.jsonl", b"\xff\xfe\x00\x9c")], [], ["cannot read dataset file", "binary"]),
    "misspelt tracker": ([], ["--report-to", "tensorbord"], ["--report-to 'tensorbord'", "'tensorboard'"]),
    "negative seed list": ([], ["--seeds", "0,-1"], ["--seeds must be non-negative"]),
    "a directory named like a file": (
        [lambda d: (d / "x.jsonl").mkdir() or d / "x.jsonl"],
        [],
        ["x.jsonl", "is a directory"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_keeps_finished_results(case, capsys, finished, tiny_models, articles, tmp_path):
    output, before = finished
    setup, flags, expected = BAD_INPUT[case]
    model, data = tiny_models["gpt2"], articles
    for item in setup:
        if item == "t5":
            model = tiny_models["t5"]
        else:
            data = item(tmp_path)
    args = tiny_run_args(model, data, output, "--methods", "lora", "--epochs", "1", *flags)
    err = fails(capsys, args)
    for text in expected:
        assert text in err, (text, err)
    assert _snapshot(output) == before


def test_uninstalled_tracker_names_the_extra(capsys, finished, tiny_models, articles):
    from peftbench.training.tracking import AVAILABLE

    missing = next((name for name, available in AVAILABLE.items() if not available()), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    output, before = finished
    err = fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, output, "--report-to", missing))
    assert f"--report-to {missing}" in err and f"pip install 'peftbench[{missing}]'" in err
    assert _snapshot(output) == before


def test_unwritable_output_is_refused_before_loading(capsys, articles, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, blocker / "out"))
    assert "not writable" in err and str(blocker / "out") in err


def test_numbers_are_text_and_rows_without_text_are_dropped_and_recorded(capsys, tiny_models, articles, tmp_path):
    rows = [json.loads(line) for line in articles.read_text().splitlines()]
    for row in rows[:10]:
        row["highlights"] = 7  # a numeric label: text "7", not a dropped row
    rows[10]["article"] = None
    rows[11]["highlights"] = None
    del rows[12]["highlights"]
    rows[13]["highlights"] = "   "
    rows[14]["article"] = ["not", "text"]
    rows[15]["article"] = ""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "o"
    args = tiny_run_args(
        tiny_models["gpt2"], data, output, "--methods", "lora", "--epochs", "1", "--in-process", "--train-size", "60"
    )
    assert main(args) == 0  # --quiet: the warning shows all the same
    err = capsys.readouterr().err
    assert "peftbench: warning: 6 of 100 rows (6.0%) of d.jsonl dropped" in err, err
    assert (
        "2 with no 'article'" in err and "1 with 'article' not text (list)" in err and "3 with no 'highlights'" in err
    )
    recorded = json.loads((output / "lora" / "metrics.json").read_text())["data"]
    assert recorded == {
        "rows": 100,
        "dropped": {"no 'article'": 2, "'article' not text (list)": 1, "no 'highlights'": 3},
    }
    from peftbench.config.run_config import RunConfig
    from peftbench.data.splits import load_splits

    splits = load_splits(RunConfig(dataset=str(data), train_size=60, eval_size=1, test_size=1))
    labelled = {f"a{i}" for i in range(10)}
    numeric = [ex.target for ex in splits.train + splits.validation + splits.test if ex.id in labelled]
    assert numeric and set(numeric) == {"7"}
