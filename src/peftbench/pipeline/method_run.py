"""One method's run, top to bottom: load the model and data, apply the method, train with per-epoch validation and
checkpoints (or resume), evaluate on the test split, measure what it cost, and write its results."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm import tqdm as std_tqdm

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, Splits
from peftbench.measure.core import (
    PhaseTimer,
    ServingCosts,
    adapter_costs,
    in_memory_window,
    latency_ms,
    merge_agreement,
    merged_copy,
    model_load_costs,
    read_weights,
    warm_up,
    weights_bytes,
)
from peftbench.methods.apply import (
    apply_method,
    build_optimizer,
    count_parameters,
    given_options,
    loss_term,
    module_options,
)
from peftbench.methods.registry import METHODS, Method, learning_rate
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import Encoded, Layout, PromptOptions, TokenLimits
from peftbench.model.load import LoadedModel, load_model, model_provenance
from peftbench.report.card import render as model_card
from peftbench.report.write import plot_curves
from peftbench.store import rundir
from peftbench.store.records import (
    GIVEN,
    PRETRAINED,
    RANDOM_WEIGHTS,
    Efficiency,
    EpochMetrics,
    MethodResult,
    Progress,
    TestMetrics,
    prediction_rows,
)
from peftbench.store.rundir import ZERO_SHOT, MethodDir
from peftbench.task.metrics import METRICS
from peftbench.training import checkpoint, tracking
from peftbench.training.evaluate import EvalOptions, Evaluator, Generation
from peftbench.training.trainer import Trainer, TrainOptions, autocast, mixed_precision, show_progress


def quiet_libraries() -> None:
    """Keep the console for peftbench's own progress: no library progress bars or deprecation chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # tqdm's default lock is a multiprocessing one: in a spawned method process, a named semaphore in /dev/shm that a
    # killed process leaves to multiprocessing's resource tracker (and its "leaked semaphore" warning). The bars of
    # one process need a thread lock only.
    std_tqdm.set_lock(threading.RLock())


@dataclass(frozen=True)
class Stage:
    """Which part of a method's run to do: all of it (the default), or a search's share of it (search.py).

    until_epoch: a trial's stint: train and validate up to this epoch, keep its checkpoint, write trial.json into the
    (TrialDir) directory and stop, the test split untouched. resume_from: where the checkpoint to continue from lies
    (the selected trial's directory), when it is not the directory written to; it is removed once the results are
    written. search: the search's record (search.SearchRecord), kept in the result.
    """

    until_epoch: int | None = None
    resume_from: MethodDir | None = None
    search: dict[str, Any] | None = None


WHOLE = Stage()  # a method's whole run


