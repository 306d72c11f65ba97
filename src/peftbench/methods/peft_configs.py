"""peft configs: how each method's `PeftConfig` is built from its settings and target modules, and the one library
workaround a built peft model needs. The registry (registry.py) names which builder each method uses; most methods
are one of peft's configs over their targets with peft's defaults (`tuner`)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from peft import (
    AdaLoraConfig,
    AdaptionPromptConfig,
    BeftConfig,
    BOFTConfig,
    C3AConfig,
    DeftConfig,
    DeloraConfig,
    EvaConfig,
    FourierFTConfig,
    FrodConfig,
    GloraConfig,
    GraloraConfig,
    HiraConfig,
    HRAConfig,
    IA3Config,
    LilyConfig,
    LNTuningConfig,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    LoraGAConfig,
    MissConfig,
    OFTConfig,
    PacaConfig,
    PeanutConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PsoftConfig,
    PveraConfig,
    RandLoraConfig,
    RoadConfig,
    ShiraConfig,
    SupertuningConfig,
    TinyLoraConfig,
    UniLoraConfig,
    VBLoRAConfig,
    VeraConfig,
    WaveFTConfig,
)
from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG
from peft.tuners.lora.config import AstraConfig, CordaConfig  # not exported by peft's top level

from peftbench.errors import ConfigError
from peftbench.model.families import Options, family_of

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
olora = lora_variant(init_lora_weights="olora")
ortholora = lora_variant(init_lora_weights="orthogonal")
eva = lora_variant(init_lora_weights="eva", eva_config=EvaConfig())  # data_init.eva initialises it
corda = lora_variant(init_lora_weights="corda", corda_config=CordaConfig())  # data_init.corda prepares the layers
astra = lora_variant(init_lora_weights="astra", astra_config=AstraConfig())
loraga = lora_variant(init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())
mica = lora_variant(init_lora_weights="mica")
nora = lora_variant(init_lora_weights="nora")


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


def tuner(config_class: type[PeftConfig], **fixed):
    """A builder of config_class over the method's targets with peft's defaults, but for the `fixed` fields; peft's
    fan_in_fan_out (GPT-2's transposed Conv1D) where the config has that field."""
    transposes = "fan_in_fan_out" in {f.name for f in dataclasses.fields(config_class)}

    def build(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
        layout = {"fan_in_fan_out": loaded.family.conv1d} if transposes else {}
        return config_class(task_type=loaded.layout.task_type, target_modules=options["targets"], **layout, **fixed)

    return build


# r is the rank of VeRA's shared frozen random matrices, not a LoRA rank: the paper's 256, whatever --lora-r says.
vera = tuner(VeraConfig, r=256)
oft = tuner(OFTConfig, r=0, oft_block_size=32)
boft = tuner(BOFTConfig)
hra = tuner(HRAConfig)
miss = tuner(MissConfig)
# peft draws FourierFT's spectrum from N(0, 1) by default, which changes the model before it trains; zeros do not.
fourierft = tuner(FourierFTConfig, init_weights=True)
vblora = tuner(VBLoRAConfig)
randlora = tuner(RandLoraConfig)
c3a = tuner(C3AConfig)
shira = tuner(ShiraConfig)
paca = tuner(PacaConfig)
lily = tuner(LilyConfig)
hira = tuner(HiraConfig)
gralora = tuner(GraloraConfig)
delora = tuner(DeloraConfig)
road = tuner(RoadConfig)
waveft = tuner(WaveFTConfig)
frod = tuner(FrodConfig, progressbar=False)  # its per-category decompositions would print a bar into the run's output
pvera = tuner(PveraConfig)
unilora = tuner(UniLoraConfig)
glora = tuner(GloraConfig)
beft = tuner(BeftConfig)
tinylora = tuner(TinyLoraConfig)
psoft = tuner(PsoftConfig)
peanut = tuner(PeanutConfig)
deft = tuner(DeftConfig)
supertuning = tuner(SupertuningConfig)


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


def ptuning(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    """P-tuning: --num-virtual-tokens virtual tokens from peft's MLP prompt encoder, as wide as the model."""
    return PromptEncoderConfig(task_type=loaded.layout.task_type, num_virtual_tokens=settings.num_virtual_tokens)


def _family_modules(loaded: LoadedModel, method: str) -> list[str] | None:
    """The modules a method wraps that are not Linear or Conv1D layers (norms, attention blocks), as the model's
    family names them in families.py; None where it names none."""
    return loaded.family.defaults.get(method, {}).get("targets")


def ln_tuning(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    """LN tuning: trainable copies of the norm layers the model's family names."""
    norms = _family_modules(loaded, "ln_tuning")
    if norms is None:
        raise ConfigError(
            f"ln_tuning knows no norm layers of model family {loaded.family.name!r}: peftbench names them for "
            "gpt2, t5 and the llama family"
        )
    return LNTuningConfig(task_type=loaded.layout.task_type, target_modules=norms)


def adaption_prompt(loaded: LoadedModel, settings: MethodSettings, options: Options) -> PeftConfig:
    """LLaMA-Adapter: --num-virtual-tokens learned tokens behind a zero-initialised gate in the attention of every
    layer (as peft's MetaMathQA experiment: all 28 of Llama-3.2-3B's)."""
    attention, model_type = _family_modules(loaded, "adaption_prompt"), loaded.model.config.model_type
    if attention is None or model_type not in TRANSFORMERS_MODEL_CONFIG:
        known = [name for name in TRANSFORMERS_MODEL_CONFIG if "adaption_prompt" in family_of(name).defaults]
        raise ConfigError(
            f"adaption_prompt does not support {model_type} models: peftbench offers it on {', '.join(known)} "
            "models, whose attention peft's adaption prompt knows; choose another method"
        )
    return AdaptionPromptConfig(
        task_type=loaded.layout.task_type,
        target_modules=attention[0],  # one attention module name, as peft takes it
        adapter_len=settings.num_virtual_tokens,
        adapter_layers=loaded.model.config.num_hidden_layers,
    )
