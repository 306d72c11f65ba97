"""The verdict in plain sentences, from the analysis: what each method buys against full fine-tuning and what it costs,
which one to use, and the cautions that apply."""

from __future__ import annotations

import statistics

from peftbench.report.analysis import _REFERENCE_NAMES, ANCHOR, MIN_EXAMPLES, Analysis, Difference
from peftbench.report.load import MethodRuns, Section
from peftbench.report.stats import (
    CONFIDENCE,
    Interval,
)
from peftbench.store.records import MethodResult
from peftbench.store.rundir import LEAD_3, ZERO_SHOT
from peftbench.task.metrics import METRICS


def _mean(runs: MethodRuns, value) -> float | None:
    values = [v for v in (value(r) for r in runs.results) if v is not None]
    return statistics.fmean(values) if values else None


def _memory(r: MethodResult) -> float | None:
    return r.efficiency.peak_train_memory_bytes if r.efficiency else None


def _speed(r: MethodResult) -> float | None:
    return r.efficiency.train_tokens_per_s if r.efficiency else None


def _deployed_over_base(r: MethodResult) -> float | None:
    if r.efficiency is None or not r.efficiency.latency_ms.get("base"):
        return None
    latency = r.efficiency.latency_ms
    deployed = latency["merged"] if latency.get("merged") is not None else latency["unmerged"]
    return deployed / latency["base"]


def _size(r: MethodResult) -> float | None:
    return r.efficiency.adapter_size_bytes if r.efficiency else None


def _points(x: float) -> str:
    return f"{x:+.4f}" if abs(x) < 1 else f"{x:+.2f}"


def _value(metric: str, x: float) -> str:
    return f"{x:.{METRICS[metric].decimals}f}"


def _span(metric: str, interval: Interval) -> str:
    return f"[{_value(metric, interval.low)}, {_value(metric, interval.high)}]"


def _difference_text(difference: Difference, other: str) -> str:
    span = f"[{_points(difference.interval.low)}, {_points(difference.interval.high)}]"
    if difference.significant:
        direction = "better" if difference.interval.value > 0 else "worse"
        p = "p < 0.001" if difference.p_holm < 0.001 else f"p = {difference.p_holm:.3f}"
        judged = f"significantly {direction} than {other} (adjusted {p})"
    else:
        judged = f"not significantly different from {other} (adjusted p = {difference.p_holm:.2f})"
    return f"{_points(difference.interval.value)} {span}: {judged}"


def _cost_text(runs: MethodRuns, anchor: MethodRuns | None) -> str:
    """What a method costs, against the anchor's figures where there is one."""
    parts = []
    result = runs.results[0]
    parts.append(f"trains {100 * result.trainable_params / result.total_params:.3g}% of the parameters")
    if anchor is not None and anchor is not runs:
        for label, value, fmt in (("peak training memory", _memory, "{:.2f}x"), ("training speed", _speed, "{:.2f}x")):
            mine, theirs = _mean(runs, value), _mean(anchor, value)
            if mine and theirs:
                parts.append(f"{label} {fmt.format(mine / theirs)} {anchor.method}'s")
    ratio = _mean(runs, _deployed_over_base)
    if ratio:
        parts.append(f"inference latency {ratio:.2f}x the base model's ({'merged' if _merges(runs) else 'as trained'})")
    size = _mean(runs, _size)
    if size:
        parts.append(f"adapter {size / 2**20:,.2f} MiB on disk")
    serving = _shared_base(runs)
    if serving:
        adapters, copies = serving
        parts.append(
            f"for {SERVED_TASKS} tasks one base model with {SERVED_TASKS} adapters holds "
            f"{_bytes_text(adapters)} of weights against {_bytes_text(copies)} for {SERVED_TASKS} fully "
            "fine-tuned copies (derived from the measured sizes)"
        )
    return ", ".join(parts)


SERVED_TASKS = 100  # the verdict's serving figure: one base with this many adapters, against as many full copies


