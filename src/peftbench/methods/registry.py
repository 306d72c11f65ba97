"""The registry of fine-tuning methods. A new method is one `Method` entry in METHODS, not a new code path.

An entry says which peft-config builder the method uses (a function of peft_configs.py, by name), which module options
it takes per architecture family (families.py, or another method's with `targets_from`), which layer kinds peft's
tuner can wrap, whether it merges into the weights, its default learning rate and where that comes from, and (rarely)
its own optimizer or loss
term (functions of optimizers.py, by name). Builders are named rather than imported so that the registry stays free of
torch and peft: the report reads it (the order of methods, their settings) without loading a model library; apply.py
resolves the names.
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
# What LN tuning and adaption prompt wrap instead: modules their family names in families.py (norm layers, attention
# blocks), which are not Linear or Conv1D layers, so apply.py's target checks do not concern them.
NORMS = ("LayerNorm", "RMSNorm")
ATTENTION = ("attention",)


@dataclass(frozen=True)
class Method:
    name: str
    description: str  # one line, shown by `peftbench methods`
    default_lr: float
    lr_source: str  # where default_lr comes from (peft's experiments scaled to this registry, a paper, a choice)
    peft_config: str | None = None  # the builder in peft_configs.py; None: full fine-tuning
    peft_type: str | None = None  # peft's PeftType of the config the builder makes (its fields: --method-args)
    mergeable: bool = True  # merge_and_unload folds the adapter into the weights (merged latency is measured)
    targets_from: str | None = None  # use that method's targets (its family defaults and --<name>-targets)
    layer_kinds: tuple[str, ...] = ALL_KINDS  # the layer kinds peft's tuner wraps
    prompt_learning: bool = False  # adds virtual tokens instead of adapting layers: no targets
    quantizable: bool = False  # trains on a 4-bit or 8-bit base (--quantize)
    optimizer: str = "adamw"  # the optimizer builder in optimizers.py
    loss_term: str | None = None  # a function of optimizers.py whose value is added to each step's loss (a regulariser)
    init_from_data: str | None = None  # a function of data_init.py that wraps and initialises from training examples
    settings: tuple[str, ...] = ()  # the RunConfig fields it uses besides lr and targets (recorded, and reported)

    @property
    def target_owner(self) -> Method:
        """The method whose targets this one uses: itself, or e.g. LoRA for its variants."""
        return METHODS[self.targets_from] if self.targets_from else self

    @property
    def adapts_layers(self) -> bool:
        """Whether the method wraps target Linear or Conv1D layers (and so has module options, checked against the
        model's layers); not prompt learning, nor the methods on modules their family names (NORMS, ATTENTION)."""
        kinds_checked = set(self.layer_kinds) <= set(ALL_KINDS)
        return self.peft_config is not None and not self.prompt_learning and kinds_checked

    def options(self, family: Family, settings: MethodSettings) -> Options | None:
        """The family's defaults overridden by the user's flags (e.g. --lora-targets); {} for methods without
        target layers (their builders read what their family names), None where a method needs targets and neither
        the family nor the user names them."""
        if not self.adapts_layers:
            return {}
        owner = self.target_owner
        chosen = dict(family.defaults.get(owner.name, {})) | settings.overrides.get(owner.name, {})
        return chosen if "targets" in chosen else None


LORA = ("lora_r", "lora_alpha", "lora_dropout")
LINEAR = ("Linear",)  # peft's tuner refuses Conv1D (GPT-2's projections)
PEFT_SCALE = 5  # this registry's LoRA rate (5e-4) over the one peft's MetaMathQA experiments ran LoRA at (1e-4)


def peft_experiment(rate: float) -> str:
    """Where a default rate comes from when it is peft's MetaMathQA experiment's, scaled to this registry."""
    return f"peft MetaMathQA experiment ({rate:g} x {PEFT_SCALE}, this registry's LoRA scale)"


def on_lora_targets(name: str, description: str, lr: float, lr_source: str, peft_type: str, **more) -> Method:
    """A method that adapts LoRA's targets with its own builder (peft_configs.<name>)."""
    return Method(
        name,
        description,
        default_lr=lr,
        lr_source=lr_source,
        peft_config=name,
        peft_type=peft_type,
        targets_from="lora",
        **more,
    )


# LoRA's variants and the other weight-adapting methods adapt LoRA's targets (and take --lora-targets), so that
# methods differ in how they adapt the model, not where. Rates: peft's MetaMathQA experiments (Llama-3.2-3B, 5000
# steps) ran LoRA at 1e-4 where this registry's shorter runs use 5e-4, so their rates are scaled by the same 5.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "full",
            "full fine-tuning: every weight trains (the baseline)",
            default_lr=5e-5,
            lr_source="HF Trainer's default",
            mergeable=False,
        ),
        Method(
            "lora",
            "LoRA: a trainable low-rank update B·A beside each frozen target weight",
            default_lr=5e-4,
            lr_source=peft_experiment(1e-4),
            peft_config="lora",
            peft_type="LORA",
            quantizable=True,
            settings=LORA,
        ),
        on_lora_targets(
            "dora",
            "DoRA: LoRA on each weight's direction, plus a trainable magnitude per output",
            5e-4,
            peft_experiment(1e-4),
            "LORA",
            quantizable=True,
            settings=LORA,
        ),
        on_lora_targets(
            "rslora",
            "rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning",
            5e-4,
            peft_experiment(1e-4),
            "LORA",
            quantizable=True,
            settings=LORA,
        ),
        on_lora_targets(
            "pissa",
            "PiSSA: LoRA started from the weights' top singular components; the residual stays frozen",
            2e-4,
            "peftbench's choice: below LoRA's, as the adapter starts as the weights' largest part and each step "
            "moves the model more (peft's PiSSA example: 2e-5)",
            "LORA",
            settings=LORA,
        ),
        on_lora_targets(
            "olora",
            "OLoRA: LoRA started from a QR decomposition of each weight; the residual stays frozen",
            2e-4,
            "PiSSA's rate here: both start from the weights' leading part (peft's OLoRA example: 3e-4)",
            "LORA",
            layer_kinds=LINEAR,  # peft's OLoRA ignores fan_in_fan_out: on Conv1D it fails or silently changes the model
            settings=LORA,
        ),
        on_lora_targets(
            "eva",
            "EVA: LoRA whose A starts from the top singular vectors of each layer's inputs on training examples, "
            "ranks redistributed by explained variance",
            5e-4,
            "LoRA's (same parametrisation; B starts at zero, the base stays as it is)",
            "LORA",
            init_from_data="eva",
            settings=LORA,
        ),
        on_lora_targets(
            "corda",
            "CorDA: LoRA started from each weight's top singular components once weighted by the covariance of its "
            "inputs on training examples; the residual stays frozen",
            2e-4,
            "PiSSA's, for the same reason (its start moves the model as PiSSA's does)",
            "LORA",
            init_from_data="corda",
            settings=LORA,
        ),
        on_lora_targets(
            "astra",
            "ASTRA: LoRA started from each weight's projection on the tail eigenvectors of its outputs' covariance on "
            "training examples; the residual stays frozen",
            2e-4,
            "PiSSA's, for the same reason",
            "LORA",
            init_from_data="astra",
            settings=LORA,
        ),
        on_lora_targets(
            "loraga",
            "LoRA-GA: LoRA started from the SVD of each weight's gradient on training batches; the residual stays "
            "frozen",
            2e-4,
            "PiSSA's, for the same reason",
            "LORA",
            init_from_data="loraga",
            settings=LORA,
        ),
        on_lora_targets(
            "mica",
            "MiCA: LoRA with B fixed to each weight's r minor singular directions, only A trains",
            5e-4,
            peft_experiment(1e-4),
            "LORA",
            layer_kinds=LINEAR,
            settings=LORA,
        ),
        on_lora_targets(
            "nora",
            "NoRA: LoRA with each column of A normalised to unit length at the start",
            5e-4,
            "LoRA's (only A's starting scale differs)",
            "LORA",
            settings=LORA,
        ),
        on_lora_targets(
            "ortholora",
            "orthogonal LoRA: A and B orthogonal, their product zero at the start, so both train from the first step",
            5e-4,
            "LoRA's rate (no rate of its own found)",
            "LORA",
            settings=LORA,
        ),
        Method(
            "loraplus",
            "LoRA+: LoRA with B learning --loraplus-lr-ratio times faster than A",
            default_lr=2.5e-4,  # A's rate; B's is 16x
            lr_source="peft's LoRA+ advice: about half of LoRA's usual rate (B's is 16x)",
            peft_config="lora",
            peft_type="LORA",
            targets_from="lora",
            quantizable=True,
            optimizer="loraplus",
            settings=(*LORA, "loraplus_lr_ratio"),
        ),
        Method(
            "lorafa",
            "LoRA-FA: LoRA with A frozen at its initialisation; only B trains, its gradient projected",
            default_lr=5e-4,
            lr_source=peft_experiment(1e-4),
            peft_config="lora",
            peft_type="LORA",
            targets_from="lora",
            optimizer="lorafa",
            settings=LORA,
        ),
        on_lora_targets(
            "adalora",
            "AdaLoRA: LoRA in SVD form whose ranks are pruned during training to an average of r",
            1e-3,
            "peftbench's choice (peft's MetaMathQA experiment: 1e-4)",
            "ADALORA",
            quantizable=True,
            optimizer="adalora",
            loss_term="adalora_regularizer",
            settings=LORA,
        ),
        on_lora_targets(
            "loha",
            "LoHa: the Hadamard product of two low-rank updates (rank up to r²)",
            1e-3,
            "peftbench's choice (peft's MetaMathQA experiment: 1e-4)",
            "LOHA",
            layer_kinds=LINEAR,
            settings=("lora_r", "lora_alpha"),
        ),
        on_lora_targets(
            "lokr",
            "LoKr: the Kronecker product of a small matrix and a low-rank one",
            1e-3,
            "peftbench's choice (peft's MetaMathQA experiment's best: 3e-3)",
            "LOKR",
            layer_kinds=LINEAR,
            settings=("lora_r", "lora_alpha"),
        ),
        on_lora_targets(
            "vera",
            "VeRA: frozen random low-rank matrices shared by all layers; only scaling vectors train",
            5e-3,
            peft_experiment(1e-3),
            "VERA",
        ),
        on_lora_targets(
            "pvera",
            "PVeRA: VeRA with a probabilistic scaling vector (sampled in training, its mean in evaluation)",
            1.5e-2,
            peft_experiment(3e-3),
            "PVERA",
        ),
        on_lora_targets(
            "vblora",
            "VB-LoRA: LoRA factors assembled from a bank of vectors shared by all layers, by learned top-k mixing",
            5e-4,
            peft_experiment(1e-4) + "; peft's docs advise about 1e-2 for the logits and 1e-3 for the bank",
            "VBLORA",
        ),
        on_lora_targets(
            "randlora",
            "RandLoRA: learned scalings of frozen random low-rank bases shared by all layers (a full-rank update)",
            5e-4,
            peft_experiment(1e-4),
            "RANDLORA",
        ),
        on_lora_targets(
            "unilora",
            "Uni-LoRA: one trainable vector for the whole model, projected into every layer's LoRA factors",
            4e-3,
            "paper: its authors' LLaMA-2 instruction tuning (8e-4) x 5, this registry's scale; peft's MetaMathQA "
            "run at 1e-4 learned nothing",
            "UNILORA",
        ),
        on_lora_targets(
            "tinylora",
            "TinyLoRA: a tiny vector per layer, projected by fixed random tensors into the weight's top singular space",
            5e-3,
            peft_experiment(1e-3) + "; that run barely learned (the paper trains it with reinforcement learning)",
            "TINYLORA",
        ),
        on_lora_targets(
            "gralora",
            "GraLoRA: LoRA split into k x k sub-blocks with a low-rank pair each (LoRA's parameters, k times its rank)",
            1e-3,
            peft_experiment(2e-4),
            "GRALORA",
        ),
        on_lora_targets(
            "hira",
            "HiRA: the Hadamard product of the frozen weight and a low-rank B·A (a high-rank update)",
            2.25e-2,
            peft_experiment(4.5e-3),
            "HIRA",
        ),
        on_lora_targets(
            "delora",
            "DeLoRA: a low-rank update normalised and bounded by a learned norm",
            5e-3,
            peft_experiment(1e-3),
            "DELORA",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "glora",
            "GLoRA: generalised LoRA: a low-rank scaling of the weight, a low-rank add-on and a bias path",
            5e-4,
            peft_experiment(1e-4),
            "GLORA",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "lily",
            "Lily: a low-rank A per layer and B matrices shared across layers, mixed per input by a learned router",
            5e-4,
            peft_experiment(1e-4),
            "LILY",
            layer_kinds=LINEAR,
            mergeable=False,  # the router mixes the B matrices per input: there is no one weight update
        ),
        on_lora_targets(
            "miss",
            "MiSS: one small trainable shard, expanded across each target weight's update",
            5e-4,
            peft_experiment(1e-4),
            "MISS",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "deft",
            "DEFT: a learned projection removes directions of each weight and a low-rank term injects new ones",
            5e-4,
            peft_experiment(1e-4),
            "DEFT",
        ),
        on_lora_targets(
            "peanut",
            "PEANuT: a small non-linear network reads each frozen weight and produces its update",
            5e-4,
            peft_experiment(1e-4),
            "PEANUT",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "oft",
            "OFT: a learned block-diagonal orthogonal transform of each target weight",
            5e-4,
            peft_experiment(1e-4),
            "OFT",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "boft",
            "BOFT: a butterfly-factorised orthogonal transform of each target weight, plus an output scale",
            5e-4,
            peft_experiment(1e-4),
            "BOFT",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "hra",
            "HRA: r Householder reflections (an orthogonal transform) multiplied into each target weight",
            5e-4,
            "OFT's rate here (both transform the weights orthogonally): no language-model rate found (peft's "
            "diffusion example: 5e-3)",
            "HRA",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "psoft",
            "PSOFT: an r x r orthogonal rotation (and scales) between frozen SVD-initialised low-rank factors",
            5e-4,
            peft_experiment(1e-4),
            "PSOFT",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "road",
            "RoAd: learned 2-D rotations and scales of pairs of each target layer's outputs",
            5e-3,
            peft_experiment(1e-3),
            "ROAD",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "c3a",
            "C3A: a block-circulant update, one trainable kernel per block, applied by FFT",
            1.5,
            peft_experiment(0.3) + ": C3A divides its update by the layer's input width",
            "C3A",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "fourierft",
            "FourierFT: trainable spectral coefficients per layer; the update is their inverse 2-D Fourier transform",
            1e-1,
            "paper: its authors' LLaMA-2 instruction tuning ran 5e-2 at scaling 300, doubled for peft's scaling 150; "
            "peft's MetaMathQA run at 1e-4 learned nothing",
            "FOURIERFT",
        ),
        on_lora_targets(
            "waveft",
            "WaveFT: trainable wavelet coefficients per layer; the update is their inverse 2-D wavelet transform",
            5e-4,
            peft_experiment(1e-4),
            "WAVEFT",
        ),
        on_lora_targets(
            "frod",
            "FRoD: per-layer scales and a sparse rotation in a basis shared by same-kind layers, built from weights",
            5e-4,
            peft_experiment(1e-4),
            "FROD",
        ),
        on_lora_targets(
            "shira",
            "SHiRA: a fixed random sparse set of each target weight's entries trains directly",
            1.5e-3,
            peft_experiment(3e-4),
            "SHIRA",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "paca",
            "PaCA: r randomly chosen input columns of each target weight train directly (no added matrices)",
            1.5e-3,
            peft_experiment(3e-4),
            "PACA",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "supertuning",
            "Supertuning: the largest 1% of each target weight's entries (by magnitude) train directly",
            1.5e-3,
            "SHiRA's rate here (both train a sparse set of weight entries): peft's experiment has no result yet",
            "SUPERTUNING",
            layer_kinds=LINEAR,
        ),
        on_lora_targets(
            "beft",
            "BEFT: a trainable bias added to each target layer's output (BitFit on chosen layers)",
            5e-4,
            peft_experiment(1e-4) + "; peft's BEFT example: 8e-3",
            "BEFT",
            layer_kinds=LINEAR,
            mergeable=False,  # peft merges it only into a layer that has a bias: llama's and T5's have none
        ),
        Method(
            "ia3",
            "IA3: learned vectors rescale keys, values and feed-forward activations",
            default_lr=5e-3,
            lr_source="peft MetaMathQA experiment's best (5e-3, not scaled)",
            peft_config="ia3",
            peft_type="IA3",
        ),
        Method(
            "ln_tuning",
            "LN tuning: the model's norm layers (LayerNorm, RMSNorm) train",
            default_lr=5e-3,
            lr_source="IA3's rate here (both learn per-channel scales around 1): peft's MetaMathQA run at 1e-4 learned "
            "nothing (peft's LN tuning notebook: 5e-2)",
            peft_config="ln_tuning",
            peft_type="LN_TUNING",
            layer_kinds=NORMS,
        ),
        Method(
            "adaption_prompt",
            "adaption prompt (LLaMA-Adapter): learned tokens behind zero-initialised gates in every attention layer",
            default_lr=2.5e-2,
            lr_source=peft_experiment(5e-3),
            peft_config="adaption_prompt",
            peft_type="ADAPTION_PROMPT",
            mergeable=False,
            layer_kinds=ATTENTION,
            settings=("num_virtual_tokens",),
        ),
        Method(
            "prefix",
            "prefix tuning: trainable keys and values of virtual tokens in every attention layer",
            default_lr=1e-2,
            lr_source="peftbench's choice (peft's MetaMathQA experiment's best: 5e-3)",
            peft_config="prefix",
            peft_type="PREFIX_TUNING",
            mergeable=False,
            prompt_learning=True,
            settings=("num_virtual_tokens",),
        ),
        Method(
            "prompt",
            "prompt tuning: trainable embeddings of virtual tokens put before the input",
            default_lr=3e-2,
            lr_source="peftbench's choice (peft's MetaMathQA experiment's best: 1e-3)",
            peft_config="prompt",
            peft_type="PROMPT_TUNING",
            mergeable=False,
            prompt_learning=True,
            settings=("num_virtual_tokens",),
        ),
        Method(
            "ptuning",
            "P-tuning: virtual-token embeddings made by a trainable MLP prompt encoder, put before the input",
            default_lr=5e-4,
            lr_source=peft_experiment(1e-4),
            peft_config="ptuning",
            peft_type="P_TUNING",
            mergeable=False,
            prompt_learning=True,
            settings=("num_virtual_tokens",),
        ),
    ]
}


