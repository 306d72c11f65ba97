"""Applying a method to a model: resolving its target modules (names, peft's all-linear, regular expressions), the
checks that can be made before training (quantized base, targets, layer kinds, peft's own validation), wrapping the
model with peft, and counting parameters."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable

import torch
from peft import LoraConfig, PeftConfig, get_peft_model
from peft.tuners.tuners_utils import _find_minimal_target_modules, _maybe_include_all_linear_layers
from torch import nn

from peftbench.config.run_config import ALL_LINEAR, is_pattern
from peftbench.errors import ConfigError
from peftbench.methods import data_init, optimizers, peft_configs
from peftbench.methods.method_args import with_method_args
from peftbench.methods.registry import LAYER_KINDS, METHODS, Method
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import Encoded
from peftbench.model.load import LoadedModel


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


def _layer_paths(model: nn.Module) -> list[str]:
    return [path for path, module in model.named_modules() if _kind(module)]


def targeted_layers(model: nn.Module, targets: list[str]) -> list[str]:
    """The paths of the adaptable layers that module names select, as peft's suffix matching does."""
    return [path for path in _layer_paths(model) if any(_matches(path, t) for t in targets)]


def check_targets(model: nn.Module, targets: list[str], flag: str) -> None:
    """Every target must match at least one adaptable layer, as peft's suffix matching would."""
    paths = _layer_paths(model)
    missing = [t for t in targets if not any(_matches(path, t) for path in paths)]
    if missing:
        candidates = ", ".join(candidate_targets(model))
        raise ConfigError(f"{flag} {', '.join(missing)} match no layer of this model; candidates: {candidates}")


def all_linear(model: nn.Module) -> list[str]:
    """peft's target_modules="all-linear" on this model, resolved by peft itself: the paths of every Linear and
    Conv1D layer but the output head."""
    return sorted(_maybe_include_all_linear_layers(LoraConfig(target_modules=ALL_LINEAR), model).target_modules)


def resolve_targets(model: nn.Module, spec: list[str], flag: str) -> list[str]:
    """The module names peft is given for a user's spec. Names stay as given; all-linear, or one regular expression
    (matched in full against each Linear or Conv1D layer's path, as peft matches a target_modules string), become the
    fewest name suffixes that select exactly the layers they stand for (peft's own reduction), so that the recorded
    list is short and reads like a list of names. ConfigError where they select nothing."""
    if spec == [ALL_LINEAR]:
        paths = all_linear(model)
        if not paths:
            raise ConfigError(
                f"{flag} {ALL_LINEAR}: this model has no linear layer peft can wrap (Linear or Conv1D, "
                "the output head aside); name the modules to adapt"
            )
    elif len(spec) == 1 and is_pattern(spec[0]):
        try:
            pattern = re.compile(spec[0])
        except re.error as exc:
            raise ConfigError(f"{flag} '{spec[0]}' is not a valid regular expression: {exc}") from None
        paths = [path for path in _layer_paths(model) if pattern.fullmatch(path)]
        if not paths:
            example = next(iter(_layer_paths(model)), "")
            raise ConfigError(
                f"{flag} '{spec[0]}' matches no layer of this model: it must match a layer's whole path (e.g. "
                f"{example!r}); candidates: {', '.join(candidate_targets(model))}"
            )
    else:
        return spec
    others = [name for name, _ in model.named_modules() if name and name not in set(paths)]
    return sorted(_find_minimal_target_modules(paths, others))


def _within_targets(model: nn.Module, options: dict[str, list[str]], flag: str) -> dict[str, list[str]]:
    """Options besides the targets (IA3's feed-forward modules) must name targeted layers; they are then added to the
    target names (which selects no other layer) so that they are a subset of them by name, as peft requires."""
    targeted = targeted_layers(model, options["targets"])
    for key, names in options.items():
        stray = [name for name in names if key != "targets" and not any(_matches(path, name) for path in targeted)]
        if stray:
            raise ConfigError(
                f"{flag}-{key} {','.join(stray)} must also be adapted: it names no layer that "
                f"{flag}-targets {','.join(options['targets'])} selects"
            )
    named = [name for key, names in options.items() if key != "targets" for name in names]
    return options | {"targets": list(dict.fromkeys([*options["targets"], *named]))}