def run_method(
    name: str, splits: Splits, config: RunConfig, directory: MethodDir, zero_shot: EpochMetrics, stage: Stage = WHOLE
) -> MethodResult:
    """Fine-tune one method from a freshly loaded base model (or resume it from its last checkpoint), checkpoint
    after every epoch, and write its results into directory. zero_shot is the base model's validation (epoch 0),
    evaluated once per seed for every method (run_zero_shot). stage: the part to do, for a search's trials."""
    quiet_libraries()
    method = METHODS[name]
    trial = stage.until_epoch is not None
    tag = f"{name} {directory.name}" if trial else name
    say = print if not config.quiet and parallel.is_main() else (lambda *_: None)
    resume = checkpoint.load_latest(stage.resume_from or directory)  # None: from scratch (unreadable ones set aside)
    set_seed(config.seed)
    started = time.perf_counter()
    progress = Progress()
    timer = PhaseTimer(progress.phase_seconds, progress.phase_other_cpu_seconds)

    # Load: the pretrained model, each split as token ids, and the base model's latency before anything changes it.
    with timer.phase("model_load"):
        loaded = load_model(
            config.model,
            config.trust_remote_code,
            config.allow_pickle,
            config.quantize,
            PromptOptions.from_config(config),
        )
        layout = loaded.layout
        limits = token_limits(config)
        train, validation, test = (
            EncodedSplit(split, layout.encode(split, limits))
            for split in (splits.train, splits.validation, splits.test)
        )
        device = parallel.state().device
        if not config.quantize:
            loaded.model.to(device)  # a quantized model is placed on the GPU as it loads
    latency_items = test.items[: config.latency_prompts]
    precision = mixed_precision(config.precision)
    compute = autocast(precision, device)  # every model call below computes at this one precision
    if not resume and parallel.is_main():  # latency is one request on one device: the main process measures it
        with compute, timer.phase("latency"):
            progress.base_latency_ms, progress.base_memory = timed_generation(
                loaded.model, latency_items, layout, config.latency_new_tokens, device
            )

    # Apply the method, and build what trains and evaluates it (counted with loading: setting up before training).
    with timer.phase("model_load"):
        settings = MethodSettings.from_config(config)
        lr = learning_rate(method, config.lr)
        resolved = resolved_config(config, method, loaded, settings, lr, precision)  # targets: before peft wraps them
        model = apply_method(method, loaded, settings)
        trainable, total = count_parameters(model)
        optimizer = build_optimizer(method, model, lr, settings)
        options = TrainOptions.from_config(config, precision)
        log = directory.append_log if parallel.is_main() else (lambda _record: None)  # log.jsonl: the main process's
        trainer = Trainer(model, optimizer, train.items, layout, options, loss_term(method), log)
    evaluator = Evaluator(
        layout,
        EvalOptions.from_config(config),
        device,
        show_progress(config.quiet),
        one_pass=not method.prompt_learning,
    )
    result = MethodResult(method.name, loaded.name, splits.description, trainable, total, resolved)
    tracking.start(
        trainer.accelerator,
        config.report_to,
        rundir.trackers_dir(directory.comparison),
        f"{tag.replace(' ', '-')}-seed{config.seed}",
        result.config,
    )
    say(f"[{tag}] {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%), lr {lr:g}")

    # Train: epoch 0 is the zero-shot base model; validation after every --eval-every epochs (and a trial's last).
    if resume:
        session, others = progress.phase_seconds, progress.phase_other_cpu_seconds
        progress = checkpoint.restore(resume, trainer)
        progress.add_phases(session, others)
        timer.seconds, timer.others = progress.phase_seconds, progress.phase_other_cpu_seconds
        say(f"[{tag}] resuming after epoch {trainer.epoch} of {config.epochs} from {resume.path}")
    if parallel.is_main():
        # No line twice, none lost: the log as of the checkpoint (a selected trial's training log becomes the method's).
        directory.keep_log(progress.log_lines, stage.resume_from)
    if not resume:
        progress.epochs.append(zero_shot)
        trainer.accelerator.log(_validation_figures(zero_shot), step=0)
        log(log_record("validation", 0, 0, zero_shot))
    earlier_sessions = progress.wall_seconds
    last = stage.until_epoch or config.epochs
    for epoch in range(trainer.epoch + 1, last + 1):
        with timer.phase("training"):
            train_loss = trainer.train_epoch()
        if epoch % config.eval_every == 0 or epoch in (last, config.epochs):
            with compute:
                validate(evaluator, trainer, validation, config.eval_generate_size, progress, epoch, train_loss, timer)
            log(log_record("validation", epoch, epoch * trainer.steps_per_epoch, progress.epochs[-1]))
            say(f"[{tag}] {epoch_line(progress.epochs[-1])}")
        if parallel.is_main():
            progress.log_lines = len(directory.read_log())
        progress.wall_seconds = earlier_sessions + time.perf_counter() - started
        with timer.phase("saving"):
            checkpoint.save(directory, trainer, progress)
    result.epochs = progress.epochs
    if trial:  # validated and checkpointed: the search decides whether it goes on, and only its choice is tested
        if parallel.is_main():
            tracking.finish(trainer.accelerator)
            directory.write_record(result)
        parallel.wait_for_everyone()
        return result

    # Test, on the trained model itself; then its merged copy, where there is one, for latency and the merge check.
    with compute:
        scores, generation = evaluator.evaluate(
            trainer.unwrapped, test.items, test.examples, None, "test", timer, "test"
        )
    with timer.phase("merge_check"):  # only the main process measures
        final = merged_model(trainer, method) if parallel.is_main() else None
    progress.add_generation(generation.new_tokens, generation.seconds)
    result.test = TestMetrics(scores.loss, scores.metrics)
    log(log_record("test", config.epochs, config.epochs * trainer.steps_per_epoch, result.test))
    result.environment = environment()
    result.data = splits.rows.record()
    result.provenance = provenance(config, splits)
    result.search = stage.search

    # Measure and write: the main process alone (the others hold the same results).
    if parallel.is_main():
        with compute:
            efficiency = measure_efficiency(
                trainer,
                progress,
                method,
                loaded,
                latency_items,
                directory,
                final,
                config.latency_new_tokens,
                base_loader(config, device),
                timer,
            )
        result.efficiency = replace(
            efficiency,
            phase_seconds=dict(timer.seconds),
            other_cpu_share=timer.other_cpu_share(),
            wall_seconds=earlier_sessions + time.perf_counter() - started,
        )
        figures = {"test/loss": scores.loss} | {f"test/{k}": v for k, v in scores.metrics.items()}
        trainer.accelerator.log(figures | _numbers(result.efficiency))
        tracking.finish(trainer.accelerator)
        write_results(directory, result, generation_rows(test.examples, generation))
        checkpoint.remove(stage.resume_from or directory)  # after metrics.json: now the method counts as finished
    del final
    parallel.wait_for_everyone()  # no process starts the next method while the main one writes this one's
    say(
        f"[{tag}] test: loss {scores.loss:.4f}, {_scores_text(scores.metrics)}; "
        f"train {trainer.tokens / trainer.seconds:.1f} tok/s, peak {trainer.peak_memory / 2**20:,.0f} MiB "
        f"({earlier_sessions + time.perf_counter() - started:.0f} s)"
    )
    return result


