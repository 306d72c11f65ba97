"""The report's content as document blocks (document.py renders them): per model a header, the verdict, the results
table, the costs with intervals, serving, figures, the search, examples and learning curves."""

from __future__ import annotations

from datetime import datetime

from peftbench.methods.registry import METHODS
from peftbench.report.analysis import Analysis
from peftbench.report.costs import ACCOUNT, MODELS, PARTS, MethodCosts, measured, method_costs
from peftbench.report.decision import DEFAULT_COMPARATOR, Rule, Verdict
from peftbench.report.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
)
from peftbench.report.load import MethodRuns, Run, Section
from peftbench.report.plots import (
    pareto_sets,
    plot_epochs,
    plot_pareto,
    plot_phases,
    plot_scores,
    plot_sensitivity,
    searches,
    select_label,
)
from peftbench.report.selection import EDGES, certainty
from peftbench.report.stats import CONFIDENCE
from peftbench.report.table import (
    MEANINGLESS,
    NO_DIFFERENCE,
    failures,
    random_weights,
    results_tables,
    several_seeds,
    sig,
)
from peftbench.report.verdict import verdict_lines
from peftbench.store.records import RANDOM_WEIGHTS, WARM_STEPS, Efficiency, MethodResult
from peftbench.task.metrics import METRICS

EXAMPLES = 3


SOURCE_EXCERPT = 300  # characters of each example's article shown


def _predictions(run: Run | None) -> dict[str, dict]:
    rows = run.directory.read_predictions() if run and run.directory else []
    return {row["id"]: row for row in rows}


def examples_table(section: Section, count: int = EXAMPLES) -> Table | None:
    """The first test examples: source excerpt, reference and each method's prediction, side by side."""
    predictions = {runs.label: _predictions(runs.first) for runs in section.methods}
    rows = next((rows for rows in predictions.values() if rows), {})
    table = Table(["source (excerpt)", "reference", *predictions], [], prose=True)
    for row in list(rows.values())[:count]:
        source = row["source"] if len(row["source"]) <= SOURCE_EXCERPT else row["source"][:SOURCE_EXCERPT] + "…"
        outputs = [by_id.get(row["id"], {}).get("prediction", "-") for by_id in predictions.values()]
        table.rows.append([source, row["reference"], *outputs])
    return table if table.rows else None


def _dates(results: list[MethodResult]) -> str:
    dates = sorted(r.environment["date"] for r in results if r.environment and r.environment.get("date"))
    return "not recorded" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"


def _hardware(env: dict | None) -> str:
    if not env:
        return "not recorded (results written before peftbench recorded it)"
    gpu = env.get("cuda_device") or "no GPU"
    processes = env.get("processes", 1)
    launched = f", {processes} processes (DDP)" if processes > 1 else ""
    return f"{env.get('platform')}, {env.get('cpu_count')} CPUs, {gpu}{launched}"


def _libraries(env: dict | None) -> str:
    if not env:
        return "not recorded"
    return ", ".join(
        f"{name} {env.get(name, '?')}" for name in ("python", "torch", "transformers", "peft", "accelerate")
    )


def _outcome(trial: dict, selected: str) -> str:
    if trial["error"]:
        return f"failed: {trial['error']}"
    if trial["stopped_after"] is not None:
        return f"stopped after epoch {trial['stopped_after']} (halving)"
    return "selected: tested" if trial["name"] == selected else "trained, not selected"


def search_table(section: Section) -> Table:
    """Every trial of every searched method (first finished seed): its settings, last validation and outcome."""
    metrics = next(run.result.metrics for _, run in searches(section))
    table = Table(
        [
            "method",
            "trial",
            "lr",
            "rank",
            "epochs",
            "val loss",
            *(f"val {METRICS[m].label}" for m in metrics),
            "outcome",
        ],
        [],
    )
    for runs, run in searches(section):
        search = run.result.search
        for trial in search["trials"]:
            last = trial["epochs"][-1] if trial["epochs"] else {}
            scores = [_score(m, last.get(m)) for m in metrics]
            table.rows.append(
                [
                    runs.method,
                    trial["name"],
                    f"{trial['lr']:g}",
                    _value(trial["lora_r"] or "-"),
                    str(last.get("epoch", "-")),
                    _score("val_loss", last.get("val_loss")),
                    *scores,
                    _outcome(trial, search["selected"]),
                ]
            )
    return table


