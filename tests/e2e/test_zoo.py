"""Every registry method on tiny GPT-2, T5 and llama, cheaply: applied through peftbench's own path, two optimizer
steps, saved and reloaded by peft onto a fresh base, merged where it merges; refused, naming the method, where it
does not apply. test_methods.py runs the older methods through the whole pipeline."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
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
from peftbench.pipeline.method_run import setup_method
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
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_copy(bases[arch]).model, tmp_path)
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
