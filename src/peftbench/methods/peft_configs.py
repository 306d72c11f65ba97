"""peft configs: how each method's `PeftConfig` is built from its settings and target modules, and the one library
workaround a built peft model needs. The registry (registry.py) names which builder each method uses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from peft import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeraConfig,
)
from torch import nn

from peftbench.errors import ConfigError
from peftbench.model.families import Options

if TYPE_CHECKING:
    from peftbench.methods.settings import MethodSettings
    from peftbench.model.load import LoadedModel


def lora_variant(**variant):
    """A LoRA builder with some of peft's LoRA options set: use_dora, use_rslora, init_lora_weights="pissa"."""

    def build(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
        return LoraConfig(
            task_type=loaded.layout.task_type,
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=options["targets"],
            fan_in_fan_out=loaded.family.conv1d,  # GPT-2 stores its projections as Conv1D (transposed)
            **variant,
        )

    return build


# The LoRA family, by the names the registry gives their builders.
lora = lora_variant()
dora = lora_variant(use_dora=True)
rslora = lora_variant(use_rslora=True)
pissa = lora_variant(init_lora_weights="pissa")


def adalora(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    steps = settings.total_steps  # AdaLoRA's rank budget is scheduled over the run's optimizer steps
    return AdaLoraConfig(
        task_type=loaded.layout.task_type,
        init_r=math.ceil(1.5 * settings.lora_r),  # start 50% above LoRA's rank, prune to an average of r
        target_r=settings.lora_r,
        tinit=steps // 10,  # the first 10% of steps train every rank
        tfinal=steps // 5,  # the last 20% train the final ranks
        total_step=steps,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=options["targets"],
        fan_in_fan_out=loaded.family.conv1d,
    )


def _product(config_class: type[PeftConfig]):
    """A builder for a product of low-rank factors (LoHa's Hadamard, LoKr's Kronecker): --lora-r and --lora-alpha."""

    def build(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
        return config_class(
            task_type=loaded.layout.task_type,
            r=settings.lora_r,
            alpha=settings.lora_alpha,
            target_modules=options["targets"],
        )

    return build


loha = _product(LoHaConfig)
lokr = _product(LoKrConfig)


def vera(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    # r is the rank of VeRA's shared frozen random matrices, not a LoRA rank: the paper's 256, whatever --lora-r says.
    return VeraConfig(
        task_type=loaded.layout.task_type, r=256, target_modules=options["targets"], fan_in_fan_out=loaded.family.conv1d
    )


def oft(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    return OFTConfig(task_type=loaded.layout.task_type, r=0, oft_block_size=32, target_modules=options["targets"])


def ia3(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    return IA3Config(
        task_type=loaded.layout.task_type,
        target_modules=options["targets"],
        feedforward_modules=options.get("feedforward", []),  # adapt checks they are among the targets
        fan_in_fan_out=loaded.family.conv1d,
    )


def prefix(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    if settings.gradient_checkpointing:
        raise ConfigError(
            "prefix tuning cannot train with --gradient-checkpointing: peft keeps the prefix in the KV cache, "
            "which checkpointing does not support; drop the flag or choose another method"
        )
    width = loaded.family.attention_width(loaded.model.config)
    return PrefixTuningConfig(
        task_type=loaded.layout.task_type,
        num_virtual_tokens=settings.num_virtual_tokens,
        **({"token_dim": width} if width else {}),
    )


def prompt(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    return PromptTuningConfig(
        task_type=loaded.layout.task_type,
        num_virtual_tokens=settings.num_virtual_tokens,
        prompt_tuning_init="SAMPLE_VOCAB",  # start from real token embeddings, not noise
    )


def generation_cache_by_both_names(model: nn.Module) -> None:
    """Make generation with virtual tokens right again: peft (0.21) looks for the generation cache under the name
    `past_key_values`, which transformers (5.x) renamed `cache`. peft then takes every step for the first one:
    prompt tuning puts its virtual tokens in again at every step, and prefix tuning hands its prefix over under the
    old name, which the model ignores in favour of generate's own, empty cache. So peft is shown the cache under the
    old name too, and what it hands back under that name becomes the cache. A no-op where the names do not clash.
    """
    base_prepare, prepare = model.base_model_prepare_inputs_for_generation, model.prepare_inputs_for_generation

    def base_prepare_with_old_name(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs["cache"]
        return inputs

    def prepare_with_new_name(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.base_model_prepare_inputs_for_generation = base_prepare_with_old_name
    model.prepare_inputs_for_generation = prepare_with_new_name
