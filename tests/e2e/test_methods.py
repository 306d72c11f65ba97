"""The original methods end to end on tiny GPT-2 and T5 (test_zoo.py runs every method, cheaply), `peftbench
methods`, and clear errors for what cannot run."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftType

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example
from peftbench.errors import ConfigError
from peftbench.methods.apply import apply_method, check_method, count_parameters
from peftbench.methods.registry import METHODS, NOT_OFFERED
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import TokenLimits
from peftbench.model.load import load_model, skeleton
from peftbench.pipeline.method_run import setup_method
from peftbench.training.trainer import Trainer, TrainOptions
from tests.e2e.test_zoo import SETTINGS, applies
from tests.helpers import tiny_run_args

# The methods the whole pipeline runs here; test_zoo.py covers every method, cheaply.
END_TO_END = [
    "lora",
    "dora",
    "rslora",
    "pissa",
    "loraplus",
    "adalora",
    "loha",
    "lokr",
    "vera",
    "oft",
    "ia3",
    "prefix",
    "prompt",
]
DEFAULT = MethodSettings.from_config(RunConfig())


def settings(**changes) -> MethodSettings:
    return MethodSettings.from_config(RunConfig(**changes))


# One epoch of one batch, one validation and one test example, short texts: the pipeline, not the quality.
SMALL = (
    "--epochs",
    "1",
    "--train-size",
    "4",
    "--eval-size",
    "1",
    "--test-size",
    "1",
    "--max-new-tokens",
    "2",
    "--max-source-tokens",
    "24",
    "--max-target-tokens",
    "8",
    "--latency-prompts",
    "1",
    "--latency-rounds",
    "2",
    "--latency-new-tokens",
    "2",
    "--in-process",
)
EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday, drawing a crowd.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets in the old town.", "Rain floods the old town."),
    Example("c", "A local team won the regional cup after extra time.", "Local team wins the cup."),
]


def refused_on(arch: str) -> set[str]:
    """The methods peftbench refuses on this tiny model (test_zoo.applies)."""
    return {name for name, method in METHODS.items() if method.peft_config and not applies(method, arch)}


def test_registry_names_real_peft_types_and_rate_sources():
    for name, method in METHODS.items():
        assert (method.peft_type is None) == (name == "full"), name
        assert method.peft_type is None or method.peft_type in PeftType.__members__, name
        assert method.lr_source, name
        scaled = re.match(r"peft MetaMathQA experiment \(([\d.e-]+) x (\d+),", method.lr_source)
        if scaled:  # the rate is peft's, times this registry's scale
            assert method.default_lr == pytest.approx(float(scaled[1]) * int(scaled[2])), name
    assert refused_on("gpt2") >= {"loha", "lokr", "oft", "adaption_prompt"}  # Conv1D projections; no llama
    assert refused_on("t5") == {"adaption_prompt"}
    assert {name for name, m in METHODS.items() if not m.mergeable} >= {"full", "prefix", "prompt", "lily"}


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_every_method_runs_end_to_end(arch, tiny_models, articles, tmp_path):
    names = [name for name in END_TO_END if applies(METHODS[name], arch)]  # full: see test_cli
    output = tmp_path / "out"
    assert main(tiny_run_args(tiny_models[arch], articles, output, "--methods", ",".join(names), *SMALL)) == 0
    for name in names:
        metrics = json.loads((output / name / "metrics.json").read_text())
        assert metrics["method"] == name and metrics["config"]["lr"] == METHODS[name].default_lr
        assert 0 < metrics["trainable_params"] < metrics["total_params"]
        assert metrics["test"]["loss"] > 0 and len(metrics["epochs"]) == 2
        efficiency = metrics["efficiency"]
        if not METHODS[name].mergeable:  # reported as not mergeable, not skipped
            assert efficiency["latency_ms"]["merged"] is None and efficiency["merge_check"] is None
            assert efficiency["merge_unmerge_ms"] is None
        else:
            assert efficiency["latency_ms"]["merged"] > 0
            assert efficiency["merge_check"]["max_logit_diff"] < 1e-3, name
            assert efficiency["merge_unmerge_ms"] > 0
        # Every method serves from its saved adapter: loaded onto a base model, swapped with a second copy.
        assert efficiency["adapter_load_ms"] > 0 and efficiency["adapter_swap_ms"] > 0, name
        assert efficiency["adapter_memory_bytes"]["first"] > 0 and efficiency["adapter_memory_bytes"]["next"] > 0
        adapter = json.loads((output / name / "adapter" / "adapter_config.json").read_text())
        assert adapter["peft_type"] == METHODS[name].peft_type
    configs = {name: json.loads((output / name / "adapter" / "adapter_config.json").read_text()) for name in names}
    assert configs["dora"]["use_dora"] and configs["rslora"]["use_rslora"]
    assert configs["pissa"]["init_lora_weights"] == "pissa"
    assert json.loads((output / "dora" / "metrics.json").read_text())["config"]["dora_targets"] == (
        ["c_attn", "c_proj"] if arch == "gpt2" else ["q", "v"]
    )  # LoRA's targets


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_trainable_counts_match_peft(arch, tiny_models):
    loaded = load_model(str(tiny_models[arch]))
    for name, method in METHODS.items():  # at sizes that fit the tiny models
        if method.peft_config is None:
            continue
        fresh = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
        if name in refused_on(arch):
            conv1d = ".*Conv1D" if method.adapts_layers else ""
            with pytest.raises(ConfigError, match=f"{name} does not support {arch} models{conv1d}"):
                apply_method(method, fresh, SETTINGS)
            continue
        model = apply_method(method, fresh, SETTINGS)
        assert count_parameters(model) == tuple(model.get_nb_trainable_parameters()), name


def _trainer(method: str, arch: str, tiny_models, config: RunConfig) -> Trainer:
    loaded = load_model(str(tiny_models[arch]))
    items = loaded.layout.encode(EXAMPLES, TokenLimits(config.max_source_tokens, config.max_target_tokens))
    options = TrainOptions.from_config(config, precision="no")
    return setup_method(METHODS[method], loaded, MethodSettings.from_config(config), 1e-3, items, options)


def test_loraplus_trains_b_faster_than_a(tiny_models):
    trainer = _trainer("loraplus", "gpt2", tiny_models, RunConfig(loraplus_lr_ratio=4))
    names = {id(p): name for name, p in trainer.unwrapped.named_parameters()}
    rates = {}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            rates[names[id(param)]] = group["initial_lr"]
    assert rates and all(rate == (4e-3 if ".lora_B." in name else 1e-3) for name, rate in rates.items())
    assert {rate for rate in rates.values()} == {1e-3, 4e-3}


@pytest.mark.parametrize(("accumulate", "updates"), [(1, 3), (2, 2), (4, 1)])
def test_gradient_accumulation_steps(tiny_models, accumulate, updates):
    """3 batches of 1: one optimizer step per `accumulate` batches, and the epoch's last batch never waits."""
    config = RunConfig(train_size=3, batch_size=1, grad_accum=accumulate, epochs=2)
    trainer = _trainer("lora", "gpt2", tiny_models, config)
    trainer.train_epoch()
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {updates}
    assert trainer.scheduler.scheduler.last_epoch == updates  # the schedule counts optimizer steps, not batches
    trainer.train_epoch()
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {2 * updates}
    assert trainer.scheduler.get_last_lr()[0] == 0.0  # linear decay ends exactly at the run's last step


