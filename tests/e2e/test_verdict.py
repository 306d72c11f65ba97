"""The verdict on fixed results: bootstrap intervals against an independent recomputation; the decision rule (a method
made worse is inferior, a copy of full fine-tuning non-inferior at a margin and inconclusive at a finer one, nothing
recommended where nothing beats the bars); verdict.json; several seeds, unpaired fallback, exports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import sacrebleu
from scipy import stats

import peftbench
from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import load_splits
from peftbench.report.analysis import analyse
from peftbench.report.decision import Rule
from peftbench.report.load import load_sections
from peftbench.report.stats import RESAMPLES
from peftbench.report.verdict import judge, verdict_lines
from peftbench.store import records as results
from peftbench.store import rundir
from peftbench.store.records import Efficiency, EpochMetrics, MethodResult, prediction_rows
from peftbench.task.metrics import per_example, score

# 40 real CNN/DailyMail highlights: the references every row is scored against.
EXAMPLES = load_splits(RunConfig(train_size=1, eval_size=1, test_size=40)).test
SIZES = {"full": (1000, 900.0), "lora": (10, 600.0), "ia3": (2, 550.0)}  # trainable parameters, peak memory MiB


def _write(
    comparison,
    method: str,
    predictions: list[str],
    seed: int = 0,
    examples=EXAMPLES,
    contention: dict[str, float] | None = None,
) -> None:
    """A finished method (or reference) with these test predictions, as peftbench run would leave it (contention:
    its efficiency's other_cpu_share)."""
    references = [ex.target for ex in examples]
    means, scores = score(["rouge1", "rouge2", "rougeL", "bleu"], predictions, [[r] for r in references])
    trainable, memory = SIZES.get(method, (0, 0.0))
    config = RunConfig(seed=seed).to_dict() | {"lr": 1e-3, "model_kind": "causal", "prompt_format": "plain"}
    result = MethodResult(method, "tiny", "fixed data", trainable, 1000, config)
    result.test = results.TestMetrics(1.0, means)
    if method in SIZES:
        result.epochs = [EpochMetrics(0, None, 2.0, dict.fromkeys(means, 0.0)), EpochMetrics(1, 1.5, 1.8, means)]
        latency = {"base": 100.0, "unmerged": 110.0, "merged": None if method == "full" else 101.0}
        speed = 100.0 + trainable / 100
        result.efficiency = Efficiency(
            trainable,
            100 * trainable / 1000,
            int(memory * 2**20),
            "peak_rss",
            10.0,
            speed,
            1.0,
            50.0,
            latency,
            32,
            None,
            trainable * 4,
            other_cpu_share=contention,
        )
    directory = (
        rundir.reference_dir(comparison, method)
        if method in rundir.REFERENCES
        else rundir.method_dir(comparison, method)
    )
    directory.path.mkdir(parents=True, exist_ok=True)
    directory.write_predictions(prediction_rows(examples, predictions, scores))
    directory.write_result(result)


def _good(seed: int = 0) -> list[str]:
    """Close to the references: most words kept, one changed per example (varying with the seed)."""
    out = []
    for index, ex in enumerate(EXAMPLES):
        words = ex.target.split()
        words[(index + seed) % len(words)] = "something"
        out.append(" ".join(words))
    return out


def _changed(seed: int, words: int) -> list[str]:
    """Each reference with `words` words replaced at places that vary with the seed: full fine-tuning run again
    (one word), or made worse on purpose (more)."""
    out = []
    for index, ex in enumerate(EXAMPLES):
        text = ex.target.split()
        for word in range(words):
            text[(7 * index + seed + 3 * word) % len(text)] = "something"
        out.append(" ".join(text))
    return out


def _bad(shift: int = 7) -> list[str]:
    """Another example's reference: fluent text that does not summarise this article."""
    return [EXAMPLES[(i + shift) % len(EXAMPLES)].target for i in range(len(EXAMPLES))]


def test_bootstrap_intervals_match_an_independent_recomputation(tmp_path):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _bad())
    resamples = RESAMPLES // 4  # as the product's default would, in a quarter of the time (sacrebleu per resample)
    analysis = analyse(load_sections([tmp_path])[0], resamples)
    references = [ex.target for ex in EXAMPLES]
    for name, predictions in (("full", _good()), ("lora", _bad())):
        rouge = np.array(per_example("rougeL", predictions, [[r] for r in references]))
        direct = stats.bootstrap(
            (rouge,), np.mean, n_resamples=resamples, method="percentile", rng=np.random.default_rng(0)
        ).confidence_interval
        interval = analysis.scores[name]["rougeL"]
        assert interval.value == pytest.approx(rouge.mean(), abs=1e-12)
        assert (interval.low, interval.high) == pytest.approx((direct.low, direct.high), abs=1e-12)

    def corpus_bleu(indices):  # BLEU recomputed as a corpus score on every resample, by sacrebleu itself
        chosen = [int(i) for i in indices]
        return sacrebleu.corpus_bleu([_good()[i] for i in chosen], [[references[i] for i in chosen]]).score

    direct = stats.bootstrap(
        (np.arange(len(references)),),
        corpus_bleu,
        n_resamples=resamples,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    interval = analysis.scores["full"]["bleu"]
    assert (interval.low, interval.high) == pytest.approx((direct.low, direct.high), abs=1e-9)


def _judged(comparison, rule: Rule | None = None):
    """The comparison's verdict and its printed lines (the rule: as the run declared, or as given)."""
    section = load_sections([comparison])[0]
    analysis = analyse(section)
    verdict = judge(section, analysis, rule)
    lines = verdict_lines(section, analysis, verdict)
    assert not any("indistinguishable" in line for line in lines)  # "not shown different" is never "the same"
    return verdict, lines


def _line(lines: list[str], method: str) -> str:
    return next(line for line in lines if line.startswith(f"{method} ("))


def test_a_method_made_worse_on_purpose_is_inferior(tmp_path):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _changed(2, words=2))  # two words lost per summary: about 2 points of ROUGE-L
    _write(tmp_path, "ia3", _good(1))
    _write(tmp_path, "zero-shot", _bad())
    verdict, lines = _judged(tmp_path)
    lora = verdict.method("lora")
    assert lora.eligible and lora.inferior and not lora.non_inferior and lora.decision == "inferior"
    assert lora.vs_comparator.high < -verdict.margin and lora.vs_comparator.claim == "below -0.01"
    assert "inferior to full: it scores below full by more than the margin" in _line(lines, "lora")
    assert verdict.recommended == "ia3" and verdict.reason == "non-inferior"
    assert lines[0].startswith("Answer: ia3: the cheapest method that beats the zero-shot base model")
    assert "(40 test examples, 1 seed; comparator full; margin 1 point = 0.0100 ROUGE-Lsum)" in lines[0]
    assert any("one seed" in line for line in lines) and any("not tuned per method" in line for line in lines)


