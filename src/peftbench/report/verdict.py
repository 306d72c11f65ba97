"""The verdict in plain sentences, from the decision (decision.py): the headline (the answer and what it rests on), what
each method buys against the comparator and the bars it must clear and what it costs, and the cautions that apply."""

from __future__ import annotations

import statistics

from peftbench.report.analysis import MIN_EXAMPLES, Analysis
from peftbench.report.costs import PARTS, MethodCosts, Ratio, latency_ratios, measured, merged_problem, method_costs
from peftbench.report.decision import INCONCLUSIVE, Comparison, MethodDecision, Rule, Verdict, decide
from peftbench.report.load import MethodRuns, Section
from peftbench.report.selection import EDGES, certainty
from peftbench.report.stats import CONFIDENCE, Interval
from peftbench.report.table import random_weights
from peftbench.store.records import WARM_STEPS, MethodResult
from peftbench.store.rundir import LEAD_3, MAJORITY, ZERO_SHOT
from peftbench.task.metrics import METRICS


def _mean(runs: MethodRuns, value) -> float | None:
    values = [v for v in (value(r) for r in runs.results) if v is not None]
    return statistics.fmean(values) if values else None


def _size(r: MethodResult) -> float | None:
    return r.efficiency.adapter_size_bytes if r.efficiency else None


def _points(x: float) -> str:
    return f"{x:+.4f}" if abs(x) < 1 else f"{x:+.2f}"


def _value(metric: str, x: float) -> str:
    return f"{x:.{METRICS[metric].decimals}f}"


def _span(metric: str, interval: Interval) -> str:
    return f"[{_value(metric, interval.low)}, {_value(metric, interval.high)}]"


def _cost_text(runs: MethodRuns, anchor: MethodRuns | None) -> str:
    """What a method costs: its share of trained parameters, its training against the anchor's, its inference time
    against the base model's (each ratio with its interval, a difference claimed only where that excludes 1), its
    adapter's size and serving many tasks."""
    costs = method_costs(runs, anchor)
    result = runs.results[0]
    parts = [f"trains {100 * result.trainable_params / result.total_params:.3g}% of the parameters"]
    parts += _training_text(costs) + _latency_text(costs)
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


def _training_text(costs: MethodCosts) -> list[str]:
    """Training against the anchor: the steady-state speed ratio with its interval, the training state (counted, so
    any difference is real) and the measured peak (one reading per seed: stated, not claimed)."""
    parts, of = [], f"{costs.anchor}'s"
    speed = costs.speed
    if speed is not None:
        steps = "paired steps" if speed.paired else "steps of both, unpaired: the batches differ"
        said = speed.text(of, f"steady state, {speed.samples:,} {steps}")
        parts.append(f"training speed {said}" if speed.measurable else f"training speed: {said}")
    if costs.state is not None:
        against = f" against {of} {_bytes_text(costs.anchor_state)}" if costs.anchor_state is not None else ""
        parts.append(f"training state {_bytes_text(costs.state)}{against} (weights + gradients + optimizer, counted)")
    if costs.peak_over_anchor is not None:
        parts.append(f"measured peak training memory {costs.peak_over_anchor:.2f}x {of} (one reading per seed)")
    return parts


def _latency_text(costs: MethodCosts) -> list[str]:
    """Inference time over the base model's as deployed (merged where the method merges; then the unmerged figures
    too), prefill and per-token decode; nothing where no latency rounds were recorded (older results)."""
    deployed = costs.latency.get(costs.deployed)
    if not deployed:
        return []
    if costs.deployed != "merged":
        return [f"inference time over the base model's, as trained: {_parts(deployed)}"]
    said = f"inference time over the base model's, merged (as deployed): {_parts(deployed)}"
    if costs.merged_problem:
        said += " (a measurement problem: see the cautions)"
    unmerged = costs.latency.get("unmerged")
    return [said + (f" (unmerged: {_parts(unmerged)})" if unmerged else "")]


def _parts(ratios: dict[str, Ratio]) -> str:
    return ", ".join(f"{PARTS[part]} {ratio.text()}" for part, ratio in ratios.items())


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


_NAMES = {
    ZERO_SHOT: "the zero-shot base model",
    MAJORITY: "the majority class",
    LEAD_3: "Lead-3 (each source's first three sentences, no model)",
}


def _said(name: str) -> str:
    return _NAMES.get(name, name)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _compared(c: Comparison) -> str:
    return f"{_points(c.difference)} [{_points(c.low)}, {_points(c.high)}], adjusted one-sided {_p(c.p_adjusted)}"


