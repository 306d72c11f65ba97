"""A method's own peft fields by name (--method-args lora.r=16, YAML method_args): checked against the method's peft
config class before anything loads, and set on the config its builder makes."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from peftbench.config.typecheck import check_value, describe
from peftbench.errors import ConfigError
from peftbench.methods.registry import METHODS, Method

# Fields peftbench sets itself: where a method adapts (shared by the methods that share targets, so that they differ
# in how they adapt, not where: --lora-targets, --ia3-targets, --ia3-feedforward) and peft's bookkeeping.
OWN_FIELDS = {
    "target_modules": "--lora-targets or --ia3-targets",
    "exclude_modules": "--lora-targets or --ia3-targets",
    "feedforward_modules": "--ia3-feedforward",
    "task_type": "the model's kind",
    "peft_type": "the method",
    "base_model_name_or_path": "--model",
    "revision": "--model",
    "inference_mode": "training",
    "auto_mapping": "peft",
}


# LoRA starts that need a step before or after peft wraps the model: only their own method runs it (with the start
# alone, lora.init_lora_weights=eva would train a LoRA that merely looks like EVA's).
PREPARED_STARTS = {"eva": "eva", "corda": "corda", "astra": "astra", "lora_ga": "loraga", "loftq": None}


def _check_start(name: str, value: Any) -> None:
    if not isinstance(value, str) or value not in PREPARED_STARTS or PREPARED_STARTS[value] == name:
        return
    method = PREPARED_STARTS[value]
    instead = f"use --methods {method}" if method else "LoftQ is not offered (docs/methods.md)"
    raise ConfigError(
        f"--method-args {name}.init_lora_weights={value!r}: that start is computed by its own method's "
        f"preparation, which {name} does not run: {instead}"
    )


def config_class(method: Method) -> type[PeftConfig] | None:
    """The peft config class a method is built with (None for full fine-tuning)."""
    return PEFT_TYPE_TO_CONFIG_MAPPING[method.peft_type] if method.peft_type else None


def fields_of(config: type[PeftConfig]) -> dict[str, Any]:
    """A peft config class's settable fields and their type hints."""
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config) if f.init and f.name not in OWN_FIELDS}


def check_method_args(method_args: dict[str, dict[str, Any]] | None) -> None:
    """Raise ConfigError naming the method, the field and what is valid for an unknown method, a method without a
    peft config, a field its peft config does not have (or one peftbench sets), or a value of the wrong type."""
    for name, args in (method_args or {}).items():
        if name not in METHODS:
            raise ConfigError(f"--method-args: unknown method {name!r}; choose from {', '.join(METHODS)}")
        config = config_class(METHODS[name])
        if config is None:
            raise ConfigError(f"--method-args: {name} has no peft config; its settings are flags (--lr, ...)")
        valid = fields_of(config)
        for field, value in args.items():
            if field in OWN_FIELDS:
                raise ConfigError(f"--method-args {name}.{field}: peftbench sets it from {OWN_FIELDS[field]}")
            if field not in valid:
                raise ConfigError(
                    f"--method-args {name}.{field}: {config.__name__} has no field {field!r}; valid fields: "
                    f"{', '.join(sorted(valid))}"
                )
            if field == "init_lora_weights":
                _check_start(name, value)
            try:
                check_value(value, valid[field], f"{name}.{field}")
            except TypeError:
                raise ConfigError(
                    f"--method-args {name}.{field}={value!r}: {config.__name__}.{field} takes {describe(valid[field])}"
                ) from None


def with_method_args(method: Method, config: PeftConfig, args: dict[str, Any]) -> PeftConfig:
    """The config its builder made, with the user's fields set over it (peft checks the result as it builds it)."""
    if not args:
        return config
    try:
        return dataclasses.replace(config, **args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"peft refuses {method.name} with --method-args {args}: {exc}") from None
