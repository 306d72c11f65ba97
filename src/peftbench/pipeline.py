"""The comparison: for each method, the same model, data and budget -> train, evaluate, measure, write results."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn

from peftbench import checkpoint, parallel, tracking
from peftbench.config import ConfigError, RunConfig
from peftbench.data import Example, Splits, encode, load_splits
from peftbench.evaluate import Evaluator
from peftbench.measure import directory_size, latency_ms, merge_agreement, merged_copy
from peftbench.methods import METHODS, Method, apply_method, check_method_names, count_parameters
from peftbench.models import LoadedModel, load_model
from peftbench.preflight import Plan, describe, preflight
from peftbench.report import plot_curves, write_report, write_seeds_summary
from peftbench.results import (
    FAILED_FILE,
    Efficiency,
    EpochMetrics,
    MethodResult,
    TestMetrics,
    read_metrics,
    summary_table,
    write_failure,
    write_metrics,
    write_predictions,
    write_summary,
)
from peftbench.tracking import check_trackers
from peftbench.train import Trainer, mixed_precision, show_progress


def quiet_libraries() -> None:
    """Keep the console for peftbench's own progress: no library progress bars or deprecation chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def resolve_output(config: RunConfig) -> Path:
    """The output directory (default runs/<timestamp>), created and checked writable before any work (a dry run
    only names it). With several processes, the main process's --output must be given: their clocks differ."""
    output = Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if config.dry_run:
        return output
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{parallel.rank()}"  # every process checks: each would fail alike
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {str(output)!r} is not writable: {exc.strerror or exc}") from None
    return output


def resolved_config(config: RunConfig, method: Method, loaded: LoadedModel, lr: float) -> dict:
    """The config as this method actually ran: effective learning rate and target modules filled in."""
    resolved = config.to_dict()
    resolved["lr"] = lr
    resolved["methods"] = [method.name]
    if method.peft_config is not None:
        for key, value in method.options(loaded, config).items():
            resolved[f"{method.name}_{key}"] = value
    resolved["model_kind"] = "seq2seq" if loaded.is_seq2seq else "causal"
    resolved["model_family"] = loaded.family
    return resolved


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


def method_dir(output: Path, name: str) -> Path:
    """output/<name>; refused if it would lie outside output (a name holding a path, or a symlink pointing away)."""
    if (output / name).resolve().parent != output.resolve():
        raise ConfigError(f"method directory {str(output / name)!r} would lie outside --output {str(output)!r}")
    return output / name


