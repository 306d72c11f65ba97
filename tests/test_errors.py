"""Bad input: a clear message naming the bad value and what is valid, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from tests.conftest import QUICK_LATENCY, tiny_run_args


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
    config.write_text("learning_rat: 1e-4\n")  # aliases count as names to suggest
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--config", str(config)))
    assert "'learning_rat'" in err and "did you mean 'learning_rate'?" in err


def test_mixed_precision_on_cpu_is_refused_before_loading(capsys, articles, tmp_path):
    err = _fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, tmp_path / "o", "--precision", "bf16"))
    assert "--precision bf16" in err and "GPU" in err


# ------------------------------------------------------------------------------------- against finished results


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_models, articles):
    """An OUTPUT holding one finished method, and a snapshot of every file in it."""
    output = tmp_path_factory.mktemp("finished") / "out"
    args = tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "1", "--in-process",
                         *QUICK_LATENCY)  # fmt: skip
    assert main(args) == 0
    return output, _snapshot(output)


def _snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


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
    args = tiny_run_args(model, data, output, "--methods", "lora", "--epochs", "1", *QUICK_LATENCY, *flags)
    err = _fails(capsys, args)
    for text in expected:
        assert text in err, (text, err)
    assert _snapshot(output) == before


def test_uninstalled_tracker_names_the_extra(capsys, finished, tiny_models, articles):
    from peftbench.tracking import AVAILABLE

    missing = next((name for name, available in AVAILABLE.items() if not available()), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    output, before = finished
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, output, "--report-to", missing))
    assert f"--report-to {missing}" in err and f"pip install 'peftbench[{missing}]'" in err
    assert _snapshot(output) == before


def test_unwritable_output_is_refused_before_loading(capsys, articles, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _fails(capsys, tiny_run_args(tmp_path / "no-model-needed", articles, blocker / "out"))
    assert "not writable" in err and str(blocker / "out") in err
