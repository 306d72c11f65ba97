"""Applying a method to a model: the checks that can be made before training (quantized base, targets, layer kinds,
peft's own validation), wrapping the model with peft, and counting parameters."""

from __future__ import annotations

import copy
import dataclasses

from peft import PeftConfig, get_peft_model
from torch import nn

from peftbench.config import ConfigError
from peftbench.methods import LAYER_KINDS, METHODS, Method, MethodSettings
from peftbench.models import LoadedModel


def _kind(module: nn.Module) -> str | None:
    return LAYER_KINDS.get(type(module).__name__)


def candidate_targets(model: nn.Module) -> list[str]:
    """Names that would match adaptable layers: the last one and last two parts of each layer's path."""
    names = set()
    for path, module in model.named_modules():
        if _kind(module):
            parts = [p for p in path.split(".") if not p.isdigit()]
            names.update({parts[-1], ".".join(parts[-2:])})
    return sorted(names)


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def check_targets(model: nn.Module, targets: list[str], flag: str) -> None:
    """Every target must match at least one adaptable layer, as peft's suffix matching would."""
    paths = [path for path, module in model.named_modules() if _kind(module)]
    missing = [t for t in targets if not any(_matches(path, t) for path in paths)]
    if missing:
        candidates = ", ".join(candidate_targets(model))
        raise ConfigError(f"{flag} {', '.join(missing)} match no layer of this model; candidates: {candidates}")


def check_layer_kinds(method: Method, loaded: LoadedModel, targets: list[str]) -> None:
    """Every targeted layer must be of a kind the method's peft tuner wraps (LoHa, LoKr, OFT: Linear, not Conv1D)."""
    unsupported: dict[str, set[str]] = {}
    for path, module in loaded.model.named_modules():
        kind = _kind(module)
        if kind and kind not in method.layer_kinds:
            unsupported.setdefault(kind, set()).update(t for t in targets if _matches(path, t))
    unsupported = {kind: names for kind, names in unsupported.items() if names}
    if not unsupported:
        return
    found = "; ".join(f"{', '.join(sorted(names))} are {kind} layers" for kind, names in unsupported.items())
    working = [m.name for m in METHODS.values() if not m.adapts_layers or set(unsupported) <= set(m.layer_kinds)]
    raise ConfigError(
        f"{method.name} does not support {loaded.family.name} models: peft's {method.name} wraps only "
        f"{', '.join(method.layer_kinds)} layers, and here {found}. "
        f"Methods that work on this model: {', '.join(working)}"
    )


def module_options(method: Method, loaded: LoadedModel, settings: MethodSettings) -> dict[str, list[str]]:
    """The method's module options on this model (targets, feedforward), or a ConfigError naming what to set."""
    options = method.options(loaded.family, settings)
    if options is None:
        owner = method.target_owner.name
        raise ConfigError(
            f"{method.name} has no default target modules for model family {loaded.family.name!r}; "
            f"set --{owner}-targets (candidates: {', '.join(candidate_targets(loaded.model))})"
        )
    return options


def check_method(method: Method, loaded: LoadedModel, settings: MethodSettings) -> PeftConfig | None:
    """Everything that can be known before training about `method` on this model; returns its peft config.

    Raises ConfigError naming the method and what would work: a method that cannot train on a --quantize base,
    targets that match nothing, layers peft's tuner cannot wrap, or settings peft refuses.
    """
    if settings.quantize and not method.quantizable:
        allowed = ", ".join(m.name for m in METHODS.values() if m.quantizable)
        raise ConfigError(f"--quantize {settings.quantize} trains LoRA-family methods ({allowed}), not {method.name}")
    if method.peft_config is None:
        return None
    options = module_options(method, loaded, settings)
    for key, values in options.items():
        check_targets(loaded.model, values, f"--{method.target_owner.name}-{key}")
    check_layer_kinds(method, loaded, options.get("targets", []))
    try:
        return method.peft_config(loaded, settings, options)
    except ConfigError:
        raise
    except ValueError as exc:  # peft validates its configs as it builds them
        raise ConfigError(f"peft refuses {method.name} with these settings: {exc}") from None


def apply_method(method: Method, loaded: LoadedModel, settings: MethodSettings) -> nn.Module:
    """Return the model to train: the base model itself for `full`, else a PeftModel wrapping it (in place)."""
    peft_config = check_method(method, loaded, settings)
    if peft_config is None:
        loaded.model.requires_grad_(True)
        return loaded.model
    try:
        model = get_peft_model(loaded.model, peft_config)
    except (ValueError, TypeError, NotImplementedError) as exc:  # peft's way of saying "not on this model"
        raise ConfigError(f"peft cannot apply {method.name} to this {loaded.family.name} model: {exc}") from None
    if method.patch is not None:
        method.patch(model)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once; 4-bit weights as peft counts them."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        count = param.numel()
        if type(param).__name__ == "Params4bit":  # two 4-bit values per stored byte
            count *= 2 * param.element_size()
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def trainable_counts(loaded: LoadedModel, settings: MethodSettings) -> dict[str, tuple[int, int] | str]:
    """Each method's (trainable, total) parameters on a copy of loaded.model, or the reason it cannot apply."""
    counts: dict[str, tuple[int, int] | str] = {}
    for method in METHODS.values():
        fresh = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
        try:
            counts[method.name] = count_parameters(apply_method(method, fresh, settings))
        except ConfigError as exc:
            counts[method.name] = f"unsupported: {exc}"
    return counts
