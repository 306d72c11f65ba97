"""The settings every method is built and optimized with: one small typed object, taken from the run's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import steps_per_epoch
from peftbench.model.families import Options

OPTION_KEYS = ("targets", "feedforward")  # module options a user can set per target owner (--lora-targets, ...)
TARGET_OWNERS = ("lora", "ia3")  # the methods with --<name>-targets flags; the others use one of theirs


@dataclass(frozen=True)
class MethodSettings:
    """The settings methods are built and optimized with (from RunConfig), and the run's optimizer step count."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    loraplus_lr_ratio: float
    num_virtual_tokens: int
    weight_decay: float
    gradient_checkpointing: bool
    quantize: str | None
    total_steps: int  # optimizer steps of the whole run (AdaLoRA schedules its rank budget over them)
    overrides: dict[str, Options] = field(default_factory=dict)  # target owner -> the user's --<owner>-targets etc.
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its peft fields (--method-args)

    @classmethod
    def from_config(cls, config: RunConfig) -> MethodSettings:
        overrides = {
            owner: {key: value for key in OPTION_KEYS if (value := getattr(config, f"{owner}_{key}", None)) is not None}
            for owner in TARGET_OWNERS
        }
        per_epoch = steps_per_epoch(config.train_size, config.batch_size * config.grad_accum, parallel.processes())
        return cls(
            lora_r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            loraplus_lr_ratio=config.loraplus_lr_ratio,
            num_virtual_tokens=config.num_virtual_tokens,
            weight_decay=config.weight_decay,
            gradient_checkpointing=config.gradient_checkpointing,
            quantize=config.quantize,
            total_steps=per_epoch * config.epochs,
            overrides=overrides,
            method_args=config.method_args or {},
        )