def _against_comparator(verdict: Verdict, m: MethodDecision) -> str:
    c = m.vs_comparator
    if c is None:
        return ""
    margin = f"the margin ({_value(verdict.primary, verdict.margin)})"
    if m.non_inferior:
        said = f"non-inferior to {c.to}: a loss larger than {margin} is ruled out"
    elif m.inferior:
        said = f"inferior to {c.to}: it scores below {c.to} by more than {margin}"
    else:
        said = f"inconclusive against {c.to}: a loss larger than {margin} is neither ruled out nor shown"
        if c.examples_needed:
            said += f"; about {c.examples_needed:,} test examples would decide it"
    return f"; {said} ({_compared(c)})"


def _against_bars(m: MethodDecision) -> str:
    parts = []
    for bar, c in m.bars.items():
        needed = f"; about {c.examples_needed:,} test examples would show a gain this size" if c.examples_needed else ""
        parts.append(f"{'beats' if c.holds else 'not shown to beat'} {_said(bar)} ({_compared(c)}{needed})")
    return "; " + "; ".join(parts) if parts else "; not checked against the base model (no zero-shot row)"


def judge(section: Section, analysis: Analysis | None, rule: Rule | None = None) -> Verdict | None:
    """The verdict of one model's comparison under rule (default: the one the run declared), its headline written;
    None where there is none to give (too few per-example scores, or a model with random weights)."""
    if analysis is None or random_weights(section.results):
        return None
    verdict = decide(section, analysis, (rule or Rule()).of(section))
    verdict.headline = headline(verdict)
    return verdict


def verdict_lines(section: Section, analysis: Analysis | None, verdict: Verdict | None) -> list[str]:
    """The verdict in plain sentences: the headline, each method against the comparator and the bars it must clear
    with what it costs, then the cautions that apply."""
    if analysis is None or verdict is None:
        return [
            f"No verdict: it needs per-example test scores on at least {MIN_EXAMPLES} examples (rerun with this "
            "peftbench, or with a larger --test-size)."
        ]
    by_name = {runs.method: runs for runs in section.methods}
    comparator = by_name.get(verdict.comparator) if verdict.comparator_ran else None
    lines = [verdict.headline]
    for m in verdict.methods:
        row = verdict.rows[m.method]
        score = f"{verdict.label} {_value(verdict.primary, row.value)} {_span(verdict.primary, row)}"
        judged = _against_bars(m) + _against_comparator(verdict, m)
        cost = _cost_text(by_name[m.method], comparator if comparator is not by_name[m.method] else None)
        lines.append(f"{m.method} ({m.decision}): {score}{judged}; {cost}{_retention_text(verdict, m)}.")
    return lines + _costs_lines(section, verdict) + _forgetting_lines(verdict) + cautions(section, analysis)


def _costs_lines(section: Section, verdict: Verdict) -> list[str]:
    """How the cost ratios were made, where the results recorded what they come from (not in older results)."""
    if not measured(section.results):
        return []
    training = (
        f"training speed is real tokens per second at steady state (the first {WARM_STEPS} steps of each epoch left "
        f"out), each step paired with {verdict.comparator}'s on the same batch of the same seed; "
        if verdict.comparator_ran
        else ""
    )
    return [
        f"Costs: {training}inference time pairs each latency round's prefill (reading the prompt, making the first "
        "token) and per-token decode with the base model's, timed one after the other in the same process. Brackets "
        f'are {CONFIDENCE:.0%} t-intervals of the ratio; "no measurable difference (within ±x%)": the interval '
        "includes 1 and rules out differences beyond x%. The training state is counted, not sampled; the peak is "
        "one reading per seed."
    ]


def _nats(x: float) -> str:
    return f"{x:+.3f}"


def _retention_text(verdict: Verdict, m: MethodDecision) -> str:
    """What training cost the method: its forgetting (against the base model, and against the comparator) and its
    retention task score against the base model's; empty where neither was measured."""
    parts = []
    if m.retention is not None:
        f, relative = m.retention.forgetting, m.retention.relative
        said = f"forgetting {_nats(f.difference)} nats/token [{_nats(f.low)}, {_nats(f.high)}] ({relative.value:+.1%})"
        said += f" over the base model ({'significant' if f.holds else 'not significant'}, {_p(f.p_adjusted)})"
        c = m.retention.vs_comparator
        if c is not None:
            more = "more" if c.difference > 0 else "less"
            said += f", {abs(c.difference):.3f} {more} than {c.to}'s [{_nats(c.low)}, {_nats(c.high)}]"
        parts.append(said)
    task, c = verdict.retention_task, m.retention_task
    if task is not None and c is not None:
        label = METRICS[task["metric"]].label
        parts.append(
            f"{task['dataset']} {label} {_points(c.difference)} [{_points(c.low)}, {_points(c.high)}] against the "
            f"base model's {_value(task['metric'], task['base'].value)} ({_p(c.p_adjusted)}; no training on it)"
        )
    return "".join(f"; {part}" for part in parts)


