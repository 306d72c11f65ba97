"""Forgetting in what the report writes, on fixed results with chosen losses: the exports' scalar columns, the model
card's section, the quality-against-forgetting figure and its Pareto front, and the tie-breaker (two methods as good
as full fine-tuning, the cheaper one recommended, the other forgetting significantly less)."""

from __future__ import annotations

import csv
import json

import pytest

from peftbench.cli import main
from peftbench.report.analysis import analyse
from peftbench.report.card import render
from peftbench.report.load import load_sections
from peftbench.report.plots import FORGETTING_AXIS, pareto_sets
from peftbench.report.verdict import judge, verdict_lines
from peftbench.store import rundir
from peftbench.store.records import Retention, TaskRetention
from peftbench.store.rundir import ZERO_SHOT
from peftbench.task.metrics import per_example
from tests.e2e.test_verdict import EXAMPLES, _bad, _changed, _good, _write

SAMPLE = "Wikipedia sentences (fixed for these tests)"
TEXTS, TOKENS = 24, 10  # held-out texts, and the tokens the model predicts in each
IDS = [f"text-{index:03d}" for index in range(TEXTS)]
# Nats per token each method adds to the base model's loss on every text (before the per-text jitter below).
FORGETS = {"full": 0.5, "ia3": 0.2, "lora": 0.05}
TASK_EXAMPLES = EXAMPLES[:20]  # the retention task's examples: stand-ins for questions, scored with F1


def _base_nats() -> list[float]:
    """The base model's summed loss on each text: 2 to 2.5 nats per token, varying over the texts."""
    return [TOKENS * (2.0 + 0.5 * (index % 7) / 7) for index in range(TEXTS)]


def _nats(forgets: float) -> list[float]:
    """A method's summed loss on each text: the base model's plus forgets per token, give or take 0.04 (so that the
    intervals have a width)."""
    return [base + TOKENS * (forgets + 0.02 * ((3 * i) % 5 - 2)) for i, base in enumerate(_base_nats())]


def _loss(nats: list[float]) -> float:
    return sum(nats) / (TOKENS * TEXTS)


def _task_rows(answers: list[str]) -> tuple[list[dict], dict[str, float]]:
    """retention_task.jsonl's rows for these answers, and their mean scores."""
    references = [[ex.target] for ex in TASK_EXAMPLES]
    scores = {m: per_example(m, answers, references) for m in ("exact_match", "f1")}
    rows = [
        {"id": ex.id, "source": ex.source, "reference": ex.target, "prediction": answer}
        | {m: values[i] for m, values in scores.items()}
        for i, (ex, answer) in enumerate(zip(TASK_EXAMPLES, answers, strict=True))
    ]
    return rows, {m: sum(values) / len(values) for m, values in scores.items()}


BASE_ANSWERS = [ex.target for ex in TASK_EXAMPLES]  # the base model answers every question
FORGOT_ANSWERS = [ex.target if i % 2 else "no idea" for i, ex in enumerate(TASK_EXAMPLES)]  # a method lost half


def _directory(comparison, method: str) -> rundir.MethodDir:
    return rundir.reference_dir(comparison, method) if method == ZERO_SHOT else rundir.method_dir(comparison, method)


def _retain(comparison, method: str, forgets: float | None) -> None:
    """Add forgetting to a finished row written by _write: its losses on the held-out texts (forgets None: the base
    model's own), and its retention task scores with the base model's beside them."""
    directory = _directory(comparison, method)
    result = directory.read_result()
    base_loss = _loss(_base_nats())
    nats = _base_nats() if forgets is None else _nats(forgets)
    result.retention = Retention(SAMPLE, IDS, nats, [TOKENS] * TEXTS, None if forgets is None else base_loss)
    rows, scores = _task_rows(BASE_ANSWERS if forgets is None else FORGOT_ANSWERS)
    base_scores = None if forgets is None else _task_rows(BASE_ANSWERS)[1]
    result.retention_task = TaskRetention("embedded-qa", "qa", len(TASK_EXAMPLES), "f1", scores, base_scores)
    directory.write_predictions(rows, retention_task=True)
    directory.write_result(result)


