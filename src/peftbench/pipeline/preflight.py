"""Checks before any weights are loaded, and the plan that --dry-run prints.

First what needs neither data nor a model (flags, methods, processes, trackers, the output directory); then, once the
data is read, the model built from its config on the meta device (shapes, no memory, no weights read), so that target
modules, sequence lengths and trainable parameter counts are checked in seconds, before the first method spends
minutes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Splits
from peftbench.errors import ConfigError
from peftbench.measure.timing import matmul_flops_per_s
from peftbench.methods.apply import (
    apply_method,
    check_method,
    count_parameters,
    given_options,
    module_options,
    targeted_layers,
)
from peftbench.methods.method_args import check_method_args
from peftbench.methods.registry import METHODS, check_method_names, learning_rate
from peftbench.methods.settings import MethodSettings
from peftbench.model.families import position_limit
from peftbench.model.layout import PromptOptions, TokenLimits
from peftbench.model.load import check_weights, fresh_skeleton, quantization_config, skeleton
from peftbench.pipeline import search
from peftbench.pipeline.executor import ExecutorOptions, check_executor
from peftbench.store import fingerprints, rundir
from peftbench.training import checkpoint
from peftbench.training.tracking import check_trackers
from peftbench.training.trainer import mixed_precision

ASSUMED_UTILIZATION = 0.6  # calibrated: the default run estimated 29 min at 0.3 and took 14 min on a 2-core CPU


def resolve_output(config: RunConfig) -> Path:
    """The output directory (default runs/<timestamp>), created and checked writable before any work (a dry run
    only names it). With several processes, the main process's --output must be given: their clocks differ."""
    if config.output is not None and not config.output.strip():
        raise ConfigError(f"--output {config.output!r} is empty: name a folder, or leave --output out for runs/<time>")
    output = Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a file, not a folder: name a new or empty folder")
    if config.dry_run:
        return output
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=rundir.STAGING_PREFIX):  # every process checks
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {str(output)!r} is not writable: {exc.strerror or exc}") from None
    return output


def check_processes(config: RunConfig) -> None:
    """Settings that several processes (torchrun, accelerate launch) need."""
    count = parallel.processes()
    if count == 1:
        return
    if config.batch_size % count:
        raise ConfigError(
            f"--batch-size {config.batch_size} is one step's batch across all {count} processes and must divide "
            f"evenly among them: use a multiple of {count}"
        )
    if config.train_size < count:
        raise ConfigError(
            f"--train-size {config.train_size} leaves some of the {count} processes no example: use at least {count}"
        )
    if config.output is None:
        raise ConfigError(f"with {count} processes, give --output: each would otherwise name its own directory")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ConfigError("FSDP is not supported yet: launch without an FSDP config to train with DDP")
    if config.quantize:
        raise ConfigError("--quantize runs on one GPU: launch it without torchrun or accelerate launch")


def check_before_loading(config: RunConfig) -> Path:
    """Every check that needs neither data nor a model's weights (a local model's are checked from their headers);
    returns the output directory (created unless --dry-run)."""
    check_method_names(config.methods)
    check_method_args(config.method_args)
    mixed_precision(config.precision)  # an impossible --precision fails now, not after loading a model
    quantization_config(config.quantize)  # --quantize without CUDA and bitsandbytes
    check_processes(config)
    check_executor(ExecutorOptions.from_config(config))
    check_trackers(config.report_to)
    search.check(config)
    check_weights(config.model, config.trust_remote_code)  # weights cut short or of another shape: before the data
    output = resolve_output(config)
    seeds = config.seeds or [config.seed]
    rundir.check_paths(output, seeds, config.methods)
    rundir.check_owner(output, rundir.layout_names(seeds, config.methods), config.allow_other_files)
    return output


@dataclass
class MethodPlan:
    name: str
    trainable: int
    total: int
    lr: float
    options: dict[str, list[str]] = field(default_factory=dict)  # module options as peft gets them (targets, ...)
    given: dict[str, list[str]] = field(default_factory=dict)  # those the user gave otherwise (all-linear, a pattern)
    layers: int = 0  # layers the targets select


