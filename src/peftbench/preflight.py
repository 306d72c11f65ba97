"""Checks before any weights are loaded, and the plan that --dry-run prints.

The model is built from its config on the meta device (shapes, no memory, no weights read), so that target modules,
sequence lengths and trainable parameter counts are checked in seconds, before the first method spends minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from peftbench.config import EMBEDDED, ConfigError, RunConfig
from peftbench.data import Splits, encode
from peftbench.measure import matmul_flops_per_s
from peftbench.methods import METHODS, apply_method, check_methods, count_parameters
from peftbench.models import LoadedModel, check_safetensors, embedded_model_dir, family_of

ASSUMED_UTILIZATION = 0.6  # calibrated: the default run estimated 29 min at 0.3 and took 14 min on a 2-core CPU


@dataclass
class MethodPlan:
    name: str
    trainable: int
    total: int
    lr: float


@dataclass
class Plan:
    """What a run will do: per method its parameter counts, and the real tokens of each split."""

    model: str
    is_seq2seq: bool
    methods: list[MethodPlan]
    tokens: dict[str, int]  # split -> real tokens (prompt + target) over its examples
    examples: dict[str, int]


def skeleton(name: str, trust_remote_code: bool, allow_pickle: bool) -> tuple[LoadedModel, AutoConfig]:
    """The model's architecture on the meta device and its tokenizer: config and tokenizer files only."""
    path = str(embedded_model_dir()) if name == EMBEDDED else name
    check_safetensors(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load model {name!r}: {exc}\n(give a hub id such as gpt2 or t5-small, a local directory "
            "with config.json and *.safetensors, or omit --model for the embedded SmolLM2)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = LoadedModel(None, tokenizer, bool(config.is_encoder_decoder), family_of(config.model_type), name)
    return loaded, config


def _build(loaded: LoadedModel, config, trust_remote_code: bool) -> LoadedModel:
    """A fresh meta-device model for one method (PEFT wraps the model it is given in place)."""
    auto = AutoModelForSeq2SeqLM if loaded.is_seq2seq else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    return dataclasses.replace(loaded, model=model)


def check_lengths(config: RunConfig, loaded: LoadedModel, model_config) -> None:
    """The length limits must leave room for an article and a summary, within the model's positions."""
    tokenizer = loaded.tokenizer
    if loaded.is_seq2seq:
        prefix = len(tokenizer(loaded.prefix, add_special_tokens=False).input_ids)
        if config.max_source_tokens < prefix + 2:
            raise ConfigError(
                f"--max-source-tokens {config.max_source_tokens} leaves no room for the article: the task prefix "
                f"{loaded.prefix!r} takes {prefix} tokens and EOS one; use at least {prefix + 2}"
            )
        return
    extra = len(tokenizer("", add_special_tokens=True).input_ids)
    extra += len(tokenizer(loaded.separator, add_special_tokens=False).input_ids)
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if not positions:
        return
    prompt = extra + config.max_source_tokens
    for flag, value in (("--max-target-tokens", config.max_target_tokens), ("--max-new-tokens", config.max_new_tokens),
                        ("--latency-new-tokens", config.latency_new_tokens)):  # fmt: skip
        if prompt + value > positions:
            raise ConfigError(
                f"--max-source-tokens {config.max_source_tokens} + {extra} prompt tokens + {flag} {value} = "
                f"{prompt + value} tokens, more than the {positions} positions of this model; lower them"
            )


def preflight(config: RunConfig, splits: Splits) -> Plan:
    """Check the model, lengths and every method against the model's architecture; count parameters and tokens."""
    loaded, model_config = skeleton(config.model, config.trust_remote_code, config.allow_pickle)
    check_lengths(config, loaded, model_config)
    check_methods(config)  # targets, layer kinds and peft's own checks for every method, on the meta device
    methods = []
    for name in config.methods:
        method = METHODS[name]
        try:
            model = apply_method(method, _build(loaded, model_config, config.trust_remote_code), config)
        except Exception:  # noqa: BLE001 - e.g. a quantized base, which the meta device cannot hold: counted when run
            continue
        trainable, total = count_parameters(model)
        methods.append(MethodPlan(name, trainable, total, config.lr if config.lr is not None else method.default_lr))
    tokens = {}
    for split, examples in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        items = encode(examples, loaded.tokenizer, config, loaded.is_seq2seq, loaded.prefix, loaded.separator)
        tokens[split] = sum(len(it.prompt) + len(it.target) for it in items)
    examples = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    return Plan(config.model, loaded.is_seq2seq, methods, tokens, examples)


def estimate_seconds(config: RunConfig, plan: Plan, method: MethodPlan, flops_per_s: float) -> float:
    """A rough compute estimate: per parameter and token, 2 FLOPs forward and 4 backward for full fine-tuning (2 for
    frozen weights, whose activation gradients are still needed), 2 more with gradient checkpointing; evaluation
    loss and generation (at most --max-new-tokens per example) forward only."""
    per_token = 2 + (4 if method.trainable == method.total else 2) + (2 if config.gradient_checkpointing else 0)
    validations = 1 + len({*range(config.eval_every, config.epochs + 1, config.eval_every), config.epochs})
    val_examples = plan.examples["validation"]
    generated = validations * min(config.eval_generate_size or val_examples, val_examples) + plan.examples["test"]
    forward = validations * plan.tokens["validation"] + plan.tokens["test"] + config.max_new_tokens * generated
    flops = method.total * (per_token * config.epochs * plan.tokens["train"] + 2 * forward)
    return flops / (flops_per_s * ASSUMED_UTILIZATION)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe(config: RunConfig, plan: Plan) -> str:
    """The --dry-run report: resolved config, trainable parameters per method, tokens and an estimated run time."""
    lines = ["Resolved configuration:", yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(), ""]
    counts = ", ".join(f"{split} {plan.tokens[split]:,} in {plan.examples[split]:,} examples" for split in plan.tokens)
    lines.append(f"Tokens (prompt + target, no padding): {counts}")
    flops_per_s = matmul_flops_per_s(size=1024, repeats=5)
    seeds = len(config.seeds or [config.seed])
    lines.append(f"Methods ({seeds} seed{'s' if seeds > 1 else ''} each; time: rough compute estimate at "
                 f"{ASSUMED_UTILIZATION:.0%} of this machine's {flops_per_s / 1e9:,.0f} GFLOP/s):")  # fmt: skip
    total = 0.0
    for method in plan.methods:
        seconds = seeds * estimate_seconds(config, plan, method, flops_per_s)
        total += seconds
        lines.append(
            f"  {method.name:<8} {method.trainable:>14,} of {method.total:,} parameters trainable "
            f"({100 * method.trainable / method.total:.3f}%), lr {method.lr:g}, ~{_duration(seconds)}"
        )
    counted = {method.name for method in plan.methods}
    lines += [f"  {name:<8} (cannot be built without weights: counted when it runs)" for name in config.methods
              if name not in counted]  # fmt: skip
    lines.append(f"Estimated total: ~{_duration(total)} (model loading and latency timing not included)")
    return "\n".join(lines)
