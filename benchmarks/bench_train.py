"""Training throughput: peftbench's own loop against the Hugging Face Trainer + peft, side by side.

For each method (full, lora, ia3) the same model is fine-tuned on the same examples, with the same
hyperparameters and the same number of optimizer steps, three ways:

  a  peftbench.training.trainer.Trainer (length-grouped batches, per-batch left padding, LM head on targets only)
  b  HF Trainer + DataCollatorForSeq2Seq(padding=True), as documented (Seq2SeqTrainer differs only in evaluation)
  c  the original study: the same HF setup, but every example padded to 512 tokens

Every (method, variant) runs in its own freshly spawned process, one at a time, so memory peaks do not leak
across runs and no run competes with another for the CPU. Real tokens (non-padding) are identical for all
variants, so real tokens/s compares them directly.

    python benchmarks/bench_train.py [--model M] [--dataset D] [--methods full,lora,ia3] [--steps 6]
        [--batch-size 4] [--max-source-tokens 384] [--max-target-tokens 64] [--variants a,b,c] [--truncate]
        [--json PATH]

Examples are whole articles that fit --max-source-tokens (lengths vary as in real data); --truncate uses the
first articles cut to that length instead, where nearly every row is equally long and padding barely exists.

The goals (a/b >= 1.5 for every method, MFU(a) >= 80%) are reported as PASS/MISS; nothing adapts to meet them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.splits import load_splits
from peftbench.errors import ConfigError
from peftbench.measure.memory import peak_memory_bytes, reset_peak_memory
from peftbench.measure.timing import matmul_flops_per_s, sync_device
from peftbench.methods.apply import apply_method, build_optimizer, count_parameters
from peftbench.methods.registry import METHODS, check_method_names
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import IGNORE_INDEX, Encoded, Layout, TokenLimits
from peftbench.model.load import LoadedModel, load_model
from peftbench.pipeline.console import quiet_libraries
from peftbench.training.trainer import Trainer, TrainOptions, mixed_precision

FIXED_LENGTH = 512  # the original study padded every example to this many tokens (variant c)
VARIANTS = {
    "a": "peftbench Trainer",
    "b": "HF Trainer, per-batch pad",
    "c": f"HF Trainer, pad to {FIXED_LENGTH}",
}
GOAL_A_OVER_B = 1.5
GOAL_MFU = 0.8  # on this host class (2-core AVX2 CPU, fp32)
BUSY_LOAD = 0.5  # 1-minute load average above which something else competes for the cores we time on


@dataclass(frozen=True)
class Settings:
    """What every child needs to rebuild the identical run; small and picklable for the spawned processes."""

    model: str
    steps: int
    batch_size: int
    max_source_tokens: int
    max_target_tokens: int
    whole_articles: bool = True
    seed: int = 0
    dataset: str = EMBEDDED

    def run_config(self) -> RunConfig:
        # train_size = steps x batch_size with one epoch and no accumulation: exactly `steps` optimizer steps.
        config = RunConfig(
            model=self.model,
            dataset=self.dataset,
            train_size=self.steps * self.batch_size,
            eval_size=1,
            test_size=1,
            batch_size=self.batch_size,
            max_source_tokens=self.max_source_tokens,
            max_target_tokens=self.max_target_tokens,
            epochs=1,
            seed=self.seed,
            quiet=True,
        )
        config.validate()
        return config


# ---------------------------------------------------------------------------------------------- child side


def load_and_encode(settings: Settings) -> tuple[LoadedModel, list[Encoded]]:
    """The model and peftbench's own encoding of the training examples (the data every variant trains on).

    With whole_articles, the examples are the first training articles that fit --max-source-tokens untruncated,
    so lengths vary as real data does; truncating long articles to the cap would make nearly every row equally
    long, and padding (what a/b and a/c measure) would barely exist.
    """
    from transformers import set_seed

    config = settings.run_config()
    set_seed(config.seed)  # same LoRA/IA3 initialisation in every child
    loaded = load_model(config.model)
    wanted, limits = config.train_size, TokenLimits(config.max_source_tokens, config.max_target_tokens)
    if not settings.whole_articles:
        return loaded, loaded.layout.encode(load_splits(config).train, limits)
    pool = _article_pool(config)
    cut = loaded.layout.encode(pool, limits)
    whole = loaded.layout.encode(pool, dataclasses.replace(limits, source=10**9))
    items = [c for c, w in zip(cut, whole, strict=True) if c.prompt == w.prompt][:wanted]
    if len(items) < wanted:
        raise ConfigError(
            f"only {len(items)} of {len(pool)} training articles fit --max-source-tokens {config.max_source_tokens} "
            f"untruncated; need {wanted} (--steps x --batch-size): lower those, raise --max-source-tokens, "
            "or pass --truncate"
        )
    return loaded, items


def _article_pool(config: RunConfig):
    """As many training examples as the data has, up to 4,000, to pick fitting articles from."""
    for size in (4000, 1000, 250, config.train_size):
        try:
            return load_splits(dataclasses.replace(config, train_size=size)).train
        except ConfigError:
            continue
    return load_splits(config).train


def real_tokens(items: list[Encoded]) -> int:
    return sum(it.length for it in items)


def longest_row(items: list[Encoded], layout: Layout) -> int:
    """Longest row any collator must hold (the model's inputs or its labels)."""
    return max(len(values) for it in items for values in layout.row(it).values())


def inspect_run(settings: Settings) -> dict:
    """Preflight child: data and model facts for the header, and a clear failure before any timed run.

    For the embedded model this is also where the one-time GGUF conversion happens, outside every timed child.
    """
    quiet_libraries()
    loaded, items = load_and_encode(settings)
    return {
        "model": loaded.name,
        "family": loaded.family.name,
        "kind": loaded.layout.kind,
        "base_params": count_parameters(loaded.model)[1],
        "examples": len(items),
        "real_tokens": real_tokens(items),
        "longest_row": longest_row(items, loaded.layout),
        "mean_prompt": sum(len(it.prompt) for it in items) / len(items),
        "mean_target": sum(len(it.target) for it in items) / len(items),
    }


class CountingCollator:
    """Wraps a collate function and tallies what it hands the model: batches, positions (every padded slot the
    model processes) and real tokens, as the model's layout counts them."""

    def __init__(self, collate, layout: Layout):
        self.collate, self.layout = collate, layout
        self.batches = self.positions = self.real = 0

    def __call__(self, *args, **kwargs):
        batch = self.collate(*args, **kwargs)
        self.batches += 1
        self.positions += self.layout.padded_positions(batch)
        self.real += self.layout.real_tokens(batch)
        return batch


def build_peftbench(model, loaded: LoadedModel, items: list[Encoded], config: RunConfig, optimizer):
    """Variant a. Returns (train callable, counter, loop timer or None)."""
    options = TrainOptions.from_config(config, mixed_precision(config.precision))
    trainer = Trainer(model, optimizer, items, loaded.layout, options)
    # The sampler's first-epoch batches are exactly those the loop will consume; collating them here (outside the
    # timed call) counts the same positions and real tokens the model will see.
    counter = CountingCollator(loaded.layout.collate, loaded.layout)
    for indices in trainer.sampler.batches(0):
        counter([items[i] for i in indices])
    return trainer.train_epoch, counter, None


class _ListDataset(torch.utils.data.Dataset):
    """A datasets-free dataset of feature dicts, as the HF Trainer accepts."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def hf_arguments(config: RunConfig, lr: float, steps: int, output_dir: str):
    """Default TrainingArguments except what equal budgets and quiet timing need."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=lr,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        # An integer step count, computed as peftbench does (round): HF would take ceil() of a ratio.
        warmup_steps=round(config.warmup_ratio * steps),
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=config.seed,
        disable_tqdm=True,
        use_cpu=not cuda,
        # Match peftbench's accelerator: bf16 autocast only on GPUs that support it; never on CPU.
        bf16=cuda and torch.cuda.is_bf16_supported(),
    )