@dataclass
class Plan:
    """What a run will do: per method its parameter counts, and the real tokens of each split."""

    model: str
    methods: list[MethodPlan]
    tokens: dict[str, int]  # split -> real tokens (prompt + target) over its examples
    examples: dict[str, int]


def preflight(config: RunConfig, splits: Splits) -> Plan:
    """Check the model, lengths and every method against the model's architecture; count parameters and tokens."""
    loaded = skeleton(config.model, config.trust_remote_code, config.allow_pickle, PromptOptions.from_config(config))
    limits = TokenLimits(config.max_source_tokens, config.max_target_tokens)
    generated = {"--max-new-tokens": config.max_new_tokens, "--latency-new-tokens": config.latency_new_tokens}
    loaded.layout.check_lengths(limits, generated, position_limit(loaded.family, loaded.model.config))
    settings = MethodSettings.from_config(config)
    for name in config.methods:  # targets, layer kinds and peft's own checks for every method, before any trains
        check_method(METHODS[name], loaded, settings)
    methods = []
    for name in config.methods:
        method = METHODS[name]
        try:
            model = apply_method(method, fresh_skeleton(loaded, config.trust_remote_code), settings)
        except ConfigError as exc:
            if "meta" not in str(exc):  # peft refuses these settings on this model (C3A's block size, ...)
                raise
            continue  # a start computed from the weights (SHiRA, FRoD), which the meta device does not hold
        except Exception:  # noqa: BLE001 - e.g. a quantized base, which the meta device cannot hold: counted when run
            continue
        trainable, total = count_parameters(model)
        plan = MethodPlan(name, trainable, total, learning_rate(method, config.lr))
        if method.adapts_layers:
            plan.options = module_options(method, loaded, settings)
            plan.given = given_options(method, loaded, settings)
            plan.layers = len(targeted_layers(loaded.model, plan.options["targets"]))
        methods.append(plan)
    tokens = {}
    for split, examples in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        tokens[split] = sum(item.length for item in loaded.layout.encode(examples, limits))
    examples = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    return Plan(config.model, methods, tokens, examples)


def estimate_seconds(
    config: RunConfig, plan: Plan, method: MethodPlan, flops_per_s: float, trained_epochs: int | None = None
) -> float:
    """A rough compute estimate: per parameter and token, 2 FLOPs forward and 4 backward for full fine-tuning (2 for
    frozen weights, whose activation gradients are still needed), 2 more with gradient checkpointing; evaluation
    loss and generation (at most --max-new-tokens per example) forward only. trained_epochs: the epochs a search's
    trials train and validate in all (default: one run's), before the one test."""
    per_token = 2 + (4 if method.trainable == method.total else 2) + (2 if config.gradient_checkpointing else 0)
    validations = 1 + len({*range(config.eval_every, config.epochs + 1, config.eval_every), config.epochs})
    val_examples = plan.examples["validation"]
    generated = validations * min(config.eval_generate_size or val_examples, val_examples)
    validate = validations * plan.tokens["validation"] + config.max_new_tokens * generated
    test = plan.tokens["test"] + config.max_new_tokens * plan.examples["test"]
    runs = (trained_epochs or config.epochs) / config.epochs  # how many runs' worth of training and validation
    flops = method.total * (runs * (per_token * config.epochs * plan.tokens["train"] + 2 * validate) + 2 * test)
    return flops / (flops_per_s * ASSUMED_UTILIZATION)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe(config: RunConfig, plan: Plan) -> str:
    """The --dry-run report: resolved config, trainable parameters per method, tokens and an estimated run time."""
    lines = ["Resolved configuration:", yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(), ""]
    counts = ", ".join(f"{split} {plan.tokens[split]:,} in {plan.examples[split]:,} examples" for split in plan.tokens)
    lines.append(f"Tokens (prompt + target, no padding): {counts}")
    flops_per_s = matmul_flops_per_s(size=1024, repeats=5)
    seeds = len(config.seeds or [config.seed])
    lines.append(
        f"Methods ({seeds} seed{'s' if seeds > 1 else ''} each; time: rough compute estimate at "
        f"{ASSUMED_UTILIZATION:.0%} of this machine's {flops_per_s / 1e9:,.0f} GFLOP/s):"
    )
    total = untuned = 0.0
    for method in plan.methods:
        searched = search.plan_of(config, METHODS[method.name]) if config.search else None
        trained = search.trial_epochs(searched.budget, config.epochs, config.search_halving) if searched else None
        seconds = seeds * estimate_seconds(config, plan, method, flops_per_s, trained)
        total, untuned = total + seconds, untuned + seeds * estimate_seconds(config, plan, method, flops_per_s)
        lines.append(
            f"  {method.name:<8} {method.trainable:>14,} of {method.total:,} parameters trainable "
            f"({100 * method.trainable / method.total:.3f}%), lr {method.lr:g}, ~{_duration(seconds)}"
        )
        for key, names in method.options.items():
            given = f" from {','.join(method.given[key])}" if key in method.given else ""
            layers = f" ({method.layers} layers{given})" if key == "targets" else given and f" ({given.strip()})"
            lines.append(f"  {'':<8} {key}: {', '.join(names)}{layers}")
        if searched:
            lines += _search_lines(searched, config.epochs, trained, config.select_by)
    counted = {method.name for method in plan.methods}
    lines += [
        f"  {name:<8} (cannot be built without weights: counted when it runs)"
        for name in config.methods
        if name not in counted
    ]
    lines.append(f"Estimated total: ~{_duration(total)} (model loading and latency timing not included)")
    if config.search and untuned:
        lines.append(f"  without the search: ~{_duration(untuned)}; the search costs about {total / untuned:.1f}x that")
    return "\n".join(lines)