def run_zero_shot(splits: Splits, config: RunConfig) -> tuple[MethodResult, list[dict[str, Any]]]:
    """The base model as loaded, before any method touches it (no adapter, no virtual tokens): on the validation
    split, the epoch 0 that every method of this seed shares, evaluated once; on the test split, a reference row.
    Returns its result and its test predictions."""
    quiet_libraries()
    set_seed(config.seed)
    loaded = load_model(
        config.model, config.trust_remote_code, config.allow_pickle, config.quantize, PromptOptions.from_config(config)
    )
    validation, test = (
        EncodedSplit(split, loaded.layout.encode(split, token_limits(config)))
        for split in (splits.validation, splits.test)
    )
    device = parallel.state().device
    if not config.quantize:
        loaded.model.to(device)
    precision = mixed_precision(config.precision)
    evaluator = Evaluator(loaded.layout, EvalOptions.from_config(config), device, show_progress(config.quiet))
    with autocast(precision, device):
        s, _ = evaluator.evaluate(
            loaded.model, validation.items, validation.examples, config.eval_generate_size, "zero-shot validation"
        )
        scores, generation = evaluator.evaluate(loaded.model, test.items, test.examples, None, "zero-shot test")
    _, total = count_parameters(loaded.model)
    resolved = config.to_dict() | _model_settings(loaded, precision)
    result = MethodResult(ZERO_SHOT, loaded.name, splits.description, 0, total, resolved)
    result.epochs = [EpochMetrics(0, None, s.loss, s.metrics)]
    result.test = TestMetrics(scores.loss, scores.metrics)
    result.environment = environment()
    result.provenance = provenance(config, splits)
    return result, generation_rows(test.examples, generation)


def provenance(config: RunConfig, splits: Splits) -> dict[str, Any]:
    """What exactly was compared: the model's revision or a hash of its weights, and the data's."""
    return {"model": model_provenance(config.model), "dataset": splits.provenance}


def token_limits(config: RunConfig) -> TokenLimits:
    return TokenLimits(config.max_source_tokens, config.max_target_tokens)


@dataclass
class EncodedSplit:
    """A split's examples and their token ids, in the same order."""

    examples: list[Example]
    items: list[Encoded]


def merged_model(trainer: Trainer, method: Method) -> nn.Module | None:
    """A merged copy of the trained model where the method can merge, else None: how it would be served, for the
    merged latency and the merge check."""
    return merged_copy(trainer.unwrapped) if method.mergeable else None


def validate(
    evaluator: Evaluator,
    trainer: Trainer,
    split: EncodedSplit,
    generate_size: int | None,
    progress: Progress,
    epoch: int,
    train_loss: float | None,
    timer: PhaseTimer,
) -> None:
    """One epoch's validation, recorded in progress and sent to the trackers: loss over every example, text metrics
    over the first generate_size examples generated; its time in timer's validation phases."""
    s, generation = evaluator.evaluate(
        trainer.unwrapped, split.items, split.examples, generate_size, f"validate epoch {epoch}", timer, "validation"
    )
    progress.epochs.append(EpochMetrics(epoch, train_loss, s.loss, s.metrics))
    progress.add_generation(generation.new_tokens, generation.seconds)
    trainer.accelerator.log(_validation_figures(progress.epochs[-1]), step=epoch * trainer.steps_per_epoch)


def _validation_figures(scores: EpochMetrics) -> dict[str, float]:
    """One epoch's validation scores as tracker figures (val/loss, val/rougeL, ...)."""
    return {"val/loss": scores.val_loss} | {f"val/{k}": v for k, v in scores.scores.items()}


def _scores_text(scores: dict[str, float]) -> str:
    return ", ".join(f"{METRICS[name].label} {value:.{METRICS[name].decimals}f}" for name, value in scores.items())