def build_hf(
    model, loaded: LoadedModel, items: list[Encoded], config: RunConfig, lr: float, steps: int, fixed: bool, out: str
):
    """Variants b (per-batch padding) and c (fixed 512). Returns (train callable, counter, loop timer)."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback

    class LoopTimer(TrainerCallback):
        """Times the loop itself (after optimizer creation and accelerate's prepare) to show HF's setup share."""

        begin = end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"  # the usual training layout; some chat tokenizers default to left
    padding = {"padding": "max_length", "max_length": FIXED_LENGTH} if fixed else {"padding": True}
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX, **padding)
    counter = CountingCollator(collator, loaded.layout)
    timer = LoopTimer()
    # Trainer for both kinds: Seq2SeqTrainer only adds generation to evaluation, which is not timed here.
    trainer = Trainer(
        model=model,
        args=hf_arguments(config, lr, steps, out),
        # The same token ids laid out as a typical HF user would: prompt tokens masked out of a causal model's loss.
        train_dataset=_ListDataset([loaded.layout.row(it) for it in items]),
        data_collator=counter,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm disabled it would print the final metrics dict
    return trainer.train, counter, timer


def measure_run(settings: Settings, method_name: str, variant: str) -> dict:
    """Child: load, apply the method, build the variant's trainer, then time one training call and its peak memory."""
    quiet_libraries()
    config = settings.run_config()
    loaded, items = load_and_encode(settings)
    method, method_settings = METHODS[method_name], MethodSettings.from_config(config)
    model = apply_method(method, loaded, method_settings)
    trainable = count_parameters(model)[0]
    lr = method.default_lr
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        if variant == "a":
            optimizer = build_optimizer(method, model, lr, method_settings)
            train, counter, timer = build_peftbench(model, loaded, items, config, optimizer)
        else:
            train, counter, timer = build_hf(model, loaded, items, config, lr, settings.steps, variant == "c", out)
        reset_peak_memory()
        start = time.perf_counter()
        train()
        sync_device()
        seconds = time.perf_counter() - start
        peak = peak_memory_bytes()
    return {
        "seconds": seconds,
        "loop_seconds": (timer.end - timer.begin) if timer else seconds,
        "real_tokens": real_tokens(items),
        "real_tokens_in_batches": counter.real,
        "positions": counter.positions,
        "batches": counter.batches,
        "peak_bytes": peak,
        "trainable_params": trainable,
        "lr": lr,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- parent side


def in_fresh_process(fn, *args):
    """Run fn(*args) in a newly spawned process and wait for it; one child at a time, never in parallel."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(fn, *args).result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="hub id or local directory (default: embedded SmolLM2)")
    parser.add_argument("--dataset", default=EMBEDDED, help="as peftbench run's (default: the embedded CNN/DM sample)")
    parser.add_argument("--methods", default="full,lora,ia3", help="comma list (default: full,lora,ia3)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default: 6)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (default: 4)")
    parser.add_argument("--max-source-tokens", type=int, default=384, help="article tokens kept (default: 384)")
    parser.add_argument("--max-target-tokens", type=int, default=64, help="summary tokens kept (default: 64)")
    parser.add_argument("--variants", default="a,b,c", help="comma list of a, b, c (default: a,b,c)")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="use the first training articles truncated to --max-source-tokens (nearly uniform lengths) instead of "
        "whole articles that fit (variable lengths, the default)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if not args.methods:
        parser.error("--methods is empty; give a comma list such as full,lora,ia3")
    try:
        check_method_names(args.methods)
        settings_of(args).run_config()  # the same range checks as peftbench's own flags
    except ConfigError as exc:
        parser.error(str(exc))
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants must be a comma list of {', '.join(VARIANTS)}; got {unknown or 'nothing'}")
    if "c" in args.variants and args.max_source_tokens + args.max_target_tokens > FIXED_LENGTH:
        parser.error(
            f"variant c pads to {FIXED_LENGTH} tokens, so --max-source-tokens + --max-target-tokens must be at most "
            f"{FIXED_LENGTH} (got {args.max_source_tokens} + {args.max_target_tokens}); lower them or drop c"
        )
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        args.model,
        args.steps,
        args.batch_size,
        args.max_source_tokens,
        args.max_target_tokens,
        not args.truncate,
        dataset=args.dataset,
    )


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()}, bf16 autocast where supported)"
    return "cpu (fp32)"


def header_lines(args: argparse.Namespace, info: dict, flops: float, load: float) -> list[str]:
    return [
        "bench_train: peftbench Trainer (a) vs HF Trainer + peft, per-batch padding (b) vs padded to "
        f"{FIXED_LENGTH} (c)",
        f"model: {info['model']} ({info['family']}, {info['kind']}, {info['base_params']:,} parameters)",
        f"steps: {args.steps}, batch size: {args.batch_size}, {info['examples']} examples, "
        f"{info['real_tokens']:,} real tokens",
        f"{'articles truncated to' if args.truncate else 'whole articles of at most'} {args.max_source_tokens} tokens, "
        f"targets <= {args.max_target_tokens} tokens; mean prompt "
        f"{info['mean_prompt']:.0f}, mean target {info['mean_target']:.0f}, longest row {info['longest_row']}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device_name()}, "
        f"fp32 matmul rate {flops / 1e9:.1f} GFLOP/s",
        f"load average at start: {load:.2f}"
        + (" (the CPU was busy in the last minute: timings may be noisy)" if load > BUSY_LOAD else ""),
        f"goals: a/b >= {GOAL_A_OVER_B} for every method; MFU(a) >= {GOAL_MFU:.0%}",
    ]


def derived(run: dict) -> dict:
    """Throughput and padding share of one child's raw figures."""
    padding = 1 - run["real_tokens_in_batches"] / run["positions"] if run["positions"] else 0.0
    return {**run, "tokens_per_s": run["real_tokens"] / run["seconds"], "padding_fraction": padding}


def method_summary(method: str, runs: dict[str, dict], base_params: int, flops: float) -> dict:
    """Ratios, MFU of a, and the goal verdicts for one method."""
    summary: dict = {"runs": runs}
    if "a" in runs and "b" in runs:
        summary["a_over_b"] = runs["a"]["tokens_per_s"] / runs["b"]["tokens_per_s"]
        summary["a_over_b_pass"] = summary["a_over_b"] >= GOAL_A_OVER_B
        # Informational only: peftbench's setup is outside its timed call, HF's inside; this drops HF's too.
        summary["a_over_b_loop_only"] = runs["b"]["loop_seconds"] / runs["a"]["seconds"]
    if "a" in runs and "c" in runs:
        summary["a_over_c"] = runs["a"]["tokens_per_s"] / runs["c"]["tokens_per_s"]
    if "a" in runs:
        # 6N FLOPs per token with every weight training; 4N when the base is frozen (no weight gradients).
        summary["flops_per_token"] = (6 if method == "full" else 4) * base_params
        summary["mfu_a"] = summary["flops_per_token"] * runs["a"]["tokens_per_s"] / flops
        summary["mfu_a_pass"] = summary["mfu_a"] >= GOAL_MFU
    return summary


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def method_lines(method: str, summary: dict, expected_tokens: int, steps: int) -> list[str]:
    runs = summary["runs"]
    lr = next(iter(runs.values()))["lr"]
    lines = [
        "",
        f"[{method}] lr {lr:g}",
        f"  {'variant':<30} {'real tok/s':>11} {'seconds':>9} {'padding %':>10} {'peak MB':>9}",
    ]
    for variant, run in runs.items():
        lines.append(
            f"  {variant + ' ' + VARIANTS[variant]:<30} {run['tokens_per_s']:>11,.1f} {run['seconds']:>9.2f} "
            f"{100 * run['padding_fraction']:>9.1f}% {run['peak_bytes'] / 1e6:>9,.0f}"
        )
    setup = [f"{v} {run['seconds'] - run['loop_seconds']:.2f} s" for v, run in runs.items() if v != "a"]
    if setup:
        # peftbench builds its optimizer before the timed call, HF inside train(): show how much that is.
        lines.append(f"  (HF Trainer.train() before its first step: {', '.join(setup)})")
    for variant, run in runs.items():
        if run["real_tokens_in_batches"] != expected_tokens or run["batches"] != steps:
            lines.append(
                f"  WARNING {variant}: {run['batches']} batches with {run['real_tokens_in_batches']:,} real tokens, "
                f"expected {steps} with {expected_tokens:,}"
            )
    if "a_over_b" in summary:
        lines.append(
            f"  a/b {summary['a_over_b']:.2f}x  {verdict(summary['a_over_b_pass'])} (goal >= {GOAL_A_OVER_B}; "
            f"{summary['a_over_b_loop_only']:.2f}x against b's loop alone, not a goal)"
        )
    if "a_over_c" in summary:
        lines.append(f"  a/c {summary['a_over_c']:.2f}x")
    if "mfu_a" in summary:
        factor = 6 if method == "full" else 4
        lines.append(
            f"  MFU(a) {summary['mfu_a']:.1%}  {verdict(summary['mfu_a_pass'])} (goal >= {GOAL_MFU:.0%}; "
            f"{factor}N = {summary['flops_per_token']:.3g} FLOP/token x {runs['a']['tokens_per_s']:,.1f} tok/s)"
        )
    return lines


def goal_lines(summaries: dict[str, dict]) -> list[str]:
    """One line per goal across all methods, so the verdict is readable without scrolling back."""
    lines = ["", "goals:"]
    ratio = {m: s for m, s in summaries.items() if "a_over_b" in s}
    if ratio:
        shown = ", ".join(f"{m} {s['a_over_b']:.2f}x {verdict(s['a_over_b_pass'])}" for m, s in ratio.items())
        overall = verdict(all(s["a_over_b_pass"] for s in ratio.values()))
        lines.append(f"  a/b >= {GOAL_A_OVER_B} for every method: {overall} ({shown})")
    mfu = {m: s for m, s in summaries.items() if "mfu_a" in s}
    if mfu:
        shown = ", ".join(f"{m} {s['mfu_a']:.1%} {verdict(s['mfu_a_pass'])}" for m, s in mfu.items())
        lines.append(f"  MFU(a) >= {GOAL_MFU:.0%}: {verdict(all(s['mfu_a_pass'] for s in mfu.values()))} ({shown})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Children inherit the environment: no tokenizer thread pools competing with torch's.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = settings_of(args)
    load = os.getloadavg()[0]  # before any process of ours adds to it
    try:
        info = in_fresh_process(inspect_run, settings)
    except ConfigError as exc:
        # peftbench words it in its own flags; the train size here is --steps x --batch-size.
        print(f"bench_train: {exc}".replace("--train-size", "--steps x --batch-size ="), file=sys.stderr)
        return 2
    if "c" in args.variants and info["longest_row"] > FIXED_LENGTH:
        print(
            f"bench_train: a row is {info['longest_row']} tokens (the separator, and BOS if any, come on top of "
            f"the source), more than variant c's {FIXED_LENGTH}; lower --max-source-tokens",
            file=sys.stderr,
        )
        return 2
    flops = matmul_flops_per_s()  # measured here, before the children, while nothing else of ours runs
    print("\n".join(header_lines(args, info, flops, load)), flush=True)

    summaries = {}
    for method in args.methods:
        runs = {v: derived(in_fresh_process(measure_run, settings, method, v)) for v in args.variants}
        summaries[method] = method_summary(method, runs, info["base_params"], flops)
        print("\n".join(method_lines(method, summaries[method], info["real_tokens"], args.steps)), flush=True)
    print("\n".join(goal_lines(summaries)))

    if args.json:
        report = {
            "settings": asdict(settings),
            "variants": {v: VARIANTS[v] for v in args.variants},
            "model": info,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device_name(),
            "matmul_flops_per_s": flops,
            "load_average_at_start": load,
            "goals": {"a_over_b": GOAL_A_OVER_B, "mfu_a": GOAL_MFU},
            "methods": summaries,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
