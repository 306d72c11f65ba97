"""The registry of fine-tuning methods. A new method is one `Method` entry in METHODS, not a new code path.

An entry says how to build the method's peft config, its defaults per architecture family, which layer kinds
peft's tuner can wrap, whether it merges into the weights, and (rarely) how to build its optimizer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
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
    get_peft_model,
)
from peft.optimizers import create_loraplus_optimizer
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from peftbench.config import EMBEDDED, ConfigError, RunConfig
from peftbench.models import LoadedModel, embedded_model_dir, family_of, quantization_config

# Layer classes PEFT can wrap, by class name, and their kind (bitsandbytes' quantized linears are Linear too).
LAYER_KINDS = {"Linear": "Linear", "Conv1D": "Conv1D", "Linear4bit": "Linear", "Linear8bitLt": "Linear"}
ALL_KINDS = ("Linear", "Conv1D")
METHOD_ATTRIBUTE = "peftbench_method"  # set on the model apply_method returns, so build_optimizer finds its method

Options = dict[str, list[str]]
Builder = Callable[[LoadedModel, RunConfig, Options], PeftConfig]
OptimizerBuilder = Callable[[nn.Module, float, RunConfig], torch.optim.Optimizer]


@dataclass(frozen=True)
class Method:
    name: str
    description: str  # one line, shown by `peftbench methods`
    default_lr: float
    # family -> {"targets": [...], and any other per-family list, e.g. "feedforward"}; empty for methods without.
    defaults: dict[str, Options] = field(default_factory=dict)
    peft_config: Builder | None = None  # None: full fine-tuning
    mergeable: bool = True  # merge_and_unload folds the adapter into the weights (merged latency is measured)
    targets_from: str | None = None  # use that method's targets (its defaults and --<name>-targets), e.g. "lora"
    layer_kinds: tuple[str, ...] = ALL_KINDS  # the layer kinds peft's tuner wraps
    prompt_learning: bool = False  # adds virtual tokens instead of adapting layers: no targets
    quantizable: bool = False  # trains on a 4-bit or 8-bit base (--quantize)
    optimizer: OptimizerBuilder | None = None  # None: AdamW over the trainable parameters
    patch: Callable[[nn.Module], None] | None = None  # adjusts the peft model once built: library workarounds

    @property
    def target_owner(self) -> Method:
        """The method whose targets this one uses: itself, or e.g. LoRA for its variants."""
        return METHODS[self.targets_from] if self.targets_from else self

    def options(self, loaded: LoadedModel, config: RunConfig) -> Options:
        """Per-architecture defaults overridden by the user's flags (e.g. --lora-targets)."""
        if self.peft_config is None or self.prompt_learning:
            return {}
        owner = self.target_owner
        chosen = dict(owner.defaults.get(loaded.family, {}))
        for key in ("targets", "feedforward"):
            value = getattr(config, f"{owner.name}_{key}", None)
            if value is not None:
                chosen[key] = value
        if "targets" not in chosen:
            raise ConfigError(
                f"{self.name} has no default target modules for model family {loaded.family!r}; "
                f"set --{owner.name}-targets (candidates: {', '.join(candidate_targets(loaded.model))})"
            )
        return chosen


def _task_type(loaded: LoadedModel) -> str:
    return "SEQ_2_SEQ_LM" if loaded.is_seq2seq else "CAUSAL_LM"


# ---------------------------------------------------------------------------------------------- peft configs


