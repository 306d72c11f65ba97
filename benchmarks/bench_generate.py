"""Generation speed, side by side in one process: per-example vs batched, and base vs unmerged vs merged adapter.

    python benchmarks/bench_generate.py [--model M] [--dataset D] [--method lora|ia3] [--batch-size 16]
        [--new-tokens 64]

Every variant generates exactly --new-tokens tokens (EOS ignored) for the same test prompts of the embedded
CNN/DailyMail sample (or --dataset). Rounds alternate the variants and figures are medians over rounds, so that a
noisy machine shifts all variants alike. Goals: merged latency within 5% of the base model's; batched throughput at
least 5x per-example throughput at batch 16.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.splits import load_splits
from peftbench.measure.latency import latency_ms, merged_copy, prompt_batch
from peftbench.measure.timing import sync_device
from peftbench.methods.apply import apply_method
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import Layout, TokenLimits
from peftbench.model.load import load_model
from peftbench.pipeline.console import quiet_libraries

MERGEABLE = [name for name, method in METHODS.items() if method.mergeable]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="hub id, local directory, or the embedded model")
    parser.add_argument("--dataset", default=EMBEDDED, help="as peftbench run's (default: the embedded CNN/DM sample)")
    parser.add_argument("--method", default="lora", choices=MERGEABLE)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts in the batched run")
    parser.add_argument("--latency-prompts", type=int, default=6, help="prompts timed one by one per round")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--max-source-tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def perturb_adapter(model) -> None:
    """Move the freshly initialised adapter away from identity (LoRA's B starts at zero), as training would."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn(param.shape, generator=generator).to(param.device))
    model.requires_grad_(False)


@torch.inference_mode()
def batched_tokens_per_s(model, items, layout: Layout, new_tokens: int, device) -> float:
    """New tokens per second generating all items as one batch."""
    batch = prompt_batch(items, layout, device)
    start = time.perf_counter()
    layout.generate(model, batch, new_tokens, fixed_length=True)
    sync_device()
    return len(items) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    quiet_libraries()
    test_size = max(args.batch_size, args.latency_prompts)
    config = RunConfig(model=args.model, dataset=args.dataset, train_size=1, eval_size=1, test_size=test_size)
    splits = load_splits(config)
    loaded = load_model(args.model)
    layout = loaded.layout
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items = layout.encode(splits.test, TokenLimits(args.max_source_tokens, config.max_target_tokens))

    base = copy.deepcopy(loaded.model.to(device)).eval()  # a pure pretrained model, no adapter wrappers
    peft_model = apply_method(METHODS[args.method], loaded, MethodSettings.from_config(config))
    perturb_adapter(peft_model)
    variants = {"base": base, "unmerged": peft_model.eval(), "merged": merged_copy(peft_model).eval()}

    latency: dict[str, list[float]] = {name: [] for name in variants}
    batched: dict[str, list[float]] = {name: [] for name in variants}
    prompts, batch = items[: args.latency_prompts], items[: args.batch_size]
    for _ in range(args.rounds):
        for name, model in variants.items():
            latency[name].append(latency_ms(model, prompts, layout, args.new_tokens, device))
            batched[name].append(batched_tokens_per_s(model, batch, layout, args.new_tokens, device))

    longest = max(len(it.prompt) for it in items)
    print(
        f"model {loaded.name}, method {args.method}, device {device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {args.new_tokens} new tokens per prompt, prompts up to {longest} "
        f"tokens; medians of {args.rounds} rounds"
    )
    columns = ("latency ms (bs 1)", "per-example tok/s", f"batched tok/s (bs {args.batch_size})", "batched/per-ex")
    print(f"{'variant':<10}" + "".join(f"{c:>24}" for c in columns))
    medians = {name: (statistics.median(latency[name]), statistics.median(batched[name])) for name in variants}
    for name, (ms, many) in medians.items():
        single = args.new_tokens / (ms / 1000)
        print(f"{name:<10}{ms:>24.1f}{single:>24.1f}{many:>24.1f}{many / single:>23.2f}x")

    base_ms, unmerged_ms, merged_ms = (medians[k][0] for k in ("base", "unmerged", "merged"))
    speedup = medians["merged"][1] / (args.new_tokens / (merged_ms / 1000))
    print(f"unmerged / base latency: {unmerged_ms / base_ms:.3f}")
    print(f"merged / base latency:   {merged_ms / base_ms:.3f}   goal <= 1.05: {_verdict(merged_ms <= 1.05 * base_ms)}")
    print(
        f"batched / per-example throughput (merged, bs {args.batch_size}): {speedup:.2f}x   goal >= 5: "
        f"{_verdict(speedup >= 5)}"
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
