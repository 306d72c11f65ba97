"""Forgetting: the base model's loss on held-out text against a plain transformers forward pass; a model trained on
purpose to forget shows significantly more forgetting than one that did not train; the retention task; the report's
figures against an independent recomputation; the tie-breaker; bad retention input refused before any model loads."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.retention import SAMPLES, load_held_out
from peftbench.data.splits import embedded_data_path
from peftbench.report.analysis import analyse
from peftbench.report.forgetting import loss_distributions
from peftbench.report.load import load_sections
from peftbench.report.verdict import judge, verdict_lines
from peftbench.store.rundir import ZERO_SHOT
from tests.helpers import tiny_run_args

RETENTION_TOKENS = 32  # each held-out text's tokens, in the forgetting test


def _metrics(output, method: str) -> dict:
    return json.loads((output / method / "metrics.json").read_text())


def _wikipedia_by_id() -> dict[str, str]:
    """The default retention texts of a summarisation run, by id, read straight from the embedded file."""
    dataset, column, _ = SAMPLES["wikipedia"]
    texts = {}
    for line in embedded_data_path(dataset).read_text().splitlines():
        text = (json.loads(line).get(column) or "").strip()
        if text:
            texts[f"text-{hashlib.sha256(text.encode()).hexdigest()[:12]}"] = text
    return texts


def test_base_retention_loss_matches_a_plain_forward_pass(tiny_gpt2, articles, tmp_path):
    output = tmp_path / "run"
    args = tiny_run_args(tiny_gpt2, articles, output, "--methods", "lora", "--retention-size", "6", "--in-process")
    assert main(args) == 0
    base = _metrics(output, ZERO_SHOT)["retention"]
    assert "Wikipedia" in base["sample"] and len(base["ids"]) == 6
    texts, budget = _wikipedia_by_id(), 48  # tiny_run_args's --max-source-tokens
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    nats, tokens = [], []
    for text_id in base["ids"]:
        ids = torch.tensor([tokenizer(texts[text_id]).input_ids[:budget]])
        with torch.no_grad():
            mean = model(input_ids=ids, labels=ids).loss.item()  # over every token after the first
        nats.append(mean * (ids.shape[1] - 1))
        tokens.append(ids.shape[1] - 1)
    assert base["tokens"] == tokens
    assert base["nats"] == pytest.approx(nats, rel=1e-4)
    assert base["loss"] == pytest.approx(sum(nats) / sum(tokens), rel=1e-4)
    lora = _metrics(output, "lora")["retention"]
    assert lora["ids"] == base["ids"] and lora["base_loss"] == pytest.approx(base["loss"])
    assert lora["forgetting"] == pytest.approx(lora["loss"] - base["loss"])


def _collapse_data(articles, path):
    """The articles with every summary one word repeated: training on them teaches the model to say nothing else."""
    rows = [json.loads(line) for line in articles.read_text().splitlines()]
    path.write_text("".join(json.dumps(row | {"highlights": "zebra zebra zebra zebra"}) + "\n" for row in rows))
    return path


def _knowing(model_dir, texts: list[str], directory, steps: int = 60):
    """A copy of a tiny model trained on texts until it predicts them well: a base model with something to forget
    (one with random weights knows nothing, and any training lowers its loss on any text)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=RETENTION_TOKENS)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_training_to_forget_shows_significantly_more_forgetting_than_not_training(tiny_gpt2, articles, tmp_path):
    data = _collapse_data(articles, tmp_path / "collapse.jsonl")
    texts = load_held_out(RunConfig(retention_size=12)).texts.texts  # the texts the runs will measure on
    base_model = _knowing(tiny_gpt2, texts, tmp_path / "knowing")
    common = ("--methods", "full", "--retention-size", "12", "--max-source-tokens", str(RETENTION_TOKENS))
    common += ("--in-process",)
    forgot, kept = tmp_path / "forgot", tmp_path / "kept"
    assert main(tiny_run_args(base_model, data, forgot, *common, "--lr", "0.02")) == 0
    assert main(tiny_run_args(base_model, data, kept, *common, "--lr", "1e-12")) == 0
    trained, untrained = _metrics(forgot, "full")["retention"], _metrics(kept, "full")["retention"]
    base = _metrics(forgot, ZERO_SHOT)["retention"]
    assert trained["ids"] == untrained["ids"] == base["ids"]  # the same texts: paired
    rows = {name: record for name, record in (("forgot", trained), ("kept", untrained), ("base", base))}
    losses = loss_distributions(
        {name: np.array([r["nats"]]) for name, r in rows.items()},
        {name: np.array([r["tokens"]]) for name, r in rows.items()},
    )
    more = losses["forgot"][1] - losses["kept"][1]
    assert np.percentile(more, 2.5) > 0  # significantly more forgetting, paired over the texts
    assert abs(untrained["forgetting"]) < 1e-4 < trained["forgetting"]
    # The report of the forgetting run says so in its verdict, with the interval.
    section = load_sections([forgot])[0]
    analysis = analyse(section)
    change = analysis.forgetting.differences(["full"])["full"]
    assert change.significant and change.interval.low > 0
    text = "\n".join(verdict_lines(section, analysis, judge(section, analysis)))
    assert "forgetting +" in text and "nats/token" in text and "significant" in text


