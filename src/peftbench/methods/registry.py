"""The registry of fine-tuning methods. A new method is one `Method` entry in METHODS, not a new code path.

An entry says which peft-config builder the method uses (a function of peft_configs.py, by name), which module options
it takes per architecture family (families.py, or another method's with `targets_from`), which layer kinds peft's
tuner can wrap, whether it merges into the weights, its default learning rate, and (rarely) its own optimizer or loss
term (functions of optimizers.py, by name). Builders are named rather than imported so that the registry stays free of
torch and peft: the report reads it (the order of methods, their settings) without loading a model library;
`apply.implementation` resolves the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftbench.errors import ConfigError

if TYPE_CHECKING:
    from peftbench.methods.settings import MethodSettings
    from peftbench.model.families import Family, Options

# Layer classes peft can wrap, by class name, and their kind (bitsandbytes' quantized linears are Linear too).
LAYER_KINDS = {"Linear": "Linear", "Conv1D": "Conv1D", "Linear4bit": "Linear", "Linear8bitLt": "Linear"}
ALL_KINDS = ("Linear", "Conv1D")


@dataclass(frozen=True)
class Method:
    name: str
    description: str  # one line, shown by `peftbench methods`
    default_lr: float
    peft_config: str | None = None  # the builder in peft_configs.py; None: full fine-tuning
    mergeable: bool = True  # merge_and_unload folds the adapter into the weights (merged latency is measured)
    targets_from: str | None = None  # use that method's targets (its family defaults and --<name>-targets)
    layer_kinds: tuple[str, ...] = ALL_KINDS  # the layer kinds peft's tuner wraps
    prompt_learning: bool = False  # adds virtual tokens instead of adapting layers: no targets
    quantizable: bool = False  # trains on a 4-bit or 8-bit base (--quantize)
    optimizer: str = "adamw"  # the optimizer builder in optimizers.py
    patch: str | None = None  # a function of peft_configs.py that adjusts the built peft model: library workarounds
    loss_term: str | None = None  # a function of optimizers.py whose value is added to each step's loss (a regulariser)
    settings: tuple[str, ...] = ()  # the RunConfig fields it uses besides lr and targets (recorded, and reported)

    @property
    def target_owner(self) -> Method:
        """The method whose targets this one uses: itself, or e.g. LoRA for its variants."""
        return METHODS[self.targets_from] if self.targets_from else self

    @property
    def adapts_layers(self) -> bool:
        """Whether the method wraps target layers (and so has module options)."""
        return self.peft_config is not None and not self.prompt_learning

    def options(self, family: Family, settings: MethodSettings) -> Options | None:
        """The family's defaults overridden by the user's flags (e.g. --lora-targets); {} for methods without
        targets, None where a method needs targets and neither the family nor the user names them."""
        if not self.adapts_layers:
            return {}
        owner = self.target_owner
        chosen = dict(family.defaults.get(owner.name, {})) | settings.overrides.get(owner.name, {})
        return chosen if "targets" in chosen else None


LORA = ("lora_r", "lora_alpha", "lora_dropout")
# LoRA's variants and the other weight-adapting methods adapt LoRA's targets (and take --lora-targets), so that
# methods differ in how they adapt the model, not where.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", "full fine-tuning: every weight trains (the baseline)", default_lr=5e-5, mergeable=False),
        Method(
            "lora",
            "LoRA: a trainable low-rank update B·A beside each frozen target weight",
            default_lr=5e-4,
            peft_config="lora",
            quantizable=True,
            settings=LORA,
        ),
        Method(
            "dora",
            "DoRA: LoRA on each weight's direction, plus a trainable magnitude per output",
            default_lr=5e-4,
            peft_config="dora",
            targets_from="lora",
            quantizable=True,
            settings=LORA,
        ),
        Method(
            "rslora",
            "rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning",
            default_lr=5e-4,
            peft_config="rslora",
            targets_from="lora",
            quantizable=True,
            settings=LORA,
        ),
        Method(
            "pissa",
            "PiSSA: LoRA started from the weights' top singular components; the residual stays frozen",
            default_lr=2e-4,  # the adapter starts as the weights' largest part, so each step moves the model more
            peft_config="pissa",
            targets_from="lora",
            settings=LORA,
        ),
        Method(
            "loraplus",
            "LoRA+: LoRA with B learning --loraplus-lr-ratio times faster than A",
            default_lr=2.5e-4,  # A's rate; B's is 16x: peft advises about half of LoRA's usual rate
            peft_config="lora",
            targets_from="lora",
            quantizable=True,
            optimizer="loraplus",
            settings=(*LORA, "loraplus_lr_ratio"),
        ),
        Method(
            "adalora",
            "AdaLoRA: LoRA in SVD form whose ranks are pruned during training to an average of r",
            default_lr=1e-3,
            peft_config="adalora",
            targets_from="lora",
            quantizable=True,
            optimizer="adalora",
            loss_term="adalora_regularizer",
            settings=LORA,
        ),
        Method(
            "loha",
            "LoHa: the Hadamard product of two low-rank updates (rank up to r²)",
            default_lr=1e-3,
            peft_config="loha",
            targets_from="lora",
            layer_kinds=("Linear",),
            settings=("lora_r", "lora_alpha"),
        ),
        Method(
            "lokr",
            "LoKr: the Kronecker product of a small matrix and a low-rank one",
            default_lr=1e-3,
            peft_config="lokr",
            targets_from="lora",
            layer_kinds=("Linear",),
            settings=("lora_r", "lora_alpha"),
        ),
        Method(
            "vera",
            "VeRA: frozen random low-rank matrices shared by all layers; only scaling vectors train",
            default_lr=5e-3,
            peft_config="vera",
            targets_from="lora",
        ),
        Method(
            "oft",
            "OFT: a learned block-diagonal orthogonal transform of each target weight",
            default_lr=5e-4,
            peft_config="oft",
            targets_from="lora",
            layer_kinds=("Linear",),
        ),
        Method(
            "ia3",
            "IA3: learned vectors rescale keys, values and feed-forward activations",
            default_lr=5e-3,
            peft_config="ia3",
        ),
        Method(
            "prefix",
            "prefix tuning: trainable keys and values of virtual tokens in every attention layer",
            default_lr=1e-2,
            peft_config="prefix",
            mergeable=False,
            prompt_learning=True,
            patch="generation_cache_by_both_names",
            settings=("num_virtual_tokens",),
        ),
        Method(
            "prompt",
            "prompt tuning: trainable embeddings of virtual tokens put before the input",
            default_lr=3e-2,
            peft_config="prompt",
            mergeable=False,
            prompt_learning=True,
            patch="generation_cache_by_both_names",
            settings=("num_virtual_tokens",),
        ),
    ]
}


def check_method_names(names: list[str]) -> None:
    """Raise ConfigError for a method name that is not registered, or listed twice."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"method(s) {', '.join(duplicated)} listed twice in --methods")


def learning_rate(method: Method, lr: float | None) -> float:
    """The learning rate a method trains at: the one given (--lr), else the method's default."""
    return lr if lr is not None else method.default_lr