def _method_state(config: RunConfig, directory: rundir.MethodDir) -> str:
    """What the same command would do with a method's directory."""
    if config.force:
        return "runs from the start (--force)"
    damaged = fingerprints.damage(directory)
    if damaged:
        return f"runs again (damaged, set aside when it runs: {', '.join(sorted(damaged))})"
    if directory.finished():
        if search.settled(config, directory.read_result()):
            return "already finished: skipped"
        return "finished: its search goes on over the grid's new points"
    return _resumes(directory)


def _search_lines(plan: search.Plan, epochs: int, trained: int, select_by: str) -> list[str]:
    """What a method's search will do: its trials (the starting grid, and how many the search places), their
    epochs in all, and the limits it may extend to."""
    placed = plan.budget - len(plan.start)
    more = f", then {placed} placed by the search" if placed else ""
    schedule = (
        f"halving: all train 1 epoch, {search.survivors(plan.budget)} go on"
        if plan.halving and epochs > 1
        else f"{epochs} epoch{'s' if epochs > 1 else ''} each"
    )
    limits = ", ".join(f"{setting} {low:.3g} to {high:.3g}" for setting, (low, high) in plan.bounds.items())
    return [
        f"  {'':<8} {plan.budget} trials ({', '.join(t.name for t in plan.start)}{more}), {schedule}: "
        f"{trained} trial-epochs in all; limits: {limits}; the one selected on validation {select_by} is tested"
    ]


def _trial_state(config: RunConfig, place: rundir.TrialDir, trial: search.Trial) -> str:
    """What the same command would do with a search's trial."""
    if config.force:
        return "runs from the start (--force)"
    reached = search.reached(place, trial.config(config))
    if reached >= config.epochs:
        return "trained: skipped"
    if reached and config.search_halving:  # halving may have stopped it there: the search decides again
        return f"trained to epoch {reached}: goes on only where halving keeps it"
    return _resumes(place)


def _resumes(directory: rundir.MethodDir) -> str:
    last = checkpoint.latest(directory)
    return f"resumes after {last.name.replace('-', ' ')}" if last is not None else "runs"


def dry_run(config: RunConfig, plan: Plan, output: Path) -> None:
    """Print the plan and what the same command would do with each method already in OUTPUT."""
    print(describe(config, plan))
    seeds = config.seeds or [config.seed]
    for seed in seeds:
        comparison = rundir.seed_dir(output, seed, len(seeds) > 1)
        for name in config.methods:
            directory = rundir.method_dir(comparison, name)
            print(f"  {directory.path}: {_method_state(config, directory)}")
            for trial in search.start_of(config, METHODS[name]) if config.search else []:
                place = rundir.trial_dir(directory, trial.name)
                print(f"  {place.path}: {_trial_state(config, place, trial)}")
    print("Dry run: nothing trained or written.")
