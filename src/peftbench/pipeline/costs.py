"""The measure stage of a method's run: what the trained method costs, gathered into records.Efficiency: latency
and inference memory (base, unmerged, merged, timed together after training), the merge check, the saved adapter's
size, and its serving costs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from peftbench.measure.latency import (
    LatencyPlan,
    LatencyRounds,
    inference_memory,
    merge_agreement,
    merged_copy,
    paired_latency,
)
from peftbench.measure.memory import memory_account, read_weights, training_state_bytes
from peftbench.measure.serving import ServingCosts, adapter_costs, model_load_costs
from peftbench.measure.timing import PhaseTimer
from peftbench.methods import data_init
from peftbench.methods.apply import count_parameters
from peftbench.methods.registry import Method
from peftbench.model.layout import Layout
from peftbench.model.load import ModelSource
from peftbench.store import rundir
from peftbench.store.records import INFERENCE_MODELS, Efficiency
from peftbench.store.rundir import MethodDir
from peftbench.training.trainer import Trainer


def merged_model(trainer: Trainer, method: Method) -> nn.Module | None:
    """A merged copy of the trained model where the method can merge, else None: how it would be served, for the
    merged latency and the merge check."""
    return merged_copy(trainer.unwrapped) if method.mergeable else None


def base_loader(source: ModelSource, device) -> Callable[[], nn.Module]:
    """A function that loads the base model afresh, as the run loaded it, onto device: the base model timed beside
    the trained one, and the base adapter loads are timed on (the run's own base carries the trained adapter by then,
    and peft's disabled adapter still routes every adapted layer through its wrapper, which a merged copy does not)."""
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


def time_models(
    models: dict[str, nn.Module], plan: LatencyPlan, layout: Layout, device
) -> tuple[LatencyRounds, dict[str, dict[str, int | None]]]:
    """Each model's inference memory (its warm-up, measured), then all of them timed in paired rounds."""
    memory = {name: inference_memory(model, plan, layout, device) for name, model in models.items()}
    return paired_latency(models, plan, layout, device), memory


def measure_efficiency(
    trainer: Trainer,
    runtime_bytes: int,
    generation_tokens_per_s: float,
    method: Method,
    layout: Layout,
    plan: LatencyPlan,
    directory: MethodDir,
    merged: nn.Module | None,
    load_base: Callable[[], nn.Module],
    timer: PhaseTimer,
) -> Efficiency:
    """What the trained method costs, the time of each part in timer: latency and inference memory of the base model
    (a fresh load from load_base), the trained model and its merged copy (merged: None where the method cannot
    merge), timed together after training; the merge check on the same generations; the adapter's size (saved into
    the method's directory; for full fine-tuning the whole model and tokenizer); serving costs (loading, swapping,
    merging); and the training figures: its steps and its peak memory, split into runtime_bytes (what the process
    held before it loaded the model), the counted training state and the rest. generation_tokens_per_s: the speed of
    the method's batched evaluation generation. The caller adds the run's phase and wall times."""
    trained, device = trainer.unwrapped, trainer.accelerator.device
    with timer.phase("latency"):
        models = {"base": load_base(), "unmerged": trained} | ({} if merged is None else {"merged": merged})
        rounds, memory = time_models(models, plan, layout, device)
        del models
    with timer.phase("merge_check"):
        merge_check = None if merged is None else merge_agreement(trained, merged, rounds, plan.used, layout, device)
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
        eval_generate_tokens_per_s=generation_tokens_per_s,
        latency_ms={
            name: rounds.median_ms(name, plan.new_tokens) if name in memory else None for name in INFERENCE_MODELS
        },
        latency_new_tokens=plan.new_tokens,
        merge_check=merge_check,
        adapter_size_bytes=sum(adapter_files.values()),
        adapter_files=sorted(adapter_files),
        inference_memory={name: memory.get(name) for name in INFERENCE_MODELS},
        adapter_load_ms=serving.load_ms,
        adapter_swap_ms=serving.swap_ms,
        merge_unmerge_ms=serving.merge_unmerge_ms,
        adapter_memory_bytes=serving.adapter_bytes,
        latency_rounds=rounds.times,
        train_steps=trainer.steps,
        train_memory=memory_account(
            trainer.peak_memory, runtime_bytes, training_state_bytes(trained, trainer.optimizer)
        ),
    )


ADAPTER_CONFIGS = ("adapter_config.json", "config.json", "generation_config.json", "model.safetensors.index.json")


def save_adapter(model, method: Method, layout: Layout, path: Path) -> dict[str, int]:
    """Save the adapter in peft's format (for full fine-tuning, the whole model and its tokenizer, loadable on its
    own), whole or not at all; returns the size of each file that makes the adapter: its weights and its config, not
    peft's generated README nor the tokenizer."""
    counted: dict[str, int] = {}

    def fill(staging: Path) -> None:
        data_init.save_pretrained(model, staging)
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
