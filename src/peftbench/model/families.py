"""Model families: what differs between GPT-2, T5 and the llama family, one record each, read from the model's config.

A family is known by the config's `model_type`, never by the model's name. Models of other types get a record with
no defaults: methods then need their targets named (`--lora-targets`, ...), and everything else works as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Options = dict[str, list[str]]  # a method's module options, e.g. {"targets": [...], "feedforward": [...]}


def _no_width(_config) -> int | None:
    return None


@dataclass(frozen=True)
class Family:
    """What a method or a prompt needs to know about one architecture family."""

    name: str  # "gpt2", "t5", "llama", or the raw model_type of a model peftbench has no record for
    # Default module options per method whose targets depend on the architecture (LoRA's are shared by its variants;
    # LN tuning's are the norm layers, adaption prompt's the attention blocks).
    defaults: dict[str, Options] = field(default_factory=dict)
    task_prefixes: dict[str, str] = field(default_factory=dict)  # task -> text before every source (T5's training)
    conv1d: bool = False  # projections stored as Conv1D (transposed): peft's fan_in_fan_out
    position_limit: str | None = "max_position_embeddings"  # config attribute holding the longest sequence
    # The width of one layer's keys and values (prefix tuning's token_dim), where it is not hidden_size.
    attention_width: Callable[[object], int | None] = _no_width


def _t5_attention_width(config) -> int:
    # T5's attention is num_heads x d_kv wide, which need not be d_model (peft's default); tiny T5s differ.
    return config.num_heads * config.d_kv


GPT2 = Family(
    "gpt2",
    defaults={
        "lora": {"targets": ["c_attn", "c_proj"]},
        "ia3": {"targets": ["c_attn", "mlp.c_proj"], "feedforward": ["mlp.c_proj"]},
        "ln_tuning": {"targets": ["ln_1", "ln_2", "ln_f"]},
    },
    conv1d=True,
    position_limit="n_positions",
)
T5 = Family(
    "t5",
    defaults={
        "lora": {"targets": ["q", "v"]},
        "ia3": {"targets": ["k", "v", "wo"], "feedforward": ["wo"]},
        "ln_tuning": {"targets": ["layer_norm", "final_layer_norm"]},
    },
    task_prefixes={"summarization": "summarize: "},
    position_limit=None,  # relative position buckets: no fixed limit
    attention_width=_t5_attention_width,
)
LLAMA = Family(
    "llama",
    defaults={
        "lora": {"targets": ["q_proj", "v_proj"]},
        "ia3": {"targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"]},
        "ln_tuning": {"targets": ["input_layernorm", "post_attention_layernorm", "norm"]},
        # peft's adaption prompt knows only the llama and mistral attention among this family's model types.
        "adaption_prompt": {"targets": ["self_attn"]},
    },
)
FAMILIES = {"gpt2": GPT2, "t5": T5, "mt5": T5, "umt5": T5}
FAMILIES |= dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), LLAMA)


def family_of(model_type: str) -> Family:
    """The record of a config's model_type; an empty one named after it for architectures peftbench does not know."""
    return FAMILIES.get(model_type) or Family(model_type)


def position_limit(family: Family, config) -> int | None:
    """The most positions a model of this family reads, from its config; None where there is no fixed limit."""
    if family.position_limit is None:
        return None
    # Unknown families: whichever of the two common names the config has.
    return getattr(config, family.position_limit, None) or getattr(config, "n_positions", None)
