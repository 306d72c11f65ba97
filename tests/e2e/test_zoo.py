"""Every registry method on tiny GPT-2, T5 and llama, cheaply: applied through peftbench's own path, two optimizer
steps, saved and reloaded by peft onto a fresh base, merged where it merges; refused, naming the method, where it
does not apply. test_methods.py runs the older methods through the whole pipeline."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from accelerate.utils import set_seed
from peft import PeftModel
from transformers import Qwen2Config, Qwen2ForCausalLM

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example
from peftbench.errors import ConfigError
from peftbench.methods.apply import apply_method, check_method, count_parameters
from peftbench.methods.registry import METHODS, Method
from peftbench.methods.settings import MethodSettings
from peftbench.model.families import family_of
from peftbench.model.layout import TokenLimits
from peftbench.model.load import LoadedModel, load_model
from peftbench.pipeline.costs import save_adapter
from peftbench.pipeline.method_run import setup_method
from peftbench.store.records import Progress
from peftbench.store.rundir import MethodDir
from peftbench.training import checkpoint
from tests.helpers import train_options

ARCHS = ("gpt2", "t5", "llama")
# The tiny models are 32 wide (T5's attention 16): peft's default sizes of these methods need larger layers. Users set
# the same fields the same way.
TINY = {
    "c3a": {"block_size": 8},
    "vblora": {"vector_length": 8},
    "road": {"group_size": 8},
    "miss": {"r": 8},
    "shira": {"r": 4},
    "psoft": {"r": 8},
    "fourierft": {"n_frequency": 100},
    "waveft": {"n_frequency": 100},
    "eva": {"r": 4},  # EVA's 2r components need as many decoder tokens per batch: T5's two targets hold 15
}
SETTINGS = MethodSettings.from_config(RunConfig(method_args=TINY))
EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets in the old town.", "Rain floods the old town."),
]


def applies(method: Method, arch: str) -> bool:
    """Whether peftbench offers the method on this tiny model: GPT-2's projections are Conv1D, and adaption prompt
    knows llama's attention only."""
    if method.name == "adaption_prompt":
        return arch == "llama"
    return arch != "gpt2" or not method.adapts_layers or "Conv1D" in method.layer_kinds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on these tiny models a second thread only waits for the first (tenfold slower where other
    work shares the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bases(tiny_models, tiny_llama_chat) -> dict[str, LoadedModel]:
    """Each tiny model loaded once; every test trains a copy."""
    return {arch: load_model(str(path)) for arch, path in (tiny_models | {"llama": tiny_llama_chat}).items()}


def _copy(loaded: LoadedModel) -> LoadedModel:
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


@torch.no_grad()
def _logits(model, loaded: LoadedModel) -> torch.Tensor:
    items = loaded.layout.encode(EXAMPLES, TokenLimits(24, 8))
    inputs, _ = loaded.layout.logit_inputs(loaded.layout.collate(items))
    if "labels" in inputs:  # T5: its decoder inputs without the labels, on which peft's AdaLoRA adds its regulariser
        inputs = inputs | {"decoder_input_ids": loaded.model.prepare_decoder_input_ids_from_labels(inputs["labels"])}
        del inputs["labels"]
    return model.eval()(**inputs).logits


def _cases(offered: bool) -> list[tuple[str, str]]:
    return [
        (arch, name)
        for arch in ARCHS
        for name, method in METHODS.items()
        if method.peft_config is not None and applies(method, arch) == offered
    ]


@pytest.mark.parametrize(("arch", "name"), _cases(offered=True))
def test_method_trains_saves_reloads_and_merges(arch, name, bases, tmp_path):
    loaded, method = _copy(bases[arch]), METHODS[name]
    items = loaded.layout.encode(EXAMPLES, TokenLimits(24, 8))
    trainer = setup_method(method, loaded, SETTINGS, method.default_lr, items, train_options(epochs=1, batch_size=1))
    model = trainer.unwrapped
    before = {key: p.detach().clone() for key, p in model.named_parameters() if p.requires_grad}
    assert count_parameters(model)[0] > 0
    assert torch.isfinite(torch.tensor(trainer.train_epoch()))  # two optimizer steps, one example each
    assert trainer.steps_per_epoch == 2
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[key], weight) for key, weight in before.items()), "nothing trained"

    trained = _logits(model, loaded)
    save_adapter(model, method, loaded.layout, tmp_path / "adapter")  # as a run saves it
    reloaded = PeftModel.from_pretrained(_copy(bases[arch]).model, tmp_path / "adapter")
    assert torch.allclose(_logits(reloaded, loaded), trained, atol=1e-5, rtol=0), "reloaded adapter differs"
    if method.mergeable:
        merged = copy.deepcopy(model).merge_and_unload()
        assert torch.allclose(_logits(merged, loaded), trained, atol=1e-4, rtol=0), "merged model differs"