def _comparison(path, forgets: dict[str, float] = FORGETS):
    """full, lora and ia3, lora and ia3 both as good as full within the margin, and the zero-shot base model
    below them; each with forgetting as given."""
    _write(path, "full", _good())
    _write(path, "lora", _changed(5, words=1))
    _write(path, "ia3", _good(1))
    _write(path, "zero-shot", _bad())
    for method, amount in forgets.items():
        _retain(path, method, amount)
    _retain(path, ZERO_SHOT, None)
    return path


def test_exports_hold_forgetting_and_the_retention_task_as_scalars(tmp_path, capsys):
    comparison = _comparison(tmp_path)
    assert main(["report", str(comparison), "--format", "csv,json"]) == 0
    rows = {row["method"]: row for row in map(json.loads, (comparison / "results.jsonl").read_text().splitlines())}
    lora, base = rows["lora"], rows[ZERO_SHOT]
    expected_loss, base_loss = _loss(_nats(FORGETS["lora"])), _loss(_base_nats())
    assert lora["retention_sample"] == SAMPLE and lora["retention_texts"] == TEXTS
    assert lora["retention_loss"] == pytest.approx(expected_loss)
    assert lora["retention_base_loss"] == pytest.approx(base_loss)
    assert lora["forgetting"] == pytest.approx(FORGETS["lora"])  # the jitter sums to zero over the texts
    assert lora["forgetting_relative"] == pytest.approx(FORGETS["lora"] / base_loss)
    assert rows["full"]["forgetting"] == pytest.approx(FORGETS["full"])
    base_f1, forgot_f1 = _task_rows(BASE_ANSWERS)[1]["f1"], _task_rows(FORGOT_ANSWERS)[1]["f1"]
    assert forgot_f1 < base_f1
    assert (lora["retention_task_dataset"], lora["retention_task_task"]) == ("embedded-qa", "qa")
    assert lora["retention_task_f1"] == pytest.approx(forgot_f1)
    assert lora["retention_task_base_f1"] == pytest.approx(base_f1)
    assert lora["retention_task_base_exact_match"] == pytest.approx(1.0)
    # The base model: its own loss, nothing to have forgotten.
    assert base["retention_loss"] == pytest.approx(base_loss) and base["retention_base_loss"] is None
    assert base["forgetting"] is None and base["retention_task_f1"] == pytest.approx(base_f1)
    # Scalars only: no column holds the per-text figures.
    assert not any(isinstance(value, list) or "nats" in key or key.endswith("_ids") for key, value in lora.items())
    header = next(csv.reader((comparison / "results.csv").open()))
    assert {"retention_loss", "forgetting", "forgetting_relative", "retention_task_f1"} <= set(header)
    assert float(next(csv.DictReader((comparison / "results.csv").open()))["forgetting"]) == pytest.approx(0.5)


def test_the_model_card_gives_one_seeds_forgetting(tmp_path):
    comparison = _comparison(tmp_path)
    result = _directory(comparison, "full").read_result()
    card = render(result)
    relative = FORGETS["full"] / _loss(_base_nats())
    assert "## Forgetting" in card
    assert f"Forgetting: +0.5 nats/token ({relative:+.1%})" in card
    assert f"over {TEXTS} held-out texts of {SAMPLE}" in card
    assert f"from the base model's {_loss(_base_nats()):.4g} to {_loss(_nats(0.5)):.4g}" in card
    f1 = _task_rows(FORGOT_ANSWERS)[1]["f1"]
    assert f"embedded-qa (qa, 20 test examples, no training on it): F1 {f1:.4f} against the base model's 1.0000" in card
    assert "One seed's figures (seed 0)" in card and "verdict.json" in card
    result.retention, result.retention_task = None, None
    assert "Forgetting" not in render(result)  # not measured: not mentioned


def _png_width(data: bytes) -> int:
    """A PNG's width in pixels, from its IHDR chunk (the first, right after the 8-byte signature)."""
    assert data.startswith(b"\x89PNG") and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big")


