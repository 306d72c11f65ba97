"""One method's run, as named stages that read top to bottom:

    setup_model -> setup_data -> setup_method -> train_and_validate -> test -> retain -> measure -> write

Each stage takes the few values it needs; `prepare` strings the setup stages together (run_method, tests and
benchmarks call it instead of retyping the chain) and `run_method` the rest (a search's trial stops after
train_and_validate; its selected trial resumes from there). The method process writes records only (metrics.json,
predictions.jsonl, log.jsonl, the adapter); curves, model cards and the report are drawn from them at the end of the
run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from accelerate.utils import set_seed

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.retention import HeldOut, TextSample
from peftbench.data.splits import Example, Splits
from peftbench.measure.latency import LatencyPlan
from peftbench.measure.memory import memory_now_bytes
from peftbench.measure.timing import PhaseTimer
from peftbench.methods.apply import apply_method, build_optimizer, count_parameters, loss_term
from peftbench.methods.registry import METHODS, Method, learning_rate
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import Encoded, Layout, PromptOptions, TokenLimits
from peftbench.model.load import LoadedModel, ModelSource
from peftbench.pipeline.console import Console, quiet_libraries
from peftbench.pipeline.costs import base_loader, measure_efficiency, merged_model
from peftbench.pipeline.recording import (
    environment,
    epoch_line,
    generation_rows,
    log_record,
    model_settings,
    provenance,
    resolved_config,
    scores_text,
    tracker_numbers,
    validation_figures,
)
from peftbench.store import rundir
from peftbench.store.records import EpochMetrics, MethodResult, Progress, Retention, TaskRetention, TestMetrics
from peftbench.store.rundir import ZERO_SHOT, MethodDir
from peftbench.training import checkpoint, tracking
from peftbench.training.evaluate import EvalOptions, Evaluator
from peftbench.training.trainer import Trainer, TrainOptions, autocast, mixed_precision, show_progress


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


@dataclass
class EncodedSplit:
    """A split's examples and their token ids, in the same order."""

    examples: list[Example]
    items: list[Encoded]


@dataclass
class EncodedSplits:
    train: EncodedSplit
    validation: EncodedSplit
    test: EncodedSplit