def test_a_copy_of_full_is_non_inferior_at_a_margin_and_inconclusive_at_a_smaller_one(tmp_path):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _changed(5, words=1))  # full fine-tuning again: one other word changed per summary
    _write(tmp_path, "zero-shot", _bad())
    wide, lines = _judged(tmp_path)  # the run's own margin: 1 point
    assert wide.method("lora").non_inferior and wide.recommended == "lora"
    assert "non-inferior to full: a loss larger than the margin (0.0100) is ruled out" in _line(lines, "lora")
    narrow, lines = _judged(tmp_path, Rule(margin=0.05))  # 0.0005 ROUGE-L: finer than 40 examples can show
    lora = narrow.method("lora")
    assert lora.decision == "inconclusive" and lora.non_inferior is False and lora.inferior is False
    needed = lora.vs_comparator.examples_needed
    assert needed > narrow.examples and f"about {needed:,} test examples would decide it" in _line(lines, "lora")
    assert narrow.recommended == "full" and narrow.reason == "comparator"
    assert "no cheaper method is shown to be as good within the margin (inconclusive: lora, about" in lines[0]


def test_nothing_that_beats_zero_shot_means_no_recommendation(tmp_path):
    for method in ("full", "lora", "ia3", "zero-shot"):
        _write(tmp_path, method, _bad())  # every method generates what the base model does
    verdict, lines = _judged(tmp_path)
    assert verdict.recommended is None and all(m.eligible is False for m in verdict.methods)
    assert {m.decision for m in verdict.methods} == {"comparator", "not eligible"}
    assert lines[0].startswith("Answer: do not fine-tune at this size: no method is shown to beat the zero-shot")