def _pareto(comparison):
    """The report's Markdown and its quality-against-cost figure's width."""
    assert main(["report", str(comparison)]) == 0
    (figure,) = comparison.glob("report_files/*-pareto.png")
    return (comparison / "report.md").read_text(), _png_width(figure.read_bytes())


def test_the_report_sets_quality_against_forgetting(tmp_path, capsys):
    comparison = _comparison(tmp_path / "measured")
    report, width = _pareto(comparison)
    assert "Test ROUGE-Lsum against each cost and against forgetting (the rise in loss per token" in report
    section = load_sections([comparison])[0]
    analysis = analyse(section)
    score = {name: analysis.scores[name]["rougeLsum"].value for name in FORGETS}
    assert score["ia3"] > max(score["lora"], score["full"])  # so: lora forgets least, ia3 scores best, full neither
    assert pareto_sets(section, analysis)[FORGETTING_AXIS] == ["lora", "ia3"]  # the section's order
    assert f"against {FORGETTING_AXIS}: lora, ia3." in report
    assert "forgetting (nats/token)" in report and "embedded-qa F1" in report  # the table's columns
    # Without forgetting measured: no panel (a figure narrower by one panel), no axis, no word of it.
    plain = tmp_path / "plain"
    _write(plain, "full", _good())
    _write(plain, "lora", _changed(5, words=1))
    _write(plain, "ia3", _good(1))
    _write(plain, "zero-shot", _bad())
    report, plain_width = _pareto(plain)
    assert plain_width == pytest.approx(width * 4 / 5, rel=0.02) and "forgetting" not in report
    section = load_sections([plain])[0]
    assert FORGETTING_AXIS not in pareto_sets(section, analyse(section))


def _verdict(comparison):
    section = load_sections([comparison])[0]
    analysis = analyse(section)
    verdict = judge(section, analysis)
    return verdict, verdict_lines(section, analysis, verdict)


def test_a_method_as_good_that_forgets_significantly_less_is_the_tie_breaker(tmp_path, capsys):
    verdict, lines = _verdict(_comparison(tmp_path / "differ"))
    assert verdict.method("lora").non_inferior and verdict.method("ia3").non_inferior
    assert verdict.recommended == "ia3" and verdict.reason == "non-inferior"  # the cheapest: forgetting is no cost
    assert verdict.forgets_less == ["lora"]  # full forgets more than ia3; lora significantly less
    lora = verdict.method("lora").retention
    assert lora.forgetting.difference == pytest.approx(FORGETS["lora"]) and lora.forgetting.holds
    assert lora.vs_comparator.difference == pytest.approx(FORGETS["lora"] - FORGETS["full"])
    tie = [line for line in lines if line.startswith("Tie-breaker:")]
    assert len(tie) == 1 and tie[0].startswith(
        "Tie-breaker: lora qualifies like ia3 (full, or as good as it within the margin) and forgets"
    )
    assert any(line.startswith("Forgetting:") and f"on {TEXTS} held-out texts" in line for line in lines)
    assert main(["report", str(tmp_path / "differ")]) == 0
    (saved,) = json.loads((tmp_path / "differ" / "verdict.json").read_text())["verdicts"]
    assert saved["forgets_less"] == ["lora"] and saved["retention"]["texts"] == TEXTS
    assert saved["retention"]["base_loss"]["value"] == pytest.approx(_loss(_base_nats()))
    assert saved["retention_task"]["dataset"] == "embedded-qa" and saved["retention_task"]["metric"] == "f1"
    ia3 = next(m for m in saved["methods"] if m["method"] == "ia3")
    assert ia3["retention"]["forgetting"]["difference"] == pytest.approx(FORGETS["ia3"])
    assert ia3["retention_task"]["difference"] < 0 and ia3["retention_task"]["holds"]
    # lora forgetting as much as ia3: the same answer, and no tie-breaker to tell.
    same, lines = _verdict(_comparison(tmp_path / "same", FORGETS | {"lora": FORGETS["ia3"]}))
    assert same.recommended == "ia3" and same.forgets_less == []
    assert not any(line.startswith("Tie-breaker:") for line in lines)