def log_record(split: str, epoch: int, step: int, scores: EpochMetrics | TestMetrics) -> dict[str, Any]:
    """One evaluation as a line of log.jsonl: where in training it ran, its loss per target token (validation: and
    the epoch's mean training loss) and its task metrics."""
    where = {"split": split, "epoch": epoch, "step": step}
    if isinstance(scores, EpochMetrics):
        return where | {"loss": scores.val_loss, "train_loss": scores.train_loss} | scores.scores
    return where | {"loss": scores.loss} | scores.scores


def epoch_line(scores: EpochMetrics) -> str:
    shown = "-" if scores.train_loss is None else f"{scores.train_loss:.4f}"
    return f"epoch {scores.epoch}: train loss {shown}, val loss {scores.val_loss:.4f}, {_scores_text(scores.scores)}"


def generation_rows(examples: list[Example], generation: Generation) -> list[dict[str, Any]]:
    """predictions.jsonl's rows of a generation: each prediction with its own scores (and its most likely choice)."""
    return prediction_rows(examples, generation.predictions, generation.per_example, generation.likely_choices)


def resolved_config(
    config: RunConfig, method: Method, loaded: LoadedModel, settings: MethodSettings, lr: float, precision: str
) -> dict[str, Any]:
    """The config as this method actually ran: effective learning rate, module options (resolved, and as given where
    they differ: all-linear, a regular expression) and compute precision. Call it before peft wraps the model."""
    resolved = config.to_dict() | _model_settings(loaded, precision)
    resolved["lr"] = lr
    resolved["methods"] = [method.name]
    if method.peft_config is not None:
        for key, value in module_options(method, loaded, settings).items():
            resolved[f"{method.name}_{key}"] = value
        for key, value in given_options(method, loaded, settings).items():
            resolved[f"{method.name}_{key}{GIVEN}"] = value
    return resolved


def _model_settings(loaded: LoadedModel, precision: str) -> dict[str, str]:
    """What the run resolved about the model and hardware: its kind, family and prompt format, and the compute
    precision."""
    return {
        "model_kind": loaded.layout.kind,
        "model_family": loaded.family.name,
        "model_weights": RANDOM_WEIGHTS if loaded.random_weights else PRETRAINED,
        "prompt_format": loaded.layout.prompt_format,  # as used: "auto" resolved
        "compute_precision": "fp32" if precision == "no" else precision,
    }