def test_the_majority_class_is_a_bar_to_clear(tmp_path):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _changed(5, words=1))
    _write(tmp_path, "zero-shot", _bad())
    _write(tmp_path, "majority-class", _good())  # a trivial reference that scores as well as the methods
    verdict, lines = _judged(tmp_path)
    assert set(verdict.method("full").bars) == {"zero-shot", "majority-class"}
    assert verdict.method("full").bars["zero-shot"].holds and not verdict.method("full").bars["majority-class"].holds
    assert verdict.recommended is None
    assert "no method is shown to beat the zero-shot base model and the majority class" in lines[0]


def test_one_test_example_gives_no_verdict_instead_of_failing(tmp_path):
    one = EXAMPLES[:1]
    for method in ("full", "lora"):
        _write(tmp_path, method, [ex.target for ex in one], examples=one)
    section = load_sections([tmp_path])[0]
    assert analyse(section) is None
    assert "at least 2 examples" in verdict_lines(section, None, None)[0]


def test_references_are_rows_and_cautions(tmp_path):
    _write(tmp_path, "full", _bad())
    _write(tmp_path, "lora", _bad())
    _write(tmp_path, "lead-3", _good())  # an extractive reference that beats every fine-tuned method
    _write(tmp_path, "zero-shot", _bad())
    section = load_sections([tmp_path])[0]
    assert [runs.label for runs in section.methods] == ["full", "lora", "zero-shot (reference)", "lead-3 (reference)"]
    verdict, lines = _judged(tmp_path)
    assert verdict.rivals == ["lead-3"] and verdict.recommended is None
    assert "But Lead-3 (each source's first three sentences, no model) scores significantly higher" in lines[0]
    assert any(line.startswith("Caution: Lead-3") and "above every fine-tuned method" in line for line in lines)
    assert "not shown to beat the zero-shot base model" in _line(lines, "lora")


def test_timed_phases_on_a_busy_machine_get_a_caution(tmp_path):
    _write(tmp_path, "full", _good(), contention={"training": 0.05, "latency": 0.1, "test_generation": 0.9})
    _write(tmp_path, "lora", _good(), contention={"training": 0.41, "latency": 0.02})
    _write(tmp_path, "ia3", _good(), contention={"training": 0.0, "latency": 0.3})
    busy = [line for line in _judged(tmp_path)[1] if "share of this machine's CPU" in line]
    assert len(busy) == 1 and "lora trained (41%), ia3 had its latency timed (30%):" in busy[0]
    assert "full" not in busy[0]  # its busy phase times nothing the table shows
    quiet = tmp_path / "quiet"
    _write(quiet, "full", _good(), contention={"training": 0.05, "latency": 0.1})
    assert not any("share of this machine's CPU" in line for line in _judged(quiet)[1])


