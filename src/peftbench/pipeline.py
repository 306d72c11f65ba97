"""The comparison: for each method, the same model, data and budget -> train, evaluate, write results."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from accelerate.utils import set_seed

from peftbench.config import ConfigError, RunConfig
from peftbench.data import Splits, encode, load_splits
from peftbench.evaluate import evaluate
from peftbench.methods import METHODS, Method, apply_method, check_method_names, count_parameters
from peftbench.models import LoadedModel, load_model
from peftbench.report import plot_curves
from peftbench.results import (
    EpochMetrics,
    MethodResult,
    TestMetrics,
    summary_table,
    write_metrics,
    write_predictions,
    write_summary,
)
from peftbench.train import Trainer, show_progress


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


def run_method(method: Method, splits: Splits, config: RunConfig, output: Path) -> MethodResult:
    """Fine-tune one method from a freshly loaded base model and write its results under output/<method>."""
    set_seed(config.seed)
    loaded = load_model(config.model, config.trust_remote_code)
    model = apply_method(method, loaded, config)
    trainable, total = count_parameters(model)
    lr = config.lr if config.lr is not None else method.default_lr
    tokenizer, seq2seq = loaded.tokenizer, loaded.is_seq2seq
    train_items, val_items, test_items = (
        encode(split, tokenizer, config, seq2seq, loaded.prefix, loaded.separator)
        for split in (splits.train, splits.validation, splits.test)
    )
    trainer = Trainer(model, train_items, tokenizer.pad_token_id, seq2seq, config, lr)
    device, progress = trainer.accelerator.device, show_progress(config)
    references = [ex.target for ex in splits.validation]
    result = MethodResult(
        method.name, loaded.name, splits.description, trainable, total, resolved_config(config, method, loaded, lr)
    )
    say = (lambda *_: None) if config.quiet else print
    say(f"[{method.name}] {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%), lr {lr:g}")

    def validate(epoch: int, train_loss: float | None) -> None:
        scores, _ = evaluate(
            trainer.unwrapped,
            tokenizer,
            val_items,
            references,
            seq2seq,
            config,
            device,
            progress,
            desc=f"validate epoch {epoch}",
        )
        result.epochs.append(
            EpochMetrics(epoch, train_loss, scores.loss, scores.rouge1, scores.rouge2, scores.rougeL, scores.bleu)
        )
        shown = "-" if train_loss is None else f"{train_loss:.4f}"
        say(
            f"[{method.name}] epoch {epoch}: train loss {shown}, val loss {scores.loss:.4f}, "
            f"ROUGE-L {scores.rougeL:.4f}, BLEU {scores.bleu:.2f}"
        )

    started = time.perf_counter()
    validate(0, None)
    for epoch in range(1, config.epochs + 1):
        validate(epoch, trainer.train_epoch())
    test_scores, predictions = evaluate(
        trainer.unwrapped,
        tokenizer,
        test_items,
        [ex.target for ex in splits.test],
        seq2seq,
        config,
        device,
        progress,
        desc="test",
    )
    result.test = TestMetrics(**vars(test_scores))

    directory = output / method.name
    directory.mkdir(parents=True, exist_ok=True)
    trainer.unwrapped.save_pretrained(directory / "adapter", safe_serialization=True)
    if method.peft_config is None:
        tokenizer.save_pretrained(directory / "adapter")  # a full model directory is loadable on its own
    write_predictions(
        directory,
        [
            {"id": ex.id, "source": ex.source, "reference": ex.target, "prediction": pred}
            for ex, pred in zip(splits.test, predictions, strict=True)
        ],
    )
    write_metrics(directory, result)
    plot_curves(result, directory / "curves.png")
    say(
        f"[{method.name}] test: loss {test_scores.loss:.4f}, ROUGE-L {test_scores.rougeL:.4f}, "
        f"BLEU {test_scores.bleu:.2f} ({time.perf_counter() - started:.0f} s)"
    )
    return result


def run(config: RunConfig) -> Path:
    """Run every configured method and write OUTPUT/<method>/ and OUTPUT/summary.md; returns OUTPUT."""
    check_method_names(config.methods)
    output = resolve_output(config)
    splits = load_splits(config)  # bad data fails here, before a model is loaded
    if not config.quiet:
        print(
            f"peftbench: {', '.join(config.methods)} on {config.model}; data: {splits.description}; "
            f"{len(splits.train)}/{len(splits.validation)}/{len(splits.test)} train/val/test examples; output {output}"
        )
    results = [run_method(METHODS[name], splits, config, output) for name in config.methods]
    header = (
        f"Model: {results[0].model}. Data: {splits.description}, {len(splits.train)} train / "
        f"{len(splits.validation)} validation / {len(splits.test)} test examples. "
        f"{config.epochs} epochs, seed {config.seed}."
    )
    write_summary(output, results, header)
    if not config.quiet:
        print("\n" + summary_table(results) + f"\nResults in {output}/")
    return output