def run_method(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """Fine-tune one method from a freshly loaded base model, or resume it from its last checkpoint; checkpoint
    after every epoch; write its results under output/<method>."""
    quiet_libraries()
    method = METHODS[name]
    directory = method_dir(output, name)
    resume = checkpoint.latest(directory)
    set_seed(config.seed)
    loaded = load_model(config.model, config.trust_remote_code, config.allow_pickle, config.quantize)
    tokenizer, seq2seq = loaded.tokenizer, loaded.is_seq2seq
    train_items, val_items, test_items = (
        encode(split, tokenizer, config, seq2seq, loaded.prefix, loaded.separator)
        for split in (splits.train, splits.validation, splits.test)
    )
    device = parallel.state().device
    latency_items = test_items[: config.latency_prompts]
    if not config.quantize:
        loaded.model.to(device)  # a quantized model is placed on the GPU as it loads
    base_latency = None  # the pure pretrained model's, before any adapter exists; a resumed run measured it before
    if not resume and parallel.is_main():  # latency is one request on one device: the main process measures it
        base_latency = latency_ms(loaded.model, latency_items, tokenizer, seq2seq, config.latency_new_tokens, device)
    model = apply_method(method, loaded, config)
    trainable, total = count_parameters(model)
    lr = config.lr if config.lr is not None else method.default_lr
    trainer = Trainer(model, train_items, tokenizer.pad_token_id, seq2seq, config, lr)
    evaluator = Evaluator(tokenizer, seq2seq, config, device, show_progress(config))
    result = MethodResult(
        method.name, loaded.name, splits.description, trainable, total, resolved_config(config, method, loaded, lr)
    )
    tracking.start(trainer.accelerator, config, name, result.config)
    say = print if not config.quiet and parallel.is_main() else (lambda *_: None)
    say(f"[{name}] {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%), lr {lr:g}")

    def merged() -> nn.Module | None:
        # Generation runs on a merged copy where possible: no adapter detour in every layer at every new token.
        return merged_copy(trainer.unwrapped) if method.mergeable else None

    def validate(epoch: int, train_loss: float | None) -> None:
        references = [ex.target for ex in splits.validation]
        s, _ = evaluator.evaluate(trainer.unwrapped, val_items, references, merged(), config.eval_generate_size,
                                  f"validate epoch {epoch}")  # fmt: skip
        result.epochs.append(EpochMetrics(epoch, train_loss, s.loss, s.rouge1, s.rouge2, s.rougeL, s.bleu))
        trainer.accelerator.log({f"val/{k}": v for k, v in vars(s).items()}, step=epoch * len(trainer.loader))
        shown = "-" if train_loss is None else f"{train_loss:.4f}"
        scores = f"val loss {s.loss:.4f}, ROUGE-L {s.rougeL:.4f}, BLEU {s.bleu:.2f}"
        say(f"[{name}] epoch {epoch}: train loss {shown}, {scores}")

    started = time.perf_counter()
    if resume:
        progress = checkpoint.restore(resume, trainer)
        result.epochs = [EpochMetrics(**epoch) for epoch in progress["epochs"]]
        base_latency = progress["base_latency"]
        evaluator.generated_tokens, evaluator.generation_seconds = progress["generated"]
        say(f"[{name}] resuming after epoch {trainer.epoch} of {config.epochs} from {resume}")
    else:
        validate(0, None)
    for epoch in range(trainer.epoch + 1, config.epochs + 1):
        train_loss = trainer.train_epoch()
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            validate(epoch, train_loss)
        generated = [evaluator.generated_tokens, evaluator.generation_seconds]
        progress = {"epochs": [asdict(e) for e in result.epochs], "base_latency": base_latency, "generated": generated}
        checkpoint.save(directory, trainer, progress)
    final = merged()  # for the test generation, then latency and the merge check
    test_references = [ex.target for ex in splits.test]
    test_scores, test_generation = evaluator.evaluate(trainer.unwrapped, test_items, test_references, final, None,
                                                      "test")  # fmt: skip
    result.test = TestMetrics(**vars(test_scores))
    result.environment = environment()
    if parallel.is_main():  # the others hold the same results, but measure and write nothing
        result.efficiency = measure_efficiency(trainer, evaluator, method, loaded, latency_items, base_latency,
                                               directory, final)  # fmt: skip
        trainer.accelerator.log({f"test/{k}": v for k, v in vars(test_scores).items()} | _numbers(result.efficiency))
        tracking.finish(trainer.accelerator)
        write_results(directory, result, splits.test, test_generation.predictions)
        checkpoint.remove(directory)  # after metrics.json: from now on the method counts as finished
    del final
    parallel.wait_for_everyone()  # no process starts the next method while the main one writes this one's
    say(
        f"[{name}] test: loss {test_scores.loss:.4f}, ROUGE-L {test_scores.rougeL:.4f}, BLEU {test_scores.bleu:.2f}; "
        f"train {trainer.tokens / trainer.seconds:.1f} tok/s, peak {trainer.peak_memory / 2**20:,.0f} MiB "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return result


def measure_efficiency(
    trainer: Trainer,
    evaluator: Evaluator,
    method: Method,
    loaded: LoadedModel,
    items: list,
    base_latency: float,
    directory: Path,
    merged: nn.Module | None,
) -> Efficiency:
    """What the trained method costs: training figures, latencies (base given), merge agreement, adapter size.

    merged is the trained model's merged copy (None where the method cannot merge). Saves the adapter (for full
    fine-tuning, the whole model and tokenizer) to directory/adapter to measure it.
    """
    config, tokenizer, seq2seq, device = trainer.config, loaded.tokenizer, loaded.is_seq2seq, evaluator.device
    trained = trainer.unwrapped

    def latency(model) -> float:
        return latency_ms(model, items, tokenizer, seq2seq, config.latency_new_tokens, device)

    latencies = {"base": base_latency, "unmerged": latency(trained), "merged": latency(merged) if merged else None}
    merge_check = None
    if merged is not None:
        merge_check = merge_agreement(trained, merged, items, tokenizer, seq2seq, 16, device)
    directory.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(directory / "adapter", safe_serialization=True)
    adapter_size = directory_size(directory / "adapter")
    if method.peft_config is None:
        tokenizer.save_pretrained(directory / "adapter")  # a full model directory is loadable on its own
    trainable, total = count_parameters(trained)
    return Efficiency(
        trainable_params=trainable,
        trainable_pct=100 * trainable / total,
        peak_train_memory_bytes=trainer.peak_memory,
        memory_measure="cuda_max_memory_allocated" if torch.cuda.is_available() else "peak_rss",
        train_seconds=trainer.seconds,
        train_tokens_per_s=trainer.tokens / trainer.seconds,
        train_samples_per_s=trainer.samples / trainer.seconds,
        eval_generate_tokens_per_s=evaluator.generate_tokens_per_s,
        latency_ms=latencies,
        latency_new_tokens=config.latency_new_tokens,
        merge_check=merge_check,
        adapter_size_bytes=adapter_size,
    )


def write_results(directory: Path, result: MethodResult, test: list[Example], predictions: list[str]) -> None:
    """predictions.jsonl, curves.png, then metrics.json last: its presence means the method finished."""
    rows = [
        {"id": ex.id, "source": ex.source, "reference": ex.target, "prediction": prediction}
        for ex, prediction in zip(test, predictions, strict=True)
    ]
    write_predictions(directory, rows)
    plot_curves(result, directory / "curves.png")
    write_metrics(directory, result)


def _numbers(efficiency: Efficiency) -> dict[str, float]:
    """The efficiency figures a tracker can plot (numbers only; latencies flattened)."""
    flat = {f"efficiency/{k}": v for k, v in asdict(efficiency).items() if isinstance(v, int | float)}
    flat |= {f"efficiency/latency_ms_{k}": v for k, v in efficiency.latency_ms.items() if v is not None}
    return flat


def run_method_isolated(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """run_method in a fresh process, so that one method's memory peak cannot leak into another's figures.

    Under torchrun or accelerate launch the methods run in the launched processes, which form the process group.
    """
    if config.in_process or parallel.processes() > 1:
        return run_method(name, splits, config, output)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_method, name, splits, config, output).result()


@dataclass
class Failure:
    message: str
    user_facing: bool  # a cause the user can fix (exit code 2), not a bug (exit code 1, with a traceback)


def describe_failure(exc: BaseException, config: RunConfig) -> Failure:
    """What to tell the user about a failed method: the error, and for running out of memory what to change."""
    smaller = (
        f"lower --batch-size (now {config.batch_size}; raise --grad-accum to keep the effective batch), "
        "--eval-batch-size or --max-source-tokens, or add --gradient-checkpointing"
    )
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return Failure(f"out of GPU memory ({str(exc).splitlines()[0] if str(exc) else 'CUDA'}); {smaller}", True)
    if isinstance(exc, BrokenProcessPool):
        return Failure(
            f"its process died (out of memory, or killed); {smaller}. Rerunning the same command resumes it "
            "from its last checkpoint",
            True,
        )
    if isinstance(exc, ConfigError):
        return Failure(str(exc), True)
    return Failure(f"{type(exc).__name__}: {exc}", False)


def run_method_recorded(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """run_method_isolated, unless the method already finished here (check_output made sure it is this config's);
    a failure leaves output/<method>/failed.json (then propagates) for the summary and the report."""
    directory = method_dir(output, name)
    main = parallel.is_main()  # the one process that writes; the others read what it wrote (a shared filesystem)
    finished = not config.force and (directory / "metrics.json").is_file()
    parallel.wait_for_everyone()  # every process decided before the main one changes the directory
    if finished:
        if main:
            checkpoint.remove(directory)  # left behind if the run was killed between metrics.json and its clean-up
            if not config.quiet:
                print(f"[{name}] already finished in {directory}; skipped (--force reruns it)")
        return read_metrics(directory)
    if main:
        if config.force:
            shutil.rmtree(directory, ignore_errors=True)  # start over: no checkpoint, result or failure of before
        checkpoint.write_fingerprint(directory, config)
    parallel.wait_for_everyone()  # and before the others look for a checkpoint to resume from
    try:
        result = run_method_isolated(name, splits, config, output)
    except Exception as exc:
        if main:
            write_failure(directory, name, config.model, config.seed, describe_failure(exc, config).message)
        raise
    if main:
        (directory / FAILED_FILE).unlink(missing_ok=True)  # a success replaces an earlier failure in the same place
    return result


def run_seed(config: RunConfig, splits: Splits, output: Path) -> dict[str, Failure]:
    """One complete comparison with config.seed: every method under output/<method>/, then output/summary.md.

    A failing method does not stop the others: it is reported, marked failed in the summary, and returned.
    """
    results, failures = [], {}
    for name in config.methods:
        try:
            results.append(run_method_recorded(name, splits, config, output))
        except Exception as exc:  # one method's failure must not cost the others their results
            failures[name] = describe_failure(exc, config)
            if not failures[name].user_facing:
                traceback.print_exception(exc)  # a bug: its traceback (the method process's too) helps fix it
            if parallel.is_main():
                print(f"peftbench: {name} failed: {failures[name].message}", file=sys.stderr)
    if not parallel.is_main():
        return failures
    model = results[0].model if results else config.model
    header = (
        f"Model: {model}. Data: {splits.description}, {len(splits.train)} train / "
        f"{len(splits.validation)} validation / {len(splits.test)} test examples. "
        f"{config.epochs} epochs, seed {config.seed}."
    )
    messages = {name: failure.message for name, failure in failures.items()}
    write_summary(output, results, header, messages)
    if not config.quiet:
        print("\n" + summary_table(results, messages) + f"\nResults in {output}/")
    return failures


class MethodsFailed(ConfigError):
    """Some methods failed; the others' results, the summary and the report are written. The CLI exits with
    exit_code: 2 when every failure has a cause the user can fix, 1 when one looks like a bug."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def check_before_loading(config: RunConfig) -> Path:
    """Every check that needs neither data nor a model; returns the output directory (created unless --dry-run)."""
    check_method_names(config.methods)
    mixed_precision(config)  # an impossible --precision fails now, not after loading a model
    check_processes(config)
    check_trackers(config)
    output = resolve_output(config)
    for name in config.methods:
        method_dir(output, name)
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
    if config.output is None:
        raise ConfigError(f"with {count} processes, give --output: each would otherwise name its own directory")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ConfigError("FSDP is not supported yet: launch without an FSDP config to train with DDP")
    if config.quantize:
        raise ConfigError("--quantize runs on one GPU: launch it without torchrun or accelerate launch")


def dry_run(config: RunConfig, plan: Plan, output: Path) -> None:
    """Print the plan and what the same command would do with each method already in OUTPUT."""
    print(describe(config, plan))
    seeds = config.seeds or [config.seed]
    for seed in seeds:
        parent = output if len(seeds) == 1 else output / f"seed-{seed}"
        for name in config.methods:
            directory, state = parent / name, "runs"
            last = checkpoint.latest(directory)
            if config.force:
                state = "runs from the start (--force)"
            elif (directory / "metrics.json").is_file():
                state = "already finished: skipped"
            elif last is not None:
                state = f"resumes after {last.name.replace('-', ' ')}"
            print(f"  {directory}: {state}")
    print("Dry run: nothing trained or written.")


def run(config: RunConfig) -> Path:
    """Run every configured method and write OUTPUT/<method>/, OUTPUT/summary.md and the report; returns OUTPUT.

    Everything that can be checked before loading a model is checked first. Finished methods are skipped and
    interrupted ones resume from their last epoch's checkpoint. With several --seeds, each seed is a complete run in
    OUTPUT/seed-<s>/, and OUTPUT/summary.md and the report give each figure's mean and confidence interval over the
    seeds. The data split is the same for every seed. Methods that fail are reported after the others finished.
    """
    output = check_before_loading(config)
    splits = load_splits(config)  # bad data fails here, before a model is loaded
    plan = preflight(config, splits)  # the model's architecture only: targets, lengths, parameter and token counts
    checkpoint.check_output(output, config)  # another configuration's results are never mixed with, or lost to, ours
    if config.dry_run:
        if parallel.is_main():
            dry_run(config, plan, output)
        return output
    seeds = config.seeds or [config.seed]
    if not config.quiet and parallel.is_main():
        print(
            f"peftbench: {', '.join(config.methods)} on {config.model}; data: {splits.description}; "
            f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)} train/val/test examples; "
            f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}; output {output}"
            + ("" if config.output else " (to resume after an interruption, rerun with --output set to it)")
        )
    failures = {}
    for seed in seeds:
        directory = output if len(seeds) == 1 else output / f"seed-{seed}"
        failed = run_seed(dataclasses.replace(config, seed=seed, output=str(directory)), splits, directory)
        failures |= {(name if len(seeds) == 1 else f"{name} (seed {seed})"): f for name, f in failed.items()}
    if len(seeds) > 1 and parallel.is_main():
        write_seeds_summary(output)
    if parallel.is_main():
        markdown, page = write_report([output])
        if not config.quiet:
            print(f"Report: {markdown} and {page}")
    if failures:
        runs = len(seeds) * len(config.methods)
        listed = "; ".join(f"{name}: {failure.message}" for name, failure in failures.items())
        raise MethodsFailed(
            f"{len(failures)} of {runs} method runs failed ({listed}). The others' results, summary.md and the "
            f"report are in {output}",
            exit_code=2 if all(f.user_facing for f in failures.values()) else 1,
        )
    return output