@dataclass(frozen=True)
class Schedule:
    """Which epochs a run trains and validates: up to last (a trial's stint, else all), validating every `every`
    epochs and always after the last one of the stint and of the run; generate_size: validation examples generated."""

    last: int
    epochs: int
    every: int
    generate_size: int | None

    def validates(self, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch in (self.last, self.epochs)


def token_limits(config: RunConfig) -> TokenLimits:
    return TokenLimits(config.max_source_tokens, config.max_target_tokens)


# ---------------------------------------------------------------------------------------------- the stages


def setup_model(source: ModelSource, prompt: PromptOptions, device) -> LoadedModel:
    """The pretrained model, as every method of the comparison starts from it, on device."""
    return source.load(prompt, device)


def setup_data(layout: Layout, splits: Splits, limits: TokenLimits) -> EncodedSplits:
    """Every split as token ids, as this model's layout encodes them."""
    train, validation, test = (
        EncodedSplit(split, layout.encode(split, limits)) for split in (splits.train, splits.validation, splits.test)
    )
    return EncodedSplits(train, validation, test)


def setup_method(
    method: Method,
    loaded: LoadedModel,
    settings: MethodSettings,
    lr: float,
    train: list[Encoded],
    options: TrainOptions,
    log: Callable[[dict], None] | None = None,
) -> Trainer:
    """The method applied to the loaded model (in place), its optimizer, and the trainer over the training split."""
    model = apply_method(method, loaded, settings, train)
    optimizer = build_optimizer(method, model, lr, settings)
    return Trainer(model, optimizer, train, loaded.layout, options, loss_term(method), log)


def train_and_validate(
    trainer: Trainer,
    evaluator: Evaluator,
    validation: EncodedSplit,
    schedule: Schedule,
    progress: Progress,
    timer: PhaseTimer,
    compute: AbstractContextManager,
    directory: MethodDir,
    say: Callable[[str], None],
    wall: Callable[[], float],
) -> None:
    """Train from the trainer's epoch to the schedule's last, validating as it says and checkpointing after every
    epoch; what is measured goes into progress (wall_seconds: what wall() says the method has taken so far)."""
    for epoch in range(trainer.epoch + 1, schedule.last + 1):
        with timer.phase("training"):
            train_loss = trainer.train_epoch()
        if schedule.validates(epoch):
            with compute:
                validation_epoch(
                    evaluator, trainer, validation, schedule.generate_size, progress, epoch, train_loss, timer
                )
            if parallel.is_main():
                directory.append_log(
                    log_record("validation", epoch, epoch * trainer.steps_per_epoch, progress.epochs[-1])
                )
            say(epoch_line(progress.epochs[-1]))
        if parallel.is_main():
            progress.log_lines = len(directory.read_log())
        progress.wall_seconds = wall()
        with timer.phase("saving"):
            checkpoint.save(directory, trainer, progress)


def validation_epoch(
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
    per_example = {name: [float(value) for value in values] for name, values in s.per_example.items()}
    progress.epochs.append(EpochMetrics(epoch, train_loss, s.loss, s.metrics, per_example))
    progress.add_generation(generation.new_tokens, generation.seconds)
    trainer.accelerator.log(validation_figures(progress.epochs[-1]), step=epoch * trainer.steps_per_epoch)


# ---------------------------------------------------------------------------------------------- the whole run


@dataclass
class Prepared:
    """A method set up for its run: the model (adapted), its data, trainer and evaluator, the result being filled,
    where and at what precision it computes, and the memory the process held before."""

    method: Method
    loaded: LoadedModel
    data: EncodedSplits
    trainer: Trainer
    evaluator: Evaluator
    result: MethodResult
    device: Any
    compute: AbstractContextManager
    runtime_bytes: int  # what the process held before it loaded the model (measure.memory_account)


def prepare(
    method: Method,
    splits: Splits,
    config: RunConfig,
    timer: PhaseTimer,
    log: Callable[[dict], None] | None = None,
) -> Prepared:
    """The setup stages, timed: the model and data, then the method and its trainer (log: where its steps go). The one
    place that builds this chain: run_method, tests and benchmarks call it."""
    device, precision = parallel.state().device, mixed_precision(config.precision)
    compute = autocast(precision, device)  # every model call of the run computes at this one precision
    runtime = memory_now_bytes() or 0  # the account of training memory starts from what the process holds already
    with timer.phase("model_load"):
        loaded = setup_model(ModelSource.from_config(config), PromptOptions.from_config(config), device)
        data = setup_data(loaded.layout, splits, token_limits(config))
        settings, lr = MethodSettings.from_config(config), learning_rate(method, config.lr)
        resolved = resolved_config(config, method, loaded, settings, lr, precision)  # targets: before peft wraps them
        trainer = setup_method(
            method, loaded, settings, lr, data.train.items, TrainOptions.from_config(config, precision), log
        )
    trainable, total = count_parameters(trainer.unwrapped)
    options = EvalOptions.from_config(config)
    evaluator = Evaluator(loaded.layout, options, device, show_progress(config.quiet), not method.prompt_learning)
    result = MethodResult(method.name, loaded.name, splits.description, trainable, total, resolved)
    return Prepared(method, loaded, data, trainer, evaluator, result, device, compute, runtime)


def run_method(
    name: str,
    splits: Splits,
    held_out: HeldOut,
    config: RunConfig,
    directory: MethodDir,
    base: MethodResult,
    stage: Stage = WHOLE,
) -> MethodResult:
    """Fine-tune one method from a freshly loaded base model (or resume it from its last checkpoint), checkpoint
    after every epoch, and write its results into directory. base is the zero-shot base model's result, evaluated once
    per seed for every method (run_zero_shot): its validation is the method's epoch 0, and its retention figures
    stand beside the method's, measured on held_out. stage: the part to do, for a search's trials."""
    quiet_libraries()
    tag = f"{name} {directory.name}" if stage.until_epoch is not None else name
    say = lambda text: Console(config.quiet).say(f"[{tag}] {text}")  # noqa: E731
    resume = checkpoint.load_latest(stage.resume_from or directory)  # None: from scratch (unreadable ones set aside)
    set_seed(config.seed)
    started, progress = time.perf_counter(), Progress()
    timer = PhaseTimer(progress.phase_seconds, progress.phase_other_cpu_seconds)
    log = directory.append_log if parallel.is_main() else None  # log.jsonl: the main process's
    run = prepare(METHODS[name], splits, config, timer, log)
    trainer, result = run.trainer, run.result
    trackers = rundir.trackers_dir(directory.comparison)
    tracking.start(
        trainer.accelerator, config.report_to, trackers, f"{tag.replace(' ', '-')}-seed{config.seed}", result.config
    )
    say(
        f"{result.trainable_params:,} of {result.total_params:,} parameters trainable "
        f"({100 * result.trainable_params / result.total_params:.3f}%), lr {result.config['lr']:g}"
    )

    progress = resume_or_start(resume, trainer, progress, timer, base.epochs[0], directory, stage.resume_from, say)
    earlier = progress.wall_seconds
    wall = lambda: earlier + time.perf_counter() - started  # noqa: E731 - this method's wall time, all sessions
    schedule = Schedule(stage.until_epoch or config.epochs, config.epochs, config.eval_every, config.eval_generate_size)
    train_and_validate(
        trainer, run.evaluator, run.data.validation, schedule, progress, timer, run.compute, directory, say, wall
    )
    result.epochs = progress.epochs
    if stage.until_epoch is not None:  # a trial: the search decides whether it goes on; only its choice is tested
        finish_trial(trainer, directory, result)
        return result

    scores, generation = test(run, progress, timer, config.epochs, directory)
    with run.compute, timer.phase("retention"):
        task_rows = retain(run.trainer.unwrapped, run.loaded, run.evaluator, held_out, config, result, base)
    result.environment, result.data = environment(), splits.rows.record()
    result.provenance, result.search = provenance(config.model, splits), stage.search
    if parallel.is_main():  # measure and write: the main process alone (the others hold the same results)
        measure(run, progress, timer, config, directory, wall)
        rows = generation_rows(run.data.test.examples, generation)
        write(trainer, directory, result, rows, task_rows, stage.resume_from)
    parallel.wait_for_everyone()  # no process starts the next method while the main one writes this one's
    say(
        f"test: loss {scores.loss:.4f}, {scores_text(scores.metrics)}; "
        f"train {trainer.tokens / trainer.seconds:.1f} tok/s, peak {trainer.peak_memory / 2**20:,.0f} MiB "
        f"({wall():.0f} s)"
    )
    return result


def test(run: Prepared, progress: Progress, timer: PhaseTimer, epochs: int, directory: MethodDir):
    """The trained model on the test split, once: its scores into the result (and log.jsonl), its generation speed
    into progress; returns the scores and the generation (for predictions.jsonl)."""
    with run.compute:
        scores, generation = run.evaluator.evaluate(
            run.trainer.unwrapped, run.data.test.items, run.data.test.examples, None, "test", timer, "test"
        )
    progress.add_generation(generation.new_tokens, generation.seconds)
    run.result.test = TestMetrics(scores.loss, scores.metrics)
    if parallel.is_main():
        directory.append_log(log_record("test", epochs, epochs * run.trainer.steps_per_epoch, run.result.test))
    return scores, generation


def measure(
    run: Prepared,
    progress: Progress,
    timer: PhaseTimer,
    config: RunConfig,
    directory: MethodDir,
    wall: Callable[[], float],
) -> None:
    """What the trained method costs (costs.measure_efficiency, on its merged copy where it merges), with the run's
    phase times and wall time so far, into the result. It saves the adapter (into the method's directory)."""
    with timer.phase("merge_check"):
        final = merged_model(run.trainer, run.method)
    plan = LatencyPlan(run.data.test.items[: config.latency_prompts], config.latency_rounds, config.latency_new_tokens)
    load_base = base_loader(ModelSource.from_config(config), run.device)
    with run.compute:
        efficiency = measure_efficiency(
            run.trainer,
            run.runtime_bytes,
            progress.generate_tokens_per_s,
            run.method,
            run.loaded.layout,
            plan,
            directory,
            final,
            load_base,
            timer,
        )
    del final
    run.result.efficiency = replace(
        efficiency, phase_seconds=dict(timer.seconds), other_cpu_share=timer.other_cpu_share(), wall_seconds=wall()
    )


def resume_or_start(
    resume: checkpoint.Saved | None,
    trainer: Trainer,
    progress: Progress,
    timer: PhaseTimer,
    zero_shot: EpochMetrics,
    directory: MethodDir,
    log_from: MethodDir | None,
    say: Callable[[str], None],
) -> Progress:
    """The progress training goes on from: restored from the checkpoint (with this session's phases so far added), or
    a fresh one whose epoch 0 is the zero-shot base model's validation. log.jsonl is cut to the checkpoint's lines (a
    selected trial's log, from log_from, becomes the method's)."""
    if resume:
        session, others = progress.phase_seconds, progress.phase_other_cpu_seconds
        progress = checkpoint.restore(resume, trainer)
        progress.add_phases(session, others)
        timer.seconds, timer.others = progress.phase_seconds, progress.phase_other_cpu_seconds
        say(f"resuming after epoch {trainer.epoch} of {trainer.options.epochs} from {resume.path}")
    if parallel.is_main():
        directory.keep_log(progress.log_lines, log_from)  # no line twice, none lost
    if not resume:
        progress.epochs.append(zero_shot)
        trainer.accelerator.log(validation_figures(zero_shot), step=0)
        if parallel.is_main():
            directory.append_log(log_record("validation", 0, 0, zero_shot))
    return progress


def finish_trial(trainer: Trainer, directory: rundir.TrialDir, result: MethodResult) -> None:
    """A search trial's stint is done: its record (trial.json) written, its checkpoint kept for the next rung."""
    if parallel.is_main():
        tracking.finish(trainer.accelerator)
        directory.write_record(result)
    parallel.wait_for_everyone()


def write(
    trainer: Trainer,
    directory: MethodDir,
    result: MethodResult,
    rows: list[dict[str, Any]],
    task_rows: list[dict[str, Any]] | None,
    resume_from: MethodDir | None,
) -> None:
    """The method's records: the trackers' last figures, predictions.jsonl (and the retention task's rows), then
    metrics.json (its presence means the method finished), and only then its checkpoints go."""
    test = result.test
    figures = {"test/loss": test.loss} | {f"test/{k}": v for k, v in test.scores.items()}
    if result.retention is not None:
        figures["retention/loss"] = result.retention.loss
    trainer.accelerator.log(figures | tracker_numbers(result.efficiency))
    tracking.finish(trainer.accelerator)
    write_records(directory, result, rows, task_rows)
    checkpoint.remove(resume_from or directory)


def retain(
    model,
    loaded: LoadedModel,
    evaluator: Evaluator,
    held_out: HeldOut,
    config: RunConfig,
    result: MethodResult,
    base: MethodResult | None = None,
) -> list[dict[str, Any]] | None:
    """What training cost the model (held_out, as the configuration asks): the loss on held-out text and the retention
    task's scores of model as it is deployed (an adapter unmerged computes what it merged does; virtual tokens
    included), with the base model's (base) beside them, into result; returns the retention task's rows (None
    without one)."""
    if held_out.texts is not None:
        result.retention = text_retention(model, loaded.layout, evaluator, held_out.texts, config.max_source_tokens)
        result.retention.base_loss = base.retention.loss if base and base.retention else None
    if held_out.task is None:
        return None
    other = held_out.task_config
    layout = loaded.prompted(PromptOptions.from_config(other))
    examples = held_out.task.test
    scorer = Evaluator(layout, EvalOptions.from_config(other), evaluator.device, evaluator.progress, evaluator.one_pass)
    scores, generation = scorer.evaluate(
        model, layout.encode(examples, token_limits(other)), examples, None, f"retention task {other.dataset}"
    )
    base_scores = base.retention_task.scores if base and base.retention_task else None
    result.retention_task = TaskRetention(
        other.dataset, other.task, len(examples), other.primary_metric, scores.metrics, base_scores
    )
    return generation_rows(examples, generation)


def text_retention(model, layout: Layout, evaluator: Evaluator, sample: TextSample, budget: int) -> Retention:
    """The model's loss on each held-out text, cut to budget tokens (forward passes only)."""
    items = layout.text_items(sample.texts, budget)
    nats = evaluator.item_losses(model, items)
    return Retention(sample.description, sample.ids, nats, [len(item.target) for item in items])


def write_records(
    directory: MethodDir, result: MethodResult, rows: list[dict[str, Any]], task_rows: list[dict[str, Any]] | None
) -> None:
    """A method's or reference's records: its predictions (and the retention task's), then metrics.json, last: its
    presence means the work is finished."""
    directory.write_predictions(rows)
    if task_rows is not None:
        directory.write_predictions(task_rows, retention_task=True)
    directory.write_result(result)


def run_zero_shot(
    splits: Splits, held_out: HeldOut, config: RunConfig
) -> tuple[MethodResult, list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The base model as loaded, before any method touches it (no adapter, no virtual tokens): on the validation
    split, the epoch 0 that every method of this seed shares, evaluated once; on the test split, a reference row;
    on held_out, what every method's forgetting is measured from. Returns its result, its test predictions and the
    retention task's (None without one)."""
    quiet_libraries()
    set_seed(config.seed)
    device, precision = parallel.state().device, mixed_precision(config.precision)
    loaded = setup_model(ModelSource.from_config(config), PromptOptions.from_config(config), device)
    data = setup_data(loaded.layout, splits, token_limits(config))
    evaluator = Evaluator(loaded.layout, EvalOptions.from_config(config), device, show_progress(config.quiet))
    _, total = count_parameters(loaded.model)
    resolved = config.to_dict() | model_settings(loaded, precision)
    result = MethodResult(ZERO_SHOT, loaded.name, splits.description, 0, total, resolved)
    with autocast(precision, device):
        validation, _ = evaluator.evaluate(
            loaded.model,
            data.validation.items,
            data.validation.examples,
            config.eval_generate_size,
            "zero-shot validation",
        )
        scores, generation = evaluator.evaluate(
            loaded.model, data.test.items, data.test.examples, None, "zero-shot test"
        )
        task_rows = retain(loaded.model, loaded, evaluator, held_out, config, result)
    result.epochs = [EpochMetrics(0, None, validation.loss, validation.metrics)]
    result.test = TestMetrics(scores.loss, scores.metrics)
    result.environment = environment()
    result.provenance = provenance(config.model, splits)
    return result, generation_rows(data.test.examples, generation), task_rows
