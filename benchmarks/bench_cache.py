"""The KV cache in decoding, side by side in one process: transformers' dynamic cache (what peftbench generates with)
against its static cache, at batch 1 and batched, on the same test prompts, rounds alternating; the tokens compared.

    python benchmarks/bench_cache.py [--model M] [--dataset D] [--latency-prompts 4] [--batch-size 16] [--rounds 3]

Measured on the default model (2-core CPU, idle): batch 1 x 32 tokens static/dynamic 1.01, batch 16 x 64 tokens
0.99, tokens identical: without torch.compile the static cache saves nothing here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GenerationConfig

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.splits import load_splits
from peftbench.measure.latency import prompt_batch
from peftbench.model.layout import PromptOptions
from peftbench.model.load import load_model
from peftbench.pipeline.console import quiet_libraries, token_limits

CACHES = ("dynamic", "static")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=EMBEDDED, help="hub id, local directory, or the embedded model")
    parser.add_argument("--dataset", default=EMBEDDED, help="as peftbench run's (default: the embedded CNN/DM sample)")
    parser.add_argument("--latency-prompts", type=int, default=4, help="prompts generated one by one per round")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts in the batched run")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


@torch.inference_mode()
def generate(model, layout, batch: dict[str, torch.Tensor], new_tokens: int, cache: str) -> tuple[float, list]:
    """Seconds to generate exactly new_tokens tokens for the batch with this cache, and the new tokens."""
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=layout.pad_id,
        eos_token_id=layout.stop_ids,
        **({"cache_implementation": "static"} if cache == "static" else {}),
    )
    start = time.perf_counter()
    output = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config
    )
    return time.perf_counter() - start, output[:, batch["input_ids"].shape[1] :].tolist()


def main() -> None:
    args = parse_args()
    quiet_libraries()
    config = RunConfig(
        model=args.model,
        dataset=args.dataset,
        train_size=1,
        eval_size=1,
        test_size=max(args.batch_size, args.latency_prompts),
    )
    loaded = load_model(args.model, prompt=PromptOptions.from_config(config))
    layout, model = loaded.layout, loaded.model.eval()
    items = layout.encode(load_splits(config).test, token_limits(config))
    settings = {
        "batch 1, 32 tokens": ([[item] for item in items[: args.latency_prompts]], 32),
        f"batch {args.batch_size}, 64 tokens": ([items[: args.batch_size]], 64),
    }
    print(
        f"model {loaded.name}, torch {torch.__version__}, threads {torch.get_num_threads()}; medians of "
        f"{args.rounds} rounds"
    )
    for label, (groups, new_tokens) in settings.items():
        seconds: dict[str, list[float]] = {cache: [] for cache in CACHES}
        tokens: dict[str, list] = {cache: [] for cache in CACHES}
        for cache in CACHES:  # warm-up
            generate(model, layout, prompt_batch(groups[0], layout, "cpu"), new_tokens, cache)
        for _ in range(args.rounds):
            for cache in CACHES:
                for group in groups:
                    took, new = generate(model, layout, prompt_batch(group, layout, "cpu"), new_tokens, cache)
                    seconds[cache].append(took)
                    tokens[cache].append(new)
        dynamic, static = (statistics.median(seconds[cache]) for cache in CACHES)
        print(
            f"{label}: dynamic {1000 * dynamic:,.0f} ms, static {1000 * static:,.0f} ms, static/dynamic "
            f"{static / dynamic:.2f}; tokens identical: {tokens['dynamic'] == tokens['static']}"
        )


if __name__ == "__main__":
    main()