def environment() -> dict[str, Any]:
    """Where and with what a method ran, for the report's header."""
    libraries = {name: version(name) for name in ("torch", "transformers", "peft", "accelerate")}
    return {
        "python": platform.python_version(),
        **libraries,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "processes": parallel.processes(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def timed_generation(
    model, items: list[Encoded], layout: Layout, new_tokens: int, device
) -> tuple[float, dict[str, int | None]]:
    """The model's latency (latency_ms) and its inference memory (Efficiency.inference_memory's form) over the same
    generation: the bytes of its weights, and the peak of a fresh memory window and its increase (after a warm-up
    outside the window: weights read, compute paths set up)."""
    warm_up(model, items, layout, device)
    ms, window = in_memory_window(lambda: latency_ms(model, items, layout, new_tokens, device))
    return ms, {
        "weights_bytes": weights_bytes(model),
        "peak_bytes": window.peak_bytes,
        "increase_bytes": window.increase_bytes,
    }


def base_loader(config: RunConfig, device) -> Callable[[], nn.Module]:
    """A function that loads the base model afresh, as the run loaded it, onto device: the base that adapter loads
    are timed on (the run's own base carries the trained adapter by then)."""

    def load() -> nn.Module:
        model = load_model(config.model, config.trust_remote_code, config.allow_pickle, config.quantize).model
        return read_weights(model if config.quantize else model.to(device))  # a quantized one is placed as it loads

    return load


def serving_costs(
    method: Method, layout: Layout, adapter: Path, load_base: Callable[[], nn.Module], device
) -> ServingCosts:
    """What serving the saved adapter costs (measure.adapter_costs, on bases from load_base); for full fine-tuning,
    loading the saved model onto device, until its weights are read."""
    if method.peft_config is None:

        def load_saved() -> nn.Module:
            model = layout.model_class.from_pretrained(adapter, dtype=torch.float32, use_safetensors=True)
            return read_weights(model.to(device))

        return model_load_costs(load_saved)
    try:
        return adapter_costs(load_base, adapter, method.mergeable)
    except Exception as exc:  # peft cannot load every adapter it saves (AdaLoRA after rank pruning, on some models)
        print(
            f"peftbench: warning: {method.name}'s saved adapter does not load back with PeftModel.from_pretrained "
            f"({type(exc).__name__}: {exc}); its serving costs are not measured",
            file=sys.stderr,
        )
        return ServingCosts()


def measure_efficiency(
    trainer: Trainer,
    progress: Progress,
    method: Method,
    loaded: LoadedModel,
    items: list[Encoded],
    directory: MethodDir,
    merged: nn.Module | None,
    new_tokens: int,
    load_base: Callable[[], nn.Module],
    timer: PhaseTimer,
) -> Efficiency:
    """What the trained method costs: training figures, latencies and inference memory (base from progress), merge
    agreement, adapter size, and serving costs (loading, swapping, merging; load_base gives a fresh base model); the
    time of each in timer (the caller adds the phase times).

    merged is the trained model's merged copy (None where the method cannot merge). Saves the adapter (for full
    fine-tuning, the whole model and tokenizer) into the method's directory to measure it.
    """
    layout, trained = loaded.layout, trainer.unwrapped
    device = trainer.accelerator.device
    with timer.phase("latency"):
        generations = {"unmerged": timed_generation(trained, items, layout, new_tokens, device), "merged": (None, None)}
        if merged is not None:
            generations["merged"] = timed_generation(merged, items, layout, new_tokens, device)
    latencies = {"base": progress.base_latency_ms} | {model: ms for model, (ms, _) in generations.items()}
    memory = {"base": progress.base_memory} | {model: used for model, (_, used) in generations.items()}
    with timer.phase("merge_check"):
        merge_check = merge_agreement(trained, merged, items, layout, 16, device) if merged is not None else None
    with timer.phase("saving"):
        adapter_files = save_adapter(trained, method, layout, directory.adapter)
    with timer.phase("serving"):
        serving = serving_costs(method, layout, directory.adapter, load_base, device)
    trainable, total = count_parameters(trained)
    return Efficiency(
        trainable_params=trainable,
        trainable_pct=100 * trainable / total,
        peak_train_memory_bytes=trainer.peak_memory,
        memory_measure="cuda_max_memory_allocated" if torch.cuda.is_available() else "peak_rss",
        train_seconds=trainer.seconds,
        train_tokens_per_s=trainer.tokens / trainer.seconds,
        train_samples_per_s=trainer.samples / trainer.seconds,
        eval_generate_tokens_per_s=progress.generate_tokens_per_s,
        latency_ms=latencies,
        latency_new_tokens=new_tokens,
        merge_check=merge_check,
        adapter_size_bytes=sum(adapter_files.values()),
        adapter_files=sorted(adapter_files),
        inference_memory=memory,
        adapter_load_ms=serving.load_ms,
        adapter_swap_ms=serving.swap_ms,
        merge_unmerge_ms=serving.merge_unmerge_ms,
        adapter_memory_bytes=serving.adapter_bytes,
    )


ADAPTER_CONFIGS = ("adapter_config.json", "config.json", "generation_config.json", "model.safetensors.index.json")


def save_adapter(model, method: Method, layout: Layout, path: Path) -> dict[str, int]:
    """Save the adapter in peft's format (for full fine-tuning, the whole model and its tokenizer, loadable on its
    own), whole or not at all; returns the size of each file that makes the adapter: its weights and its config, not
    peft's generated README nor the tokenizer."""
    counted: dict[str, int] = {}

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        counted.update(
            {
                f.name: f.stat().st_size
                for f in sorted(staging.iterdir())
                if f.suffix == ".safetensors" or f.name in ADAPTER_CONFIGS
            }
        )
        if method.peft_config is None:
            layout.tokenizer.save_pretrained(staging)

    rundir.write_directory(path, fill)
    return counted


def write_results(directory: MethodDir, result: MethodResult, rows: list[dict[str, Any]]) -> None:
    """predictions.jsonl, curves.png, the adapter's model card, then metrics.json last: its presence means the
    method finished."""
    directory.write_predictions(rows)
    plot_curves(result, directory.curves, directory.read_log())
    directory.write_card(model_card(result))  # without intervals: the comparison's statistics come later
    directory.write_result(result)


def _numbers(efficiency: Efficiency) -> dict[str, float]:
    """The efficiency figures a tracker can plot (numbers only; latencies flattened)."""
    flat = {f"efficiency/{k}": v for k, v in asdict(efficiency).items() if isinstance(v, int | float)}
    flat |= {f"efficiency/latency_ms_{k}": v for k, v in efficiency.latency_ms.items() if v is not None}
    return flat