@pytest.mark.parametrize(("arch", "name"), _cases(offered=False))
def test_method_is_refused_where_it_does_not_apply(arch, name, bases):
    with pytest.raises(ConfigError, match=rf"{name} does not support {arch} models"):
        apply_method(METHODS[name], _copy(bases[arch]), SETTINGS)


def test_adaption_prompt_is_refused_on_llama_family_models_peft_does_not_know(bases):
    """qwen2, qwen3 and gemma are of the llama family here, but peft's adaption prompt knows llama and mistral only."""
    config = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
    )
    qwen2 = dataclasses.replace(bases["llama"], model=Qwen2ForCausalLM(config))
    assert qwen2.family is family_of("qwen2") is bases["llama"].family
    with pytest.raises(ConfigError, match="adaption_prompt does not support qwen2 models: .* on llama, mistral models"):
        check_method(METHODS["adaption_prompt"], qwen2, SETTINGS)


def test_eva_starts_from_the_training_inputs_singular_vectors(bases):
    """EVA's A matrices are the top right singular vectors of each layer's inputs on the training examples
    (orthonormal rows), where peft's plain wrap leaves them random; its B starts at zero, so the model is the base."""
    loaded = _copy(bases["llama"])
    items = loaded.layout.encode(EXAMPLES, TokenLimits(24, 8))
    base_logits = _logits(loaded.model, loaded)
    model = apply_method(METHODS["eva"], loaded, SETTINGS, items)
    a_matrices = [p for name, p in model.named_parameters() if "lora_A" in name]
    assert a_matrices
    for a in a_matrices:
        assert torch.allclose(a @ a.T, torch.eye(len(a)), atol=1e-4)
    assert torch.allclose(_logits(model, loaded), base_logits, atol=1e-6)


def test_eva_that_cannot_settle_is_a_clear_error(bases):
    """At r 8, EVA needs 16 decoder tokens per batch; T5's two 8-token targets never give them."""
    loaded = _copy(bases["t5"])
    items = loaded.layout.encode(EXAMPLES, TokenLimits(24, 8))
    plain = MethodSettings.from_config(RunConfig())
    with pytest.raises(
        ConfigError, match=r"eva's components did not settle within 200 passes over 2 training examples"
    ):
        apply_method(METHODS["eva"], loaded, plain, items)


def _resume_arch(method: Method) -> str:
    return next(arch for arch in ("llama", "t5", "gpt2") if applies(method, arch))


def _trainer(method: Method, loaded: LoadedModel, epochs: int):
    set_seed(0)  # as each method process does before it builds the model: frozen random parts come out the same
    items = loaded.layout.encode(EXAMPLES, TokenLimits(24, 8))
    return setup_method(method, loaded, SETTINGS, method.default_lr, items, train_options(epochs=epochs))


@pytest.mark.parametrize("name", [name for name, method in METHODS.items()])
def test_method_resumes_from_its_checkpoint_exactly(name, bases, tmp_path):
    """Three epochs straight, against one epoch, a checkpoint, a freshly built model and trainer restored from it
    (as a process started after a kill builds them), and two more: the same trainable weights. What peftbench saves
    (trainable weights, optimizer, scheduler and the method's own state, RNG) must be all a method needs."""
    method = METHODS[name]
    arch = _resume_arch(method)
    straight = _trainer(method, _copy(bases[arch]), epochs=3)
    for _ in range(3):
        straight.train_epoch()
    directory = MethodDir(tmp_path)
    first = _trainer(method, _copy(bases[arch]), epochs=3)
    first.train_epoch()
    after_one = {key: weight.clone() for key, weight in first.trainable_weights().items()}
    checkpoint.save(directory, first, Progress())
    resumed = _trainer(method, _copy(bases[arch]), epochs=3)
    checkpoint.restore(checkpoint.load_latest(directory), resumed)
    for _ in range(2):
        resumed.train_epoch()
    expected, got = straight.trainable_weights(), resumed.trainable_weights()
    assert got.keys() == expected.keys()
    assert any(not torch.equal(expected[key], after_one[key]) for key in expected), "nothing trained after epoch 1"
    for key, weight in expected.items():
        assert torch.allclose(got[key], weight, atol=1e-6, rtol=0), key


def test_a_refusal_names_only_methods_that_work_on_the_model(bases):
    with pytest.raises(ConfigError, match="Methods that work on this model: ") as refused:
        check_method(METHODS["loha"], _copy(bases["gpt2"]), SETTINGS)
    working = set(str(refused.value).split("Methods that work on this model: ")[1].split(", "))
    assert working == {name for name, method in METHODS.items() if applies(method, "gpt2")}