@dataclass(frozen=True)
class NotOffered:
    """A peft method (or LoRA option) that peftbench refuses, and why: docs/methods.md's "Not offered" table."""

    name: str  # how users would name it in --methods
    title: str
    peft_type: str  # peft's PeftType, and for LoRA options the LoraConfig field that selects it
    reason: str


# Every method type of the installed peft is in METHODS or here (a test checks it, and the docs table against this).
NOT_OFFERED: dict[str, NotOffered] = {
    m.name: m
    for m in [
        NotOffered(
            "xlora",
            "X-LoRA",
            "XLORA",
            "it mixes already-trained LoRA experts (`adapters`: name -> path) with a learned per-token classifier: "
            "nothing to train from one task; it also fails at once (`use_cache` must be False)",
        ),
        NotOffered(
            "poly",
            "Poly",
            "POLY",
            "multi-task routing over several LoRAs: every forward and generate needs `task_ids`; with one task it "
            "is a fixed mixture of LoRAs, and it does not merge",
        ),
        NotOffered(
            "multitask_prompt_tuning",
            "multitask prompt tuning",
            "MULTITASK_PROMPT_TUNING",
            "its point is a prompt distilled over many source tasks, with `task_ids` in every forward; with one task "
            "it is prompt tuning (`prompt`)",
        ),
        NotOffered(
            "cpt",
            "CPT",
            "CPT",
            "it needs in-context demonstrations as token ids with per-token type masks in the config and in every "
            "forward, and computes its own loss; causal models only",
        ),
        NotOffered(
            "cartridge",
            "Cartridge",
            "CARTRIDGE",
            "it is trained by self-study context distillation; on plain labels it is prefix tuning (`prefix`) with "
            "the first virtual token frozen",
        ),
        NotOffered(
            "shadow",
            "Shadow",
            "SHADOW",
            "it adds an auxiliary loss only when labels reach the forward (peftbench computes its own loss: it would "
            "need a loss term), wraps whole decoder blocks, causal models only",
        ),
        NotOffered(
            "osf",
            "OSF",
            "OSF",
            "it merges but cannot unmerge (peftbench's serving costs merge and unmerge every mergeable adapter); a "
            "continual-learning method that trains half of each weight's singular subspace by default",
        ),
        NotOffered(
            "adamss", "AdaMSS", "ADAMSS", "it needs scikit-learn (its KMeans), which peftbench does not depend on"
        ),
        NotOffered(
            "trainable_tokens",
            "trainable tokens",
            "TRAINABLE_TOKENS",
            "it trains the embeddings of chosen token ids, for tokens a run adds: a single-task run adds none, and "
            "which existing tokens to train is a choice of its own, not a method to compare",
        ),
        NotOffered(
            "velora",
            "VeLoRA",
            "LORA (velora_config)",
            "not yet: a memory-saving backward for LoRA (compressed activations), one more entry to add",
        ),
        NotOffered(
            "riemannian",
            "Riemannian LoRA",
            "LORA (peft.optimizers riemannian)",
            "not yet: a preconditioned optimizer for LoRA, one more optimizer entry to add",
        ),
        NotOffered(
            "gaussian",
            "Gaussian init",
            'LORA (init_lora_weights="gaussian")',
            "LoRA with A drawn from a normal distribution instead of Kaiming-uniform: the same method as `lora` "
            "but for the scale of A's start",
        ),
        NotOffered(
            "lora_bias",
            "LoRA bias",
            "LORA (lora_bias)",
            "an option for LoRA extracted from full fine-tunes; it merges only into layers with a bias",
        ),
        NotOffered(
            "loftq",
            "LoftQ",
            'LORA (init_lora_weights="loftq")',
            "it needs bitsandbytes and a CUDA device: it initialises LoRA for a quantized base, which a "
            "full-precision comparison does not have",
        ),
        NotOffered(
            "kasa",
            "KaSA",
            "LORA (kasa_config)",
            "its regulariser is a loss the user adds each step (`_get_kasa_loss`); it also changes the model at "
            "initialisation and refuses Conv1D",
        ),
        NotOffered(
            "monteclora",
            "MonteCLoRA",
            "LORA (monteclora_config)",
            "its regulariser is a loss the user adds each step (`_get_monteclora_loss`)",
        ),
        NotOffered(
            "bdlora",
            "BD-LoRA",
            "LORA (use_bdlora)",
            "a serving optimisation for tensor parallelism (block-diagonal factors); it needs its targets split in "
            "two lists and fails on Conv1D",
        ),
        NotOffered(
            "alora",
            "aLoRA",
            "LORA (alora_invocation_tokens)",
            "it acts only after an invocation token sequence that every input must contain; it does not merge",
        ),
        NotOffered("qalora", "QA-LoRA", "LORA (use_qalora)", "it adapts GPTQ-quantized models only"),
        NotOffered("arrow", "Arrow", "LORA (arrow_config)", "a router over already-trained LoRA adapters"),
    ]
}


def check_method_names(names: list[str]) -> None:
    """Raise ConfigError for a method name that is not registered (with the reason where peftbench refuses a peft
    method on purpose), or listed twice."""
    refused = [NOT_OFFERED[name] for name in names if name in NOT_OFFERED]
    if refused:
        raise ConfigError("; ".join(f"{m.name} ({m.title}) is not offered: {m.reason}" for m in refused))
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"method(s) {', '.join(duplicated)} listed twice in --methods")


def learning_rate(method: Method, lr: float | None) -> float:
    """The learning rate a method trains at: the one given (--lr), else the method's default."""
    return lr if lr is not None else method.default_lr
