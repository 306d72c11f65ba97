"""Generation costs, side by side in one process: the base model against adapters unmerged and merged, at batch size 1
(prefill and per-token decode apart, with intervals), and batched against per-example throughput.

    python benchmarks/bench_generate.py [--model M] [--dataset D] [--methods lora,ia3] [--rounds 8]
        [--latency-prompts 4] [--new-tokens 16] [--batch-size 16]

The models are timed as a run times them (measure.latency.paired_latency): in each round every model generates exactly
--new-tokens tokens for the same test prompt (the rounds cycle through --latency-prompts prompts of the embedded
CNN/DailyMail sample, or --dataset), one after another in a rotating order, and every ratio to the base model has a
95% interval over the rounds (report.costs). Each adapter is moved off identity first (LoRA's B starts at zero), as
training would. Goals: every merged/base interval covers 1.00 (a merged adapter has the base model's architecture);
batched throughput at least 5x per-example throughput at batch 16.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.splits import load_splits
from peftbench.measure.latency import LatencyPlan, inference_memory, merged_copy, paired_latency, prompt_batch
from peftbench.measure.timing import matmul_flops_per_s, sync_device
from peftbench.methods.apply import apply_method
from peftbench.methods.registry import METHODS, check_method_names
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import Layout, TokenLimits
from peftbench.model.load import load_model
from peftbench.pipeline.console import quiet_libraries
from peftbench.report.costs import PARTS, Ratio, log_ratios, one_sample_ratio


def round_ratio(mine: list[float], base: list[float]) -> Ratio:
    """mine over base, paired by round (as report.costs.latency_ratio pairs a run's rounds)."""
    return one_sample_ratio(log_ratios(mine, base))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="hub id, local directory, or the embedded model")
    parser.add_argument("--dataset", default=EMBEDDED, help="as peftbench run's (default: the embedded CNN/DM sample)")
    parser.add_argument("--methods", default="lora,ia3", help="mergeable methods, comma-separated")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts in the batched run")
    parser.add_argument("--latency-prompts", type=int, default=4, help="prompts the rounds cycle through")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per prompt (at least 2)")
    parser.add_argument("--max-source-tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=8)
    return parser.parse_args()


def perturb_adapter(model) -> None:
    """Move the freshly initialised adapter away from identity (LoRA's B starts at zero), as training would."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn(param.shape, generator=generator).to(param.device))
    model.requires_grad_(False)


def build_models(model: str, methods: list[str], config: RunConfig, device) -> tuple[dict, Layout]:
    """The base model (loaded on its own, no adapter wrappers) and each method's adapter, unmerged and merged."""
    models, layout = {}, None
    for name in methods:
        loaded = load_model(model)
        loaded.model.to(device)
        layout = loaded.layout
        if "base" not in models:  # a load of its own, as a run's base model is
            models["base"] = load_model(model).model.to(device)
        adapted = apply_method(METHODS[name], loaded, MethodSettings.from_config(config))
        perturb_adapter(adapted)
        models[f"{name} unmerged"], models[f"{name} merged"] = adapted, merged_copy(adapted)
    return models, layout


@torch.inference_mode()
def batched_tokens_per_s(model, items, layout: Layout, new_tokens: int, device) -> float:
    """New tokens per second generating all items as one batch."""
    batch = prompt_batch(items, layout, device)
    sync_device()
    start = time.perf_counter()
    layout.generate(model, batch, new_tokens, fixed_length=True)
    sync_device()
    return len(items) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    quiet_libraries()
    methods = args.methods.split(",")
    check_method_names(methods)
    test_size = max(args.batch_size, args.latency_prompts)
    config = RunConfig(model=args.model, dataset=args.dataset, train_size=1, eval_size=1, test_size=test_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, layout = build_models(args.model, methods, config, device)
    items = layout.encode(load_splits(config).test, TokenLimits(args.max_source_tokens, config.max_target_tokens))
    plan = LatencyPlan(items[: args.latency_prompts], args.rounds, args.new_tokens)
    for model in models.values():
        inference_memory(model, plan, layout, device)  # the warm-up a run does
    started = time.perf_counter()
    rounds = paired_latency(models, plan, layout, device)
    seconds = time.perf_counter() - started

    longest = max(len(it.prompt) for it in plan.used)
    print(
        f"model {args.model}, device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"matmul {matmul_flops_per_s() / 1e9:.0f} GFLOP/s; {args.rounds} rounds of {len(models)} models, "
        f"{args.new_tokens} new tokens per prompt, prompts up to {longest} tokens: {seconds:.1f} s"
    )
    print(f"{'model':<16}{'prefill ms':>12}{'decode ms/token':>17}   ratios to base (95% interval over rounds)")
    for name in models:
        medians = [statistics.median(rounds.times[part][name]) for part in PARTS]
        ratios = "" if name == "base" else "; ".join(_ratio(rounds.times, part, name) for part in PARTS)
        print(f"{name:<16}{medians[0]:>12.1f}{medians[1]:>17.2f}   {ratios}")
    for name in methods:
        covered = all(
            not round_ratio(rounds.times[p][f"{name} merged"], rounds.times[p]["base"]).measurable for p in PARTS
        )
        print(f"{name} merged/base covers 1.00: {_verdict(covered)}")
    _batched(models, items[: args.batch_size], layout, args.new_tokens, device, rounds.median_ms)


def _ratio(times: dict, part: str, name: str) -> str:
    return f"{PARTS[part]} {round_ratio(times[part][name], times[part]['base']).text()}"


def _batched(models: dict, items, layout: Layout, new_tokens: int, device, median_ms) -> None:
    """Batched against per-example throughput of the base model and the first merged adapter."""
    for name in [n for n in models if n == "base" or n.endswith(" merged")][:2]:
        many = batched_tokens_per_s(models[name], items, layout, new_tokens, device)
        single = new_tokens / (median_ms(name, new_tokens) / 1000)
        print(
            f"{name}: batched {many:.1f} tok/s (bs {len(items)}) / per-example {single:.1f} tok/s = "
            f"{many / single:.2f}x   goal >= 5: {_verdict(many >= 5 * single)}"
        )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