def _forgetting_lines(verdict: Verdict) -> list[str]:
    """What forgetting was measured on, and the tie-breaker: methods as good as the answer that forget less."""
    if verdict.retention is None:
        return []
    r, base = verdict.retention, verdict.retention["base_loss"]
    lines = [
        f"Forgetting: the rise in per-token loss (nats) on {r['texts']} held-out texts the task never trains on "
        f"({r['sample']}), where the base model scores {base.value:.3f} [{base.low:.3f}, {base.high:.3f}]; "
        f"intervals over the texts{' crossed with the seeds' if r['seeds'] > 1 else ''}, paired. It informs the "
        "choice; the answer is not weighed by it."
    ]
    if verdict.forgets_less:
        one = len(verdict.forgets_less) == 1
        lines.append(
            f"Tie-breaker: {', '.join(verdict.forgets_less)} {'qualifies' if one else 'qualify'} like "
            f"{verdict.recommended} ({verdict.comparator}, or as good as it within the margin) and "
            f"{'forgets' if one else 'forget'} significantly less than {verdict.recommended}: prefer "
            f"{'it' if one else 'one of them'} where the base model's other abilities matter more than the cost."
        )
    return lines


def _context(verdict: Verdict) -> str:
    seeds = f"{verdict.seeds} seed{'s' if verdict.seeds != 1 else ''}"
    points = f"{verdict.margin_points:g} point{'s' if verdict.margin_points != 1 else ''}"
    return (
        f"({verdict.examples} test examples, {seeds}; comparator {verdict.comparator}; margin {points} = "
        f"{_value(verdict.primary, verdict.margin)} {verdict.label})"
    )


def headline(verdict: Verdict) -> str:
    """The answer in one sentence, with what it rests on: the metric, the test examples, the comparator, the margin."""
    label, comparator, choice = verdict.label, verdict.comparator, verdict.recommended
    bars = (
        " and ".join(_said(bar) for bar in dict.fromkeys(b for m in verdict.methods for b in m.bars))
        or "the base model"
    )
    if choice is None:
        said = f"do not fine-tune at this size: no method is shown to beat {bars} on {label}"
        open_gains = [m for m in verdict.methods if any(c.examples_needed for c in m.bars.values())]
        if open_gains:
            needed = max(c.examples_needed or 0 for m in open_gains for c in m.bars.values())
            said += (
                f" ({', '.join(m.method for m in open_gains)}: a gain estimated, not shown; about {needed:,} test "
                "examples would show one as large as estimated)"
            )
    elif verdict.reason == "comparator":
        said = (
            f"{choice} (the comparator): it beats {bars} on {label}, and no cheaper method is shown to be as good "
            "within the margin"
        )
        undecided = [m for m in verdict.methods if m.decision == INCONCLUSIVE and m.eligible is not False]
        if undecided:
            said += f" (inconclusive: {', '.join(_needed(m) for m in undecided)})"
    elif verdict.reason == "non-inferior":
        c = verdict.method(choice).vs_comparator
        said = (
            f"{choice}: the cheapest method that beats {bars} and is as good as {comparator} within the margin on "
            f"{label}: {_points(c.difference)} [{_points(c.low)}, {_points(c.high)}] against it"
        )
    elif verdict.reason == "no comparator":
        said = (
            f"{choice}: the cheapest method shown to beat {bars} on {label}; whether it is as good as {comparator} "
            f"is not tested ({comparator} did not run)"
        )
    else:
        said = f"{choice}: the cheapest method shown to beat {bars} on {label}; {comparator} (the comparator) is not"
    for rival in verdict.rivals:
        score = _value(verdict.primary, verdict.rows[rival].value)
        said += f". But {_said(rival)} scores significantly higher ({score})"
    return f"Answer: {said} {_context(verdict)}."


def _needed(m: MethodDecision) -> str:
    needed = m.vs_comparator.examples_needed if m.vs_comparator else None
    return f"{m.method}, about {needed:,} test examples would decide" if needed else m.method


def _edge(search: dict | None) -> str | None:
    """Why a search's selection may not be the method's best: a setting at the search's limit, or at an end of the
    points tried (older records: the learning rate at an end of a grid of several)."""
    if not search:
        return None
    if "edges" in search:
        found = [f"{setting} {EDGES[edge]}" for setting, edge in search["edges"].items() if edge != "interior"]
        return "; ".join(found) or None
    rates = {trial["lr"] for trial in search["trials"] if trial["error"] is None}
    if "lr" not in search["settings"] or len(rates) < 2:
        return None
    return "largest" if search["lr"] == max(rates) else "smallest" if search["lr"] == min(rates) else None