def _score(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "val_loss" else f"{value:.{METRICS[metric].decimals}f}"


def search_blocks(section: Section, stem: str) -> list[Block]:
    """The search's section: what was searched and how chosen, what each method's search cost and how sure its
    selection is, the sensitivity plot and every trial."""
    searched = searches(section)
    if not searched:
        return []
    search = searched[0][1].result.search
    seeds = {run.seed for _, run in searched}
    shown = f" (seed {min(seeds)}; each seed searched on its own)" if len(section.seeds) > 1 else ""
    halving = (
        "; successive halving: every trial trained one epoch, on which the grid was shaped, then after each epoch "
        "a third of the trials (at least two) went on"
        if search["halving"]
        else ""
    )
    return [
        Heading(3, "Search"),
        Paragraph(
            f"Each method's search ({', '.join(search['settings'])}) started from a log-spaced grid around its own "
            "value, went a step past its best trial while that lay at an end of the points tried (up to the "
            "search's limit), then placed its remaining trials between the best and its better neighbour; every "
            f"method got the same number of trials. The one with the best {select_label(search['select_by'])} "
            f"after the last epoch was selected and alone evaluated on the test split{halving}{shown}."
        ),
        Bullets([_search_summary(runs.method, run.result.search) for runs, run in searched]),
        Figure(
            f"{stem}-sensitivity.png",
            plot_sensitivity(section),
            f"{select_label(search['select_by'])} against learning rate, per method (and rank): on the epoch the "
            "grid was shaped on (circles) and, for the trials that went on, after the last (squares); ringed: the "
            f"selected trial. Bars: each figure's own {CONFIDENCE:.0%} interval over the validation examples; trials "
            "are compared paired, on the same examples, which is much tighter (above)",
        ),
        search_table(section),
    ]


def _search_summary(method: str, search: dict) -> str:
    """One method's search in a sentence: its trials and cost, where the selection lies and how sure it is."""
    if "plan" not in search:  # a record of an earlier version: its trials alone
        return f"{method}: {_plural(len(search['trials']), 'trial')}, selected {search['selected']}"
    minutes = (search["trial_seconds"] + search["finish_seconds"]) / 60
    where = "; ".join(
        f"{setting} {EDGES[edge]}" + ("" if edge == "interior" else ": the best may lie beyond it")
        for setting, edge in search["edges"].items()
    )
    text = (
        f"{method}: {_plural(len(search['trials']), 'trial')} ({search['trial_epochs']} trial-epochs; "
        f"{minutes:.1f} min with the selected trial's test), selected {search['selected']}: {where}"
    )
    sure = certainty(search)
    if sure is None:
        return text + "."
    gap = sure.difference
    judged = "distinguishable" if sure.distinguishable else "not distinguishable: either could be the better one"
    return (
        f"{text}. Against the runner-up {sure.runner_up.name}: {gap.value:+.4f} ({CONFIDENCE:.0%} interval "
        f"{gap.low:+.4f} to {gap.high:+.4f}, p = {sure.p:.2f}) on {sure.examples} validation examples, {judged}."
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _hyperparameters(section: Section) -> str:
    """The training budget the methods share, from the first method's recorded config."""
    config = next(r for runs in section.trained for r in runs.results).config
    return (
        f"{_plural(config['epochs'], 'epoch')}, batch size {config['batch_size']}, gradient accumulation "
        f"{config['grad_accum']}, warmup {config['warmup_ratio']:g}, weight decay {config['weight_decay']:g}, "
        f"clipping {config['max_grad_norm']:g}; tokens: source {config['max_source_tokens']}, target "
        f"{config['max_target_tokens']}, generated {config['max_new_tokens']} "
        f"({_plural(config['num_beams'], 'beam')}); precision {config.get('compute_precision', config['precision'])}; "
        f"prompt format: {config.get('prompt_format', 'plain')}"
        + (f"; base quantized to {config['quantize']}" if config.get("quantize") else "")
    )


def _value(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_settings(result: MethodResult) -> str:
    """What one method actually trained with, from its recorded config: learning rate, its own settings (the
    registry's list for it), its module options (targets, feed-forward modules) and the peft fields given by name
    (--method-args), which take precedence over the settings."""
    config, method = result.config, METHODS.get(result.method)
    names = list(method.settings) if method else []
    names += [key for key in config if key.startswith(f"{result.method}_") and key not in names]
    shown = [f"lr {config['lr']:g}"] + [f"{name} {_value(config[name])}" for name in names if name in config]
    given = (config.get("method_args") or {}).get(result.method, {})
    shown += [f"peft {field}={_value(value)}" for field, value in given.items()]
    return ", ".join(shown)


def header(section: Section) -> Bullets:
    """Model, data, split sizes, hyperparameters, seeds, hardware, libraries and dates of one section."""
    results = [result for runs in section.trained for result in runs.results]
    if not results:
        return Bullets([f"Output: {section.output}", "No method finished: nothing to describe."])
    first, config = results[0], results[0].config
    env = next((r.environment for r in results if r.environment), None)
    memory = first.efficiency.memory_measure if first.efficiency else "not recorded"
    seeds = ", ".join(map(str, section.seeds)) or "unknown"
    weights = f"; {RANDOM_WEIGHTS}" if first.random_weights else ""
    return Bullets(
        [
            f"Model: {first.model} ({config.get('model_kind', '?')}, {first.total_params:,} parameters{weights})",
            f"Data: {first.dataset}; {config['train_size']} train / {config['eval_size']} validation / "
            f"{config['test_size']} test examples",
            f"Hyperparameters: {_hyperparameters(section)}",
            "Methods: "
            + "; ".join(
                f"{runs.method}: {method_settings(runs.results[0])}" for runs in section.trained if runs.results
            ),
            f"Seeds: {seeds}",
            f"Hardware: {_hardware(env)}; training memory measured as {memory}",
            f"Libraries: {_libraries(env)}",
            f"Run date: {_dates(results)}",
            f"Output: {section.output}",
        ]
    )


def how_to_read(several_seeds: bool) -> Paragraph:
    over = "over seeds and test examples" if several_seeds else "over test examples"
    spread = (
        "Other cells are the mean ± the half-width of the 95% t-interval over seeds; they are compared with "
        "paired t-tests over seeds (Holm-adjusted)."
        if several_seeds
        else "Other cells are one run's measurement: counts and sizes are exact and compared as they are; memory, "
        "speed, latency and losses vary between runs, and with one seed their cell in the 'best' row is blank: "
        "one reading cannot be tested (run with --seeds 0,1,2 to test them)."
    )
    return Paragraph(
        "Two tables: quality (the primary metric first) and costs. "
        f"Test-metric cells are the score and its 95% bootstrap interval {over} (paired: every row resampled "
        "on the same examples). A column's best value is in bold, and named in the 'best' row, only when a test says "
        f"it beats every other method (Holm-adjusted p < 0.05); otherwise the row says '{NO_DIFFERENCE}' and lists "
        f"the methods it cannot tell apart (which is not a claim that they are as good: the verdict's margin decides "
        f"that). {spread} Reference rows (zero-shot base model, Lead-3, majority class) train nothing and are never "
        "ranked."
    )


def costs_blocks(section: Section, comparator: str) -> list[Block]:
    """The cost ratios with their intervals (costs.py), one row per trained method: training speed against the
    comparator's, inference time against the base model's, and the training memory account; none where no result
    recorded what they come from (older results)."""
    if not measured(section.results):
        return []
    trained = [runs for runs in section.trained if runs.results]
    anchor = next((runs for runs in trained if runs.method == comparator), None)
    figures = [method_costs(runs, anchor) for runs in trained]
    speeds = Table(
        ["method", f"training speed over {comparator}'s", "steady tokens/s (steps)"]
        + [f"{model} {PARTS[part]} over base" for model in MODELS for part in PARTS],
        [[c.method, _speed_cell(c, comparator), _steady_cell(c), *_latency_cells(c)] for c in figures],
    )
    memory = Table(
        ["method", *(f"{part} (MiB)" for part in ACCOUNT), "peak (MiB)"],
        [[c.method, *_memory_cells(c.memory)] for c in figures],
    )
    return [Heading(3, "Costs with intervals"), speeds, memory, *_inference_memory(trained), _costs_note(comparator)]


INFERENCE_COLUMNS = ["method", "model", "weights (MiB)", "generation (MiB)", "weights + generation (MiB)", "peak (MiB)"]


def _inference_memory(trained: list[MethodRuns]) -> list[Table]:
    """Inference memory, accounted as training's is: per method and model, the weights it holds, its generation's
    own working memory (the window's increase: activations, KV cache), their sum (what serving it alone needs beyond
    the runtime) and the process's peak (everything it held: runtime, training state, the other models); one seed's
    reading, the first result that measured it."""
    rows = []
    for runs in trained:
        memory = next(
            (r.efficiency.inference_memory for r in runs.results if r.efficiency and r.efficiency.inference_memory),
            None,
        )
        for model, used in (memory or {}).items():
            if used and used.get("increase_bytes") is not None:
                parts = (used["weights_bytes"], used["increase_bytes"], used["weights_bytes"] + used["increase_bytes"])
                rows.append([runs.method, model, *(sig(b / 2**20) for b in (*parts, used["peak_bytes"]))])
    return [Table(INFERENCE_COLUMNS, rows)] if rows else []


def _comparator(section: Section) -> str:
    """The comparator the run declared (where there is no verdict to name it: a model with random weights)."""
    return Rule().of(section).comparator or DEFAULT_COMPARATOR


def _speed_cell(costs: MethodCosts, comparator: str) -> str:
    if costs.speed is None:
        return "(the comparator)" if costs.method == comparator else "-"
    return costs.speed.text(note=f"{costs.speed.samples:,} {'paired' if costs.speed.paired else 'unpaired'} steps")


def _steady_cell(costs: MethodCosts) -> str:
    if costs.steady_tokens_per_s is None:
        return "-"
    spread = f"; 10-90% of steps {sig(costs.step_spread[0])}-{sig(costs.step_spread[1])}" if costs.step_spread else ""
    return f"{sig(costs.steady_tokens_per_s)} ({_plural(costs.steady_steps, 'step')}{spread})"


def _latency_cells(costs: MethodCosts) -> list[str]:
    """Each model's (MODELS) time over the base model's, per part, with its rounds; the merged copy's flagged where
    it differs measurably (costs.merged_problem)."""
    cells = []
    for model in MODELS:
        for part in PARTS:
            ratio = costs.latency.get(model, {}).get(part)
            flagged = "; a measurement problem" if model == "merged" and part in costs.merged_problem else ""
            cells.append(ratio.text(note=f"{_plural(ratio.samples, 'round')}{flagged}") if ratio else "-")
    return cells


def _memory_cells(account: dict[str, float] | None) -> list[str]:
    return [sig(account[part] / 2**20) if account else "-" for part in (*ACCOUNT, "peak")]


def _costs_note(comparator: str) -> Paragraph:
    return Paragraph(
        "How these were made. In each method's own process, after training, the base model (a fresh load of the "
        "same pretrained weights), the trained model unmerged and its merged copy were timed in rounds, one after "
        "another on the same prompt in each round (the order rotating), so that a round's readings share the "
        "machine's state: each ratio over the base model is the geometric mean of the rounds' ratios (pooled over "
        f"seeds) with the {CONFIDENCE:.0%} t-interval of its mean log, prefill (reading the prompt and making the "
        "first token) and per-token decode apart. Training speed is real tokens per second at steady state (the "
        f"first {WARM_STEPS} steps of each epoch left out); each step is paired with {comparator}'s on the same "
        "batch of the same seed (unpaired, Welch's interval, where the batches differ). A difference is claimed "
        'only where the interval excludes 1; "no measurable difference (within ±x%)" means it includes 1 and '
        "rules out differences beyond x%. A merged copy has the base model's architecture, so its ratio cannot "
        "differ from 1: where it does, the measurement differs in something besides the weights (where the copies "
        "lie in memory, the machine's state within rounds). The memory account adds up to the "
        "peak: weights, gradients and optimizer are counted from the model and the optimizer (exact); runtime is "
        "what the process held before it loaded the model (on a CPU the interpreter and libraries, on a GPU "
        "nothing); rest is everything else at the peak (activations, the data, caches, the allocator's held "
        "memory). On a CPU the peak is the process's resident memory (RSS), one reading per seed. Inference memory, "
        "per model, over one generation of the first latency prompt after a forward pass (one seed's reading): the "
        "weights it holds, the generation's own working memory (activations, KV cache: how far the process's "
        "memory rose in a fresh window), their sum (what serving that model alone needs beyond the runtime) and "
        "the process's peak (everything it held, the training state and the other models included)."
    )


def _pareto_text(section: Section, analysis: Analysis) -> Paragraph:
    fronts = pareto_sets(section, analysis)
    listed = "; ".join(f"against {label}: {', '.join(methods) or '-'}" for label, methods in fronts.items())
    label = METRICS[analysis.primary].label
    return Paragraph(
        f"Pareto-optimal (on the point values of test {label}; no other method is cheaper and at least as good; the "
        f"intervals show which of these differences are noise) {listed}."
    )


def _pareto_caption(analysis: Analysis) -> str:
    """The Pareto figure's caption: each cost, and where it was measured forgetting, whose interval is another kind."""
    label = METRICS[analysis.primary].label
    if analysis.forgetting is None:
        return (
            f"Test {label} against each cost; vertical bars: 95% bootstrap intervals; horizontal bars: 95% intervals "
            "over seeds"
        )
    return (
        f"Test {label} against each cost and against forgetting (the rise in loss per token on held-out text over the "
        "base model's, at x = 0; lower is better, as for a cost); vertical bars: 95% bootstrap intervals; horizontal "
        "bars: 95% intervals over seeds, for forgetting its paired bootstrap interval over the held-out texts (and "
        "seeds)"
    )


def random_note(results: list[MethodResult]) -> Paragraph | None:
    """What a model with random weights can tell, where one is in the table."""
    if not random_weights(results):
        return None
    return Paragraph(
        f"{MEANINGLESS}: {RANDOM_WEIGHTS}. A model given by its config alone starts from random weights, so its "
        "speed, memory and size figures are real, while its loss and task metrics mean nothing and are not shown."
    )


SERVING_TASKS = (1, 10, 100)


def _serving_sizes(runs: MethodRuns) -> Efficiency | None:
    """The efficiency record of the first of runs' results that measured the sizes serving is derived from."""
    return next((r.efficiency for r in runs.results if r.efficiency and r.efficiency.serving_bytes(1)), None)


def serving_blocks(section: Section) -> list[Block]:
    """Serving N tasks, derived from the measured sizes in memory (Efficiency.serving_bytes): one base model with N
    adapters against N fully fine-tuned copies, for N in SERVING_TASKS; none where no method measured them."""
    measured = {runs.method: sizes for runs in section.trained if (sizes := _serving_sizes(runs))}
    if not measured:
        return []
    copies = [next(iter(measured.values())).serving_bytes(n)[1] for n in SERVING_TASKS]
    header = ["method", "served as", *(f"{_plural(n, 'task')} (MiB)" for n in SERVING_TASKS)]
    table = Table(header, [["full fine-tuning", "N fine-tuned copies", *(sig(c / 2**20) for c in copies)]])
    for method, sizes in measured.items():
        if sizes.adapter_memory_bytes is None:  # full fine-tuning: the copies row
            continue
        shared = [sizes.serving_bytes(n)[0] for n in SERVING_TASKS]
        cells = [f"{sig(s / 2**20)} ({s / c:.1%})" for s, c in zip(shared, copies, strict=True)]
        table.rows.append([method, "one base + N adapters", *cells])
    return [
        Heading(3, "Serving N tasks (derived)"),
        table,
        Paragraph(
            "Derived, not measured as such: the weights held in memory to serve N tasks, from the measured sizes: "
            "N fully fine-tuned copies of the base model's parameters and "
            "buffers, against one base model plus the memory the first and each further loaded adapter added to it "
            "(in parentheses: the share of the N copies). Adapters on a shared base run unmerged (their latency is "
            "the unmerged one) or are merged and unmerged at each switch (the merge + unmerge time). The working "
            "memory of each request (activations, KV cache) comes on top of both."
        ),
    ]


def verdict_blocks(section: Section, analysis: Analysis | None, verdict: Verdict | None) -> list[Block]:
    """The verdict: the headline, then one bullet per method and caution, and how its figures were computed; none for
    random weights."""
    if random_weights(section.results):
        return [Paragraph(f"No verdict: {RANDOM_WEIGHTS} (the model was given by its config alone).")]
    lines = verdict_lines(section, analysis, verdict)
    blocks: list[Block] = [Paragraph(lines[0], strong=True), Bullets(lines[1:])] if verdict else [Bullets(lines)]
    return blocks + ([Paragraph(analysis.note)] if analysis is not None else [])


def section_blocks(section: Section, analysis: Analysis | None, verdict: Verdict | None, index: int) -> list[Block]:
    """Everything about one model: the verdict and the results tables first (the answer and its evidence), then the
    setup, failures, serving, scores, curves, trade-offs and examples."""
    several = several_seeds([section])
    blocks: list[Block] = [
        Heading(2, f"Model: {section.model}"),
        Heading(3, "Verdict"),
        *verdict_blocks(section, analysis, verdict),
        Heading(3, "Results"),
    ]
    rows = [([runs.method], runs) for runs in section.methods]
    blocks += results_tables(rows, ["method"], several, analysis)
    blocks += filter(None, [random_note(section.results)])
    blocks += costs_blocks(section, verdict.comparator if verdict else _comparator(section))
    blocks += [Heading(3, "Setup"), header(section)]
    blocks += serving_blocks(section)
    missing = failures(section)
    if missing:
        blocks += [Paragraph("Failed or missing runs (left out of the figures above):"), Bullets(missing)]
    if not section.results:
        return blocks
    stem = f"{index}-{''.join(ch if ch.isalnum() else '-' for ch in section.label)[:40]}"
    bars = "; error bars: 95% confidence intervals over seeds" if several else ""
    first = next((r for runs in section.trained for r in runs.results), None)
    metrics = [first.primary_metric, *(m for m in first.metrics if m != first.primary_metric)] if first else []
    blocks += [
        Heading(3, "Per-epoch scores"),
        Figure(
            f"{stem}-epochs.png",
            plot_epochs(section, metrics),
            f"Validation scores against epoch (0: before training){bars}",
        ),
    ]
    phases = plot_phases(section)
    if phases is not None:
        blocks += [
            Heading(3, "Where the time went"),
            Figure(
                f"{stem}-phases.png",
                phases,
                "Each method's wall time by phase (metrics.json's "
                "efficiency.phase_seconds); the mark is its wall time. The zero-shot evaluation, shared "
                "by all methods, is not in any of them",
            ),
        ]
    if analysis is not None and not random_weights(section.results):  # random weights: no quality to show
        label = METRICS[analysis.primary].label
        blocks += [
            Heading(3, f"Test {label} with intervals"),
            Figure(
                f"{stem}-scores.png",
                plot_scores(section, analysis),
                f"Test {label} of every method and reference, with its 95% bootstrap interval",
            ),
            Heading(3, "Quality against cost"),
            Figure(
                f"{stem}-pareto.png",
                plot_pareto(section, analysis),
                _pareto_caption(analysis),
            ),
            _pareto_text(section, analysis),
        ]
    blocks += search_blocks(section, stem)
    examples = examples_table(section)
    if examples is not None:
        blocks += [Heading(3, "Test examples" + (" (each method's first finished seed)" if several else "")), examples]
    curves = [_curves(runs, stem) for runs in section.trained]
    if any(curves):
        blocks += [Heading(3, "Learning curves per run"), *filter(None, curves)]
    return blocks


def _curves(runs: MethodRuns, stem: str) -> Figure | None:
    """The learning curves of the run's first finished seed, drawn from its records."""
    run = runs.first
    if run is None or run.curves is None:
        return None
    caption = f"{runs.method}, seed {run.seed}: loss and validation metrics against epoch"
    return Figure(f"{stem}-{runs.method}-curves.png", run.curves, caption)


def report_blocks(
    sections: list[Section], analyses: list[Analysis | None], verdicts: list[Verdict | None]
) -> list[Block]:
    """The whole report: the answer per model, how to read it, a combined table where there are several models, then
    a section each."""
    several = several_seeds(sections)
    sources = ", ".join(map(str, dict.fromkeys(section.output for section in sections)))
    blocks: list[Block] = [
        Heading(1, "peftbench comparison report"),
        Paragraph(f"Generated {datetime.now().astimezone().isoformat(timespec='seconds')} from {sources}."),
        *(
            Paragraph(f"{section.model}: {verdict.headline}", strong=True)
            for section, verdict in zip(sections, verdicts, strict=True)
            if verdict
        ),
        how_to_read(several),
    ]
    if len(sections) > 1:
        rows = [([section.label, runs.method], runs) for section in sections for runs in section.methods]
        blocks += [
            Heading(2, "All models"),
            *results_tables(rows, ["model", "method"], several, rank=False),
            Paragraph(
                "Each model's own section ranks its methods; across models the test sets and "
                "intervals are the models' own."
            ),
        ]
        blocks += filter(None, [random_note([r for section in sections for r in section.results])])
    for index, (section, analysis, verdict) in enumerate(zip(sections, analyses, verdicts, strict=True), 1):
        blocks += section_blocks(section, analysis, verdict, index)
    return blocks