def _wraps(method: Method, loaded: LoadedModel, kinds: set[str]) -> bool:
    """Whether a method works on this model for all that its layers' kinds say: full fine-tuning and prompt learning
    always, methods on modules their family names (norms, attention) where the family names them."""
    if method.peft_config is None or method.prompt_learning:
        return True
    if not method.adapts_layers:
        return method.name in loaded.family.defaults
    return kinds <= set(method.layer_kinds)


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
    working = [m.name for m in METHODS.values() if _wraps(m, loaded, set(unsupported))]
    raise ConfigError(
        f"{method.name} does not support {loaded.family.name} models: peft's {method.name} wraps only "
        f"{', '.join(method.layer_kinds)} layers, and here {found}. "
        f"Methods that work on this model: {', '.join(working)}"
    )


def module_options(method: Method, loaded: LoadedModel, settings: MethodSettings) -> dict[str, list[str]]:
    """The method's module options on this model (targets, feedforward), resolved (resolve_targets) and checked:
    every name matches a layer. ConfigError naming what to set otherwise. Call it on the model before peft wraps it."""
    options = method.options(loaded.family, settings)
    owner = method.target_owner.name
    if options is None:
        raise ConfigError(
            f"{method.name} has no default target modules for model family {loaded.family.name!r}; "
            f"set --{owner}-targets (candidates: {', '.join(candidate_targets(loaded.model))})"
        )
    options = {key: resolve_targets(loaded.model, values, f"--{owner}-{key}") for key, values in options.items()}
    for key, values in options.items():
        check_targets(loaded.model, values, f"--{owner}-{key}")
    return _within_targets(loaded.model, options, f"--{owner}") if options else options


def given_options(method: Method, loaded: LoadedModel, settings: MethodSettings) -> dict[str, list[str]]:
    """The module options as the user gave them, where they differ from the resolved ones (all-linear, a regular
    expression): recorded beside the resolved list."""
    given = method.options(loaded.family, settings) or {}
    resolved = module_options(method, loaded, settings)
    return {key: values for key, values in given.items() if resolved.get(key) != values}


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
    options = module_options(method, loaded, settings)  # resolved and checked against the model's layers
    check_layer_kinds(method, loaded, options.get("targets", []))
    try:
        built = getattr(peft_configs, method.peft_config)(loaded, settings, options)
    except ConfigError:
        raise
    except ValueError as exc:  # peft validates its configs as it builds them
        raise ConfigError(f"peft refuses {method.name} with these settings: {exc}") from None
    return with_method_args(method, built, settings.method_args.get(method.name, {}))


def apply_method(
    method: Method, loaded: LoadedModel, settings: MethodSettings, train: list[Encoded] | None = None
) -> nn.Module:
    """Return the model to train: the base model itself for `full`, else a PeftModel wrapping it (in place). A method
    initialised from data (the registry's init_from_data: EVA) reads the training examples `train`; without them (to
    count or check) it is wrapped as peft builds it, before that initialisation."""
    peft_config = check_method(method, loaded, settings)
    if peft_config is None:
        loaded.model.requires_grad_(True)
        return loaded.model
    try:
        if method.init_from_data and train:
            device = next(loaded.model.parameters()).device
            initialise = getattr(data_init, method.init_from_data)
            model = initialise(loaded.model, peft_config, data_init.calibration(loaded.layout, train, device))
        elif method.init_from_data:
            model = get_peft_model(loaded.model, data_init.before_data(peft_config))
        else:
            model = get_peft_model(loaded.model, peft_config)
    except ConfigError:
        raise
    except (ValueError, TypeError, NotImplementedError) as exc:  # peft's way of saying "not on this model"
        raise ConfigError(f"peft cannot apply {method.name} to this {loaded.family.name} model: {exc}") from None
    return model


def build_optimizer(method: Method, model: nn.Module, lr: float, settings: MethodSettings) -> torch.optim.Optimizer:
    """The optimizer the registry names for the method, over the model's trainable parameters."""
    return getattr(optimizers, method.optimizer)(model, lr, settings)


def loss_term(method: Method) -> Callable[[nn.Module], torch.Tensor] | None:
    """What the registry adds to each step's loss for the method (a regulariser), or None."""
    return getattr(optimizers, method.loss_term) if method.loss_term else None


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
