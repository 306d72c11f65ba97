"""The measure stage of a method's run: what the trained method costs, gathered into records.Efficiency: latency
and inference memory (base, unmerged, merged), the merge check, the saved adapter's size, and its serving costs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from peftbench.measure.latency import latency_ms, merge_agreement, merged_copy, warm_up
from peftbench.measure.memory import in_memory_window, read_weights, weights_bytes
from peftbench.measure.serving import ServingCosts, adapter_costs, model_load_costs
from peftbench.measure.timing import PhaseTimer
from peftbench.methods.apply import (
    count_parameters,
)
from peftbench.methods.registry import Method
from peftbench.model.layout import Encoded, Layout
from peftbench.model.load import LoadedModel, ModelSource
from peftbench.store import rundir
from peftbench.store.records import (
    Efficiency,
    Progress,
)
from peftbench.store.rundir import MethodDir
from peftbench.training.trainer import Trainer


def merged_model(trainer: Trainer, method: Method) -> nn.Module | None:
    """A merged copy of the trained model where the method can merge, else None: how it would be served, for the
    merged latency and the merge check."""
    return merged_copy(trainer.unwrapped) if method.mergeable else None


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


def base_loader(source: ModelSource, device) -> Callable[[], nn.Module]:
    """A function that loads the base model afresh, as the run loaded it, onto device: the base that adapter loads
    are timed on (the run's own base carries the trained adapter by then)."""
    return lambda: read_weights(source.load(device=device).model)


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
