"""Model loading and the causal/seq2seq loss; the embedded SmolLM2 loader; models given by their config alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from peftbench.config.run_config import EMBEDDED, RunConfig
from peftbench.data.splits import Example
from peftbench.errors import ConfigError
from peftbench.methods.apply import apply_method, count_parameters
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import TokenLimits
from peftbench.model.load import load_model, skeleton

SETTINGS = MethodSettings.from_config(RunConfig())

EXAMPLES = [
    Example(
        "a", "The mayor opened a new bridge over the river on Monday, drawing a large crowd.", "Mayor opens bridge."
    ),
    Example("b", "Heavy rain flooded streets.", "Rain floods the old town and shops close early."),
]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_token_loss_matches_the_models_own_loss(arch, tiny_models):
    loaded = load_model(str(tiny_models[arch]))
    assert loaded.layout.kind == ("seq2seq" if arch == "t5" else "causal") and loaded.family.name == arch
    items = loaded.layout.encode(EXAMPLES, TokenLimits(192, 64))
    batch = loaded.layout.collate(items)
    with torch.no_grad():
        sums, counts = loaded.layout.token_loss(loaded.model, batch)
        summed, count = sums.sum(), int(counts.sum())
        reference = loaded.model(**batch).loss  # full logits, HF's own shift and mean
    assert count == sum(len(it.target) for it in items)
    assert (summed / count).item() == pytest.approx(reference.item(), rel=1e-5)


def test_lora_and_ia3_parameter_counts_match_peft(tiny_models):
    for name in ("lora", "ia3"):
        loaded = load_model(str(tiny_models["t5"]))
        model = apply_method(METHODS[name], loaded, SETTINGS)
        trainable, total = count_parameters(model)
        assert (trainable, total) == tuple(model.get_nb_trainable_parameters())


def test_embedded_model_converts_once_and_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    loaded = load_model(EMBEDDED)
    cached = tmp_path / "SmolLM2-135M-Instruct"
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".convert-*"))  # staging directory cleaned up
    assert loaded.family.name == "llama" and loaded.layout.kind == "causal"
    assert getattr(loaded.model.config, "quantization_config", None) is None
    assert getattr(loaded.model, "hf_quantizer", None) is None
    _, total = count_parameters(loaded.model)
    assert 130e6 < total < 140e6
    assert next(loaded.model.parameters()).dtype == torch.float32
    # A second load reads the cached safetensors and gives the same weights.
    again = load_model(EMBEDDED)
    name, weight = next(iter(loaded.model.state_dict().items()))
    assert torch.equal(again.model.state_dict()[name], weight)
    ids = loaded.tokenizer("The cat sat on the", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, -1]
    assert loaded.tokenizer.decode(logits.argmax()).strip()  # a pretrained model predicts a real word


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=f"model '{tmp_path / 'nowhere'}' does not exist"):
        load_model(str(tmp_path / "nowhere"))


def _weights(loaded) -> dict[str, torch.Tensor]:
    return loaded.model.state_dict()


def test_a_config_alone_gives_random_weights_drawn_with_a_fixed_seed(gpt2_shape, tiny_gpt2, tmp_path):
    loaded = load_model(str(gpt2_shape))
    assert loaded.random_weights and loaded.layout.kind == "causal" and loaded.family.name == "gpt2"
    assert not load_model(str(tiny_gpt2)).random_weights
    [drawn] = list((tmp_path / "cache" / "random-weights").iterdir())  # drawn once, kept as safetensors only
    assert sorted(f.suffix for f in drawn.iterdir() if f.suffix not in (".json",)) == [".safetensors"]
    # The config file itself names the same model; the same weights, whether from the cache or drawn anew.
    again = load_model(str(gpt2_shape / "config.json"))
    shutil.rmtree(tmp_path / "cache")
    redrawn = load_model(str(gpt2_shape))
    for name, weight in _weights(loaded).items():
        assert torch.equal(_weights(again)[name], weight) and torch.equal(_weights(redrawn)[name], weight)
    attention = _weights(loaded)["transformer.h.0.attn.c_attn.weight"]
    assert attention.std().item() == pytest.approx(0.02, rel=0.1)  # the config's initializer_range: random
    meta = skeleton(str(gpt2_shape))
    assert meta.random_weights and next(meta.model.parameters()).device.type == "meta"


def test_a_config_alone_never_runs_code(gpt2_shape, tmp_path):
    """Code named by the config (auto_map) is not imported, even with --trust-remote-code."""
    marker = tmp_path / "ran"
    (gpt2_shape / "shape_code.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((gpt2_shape / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "shape_code.Config", "AutoModelForCausalLM": "shape_code.Model"}
    (gpt2_shape / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(gpt2_shape), trust_remote_code=True)
    assert type(loaded.model).__name__ == "GPT2LMHeadModel" and loaded.random_weights
    assert not marker.exists()


def test_a_config_alone_needs_its_own_tokenizer_beside_it(gpt2_shape, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(gpt2_shape / "config.json", lone / "config.json")
    with pytest.raises(ConfigError, match="no tokenizer files in") as error:
        load_model(str(lone))
    assert "a config.json with its tokenizer's files beside it" in str(error.value)
    config = json.loads((gpt2_shape / "config.json").read_text())
    (gpt2_shape / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(ConfigError, match="50,257 tokens, more than the config's vocab_size 1,000"):
        load_model(str(gpt2_shape))