def _uncertain(search: dict | None) -> bool:
    """Whether a search's selected trial could not be told apart from its runner-up on validation."""
    sure = certainty(search) if search else None
    return sure is not None and not sure.distinguishable


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


LITERATURE = {
    "rougeLsum": "Published CNN/DailyMail figures are ROUGE-Lsum F1 x 100 (summary-level LCS over sentences split at "
    "line breaks; pyrouge's ROUGE-L) on its 11,490 test articles, e.g. Lead-3 36.6 (See et al., 2017); only the same "
    "metric on comparable articles compares with them."
}


def _trivial_cautions(analysis: Analysis) -> list[str]:
    """A trivial reference (Lead-3, the majority class) that scores above fine-tuned methods, with the tests."""
    primary, notes = analysis.primary, []
    label, trained = METRICS[primary].label, analysis.trained
    for reference in (LEAD_3, MAJORITY):
        if primary not in analysis.scores.get(reference, {}):
            continue
        score = analysis.scores[reference][primary]
        beaten = [n for n in trained if analysis.scores[n][primary].value < score.value]
        if beaten:
            share = "every fine-tuned method" if len(beaten) == len(trained) else ", ".join(beaten)
            below = analysis.compare({primary: reference}, beaten)
            clear = [n for n in beaten if below[n][primary].significant]
            tested = f"significantly above {', '.join(clear)}" if clear else "none of these differences is significant"
            notes.append(
                f"Caution: {_said(reference)} scores {label} {_value(primary, score.value)} {_span(primary, score)}, "
                f"above {share} ({tested})."
            )
    return notes


def _merged_cautions(section: Section) -> list[str]:
    """A merged adapter whose time differs measurably from the base model's: its architecture rules that out, so the
    measurement differs in something besides the weights' values (costs.merged_problem)."""
    notes = []
    for runs in section.trained:
        problem = merged_problem(latency_ratios(runs.results))
        if not problem:
            continue
        whose = ["the base model's"] + ["its"] * (len(problem) - 1)
        pairs = zip(whose, problem.items(), strict=True)
        said = " and ".join(f"{ratio.text()} {who} {PARTS[part]} time" for who, (part, ratio) in pairs)
        faster = {ratio.value < 1 for ratio in problem.values()}
        seeming = "speed-up" if faster == {True} else "slow-down" if faster == {False} else "difference"
        notes.append(
            f"Caution: {runs.method}'s merged copy measured {said}, which its architecture rules out (same weights' "
            f"shapes): a measurement problem (the two copies' tensors lie differently in memory, or the machine's "
            f"state changed within rounds) or chance (a 95% interval misses in 1 run of 20, and each merged copy has "
            f"two), not a {seeming}; rerun on an idle machine."
        )
    return notes


def cautions(section: Section, analysis: Analysis) -> list[str]:
    """What limits the verdict: a trivial reference that scores well, untuned learning rates (or tuned at a grid's
    end), a merged adapter timed unlike its base model, a busy machine, few examples, one seed; and what the
    literature's figures are computed with."""
    primary, notes = analysis.primary, _trivial_cautions(analysis)
    label, trained = METRICS[primary].label, analysis.trained
    configs = [r.config for runs in section.trained for r in runs.results]
    if configs and not any(config.get("search") for config in configs):
        rates = ", ".join(f"{runs.method} {runs.results[0].config['lr']:g}" for runs in section.trained if runs.results)
        notes.append(
            f"Caution: learning rates were not tuned per method ({rates}); a method's ranking may reflect "
            "how well its default suits this task."
        )
    edges = {runs.method: edge for runs in section.trained for edge in {_edge(r.search) for r in runs.results} if edge}
    if edges:
        listed = ", ".join(f"{method} ({edge})" for method, edge in edges.items())
        notes.append(
            f"Caution: the setting selected on validation lies at an end of its grid for {listed}: that "
            "method's best may lie beyond it; raise --search-trials or --search-limit (or widen the grid) to be "
            "sure each method is compared at its best."
        )
    close = [runs.method for runs in section.trained if any(_uncertain(r.search) for r in runs.results)]
    if close:
        notes.append(
            f"Note: the selected trial is not distinguishable from the runner-up on validation for "
            f"{', '.join(close)} (see the search section): its test figure stands for a setting near the best, "
            "and a larger validation split would tell them apart."
        )
    notes += _merged_cautions(section)
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
    if primary in LITERATURE:
        notes.append(f"Note: {LITERATURE[primary]}")
    return notes