def _shared_base(runs: MethodRuns) -> tuple[int, int] | None:
    """(one base + SERVED_TASKS adapters, SERVED_TASKS full copies) in bytes, for a method served as adapters on a
    shared base (not full fine-tuning), from its first result that measured them."""
    for result in runs.results:
        serving = result.efficiency.serving_bytes(SERVED_TASKS) if result.efficiency else None
        if serving and serving[0] is not None:
            return serving[0], serving[1]
    return None


def _bytes_text(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def _merges(runs: MethodRuns) -> bool:
    return any(r.efficiency and r.efficiency.latency_ms.get("merged") is not None for r in runs.results)


def verdict_lines(section: Section, analysis: Analysis | None) -> list[str]:
    """The verdict in plain sentences: each method against full fine-tuning (or the best method), the
    recommendation, then the cautions that apply."""
    if analysis is None or not analysis.anchor:
        return [
            f"No verdict: it needs per-example test scores on at least {MIN_EXAMPLES} examples (rerun with this "
            "peftbench, or with a larger --test-size)."
        ]
    primary = analysis.primary
    label = METRICS[primary].label
    by_name = {runs.method: runs for runs in section.methods}
    anchor = by_name[analysis.anchor]
    anchor_score = analysis.scores[analysis.anchor][primary]
    vs_anchor = analysis.vs_anchor
    lines = [
        f"{analysis.anchor}: {label} {_value(primary, anchor_score.value)} {_span(primary, anchor_score)}; "
        f"{_cost_text(anchor, None)}."
    ]
    for name in analysis.rows:
        if name == analysis.anchor or by_name[name].reference:
            continue
        score = analysis.scores[name][primary]
        difference = vs_anchor[name][primary]
        compared = _difference_text(difference, analysis.anchor)
        lines.append(
            f"{name}: {label} {_value(primary, score.value)} {_span(primary, score)}, {compared}; "
            f"{_cost_text(by_name[name], anchor)}."
        )
    lines.append(recommendation(section, analysis))
    return lines + cautions(section, analysis)


def recommendation(section: Section, analysis: Analysis) -> str:
    """The cheapest method (by trainable parameters, then training memory) whose primary score is statistically
    indistinguishable from the best method's; or that none matches full fine-tuning."""
    primary = analysis.primary
    label = METRICS[primary].label
    by_name = {runs.method: runs for runs in section.methods}
    matching = analysis.indistinguishable(primary)
    best = analysis.best[primary]
    if analysis.anchor == ANCHOR and matching == [ANCHOR]:
        return (
            f"Recommendation: no method matches full fine-tuning here: every other method's {label} is "
            "significantly below full fine-tuning's."
        )

    def cost(name: str) -> tuple[float, float]:
        return (by_name[name].results[0].trainable_params, _mean(by_name[name], _memory) or float("inf"))

    choice = min(matching, key=cost)
    others = [name for name in matching if name != choice]
    tied = f" (also indistinguishable: {', '.join(others)})" if others else ""
    return (
        f"Recommendation: {choice}: the cheapest method (trainable parameters, then training memory) whose "
        f"{label} is statistically indistinguishable from the best ({best}, "
        f"{_value(primary, analysis.scores[best][primary].value)}){tied}."
    )


def _lr_edge(search: dict | None) -> str | None:
    """ "largest" or "smallest" where a search selected the learning rate at that end of a grid of several."""
    if not search or "lr" not in search["settings"]:
        return None
    rates = {trial["lr"] for trial in search["trials"] if trial["error"] is None}
    if len(rates) < 2:
        return None
    return "largest" if search["lr"] == max(rates) else "smallest" if search["lr"] == min(rates) else None


CONTENDED = 0.25  # other processes' share of the machine's CPU time beyond which a phase's times are not the method's


TIMED_PHASES = {"training": "trained", "latency": "had its latency timed"}  # the phases the table's figures come from


def _contended(section: Section) -> str:
    """Where other processes took more than CONTENDED of the machine's CPU time in a timed phase: "lora trained
    (41%), ia3 had its latency timed (30%)"; empty where none did (or it was not measured)."""
    found = []
    for runs in section.trained:
        for phase, what in TIMED_PHASES.items():
            shares = [(r.efficiency.other_cpu_share or {}).get(phase, 0.0) for r in runs.results if r.efficiency]
            if shares and max(shares) > CONTENDED:
                found.append(f"{runs.method} {what} ({max(shares):.0%})")
    return ", ".join(found)


def cautions(section: Section, analysis: Analysis) -> list[str]:
    """What limits the verdict: references that score well, untuned learning rates (or tuned at a grid's end), few
    examples, one seed."""
    primary, notes = analysis.primary, []
    label = METRICS[primary].label
    trained = [name for name in analysis.rows if name not in _REFERENCE_NAMES]
    for reference, what in (
        (LEAD_3, "Lead-3 (each article's first three sentences, no model)"),
        (ZERO_SHOT, "the zero-shot base model (no fine-tuning)"),
    ):
        if primary not in analysis.scores.get(reference, {}):
            continue
        score = analysis.scores[reference][primary]
        beaten = [n for n in trained if analysis.scores[n][primary].value < score.value]
        if reference == LEAD_3 and beaten:
            share = "every fine-tuned method" if len(beaten) == len(trained) else ", ".join(beaten)
            below = analysis.compare({primary: reference}, beaten)
            clear = [n for n in beaten if below[n][primary].significant]
            tested = f"significantly above {', '.join(clear)}" if clear else "none of these differences is significant"
            notes.append(
                f"Caution: {what} scores {label} {_value(primary, score.value)} {_span(primary, score)}, "
                f"above {share} ({tested})."
            )
        if reference == ZERO_SHOT:
            above = analysis.compare({primary: reference}, trained)
            gains = {n: above[n][primary] for n in trained}
            no_gain = [n for n, gain in gains.items() if not (gain.significant and gain.interval.value > 0)]
            if no_gain:
                notes.append(
                    f"Caution: {', '.join(no_gain)} {'is' if len(no_gain) == 1 else 'are'} not "
                    f"significantly better than {what} ({label} {_value(primary, score.value)})."
                )
    configs = [r.config for runs in section.trained for r in runs.results]
    if configs and not any(config.get("search") for config in configs):
        rates = ", ".join(f"{runs.method} {runs.results[0].config['lr']:g}" for runs in section.trained if runs.results)
        notes.append(
            f"Caution: learning rates were not tuned per method ({rates}); a method's ranking may reflect "
            "how well its default suits this task."
        )
    edges = {
        runs.method: edge for runs in section.trained for edge in {_lr_edge(r.search) for r in runs.results} if edge
    }
    if edges:
        listed = ", ".join(f"{method} ({edge})" for method, edge in edges.items())
        notes.append(
            f"Caution: the learning rate selected on validation lies at an end of its grid for {listed}: "
            "that method's best may lie beyond it; widen --lr-grid to be sure each method is compared at "
            "its best."
        )
    busy = _contended(section)
    if busy:
        notes.append(
            f"Caution: other processes used a large share of this machine's CPU time while {busy}: those "
            "speed and latency figures are inflated by the contention; measure them on an idle machine."
        )
    widths = [analysis.scores[name][primary].width for name in trained]
    if widths:
        width = statistics.median(widths)
        points = width if METRICS[primary].corpus else 100 * width  # 0-1 scores read as points out of 100
        notes.append(
            f"Caution: {analysis.examples} test examples: a method's {CONFIDENCE:.0%} interval of {label} is "
            f"about {points:.1f} points wide ({_value(primary, width)} on its own scale); smaller "
            "differences cannot be told apart here. Raise --test-size to narrow it."
        )
    if analysis.seeds < 2:
        notes.append(
            "Caution: one seed: the intervals cover the test set's sampling noise, not the training noise "
            "between seeds; run with --seeds 0,1,2 to include it."
        )
    if not analysis.paired:
        notes.append("Caution: the rows were scored on different test examples: differences are unpaired.")
    return notes