def test_verdict_json_is_what_the_report_prints(tmp_path, capsys):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _good(1))
    _write(tmp_path, "ia3", _bad())
    _write(tmp_path, "zero-shot", _bad(shift=3))
    _write(tmp_path, "lead-3", _bad(shift=5))
    assert main(["report", str(tmp_path)]) == 0
    (saved,) = json.loads((tmp_path / "verdict.json").read_text())["verdicts"]
    report = (tmp_path / "report.md").read_text()
    assert f"**{saved['headline']}**" in report and saved["recommended"] == "lora"
    assert saved["comparator"] == "full" and saved["margin_points"] == 1.0 and saved["examples"] == 40
    assert set(saved["rows"]) == {"full", "lora", "ia3", "zero-shot", "lead-3"}  # references are rows...
    assert [m["method"] for m in saved["methods"]] == ["full", "lora", "ia3"]  # ...but never candidates
    ia3 = next(m for m in saved["methods"] if m["method"] == "ia3")
    assert ia3["decision"] == "not eligible" and ia3["bars"]["zero-shot"]["p_adjusted"] > 0
    # Costs: these records have no latency rounds nor training steps (as older results), so no ratio is claimed; the
    # peak is one reading, stated without a claim.
    assert ia3["costs"]["anchor"] == "full" and ia3["costs"]["peak_over_anchor"] == pytest.approx(550 / 900)
    assert ia3["costs"]["training_speed"] is None and ia3["costs"]["latency_over_base"] == {}
    assert "measured peak training memory 0.61x full's (one reading per seed)" in report
    assert "training speed" not in report and "x the base model's (" not in report
    assert main(["report", str(tmp_path), "--comparator", "lora", "--margin", "0.5"]) == 0
    (saved,) = json.loads((tmp_path / "verdict.json").read_text())["verdicts"]
    assert saved["comparator"] == "lora" and saved["margin"] == pytest.approx(0.005)
    assert main(["report", str(tmp_path), "--comparator", "dora"]) == 2
    assert "--comparator 'dora' did not run for tiny" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--margin", "-1"]) == 2
    assert "--margin must be a number in [0, 100), got -1.0" in capsys.readouterr().err


def test_several_seeds_resample_seeds_crossed_with_examples(tmp_path):
    for seed in (0, 1, 2):
        for method in ("full", "lora"):
            _write(tmp_path / f"seed-{seed}", method, _good(seed) if method == "full" else _bad(), seed=seed)
    analysis = analyse(load_sections([tmp_path])[0])
    assert analysis.seeds == 3 and analysis.paired and "seeds crossed with the test examples" in analysis.note
    full = analysis.scores["full"]["rougeL"]
    per_seed = [np.mean(per_example("rougeL", _good(s), [[ex.target] for ex in EXAMPLES])) for s in (0, 1, 2)]
    assert full.value == pytest.approx(np.mean(per_seed)) and full.low < full.value < full.high
    assert analysis.compare({"rougeL": "full"}, ["lora"])["lora"]["rougeL"].significant


def test_different_test_sets_fall_back_to_unpaired(tmp_path, capsys):
    _write(tmp_path, "full", _good())
    _write(tmp_path, "lora", _bad()[:30], examples=EXAMPLES[:30])  # another test set
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "UNPAIRED" in report and "different test examples" in report
    assert "paired statistics are refused" in report


def test_exports_one_row_per_run_with_provenance(tmp_path, capsys):
    for method in ("full", "lora"):
        _write(tmp_path, method, _good())
    _write(tmp_path, "lead-3", _bad())
    path = rundir.method_dir(tmp_path, "lora").metrics
    metrics = json.loads(path.read_text())
    metrics["provenance"] = {"model": {"sha256": "abc"}, "dataset": {"sha256": "def"}}
    path.write_text(json.dumps(metrics))
    assert main(["report", str(tmp_path), "--format", "csv,json"]) == 0
    printed = capsys.readouterr().out
    assert "results.csv" in printed and "results.jsonl" in printed and "report.md" not in printed
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(row["method"], row["reference"]) for row in rows] == [
        ("full", "False"),
        ("lora", "False"),
        ("lead-3", "True"),
    ]
    lora = next(row for row in rows if row["method"] == "lora")
    assert lora["provenance_model_sha256"] == "abc" and lora["provenance_dataset_sha256"] == "def"
    assert float(lora["test_rougeL"]) == pytest.approx(metrics["test"]["rougeL"])
    assert lora["config_lr"] == "0.001" and lora["efficiency_latency_ms_merged"] == "101.0"
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"] for line in lines] == ["full", "lora", "lead-3"]
    frame = peftbench.load_results(tmp_path)
    assert list(frame["method"]) == ["full", "lora", "lead-3"] and frame["test_rougeL"].notna().all()
    assert main(["report", str(tmp_path), "--format", "pdf"]) == 2
    assert "choose a comma list of md, html, csv, json" in capsys.readouterr().err