def _lora_variant(**variant) -> Builder:
    """A LoRA builder with some of peft's LoRA options set: use_dora, use_rslora, init_lora_weights="pissa"."""

    def build(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
        return LoraConfig(
            task_type=_task_type(loaded),
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=options["targets"],
            fan_in_fan_out=loaded.family == "gpt2",  # GPT-2 stores its projections as Conv1D (transposed)
            **variant,
        )

    return build


def _adalora_steps(config: RunConfig) -> int:
    """Optimizer steps of the whole run, as train.Trainer counts them: AdaLoRA's rank budget is scheduled over them."""
    batches = math.ceil(config.train_size / config.batch_size)
    return math.ceil(batches / config.grad_accum) * config.epochs


def _adalora(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    steps = _adalora_steps(config)
    return AdaLoraConfig(
        task_type=_task_type(loaded),
        init_r=math.ceil(1.5 * config.lora_r),  # start 50% above LoRA's rank, prune to an average of r
        target_r=config.lora_r,
        tinit=steps // 10,  # the first 10% of steps train every rank
        tfinal=steps // 5,  # the last 20% train the final ranks
        total_step=steps,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=options["targets"],
        fan_in_fan_out=loaded.family == "gpt2",
    )


def _loha(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    return LoHaConfig(
        task_type=_task_type(loaded), r=config.lora_r, alpha=config.lora_alpha, target_modules=options["targets"]
    )


def _lokr(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    return LoKrConfig(
        task_type=_task_type(loaded), r=config.lora_r, alpha=config.lora_alpha, target_modules=options["targets"]
    )


def _vera(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    # r is the rank of VeRA's shared frozen random matrices, not a LoRA rank: the paper's 256, whatever --lora-r says.
    return VeraConfig(
        task_type=_task_type(loaded), r=256, target_modules=options["targets"], fan_in_fan_out=loaded.family == "gpt2"
    )


def _oft(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    return OFTConfig(task_type=_task_type(loaded), r=0, oft_block_size=32, target_modules=options["targets"])


def _ia3(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
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


def _prefix(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    if config.gradient_checkpointing:
        raise ConfigError(
            "prefix tuning cannot train with --gradient-checkpointing: peft keeps the prefix in the KV cache, "
            "which checkpointing does not support; drop the flag or choose another method"
        )
    model_config = loaded.model.config
    # T5's attention is num_heads x d_kv wide, which need not be d_model (peft's default); tiny T5s differ.
    width = {"token_dim": model_config.num_heads * model_config.d_kv} if hasattr(model_config, "d_kv") else {}
    return PrefixTuningConfig(task_type=_task_type(loaded), num_virtual_tokens=config.num_virtual_tokens, **width)


def _generation_cache_by_both_names(model: nn.Module) -> None:
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


def _prompt(loaded: LoadedModel, config: RunConfig, options: Options) -> PeftConfig:
    return PromptTuningConfig(
        task_type=_task_type(loaded),
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init="SAMPLE_VOCAB",  # start from real token embeddings, not noise
    )


# ---------------------------------------------------------------------------------------------- optimizers


def _adamw(model: nn.Module, lr: float, config: RunConfig) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) updates all parameters in one pass: for full fine-tuning the per-tensor loop
    # took several times longer per step here. It is also what HF Trainer uses by default.
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay, fused=True)


def _loraplus_optimizer(model: nn.Module, lr: float, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW with B matrices at lr x --loraplus-lr-ratio and A matrices at lr (peft's LoRA+ grouping)."""
    return create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=config.loraplus_lr_ratio,
        loraplus_weight_decay=config.weight_decay,
    )  # fmt: skip


def _orthogonality(tuner) -> torch.Tensor:
    """AdaLoRA's regulariser, as peft computes it: mean over its A and B matrices of ||P Pᵀ - I|| (Frobenius)."""
    adapter = tuner.trainable_adapter_name
    terms = []
    for name, param in tuner.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            gram = param @ param.T if "lora_A" in name else param.T @ param
            terms.append(torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=gram.device, dtype=gram.dtype)))
    return torch.stack(terms).mean()


def _adalora_optimizer(model: nn.Module, lr: float, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW, plus AdaLoRA's two training-loop duties as optimizer hooks, so the loop stays the same for every method.

    Before each step: the orthogonal regulariser's gradient (peft adds it to the loss only when the model computes
    the loss from labels, which peftbench's loss never asks for). After each step, before the gradients are
    cleared: update_and_allocate, which scores and prunes ranks.
    """
    optimizer = _adamw(model, lr, config)
    tuner = model.base_model
    weight = tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight

    def add_regulariser_gradient(*_) -> None:
        with torch.enable_grad():
            (weight * _orthogonality(tuner)).backward()

    def allocate_ranks(*_) -> None:
        # The step index from AdamW's own state, so a run resumed from a checkpoint continues the rank schedule.
        tuner.update_and_allocate(max(int(state["step"]) for state in optimizer.state.values()) - 1)

    # The rank allocator's importance scores and the rank pattern so far travel in the optimizer's state dict, so a
    # checkpoint (which saves the optimizer) resumes the allocation exactly where it stopped.
    allocator, settings = tuner.rankallocator, tuner.peft_config[tuner.trainable_adapter_name]
    scores = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def save_allocation(_, state_dict: dict) -> dict:
        state_dict["adalora"] = {name: dict(getattr(allocator, name)) for name in scores}
        state_dict["adalora"]["rank_pattern"] = settings.rank_pattern
        return state_dict

    def load_allocation(_, state_dict: dict) -> dict:
        state_dict = dict(state_dict)
        saved = state_dict.pop("adalora")
        for name in scores:
            setattr(allocator, name, dict(saved[name]))
        settings.rank_pattern = saved["rank_pattern"]
        return state_dict

    optimizer.register_step_pre_hook(add_regulariser_gradient)
    optimizer.register_step_post_hook(allocate_ranks)
    optimizer.register_state_dict_post_hook(save_allocation)
    optimizer.register_load_state_dict_pre_hook(load_allocation)
    return optimizer


def build_optimizer(model: nn.Module, lr: float, config: RunConfig) -> torch.optim.Optimizer:
    """The optimizer of the method apply_method applied to model; AdamW over the trainable parameters by default."""
    method = METHODS.get(getattr(model, METHOD_ATTRIBUTE, ""))
    build = method.optimizer if method is not None and method.optimizer is not None else _adamw
    return build(model, lr, config)


# ---------------------------------------------------------------------------------------------- the registry

LORA_TARGETS = {
    "gpt2": {"targets": ["c_attn", "c_proj"]},
    "t5": {"targets": ["q", "v"]},
    "llama": {"targets": ["q_proj", "v_proj"]},
}
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
            defaults=LORA_TARGETS,
            peft_config=_lora_variant(),
            quantizable=True,
        ),
        Method(
            "dora",
            "DoRA: LoRA on each weight's direction, plus a trainable magnitude per output",
            default_lr=5e-4,
            peft_config=_lora_variant(use_dora=True),
            targets_from="lora",
            quantizable=True,
        ),
        Method(
            "rslora",
            "rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning",
            default_lr=5e-4,
            peft_config=_lora_variant(use_rslora=True),
            targets_from="lora",
            quantizable=True,
        ),
        Method(
            "pissa",
            "PiSSA: LoRA started from the weights' top singular components; the residual stays frozen",
            default_lr=2e-4,  # the adapter starts as the weights' largest part, so each step moves the model more
            peft_config=_lora_variant(init_lora_weights="pissa"),
            targets_from="lora",
        ),
        Method(
            "loraplus",
            "LoRA+: LoRA with B learning --loraplus-lr-ratio times faster than A",
            default_lr=2.5e-4,  # A's rate; B's is 16x: peft advises about half of LoRA's usual rate
            peft_config=_lora_variant(),
            targets_from="lora",
            quantizable=True,
            optimizer=_loraplus_optimizer,
        ),
        Method(
            "adalora",
            "AdaLoRA: LoRA in SVD form whose ranks are pruned during training to an average of r",
            default_lr=1e-3,
            peft_config=_adalora,
            targets_from="lora",
            quantizable=True,
            optimizer=_adalora_optimizer,
        ),
        Method(
            "loha",
            "LoHa: the Hadamard product of two low-rank updates (rank up to r²)",
            default_lr=1e-3,
            peft_config=_loha,
            targets_from="lora",
            layer_kinds=("Linear",),
        ),
        Method(
            "lokr",
            "LoKr: the Kronecker product of a small matrix and a low-rank one",
            default_lr=1e-3,
            peft_config=_lokr,
            targets_from="lora",
            layer_kinds=("Linear",),
        ),
        Method(
            "vera",
            "VeRA: frozen random low-rank matrices shared by all layers; only scaling vectors train",
            default_lr=5e-3,
            peft_config=_vera,
            targets_from="lora",
        ),
        Method(
            "oft",
            "OFT: a learned block-diagonal orthogonal transform of each target weight",
            default_lr=5e-4,
            peft_config=_oft,
            targets_from="lora",
            layer_kinds=("Linear",),
        ),
        Method(
            "ia3",
            "IA3: learned vectors rescale keys, values and feed-forward activations",
            default_lr=5e-3,
            defaults={
                "gpt2": {"targets": ["c_attn", "mlp.c_proj"], "feedforward": ["mlp.c_proj"]},
                "t5": {"targets": ["k", "v", "wo"], "feedforward": ["wo"]},
                "llama": {"targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"]},
            },
            peft_config=_ia3,
        ),
        Method(
            "prefix",
            "prefix tuning: trainable keys and values of virtual tokens in every attention layer",
            default_lr=1e-2,
            peft_config=_prefix,
            mergeable=False,
            prompt_learning=True,
            patch=_generation_cache_by_both_names,
        ),
        Method(
            "prompt",
            "prompt tuning: trainable embeddings of virtual tokens put before the input",
            default_lr=3e-2,
            peft_config=_prompt,
            mergeable=False,
            prompt_learning=True,
            patch=_generation_cache_by_both_names,
        ),
    ]
}


# ---------------------------------------------------------------------------------------------- checks


def check_method_names(names: list[str]) -> None:
    """Raise ConfigError for a method name that is not registered."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"method(s) {', '.join(duplicated)} listed twice in --methods")


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
    """Every target must match at least one adaptable layer, as PEFT's suffix matching would."""
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
    working = [
        m.name
        for m in METHODS.values()
        if m.peft_config is None or m.prompt_learning or set(unsupported) <= set(m.layer_kinds)
    ]
    raise ConfigError(
        f"{method.name} does not support {loaded.family} models: peft's {method.name} wraps only "
        f"{', '.join(method.layer_kinds)} layers, and here {found}. "
        f"Methods that work on this model: {', '.join(working)}"
    )


def check_method(method: Method, loaded: LoadedModel, config: RunConfig) -> PeftConfig | None:
    """Everything that can be known before training about `method` on this model; returns its peft config.

    Raises ConfigError naming the method and what would work: a method that cannot train on a --quantize base,
    targets that match nothing, layers peft's tuner cannot wrap, or settings peft refuses.
    """
    if config.quantize and not method.quantizable:
        allowed = ", ".join(m.name for m in METHODS.values() if m.quantizable)
        raise ConfigError(f"--quantize {config.quantize} trains LoRA-family methods ({allowed}), not {method.name}")
    if method.peft_config is None:
        return None
    options = method.options(loaded, config)
    for key, values in options.items():
        check_targets(loaded.model, values, f"--{method.target_owner.name}-{key}")
    check_layer_kinds(method, loaded, options.get("targets", []))
    try:
        return method.peft_config(loaded, config, options)
    except ConfigError:
        raise
    except ValueError as exc:  # peft validates its configs as it builds them
        raise ConfigError(f"peft refuses {method.name} with these settings: {exc}") from None


def architecture(config: RunConfig) -> LoadedModel | None:
    """The model's layers without weights (on the meta device): enough to check methods in about a second.

    None where the model cannot be read; loading it for real then reports why, at its usual point.
    """
    path = str(embedded_model_dir()) if config.model == EMBEDDED else config.model
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        auto = AutoModelForSeq2SeqLM if model_config.is_encoder_decoder else AutoModelForCausalLM
        with torch.device("meta"):
            model = auto.from_config(model_config, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError):
        return None
    seq2seq = bool(model_config.is_encoder_decoder)
    return LoadedModel(model, None, seq2seq, family_of(model_config.model_type), config.model)


def check_methods(config: RunConfig) -> None:
    """Before any weights load: every configured method exists and can train on this model as configured.

    A method peft cannot apply to this architecture would otherwise fail only after the methods before it trained.
    """
    check_method_names(config.methods)
    quantization_config(config.quantize)  # --quantize without CUDA and bitsandbytes is a ConfigError
    skeleton = architecture(config)
    if skeleton is None:
        return
    for name in config.methods:
        check_method(METHODS[name], skeleton, config)


# ---------------------------------------------------------------------------------------------- applying


def apply_method(method: Method, loaded: LoadedModel, config: RunConfig) -> nn.Module:
    """Return the model to train: the base model itself for `full`, else a PeftModel wrapping it."""
    peft_config = check_method(method, loaded, config)
    if peft_config is None:
        loaded.model.requires_grad_(True)
        model = loaded.model
    else:
        try:
            model = get_peft_model(loaded.model, peft_config)
        except (ValueError, TypeError, NotImplementedError) as exc:  # peft's way of saying "not on this model"
            raise ConfigError(f"peft cannot apply {method.name} to this {loaded.family} model: {exc}") from None
        if method.patch is not None:
            method.patch(model)
    setattr(model, METHOD_ATTRIBUTE, method.name)
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


# ---------------------------------------------------------------------------------------------- peftbench methods


def trainable_counts(loaded: LoadedModel, config: RunConfig) -> dict[str, tuple[int, int] | str]:
    """Each method's (trainable, total) parameters on a copy of loaded.model, or the reason it cannot apply."""
    counts: dict[str, tuple[int, int] | str] = {}
    for method in METHODS.values():
        fresh = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
        try:
            counts[method.name] = count_parameters(apply_method(method, fresh, config))
        except ConfigError as exc:
            counts[method.name] = f"unsupported: {exc}"
    return counts


def _table(rows: list[list[str]]) -> str:
    """Left-aligned columns; the last column is left as long as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]) for row in rows)


def describe_methods(loaded: LoadedModel | None = None, config: RunConfig | None = None) -> str:
    """The registry as a table; given a model, with each method's trainable parameters on it (or why it cannot)."""
    config = config or RunConfig()
    counts = trainable_counts(loaded, config) if loaded is not None else {}
    header = ["method", "mergeable", "default lr"] + (["trainable", "%"] if loaded else []) + ["description"]
    rows = [header]
    for method in METHODS.values():
        row = [method.name, "yes" if method.mergeable else "no", f"{method.default_lr:g}"]
        description = method.description
        if loaded is not None:
            count = counts[method.name]
            if isinstance(count, str):
                row += ["-", "-"]
                description = count
            else:
                row += [f"{count[0]:,}", f"{100 * count[0] / count[1]:.3f}%"]
        rows.append(row + [description])
    lines = _table(rows)
    if loaded is not None:
        _, total = count_parameters(loaded.model)
        lines = f"On {loaded.name} ({loaded.family}, {total:,} parameters):\n" + lines
    return lines
