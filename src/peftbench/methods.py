"""The registry of fine-tuning methods. A new method is one `Method` entry in METHODS, not a new code path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peft import IA3Config, LoraConfig, PeftConfig, get_peft_model
from torch import nn

from peftbench.config import ConfigError, RunConfig
from peftbench.models import LoadedModel

# The layer types PEFT can wrap; used to list candidate target names when a target matches nothing.
ADAPTABLE = ("Linear", "Conv1D")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    default_lr: float
    # family -> {"targets": [...], and any other per-family list, e.g. "feedforward"}; None for full fine-tuning.
    defaults: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    peft_config: Callable[[LoadedModel, RunConfig, dict[str, list[str]]], PeftConfig] | None = None
    mergeable: bool = True

    def options(self, loaded: LoadedModel, config: RunConfig) -> dict[str, list[str]]:
        """Per-architecture defaults overridden by the user's flags (e.g. --lora-targets)."""
        chosen = dict(self.defaults.get(loaded.family, {}))
        for key in ("targets", "feedforward"):
            value = getattr(config, f"{self.name}_{key}", None)
            if value is not None:
                chosen[key] = value
        if self.peft_config is not None and "targets" not in chosen:
            raise ConfigError(
                f"{self.name} has no default target modules for model family {loaded.family!r}; "
                f"set --{self.name}-targets (candidates: {', '.join(candidate_targets(loaded.model))})"
            )
        return chosen


def _task_type(loaded: LoadedModel) -> str:
    return "SEQ_2_SEQ_LM" if loaded.is_seq2seq else "CAUSAL_LM"


def _lora(loaded: LoadedModel, config: RunConfig, options: dict[str, list[str]]) -> PeftConfig:
    return LoraConfig(
        task_type=_task_type(loaded),
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=options["targets"],
        fan_in_fan_out=loaded.family == "gpt2",  # GPT-2 stores its projections as Conv1D (transposed)
    )


def _ia3(loaded: LoadedModel, config: RunConfig, options: dict[str, list[str]]) -> PeftConfig:
    feedforward = options.get("feedforward", [])
    stray = [name for name in feedforward if name not in options["targets"]]
    if stray:
        raise ConfigError(f"--ia3-feedforward {stray} must also be in --ia3-targets {options['targets']}")
    return IA3Config(
        task_type=_task_type(loaded),
        target_modules=options["targets"],
        feedforward_modules=feedforward,
        fan_in_fan_out=loaded.family == "gpt2",
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", "full fine-tuning: every weight trains (the baseline)", default_lr=5e-5),
        Method(
            "lora",
            "LoRA: trainable low-rank updates B@A beside frozen weights; mergeable",
            default_lr=5e-4,
            defaults={
                "gpt2": {"targets": ["c_attn", "c_proj"]},
                "t5": {"targets": ["q", "v"]},
                "llama": {"targets": ["q_proj", "v_proj"]},
            },
            peft_config=_lora,
        ),
        Method(
            "ia3",
            "IA3: learned vectors rescale keys, values and feed-forward activations; mergeable",
            default_lr=5e-3,
            defaults={
                "gpt2": {"targets": ["c_attn", "mlp.c_proj"], "feedforward": ["mlp.c_proj"]},
                "t5": {"targets": ["k", "v", "wo"], "feedforward": ["wo"]},
                "llama": {"targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"]},
            },
            peft_config=_ia3,
        ),
    ]
}


def check_method_names(names: list[str]) -> None:
    """Raise ConfigError for a method name that is not registered."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"method(s) {', '.join(duplicated)} listed twice in --methods")


def candidate_targets(model: nn.Module) -> list[str]:
    """Names that would match adaptable layers: the last one and last two parts of each layer's path."""
    names = set()
    for path, module in model.named_modules():
        if type(module).__name__ in ADAPTABLE:
            parts = [p for p in path.split(".") if not p.isdigit()]
            names.update({parts[-1], ".".join(parts[-2:])})
    return sorted(names)


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def check_targets(model: nn.Module, targets: list[str], flag: str) -> None:
    """Every target must match at least one adaptable layer, as PEFT's suffix matching would."""
    paths = [path for path, module in model.named_modules() if type(module).__name__ in ADAPTABLE]
    missing = [t for t in targets if not any(_matches(path, t) for path in paths)]
    if missing:
        candidates = ", ".join(candidate_targets(model))
        raise ConfigError(f"{flag} {', '.join(missing)} match no layer of this model; candidates: {candidates}")


def apply_method(method: Method, loaded: LoadedModel, config: RunConfig) -> nn.Module:
    """Return the model to train: the base model itself for `full`, else a PeftModel wrapping it."""
    if method.peft_config is None:
        loaded.model.requires_grad_(True)
        return loaded.model
    options = method.options(loaded, config)
    for key, values in options.items():
        check_targets(loaded.model, values, f"--{method.name}-{key}")
    return get_peft_model(loaded.model, method.peft_config(loaded, config, options))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
