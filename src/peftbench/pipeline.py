"""The comparison: for each method, the same model, data and budget -> train, evaluate, measure, write results."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from peftbench.config import ConfigError, RunConfig
from peftbench.data import Splits, encode, load_splits
from peftbench.evaluate import Evaluator
from peftbench.measure import directory_size, latency_ms, merge_agreement, merged_copy
from peftbench.methods import METHODS, Method, apply_method, check_method_names, count_parameters
from peftbench.models import LoadedModel, load_model
from peftbench.report import plot_curves, write_report, write_seeds_summary
from peftbench.results import (
    FAILED_FILE,
    Efficiency,
    EpochMetrics,
    MethodResult,
    TestMetrics,
    summary_table,
    write_failure,
    write_metrics,
    write_predictions,
    write_summary,
)
from peftbench.train import Trainer, mixed_precision, show_progress


def quiet_libraries() -> None:
    """Keep the console for peftbench's own progress: no library progress bars or deprecation chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def resolve_output(config: RunConfig) -> Path:
    """The output directory (default runs/<timestamp>), created and checked writable before any work."""
    output = Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
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
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def run_method(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """Fine-tune one method from a freshly loaded base model; write its results under output/<method>."""
    quiet_libraries()
    method = METHODS[name]
    set_seed(config.seed)
    loaded = load_model(config.model, config.trust_remote_code)
    tokenizer, seq2seq = loaded.tokenizer, loaded.is_seq2seq
    train_items, val_items, test_items = (
        encode(split, tokenizer, config, seq2seq, loaded.prefix, loaded.separator)
        for split in (splits.train, splits.validation, splits.test)
    )
    device = PartialState().device
    latency_items = test_items[: config.latency_prompts]

    def latency(model) -> float:
        return latency_ms(model, latency_items, tokenizer, seq2seq, config.latency_new_tokens, device)

    base_latency = latency(loaded.model.to(device))  # the pure pretrained model, before any adapter exists
    model = apply_method(method, loaded, config)
    trainable, total = count_parameters(model)
    lr = config.lr if config.lr is not None else method.default_lr
    trainer = Trainer(model, train_items, tokenizer.pad_token_id, seq2seq, config, lr)
    evaluator = Evaluator(tokenizer, seq2seq, config, device, show_progress(config))
    result = MethodResult(
        method.name, loaded.name, splits.description, trainable, total, resolved_config(config, method, loaded, lr)
    )
    say = (lambda *_: None) if config.quiet else print
    say(f"[{name}] {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%), lr {lr:g}")
    mergeable = method.mergeable and method.peft_config is not None

    def evaluate(items, references, generate_count, desc):
        # Generation runs on a merged copy where possible: no adapter detour in every layer at every new token.
        unmerged = trainer.unwrapped
        generation_model = merged_copy(unmerged) if mergeable else None
        scores, generation = evaluator.evaluate(unmerged, items, references, generation_model, generate_count, desc)
        del generation_model
        return scores, generation

    def validate(epoch: int, train_loss: float | None) -> None:
        references = [ex.target for ex in splits.validation]
        s, _ = evaluate(val_items, references, config.eval_generate_size, f"validate epoch {epoch}")
        result.epochs.append(EpochMetrics(epoch, train_loss, s.loss, s.rouge1, s.rouge2, s.rougeL, s.bleu))
        shown = "-" if train_loss is None else f"{train_loss:.4f}"
        scores = f"val loss {s.loss:.4f}, ROUGE-L {s.rougeL:.4f}, BLEU {s.bleu:.2f}"
        say(f"[{name}] epoch {epoch}: train loss {shown}, {scores}")

    started = time.perf_counter()
    validate(0, None)
    for epoch in range(1, config.epochs + 1):
        train_loss = trainer.train_epoch()
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            validate(epoch, train_loss)
    test_scores, test_generation = evaluate(test_items, [ex.target for ex in splits.test], None, "test")
    result.test = TestMetrics(**vars(test_scores))

    trained = trainer.unwrapped
    merged = merged_copy(trained) if mergeable else None
    latencies = {"base": base_latency, "unmerged": latency(trained), "merged": latency(merged) if merged else None}
    merge_check = None
    if merged is not None:
        merge_check = merge_agreement(trained, merged, latency_items, tokenizer, seq2seq, 16, device)
        del merged

    directory = output / method.name
    directory.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(directory / "adapter", safe_serialization=True)
    adapter_size = directory_size(directory / "adapter")
    if method.peft_config is None:
        tokenizer.save_pretrained(directory / "adapter")  # a full model directory is loadable on its own
    result.efficiency = Efficiency(
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
    result.environment = environment()
    rows = [
        {"id": ex.id, "source": ex.source, "reference": ex.target, "prediction": prediction}
        for ex, prediction in zip(splits.test, test_generation.predictions, strict=True)
    ]
    write_predictions(directory, rows)
    write_metrics(directory, result)
    plot_curves(result, directory / "curves.png")
    say(
        f"[{name}] test: loss {test_scores.loss:.4f}, ROUGE-L {test_scores.rougeL:.4f}, BLEU {test_scores.bleu:.2f}; "
        f"train {result.efficiency.train_tokens_per_s:.1f} tok/s, peak {trainer.peak_memory / 2**20:,.0f} MiB "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return result


def run_method_isolated(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """run_method in a fresh process, so that one method's memory peak cannot leak into another's figures."""
    if config.in_process:
        return run_method(name, splits, config, output)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_method, name, splits, config, output).result()


def run_method_recorded(name: str, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """run_method_isolated; a failure leaves output/<method>/failed.json (then propagates) for the report."""
    directory = output / name
    try:
        result = run_method_isolated(name, splits, config, output)
    except Exception as exc:
        write_failure(directory, name, config.model, config.seed, f"{type(exc).__name__}: {exc}")
        raise
    (directory / FAILED_FILE).unlink(missing_ok=True)  # a success replaces an earlier failure in the same place
    return result


def run_seed(config: RunConfig, splits: Splits, output: Path) -> list[MethodResult]:
    """One complete comparison with config.seed: every method under output/<method>/, then output/summary.md."""
    results = [run_method_recorded(name, splits, config, output) for name in config.methods]
    header = (
        f"Model: {results[0].model}. Data: {splits.description}, {len(splits.train)} train / "
        f"{len(splits.validation)} validation / {len(splits.test)} test examples. "
        f"{config.epochs} epochs, seed {config.seed}."
    )
    write_summary(output, results, header)
    if not config.quiet:
        print("\n" + summary_table(results) + f"\nResults in {output}/")
    return results


def run(config: RunConfig) -> Path:
    """Run every configured method and write OUTPUT/<method>/, OUTPUT/summary.md and the report; returns OUTPUT.

    With several --seeds, each seed is a complete run in OUTPUT/seed-<s>/, and OUTPUT/summary.md and the report
    give each figure's mean and confidence interval over the seeds. The data split is the same for every seed.
    """
    check_method_names(config.methods)
    mixed_precision(config)  # an impossible --precision fails now, not after loading a model
    output = resolve_output(config)
    splits = load_splits(config)  # bad data fails here, before a model is loaded
    seeds = config.seeds or [config.seed]
    if not config.quiet:
        print(
            f"peftbench: {', '.join(config.methods)} on {config.model}; data: {splits.description}; "
            f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)} train/val/test examples; "
            f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}; output {output}"
        )
    for seed in seeds:
        directory = output if len(seeds) == 1 else output / f"seed-{seed}"
        run_seed(dataclasses.replace(config, seed=seed, output=str(directory)), splits, directory)
    if len(seeds) > 1:
        write_seeds_summary(output)
    markdown, page = write_report([output])
    if not config.quiet:
        print(f"Report: {markdown} and {page}")
    return output
