"""Cost ratios with intervals (report.costs) on constructed records, whose answers are known: paired latency rounds
cancel the machine's drift, a model twice as slow reads as 2x with an interval above 1, training steps pair by seed,
index and tokens with the warm steps left out (Welch where nothing pairs), and a merged copy timed unlike its base
model is flagged; then the verdict's wording of them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from peftbench.report import costs, verdict
from peftbench.report.load import MethodRuns, Run, Section
from peftbench.report.stats import CONFIDENCE
from peftbench.store.records import WARM_STEPS, Efficiency, MethodResult

pytestmark = pytest.mark.fast

ROUNDS = 12
# The machine's state drifting over the rounds (a busy neighbour, a frequency change): every model timed in a round
# shares it. Mean-zero noise of each reading around it.
DRIFT = np.linspace(10.0, 20.0, ROUNDS)
NOISE = np.tile([0.02, -0.02, 0.01, -0.01], ROUNDS // 4)


def _efficiency(**fields) -> Efficiency:
    figures = dict(
        trainable_params=10,
        trainable_pct=1.0,
        peak_train_memory_bytes=600 * 2**20,
        memory_measure="peak_rss",
        train_seconds=10.0,
        train_tokens_per_s=100.0,
        train_samples_per_s=1.0,
        eval_generate_tokens_per_s=50.0,
        latency_ms={"base": 100.0, "unmerged": 110.0, "merged": 100.0},
        latency_new_tokens=8,
        merge_check=None,
        adapter_size_bytes=2**20,
    )
    return Efficiency(**(figures | fields))


def _result(method: str, seed: int = 0, **fields) -> MethodResult:
    return MethodResult(method, "tiny", "data", 10, 1000, {"seed": seed}, efficiency=_efficiency(**fields))


def _runs(method: str, *results: MethodResult) -> MethodRuns:
    return MethodRuns(method, [Run(method, r.config["seed"], r.model, r) for r in results])


def _rounds(unmerged: float, merged: float | None = 1.0) -> dict[str, dict[str, list[float]]]:
    """Latency rounds where the unmerged (and merged) model take `unmerged` (`merged`) times the base model's time,
    the same noise around it in every part."""
    base = DRIFT * np.exp(NOISE[::-1])
    models = {"base": base, "unmerged": unmerged * DRIFT * np.exp(NOISE)}
    if merged is not None:
        models["merged"] = merged * DRIFT * np.exp(-NOISE)
    return {part: {name: list(map(float, times)) for name, times in models.items()} for part in costs.PARTS}


# ---------------------------------------------------------------------------------------------- Ratio


def test_ratio_text_claims_only_an_interval_that_excludes_one():
    assert costs.Ratio(1.32, 1.28, 1.36, 10).text() == "1.32x [1.28, 1.36]"
    assert costs.Ratio(0.8, 0.75, 0.85, 10).text("full's", "steady state") == "0.80x full's [0.75, 0.85] (steady state)"
    assert costs.Ratio(1.004, 1.002, 1.006, 10).text() == "1.004x [1.002, 1.006]"  # two places would read 1.00
    same = costs.Ratio(1.0, 0.971, 1.02, 10)
    assert not same.measurable and same.reach == pytest.approx(0.029)
    assert same.text() == "no measurable difference (within ±3%)"
    assert same.text("full's", "8 steps") == "no measurable difference from full's (within ±3%; 8 steps)"
    assert costs.Ratio(1.0, 0.9964, 1.003, 10).text() == "no measurable difference (within ±0.4%)"  # rounded up
    assert costs.Ratio(1.0, 0.97, 1.03, 5).to_json() == {
        "value": 1.0,
        "low": 0.97,
        "high": 1.03,
        "samples": 5,
        "paired": True,
        "measurable": False,
    }


def test_one_sample_ratio_is_scipys_t_interval_of_the_mean_log():
    logs = [0.1, 0.3, 0.2, 0.25, 0.15]
    interval = scipy_stats.t.interval(CONFIDENCE, len(logs) - 1, loc=np.mean(logs), scale=scipy_stats.sem(logs))
    ratio = costs.one_sample_ratio(logs)
    assert ratio.value == pytest.approx(math.exp(np.mean(logs)))
    assert (ratio.low, ratio.high) == pytest.approx(tuple(map(math.exp, interval)))
    assert ratio.samples == 5 and ratio.paired
    assert costs.one_sample_ratio([0.2]) is None  # one sample: no interval
    constant = costs.one_sample_ratio([math.log(2)] * 3)  # no spread: the estimate at both ends
    assert (constant.value, constant.low, constant.high) == pytest.approx((2.0, 2.0, 2.0))


# ---------------------------------------------------------------------------------------------- latency


def test_the_same_model_under_drift_and_noise_shows_no_measurable_difference():
    """Readings that drift 2x over the rounds, with noise: paired by round, the ratio is 1 within a few percent."""
    results = [_result("lora", latency_rounds=_rounds(1.0))]
    for part in costs.PARTS:
        ratio = costs.latency_ratio(results, "unmerged", part)
        assert ratio.value == pytest.approx(1.0) and ratio.samples == ROUNDS
        assert not ratio.measurable and ratio.reach < 0.05
        assert ratio.text().startswith("no measurable difference (within ±")
    # Unpaired, the drift alone (10 to 20 ms) would leave the ratio undecided within ±20%.
    unpaired = costs.two_sample_ratio(*(np.log(DRIFT * np.exp(n)) for n in (NOISE, NOISE[::-1])))
    assert unpaired.reach > 0.2


def test_a_model_twice_as_slow_reads_as_two_with_an_interval_above_one():
    results = [_result("lora", latency_rounds=_rounds(2.0))]
    rounds = results[0].efficiency.latency_rounds["decode_ms"]
    logs = [math.log(m / b) for m, b in zip(rounds["unmerged"], rounds["base"], strict=True)]
    low, high = scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE)
    ratio = costs.latency_ratio(results, "unmerged", "decode_ms")
    assert ratio.measurable and 1.9 < ratio.low < ratio.value < ratio.high < 2.1
    assert ratio.value == pytest.approx(2.0) and (ratio.low, ratio.high) == pytest.approx(
        (math.exp(low), math.exp(high))
    )
    assert ratio.text() == f"{ratio.value:.2f}x [{ratio.low:.2f}, {ratio.high:.2f}]"


def test_rounds_pool_over_seeds_and_older_results_give_none():
    seeds = [_result("lora", seed, latency_rounds=_rounds(1.5)) for seed in (0, 1)]
    ratio = costs.latency_ratio(seeds, "unmerged", "prefill_ms")
    assert ratio.samples == 2 * ROUNDS and ratio.value == pytest.approx(1.5)
    older = [_result("lora")]  # no latency_rounds
    assert costs.latency_ratio(older, "unmerged", "prefill_ms") is None and costs.latency_ratios(older) == {}
    no_merge = costs.latency_ratios([_result("prefix", latency_rounds=_rounds(1.2, merged=None))])
    assert set(no_merge) == {"unmerged"} and set(no_merge["unmerged"]) == set(costs.PARTS)


def test_a_merged_copy_timed_unlike_its_base_model_is_a_measurement_problem():
    same = costs.latency_ratios([_result("lora", latency_rounds=_rounds(1.3, merged=1.0))])
    assert costs.merged_problem(same) == {}  # the unmerged one may differ: its adapter adds work
    faster = costs.latency_ratios([_result("lora", latency_rounds=_rounds(1.3, merged=0.95))])
    problem = costs.merged_problem(faster)
    assert set(problem) == set(costs.PARTS) and all(r.high < 1 for r in problem.values())


# ---------------------------------------------------------------------------------------------- training


def _steps(epochs: list[int], tokens: list[int], seconds: list[float]) -> dict[str, list]:
    return {"epoch": epochs, "tokens": tokens, "seconds": seconds}


EPOCHS = [1] * 6 + [2] * 6  # two epochs of six steps: steps 0, 1, 6 and 7 are warm
TOKENS = [100, 120, 90, 110, 100, 130, 100, 120, 90, 110, 100, 130]
STEADY = [i for i in range(12) if i % 6 >= WARM_STEPS]


def test_throughput_pairs_steady_steps_of_equal_tokens_and_leaves_the_warm_steps_out():
    anchor_seconds = [0.5 + 0.01 * t for t in TOKENS]
    speedup = np.exp(np.tile([0.05, -0.05, 0.03, -0.03], 3))  # noise around 1.5x as fast
    seconds = [a / (1.5 * s) for a, s in zip(anchor_seconds, speedup, strict=True)]
    for warm in (0, 1, 6, 7):
        seconds[warm] *= 20  # cold caches: counted, these would drag the ratio far below 1.5
    tokens = list(TOKENS)
    tokens[9] += 1  # a batch of another size: not the same batch, not paired
    anchor = [_result("full", train_steps=_steps(EPOCHS, TOKENS, anchor_seconds))]
    results = [_result("lora", train_steps=_steps(EPOCHS, tokens, seconds))]
    paired = [i for i in STEADY if i != 9]
    logs = [math.log(anchor_seconds[i] / seconds[i]) for i in paired]
    ratio = costs.throughput_ratio(results, anchor)
    assert ratio.paired and ratio.samples == len(paired) == 7
    assert ratio.value == pytest.approx(math.exp(np.mean(logs))) and ratio.measurable and ratio.low > 1.4
    assert (ratio.low, ratio.high) == pytest.approx(
        tuple(math.exp(x) for x in scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE))
    )
    assert results[0].efficiency.steady_steps() == STEADY


def test_throughput_pairs_by_seed_and_falls_back_to_welch_where_nothing_pairs():
    anchor_seconds = [1.0 + 0.001 * i for i in range(12)]
    seconds = [s / 1.2 for s in anchor_seconds]
    anchor = [_result("full", 1, train_steps=_steps(EPOCHS, TOKENS, anchor_seconds))]
    results = [_result("lora", 0, train_steps=_steps(EPOCHS, TOKENS, seconds))]  # another seed: other batches
    ratio = costs.throughput_ratio(results, anchor)
    per_token = [[math.log(s[i] / TOKENS[i]) for i in STEADY] for s in (anchor_seconds, seconds)]
    low, high = scipy_stats.ttest_ind(*per_token, equal_var=False).confidence_interval(CONFIDENCE)
    assert not ratio.paired and ratio.samples == 2 * len(STEADY)
    assert ratio.value == pytest.approx(1.2)
    assert (ratio.low, ratio.high) == pytest.approx((math.exp(low), math.exp(high)))
    assert costs.throughput_ratio([_result("lora")], anchor) is None  # no steps recorded: nothing to compare


def test_method_costs_account_for_memory_and_compare_training_with_the_anchor():
    account = {"runtime": 500, "weights": 100, "gradients": 2, "optimizer": 4, "rest": 50}
    full_account = {"runtime": 500, "weights": 100, "gradients": 100, "optimizer": 200, "rest": 80}
    steps = _steps(EPOCHS, TOKENS, [1.0] * 12)
    lora = _runs("lora", _result("lora", train_memory=account, train_steps=steps, peak_train_memory_bytes=656))
    full = _runs("full", _result("full", train_memory=full_account, train_steps=steps, peak_train_memory_bytes=980))
    found = costs.method_costs(lora, full)
    assert found.anchor == "full" and found.state == 106 and found.anchor_state == 400
    assert found.memory["peak"] == 656 and found.peak_over_anchor == pytest.approx(656 / 980)
    assert found.steady_steps == len(STEADY) and found.deployed == "merged"
    speeds = [TOKENS[i] / 1.0 for i in STEADY]  # the steady steps' tokens/s, each step one second
    assert found.step_spread == pytest.approx(tuple(np.percentile(speeds, [10, 90])))
    figures = found.to_json()
    assert figures["training_speed"]["value"] == pytest.approx(1.0) and figures["training_speed"]["measurable"] is False
    assert figures["training_state_bytes"] == 106 and figures["merged_problem"] == []
    itself = costs.method_costs(full, full)  # the anchor against itself: nothing to compare
    assert itself.anchor is None and itself.speed is None and itself.peak_over_anchor is None
    assert not costs.measured([_result("lora")]) and costs.measured(lora.results)


# ---------------------------------------------------------------------------------------------- verdict wording


def test_the_verdict_states_ratios_with_intervals_and_flags_a_merged_copy_that_differs():
    anchor_seconds = [0.5 + 0.01 * t for t in TOKENS]
    noise = np.exp(np.tile([0.05, -0.05, 0.03, -0.03], 3))
    seconds = [a / 1.5 / s for a, s in zip(anchor_seconds, noise, strict=True)]
    rounds = _rounds(1.3, merged=1.0) | {"decode_ms": _rounds(1.3, merged=0.95)["decode_ms"]}  # decode only
    lora = _runs("lora", _result("lora", train_steps=_steps(EPOCHS, TOKENS, seconds), latency_rounds=rounds))
    full = _runs("full", _result("full", train_steps=_steps(EPOCHS, TOKENS, anchor_seconds)))
    text = verdict._cost_text(lora, full)
    speed = costs.method_costs(lora, full).speed
    interval = f"{speed.value:.2f}x full's [{speed.low:.2f}, {speed.high:.2f}]"
    assert f"training speed {interval} (steady state, 8 paired steps)" in text
    assert "measured peak training memory 1.00x full's (one reading per seed)" in text
    assert "over the base model's, merged (as deployed): prefill no measurable difference (within ±" in text
    assert "per-token decode 0.95x [0.94, 0.96] (a measurement problem: see the cautions)" in text
    assert "(unmerged: prefill 1.30x [1.27, 1.33], per-token decode 1.30x [1.27, 1.33])" in text
    (caution,) = verdict._merged_cautions(Section("tiny", Path("."), [0], [lora, full]))
    assert caution == (
        "Caution: lora's merged copy measured 0.95x [0.94, 0.96] the base model's per-token decode time, which its "
        "architecture rules out (same weights' shapes): a measurement problem (the two copies' tensors lie "
        "differently in memory, or the machine's state changed within rounds) or chance (a 95% interval misses in 1 "
        "run of 20, and each merged copy has two), not a speed-up; rerun on an idle machine."
    )
    older = verdict._cost_text(_runs("lora", _result("lora")), _runs("full", _result("full")))
    assert "inference time" not in older and "training speed" not in older  # no rounds, no steps: nothing claimed