def test_retention_task_scores_as_its_own_run_would(tiny_gpt2, articles, tmp_path, capsys):
    output, qa = tmp_path / "summaries", tmp_path / "qa"
    extra = ("--methods", "lora", "--retention-size", "6", "--in-process")
    assert main(tiny_run_args(tiny_gpt2, articles, output, *extra, "--retention-task", "embedded-qa")) == 0
    base, lora = _metrics(output, ZERO_SHOT), _metrics(output, "lora")
    task = base["retention_task"]
    assert (task["dataset"], task["task"], task["examples"], task["primary_metric"]) == ("embedded-qa", "qa", 6, "f1")
    assert lora["retention_task"]["base_scores"] == task["scores"]
    rows = [json.loads(line) for line in (output / "lora" / "retention_task.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("Question:" in row["source"] and "f1" in row for row in rows)
    # The same model on the QA data as its own task: the same prompts, answers and scores as its zero-shot row.
    assert (
        main(tiny_run_args(tiny_gpt2, "embedded-qa", qa, "--methods", "lora", "--test-size", "6", "--in-process")) == 0
    )
    own = [json.loads(line) for line in (qa / ZERO_SHOT / "predictions.jsonl").read_text().splitlines()]
    there = [json.loads(line) for line in (output / ZERO_SHOT / "retention_task.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prediction"]) for r in there] == [(r["id"], r["prediction"]) for r in own]
    assert task["scores"]["f1"] == pytest.approx(_metrics(qa, ZERO_SHOT)["test"]["f1"])
    # The verdict carries it, per method, against the base model.
    capsys.readouterr()
    verdict = json.loads((output / "verdict.json").read_text())["verdicts"][0]
    assert verdict["retention_task"]["dataset"] == "embedded-qa" and verdict["retention_task"]["metric"] == "f1"
    change = verdict["methods"][0]["retention_task"]
    assert change["to"] == ZERO_SHOT and change["low"] <= change["difference"] <= change["high"]


def test_retention_none_measures_nothing(tiny_gpt2, articles, tmp_path):
    output = tmp_path / "run"
    assert main(tiny_run_args(tiny_gpt2, articles, output, "--methods", "lora", "--retention", "none")) == 0
    assert _metrics(output, "lora")["retention"] is None and _metrics(output, ZERO_SHOT)["retention"] is None
    assert "forgetting" not in (output / "summary.md").read_text()


def _refused(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("peftbench: error:")
    return err


@pytest.mark.parametrize(
    "content,extra,expected",
    [
        ("\n  \n\n", (), ["0 usable texts", "empty.txt"]),
        (json.dumps({"body": "Some text."}) + "\n", ("--retention-column", "text"), ["'text'", "body"]),
        (json.dumps({"body": "Some text.", "other": "x"}) + "\n", (), ["'text'", "body", "other"]),
        ("One line.\nAnother line.\n", ("--retention-size", "5"), ["--retention-size 5", "2 different texts"]),
    ],
    ids=["no usable text", "missing column", "no default column", "too few texts"],
)
def test_bad_retention_data_is_refused_before_any_model_loads(
    capsys, tiny_gpt2, articles, tmp_path, content, extra, expected
):
    suffix = ".txt" if not content.startswith("{") else ".jsonl"
    data = tmp_path / f"empty{suffix}"
    data.write_text(content)
    output = tmp_path / "o"
    err = _refused(capsys, tiny_run_args(tiny_gpt2, articles, output, "--retention-data", str(data), *extra))
    assert all(part in err for part in expected), err
    assert not output.exists()  # stopped before the zero-shot model (or anything) was written


def test_a_missing_retention_file_is_named_before_any_model_loads(capsys, tiny_gpt2, articles, tmp_path):
    err = _refused(capsys, tiny_run_args(tiny_gpt2, articles, tmp_path / "o", "--retention-data", "missing.txt"))
    assert "missing.txt" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()
