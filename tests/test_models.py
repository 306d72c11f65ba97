"""Model loading and the causal/seq2seq loss; the embedded SmolLM2 loader."""

from __future__ import annotations

import pytest
import torch

from peftbench.adapt import apply_method, count_parameters
from peftbench.config import EMBEDDED, RunConfig
from peftbench.data import Example
from peftbench.layout import TokenLimits
from peftbench.methods import METHODS, MethodSettings
from peftbench.models import load_model

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
        summed, count = loaded.layout.token_loss(loaded.model, batch)
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
    from peftbench.config import ConfigError

    with pytest.raises(ConfigError, match="cannot load model"):
        load_model(str(tmp_path / "nowhere"))
