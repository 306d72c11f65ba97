"""Where a step's time goes: torch.profiler tables (top operators by self CPU time) for a LoRA and a full training
step and for generation, on the embedded default model (or --model), so that speed work aims at what dominates.

    python benchmarks/profile_step.py [--model M] [--parts lora,full,generate,decode] [--batch-size 4]
        [--max-source-tokens 384] [--max-target-tokens 64] [--new-tokens 16] [--generate-batch 16] [--rows 15]
        [--out DIR]

Training: one optimizer step of peftbench's Trainer (forward, backward, clipping, optimizer) on whole articles, as
benchmarks/bench_train.py picks them, after one warm-up step. generate: batched generation of --generate-batch
prompts, --new-tokens each (EOS ignored); decode: one prompt at batch size 1, as latency timing runs it. Each part
prints its wall time, the profiler's total self CPU time of operators and their share of the wall time (the rest is
Python and framework overhead between operators), then the table; --out also writes each table to DIR/<part>.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_train import Settings, load_and_encode
from peftbench.config.run_config import EMBEDDED
from peftbench.measure.latency import prompt_batch
from peftbench.measure.timing import sync_device
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.pipeline.console import quiet_libraries
from peftbench.pipeline.method_run import setup_method
from peftbench.training.trainer import TrainOptions

PARTS = ("lora", "full", "generate", "decode")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="hub id or local directory (default: embedded SmolLM2)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--batch-size", type=int, default=4, help="training examples per step (default: 4)")
    parser.add_argument("--max-source-tokens", type=int, default=384)
    parser.add_argument("--max-target-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per prompt (default: 16)")
    parser.add_argument("--generate-batch", type=int, default=16, help="prompts in the batched generation")
    parser.add_argument("--rows", type=int, default=15, help="operators shown per table (default: 15)")
    parser.add_argument("--out", type=Path, help="also write each part's table to OUT/<part>.txt")
    args = parser.parse_args()
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown --parts {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


def profiled(run, rows: int) -> tuple[float, float, str]:
    """Run once untimed (warm-up), once timed, then once under the profiler (which slows what it watches): wall
    seconds of the timed run, operators' self CPU seconds under the profiler, and the table."""
    run()
    started = time.perf_counter()
    run()
    sync_device()
    wall = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    averages = prof.key_averages()
    self_cpu = sum(event.self_cpu_time_total for event in averages) / 1e6
    return wall, self_cpu, averages.table(sort_by="self_cpu_time_total", row_limit=rows)


def training_step(args: argparse.Namespace, method_name: str):
    """One optimizer step of method on the first --batch-size whole articles (each call trains one more step)."""
    settings = Settings(args.model, 1, args.batch_size, args.max_source_tokens, args.max_target_tokens)
    config = settings.run_config()
    loaded, items = load_and_encode(settings)
    method, method_settings = METHODS[method_name], MethodSettings.from_config(config)
    options = dataclasses.replace(TrainOptions.from_config(config, "no"), epochs=100)  # a schedule not yet at 0
    trainer = setup_method(method, loaded, method_settings, method.default_lr, items, options)
    tokens = sum(it.length for it in items)
    return trainer.train_epoch, f"{len(items)} examples, {tokens} real tokens"


def generation(args: argparse.Namespace, batch_size: int):
    """Generation of --new-tokens tokens for batch_size test prompts of the embedded data, the base model's."""
    from peftbench.data.splits import load_splits
    from peftbench.model.layout import TokenLimits
    from peftbench.model.load import load_model

    settings = Settings(args.model, 1, batch_size, args.max_source_tokens, args.max_target_tokens)
    config = dataclasses.replace(settings.run_config(), test_size=batch_size)
    loaded = load_model(args.model)
    layout = loaded.layout
    items = layout.encode(load_splits(config).test, TokenLimits(args.max_source_tokens, args.max_target_tokens))
    model = loaded.model.eval()
    batch = prompt_batch(items[:batch_size], layout, torch.device("cpu"))

    @torch.inference_mode()
    def run():
        layout.generate(model, batch, args.new_tokens, fixed_length=True)

    longest = max(len(it.prompt) for it in items[:batch_size])
    return run, f"batch {batch_size}, prompts up to {longest} tokens, {args.new_tokens} new tokens each"


def main() -> None:
    args = parse_args()
    quiet_libraries()
    torch.manual_seed(0)
    builders = {
        "lora": lambda: training_step(args, "lora"),
        "full": lambda: training_step(args, "full"),
        "generate": lambda: generation(args, args.generate_batch),
        "decode": lambda: generation(args, 1),
    }
    print(f"model {args.model}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for part in args.parts.split(","):
        run, what = builders[part]()
        wall, self_cpu, table = profiled(run, args.rows)
        heading = (
            f"== {part}: {what}; wall {wall * 1000:.0f} ms, operators' self CPU {self_cpu * 1000:.0f} ms "
            f"({100 * self_cpu / wall:.0f}% of wall)"
        )
        print(f"\n{heading}\n{table}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{part}.txt").write_text(f"{heading}\n{table}\n")


if __name__ == "__main__":
    main()