def test_adalora_prunes_ranks_during_training(tiny_models):
    config = RunConfig(train_size=3, batch_size=1, epochs=2, lora_r=2)  # 6 steps: prune, then keep the final ranks
    trainer = _trainer("adalora", "t5", tiny_models, config)
    trainer.train_epoch()
    trainer.train_epoch()
    peft_config = trainer.unwrapped.peft_config["default"]
    assert peft_config.init_r == 3 and peft_config.target_r == 2 and peft_config.total_step == 6
    assert peft_config.rank_pattern is not None
    kept = sum(int(mask.sum()) if torch.is_tensor(mask) else sum(mask) for mask in peft_config.rank_pattern.values())
    layers = len(peft_config.rank_pattern)
    assert kept <= 2 * layers < 3 * layers  # the budget: an average rank of target_r, down from init_r


def test_methods_command_lists_every_method(capsys, tiny_models):
    assert main(["methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == list(METHODS)

    assert main(["methods", "--model", str(tiny_models["gpt2"])]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == set(METHODS)
    lora = apply_method(METHODS["lora"], load_model(str(tiny_models["gpt2"])), DEFAULT)
    assert f"{count_parameters(lora)[0]:,}" in rows["lora"].split()
    assert re.search(r"\d\.\d{3}%", rows["prompt"])
    for name in refused_on("gpt2"):
        assert "unsupported:" in rows[name] and ("Conv1D" in rows[name] or not METHODS[name].adapts_layers)


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftbench: error:") and "Traceback" not in err
    return err


def test_unsupported_method_is_refused_before_any_training(capsys, tiny_models, articles, tmp_path):
    output = tmp_path / "out"
    err = _fails(capsys, tiny_run_args(tiny_models["gpt2"], articles, output, "--methods", "lora,oft", *SMALL))
    assert "oft does not support gpt2 models" in err and "Conv1D" in err and "lora" in err.split("work")[-1]
    assert not (output / "lora").exists()  # lora, listed first, never started


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only error")
def test_quantize_without_cuda_is_a_clear_error(capsys, tiny_models, articles, tmp_path):
    args = tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "o", "--methods", "lora", "--quantize", "4bit")
    err = _fails(capsys, args)
    assert "--quantize needs a CUDA GPU and bitsandbytes" in err


def test_settings_a_method_cannot_train_with(tiny_models):
    meta = skeleton(str(tiny_models["t5"]))
    assert next(meta.model.parameters()).device.type == "meta"  # checks need no weights
    with pytest.raises(ConfigError, match="LoRA-family methods .*lora.* not ia3"):
        check_method(METHODS["ia3"], meta, settings(quantize="4bit"))
    assert check_method(METHODS["dora"], meta, settings(quantize="4bit")) is not None
    with pytest.raises(ConfigError, match="prefix tuning cannot train with --gradient-checkpointing"):
        check_method(METHODS["prefix"], meta, settings(gradient_checkpointing=True))
    with pytest.raises(ConfigError, match="--quantize must be one of 4bit, 8bit"):
        RunConfig(quantize="3bit").validate()


def test_docs_document_every_method():
    page = Path(__file__).parents[2].joinpath("docs", "methods.md").read_text()
    section = page.split("\n## ")[0]
    for name, method in METHODS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert f"{method.default_lr:g}" in row, name


def test_every_peft_method_type_is_offered_or_refused_with_its_reason(capsys):
    """The installed peft's method types are each a registry entry or in NOT_OFFERED, whose reasons the docs table
    shows word for word and `run --methods` gives (exit 2)."""
    offered = {m.peft_type for m in METHODS.values()}
    refused = {m.peft_type for m in NOT_OFFERED.values()}
    assert {t for t in PeftType.__members__ if t not in offered and t not in refused} == set()
    assert not set(NOT_OFFERED) & set(METHODS)
    page = Path(__file__).parents[2].joinpath("docs", "methods.md").read_text()
    table = page.split("## Not offered, and why")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`)" in line.split("|")[1]]
    assert rows == [f"| {m.title} (`{m.name}`) | {m.peft_type} | {m.reason} |" for m in NOT_OFFERED.values()]
    assert main(["run", "--methods", "lora,osf,xlora", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"osf (OSF) is not offered: {NOT_OFFERED['osf'].reason}" in err and "xlora (X-LoRA) is not offered" in err


def _greedy_without_cache(model, prompts: dict, seq2seq: bool, steps: int, eos: int) -> list[list[int]]:
    """Greedy decoding by full forward passes (peft's forward adds the virtual tokens), never choosing EOS as
    generate_ids(fixed_length=True) does not: the reference for generate."""
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    decoded = torch.full((len(ids), 1), model.config.decoder_start_token_id) if seq2seq else ids
    for _ in range(steps):
        if seq2seq:
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoded, use_cache=False).logits
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=decoded, attention_mask=mask, position_ids=positions, use_cache=False).logits
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits[:, -1, eos] = -torch.inf
        decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded[:, -steps:].tolist()


def _next_logits(model, prompts: dict, seq2seq: bool) -> torch.Tensor:
    """Logits for the first new token, by one full forward pass."""
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    if seq2seq:
        start = torch.full((len(ids), 1), model.config.decoder_start_token_id)
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=start, use_cache=False).logits[:, -1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
@pytest.mark.parametrize("name", ["prefix", "prompt", "ptuning"])
def test_generation_uses_the_virtual_tokens(name, arch, tiny_models):
    """Generation sees the virtual tokens at every step and only once (peft up to 0.21 lost them with transformers
    5.24's renamed generation cache; peftbench needs 0.22)."""
    loaded = load_model(str(tiny_models[arch]))
    seq2seq = arch == "t5"
    model = apply_method(METHODS[name], loaded, DEFAULT).eval()
    with torch.no_grad():
        weight = model.prompt_encoder["default"].embedding.weight
        weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 3)  # make them matter
        items = loaded.layout.encode(EXAMPLES, TokenLimits(192, 64))
        prompts = loaded.layout.collate(items, with_targets=False)
        generated = loaded.layout.generate(model, prompts, 6, fixed_length=True)
        reference = _greedy_without_cache(model, prompts, seq2seq, 6, loaded.tokenizer.eos_token_id)
        assert generated == reference
        # The virtual tokens change what the model predicts (tokens alone can coincide on a random tiny model).
        with_tokens = _next_logits(model, prompts, seq2seq)
        without = _next_logits(model.get_base_model(), prompts, seq2seq)
        assert not torch.allclose(with_tokens, without)
