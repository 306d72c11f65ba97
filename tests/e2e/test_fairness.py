"""A fair comparison: accumulation that changes memory, not results; one compute precision for every model of a run;
one shared zero-shot epoch 0; no near-duplicate across splits; AdaLoRA's regulariser inside clipping; adapter sizes
of weights and config only; instruct models prompted with their chat template."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn

import peftbench.pipeline.method_run
import peftbench.pipeline.units
from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, _normalised, _split_by_hash, load_splits
from peftbench.methods.registry import METHODS
from peftbench.methods.settings import MethodSettings
from peftbench.model.layout import IGNORE_INDEX, PromptOptions, TokenLimits
from peftbench.model.load import load_model
from tests.e2e.test_methods import _trainer
from tests.helpers import tiny_run_args, without_dropout


def _metrics(output, method: str) -> dict:
    return json.loads((output / method / "metrics.json").read_text())


def test_accumulation_gives_the_steps_of_one_batch(tiny_gpt2, articles, tmp_path):
    """--batch-size 2 --grad-accum 2 trains on the same examples per optimizer step as --batch-size 4, with the
    step's gradient the mean over all its target tokens: the two runs agree to float rounding. Summaries up to 64
    tokens give the micro-batches different target counts, which averaging per micro-batch would weigh wrongly."""
    model = without_dropout(tiny_gpt2, tmp_path / "model")

    def run(output, *batching):
        args = tiny_run_args(
            model,
            articles,
            output,
            "--methods",
            "full,lora",
            "--lora-dropout",
            "0",
            "--lr",
            "1e-2",
            "--max-target-tokens",
            "64",
            "--train-size",
            "10",
            "--epochs",
            "2",
            "--in-process",
            *batching,
        )
        assert main(args) == 0

    run(tmp_path / "one", "--batch-size", "4")
    run(tmp_path / "accumulated", "--batch-size", "2", "--grad-accum", "2")
    largest = 0.0
    for method in ("full", "lora"):
        one, accumulated = _metrics(tmp_path / "one", method), _metrics(tmp_path / "accumulated", method)
        for a, b in zip(one["epochs"], accumulated["epochs"], strict=True):
            for key in ("train_loss", "val_loss"):
                if a[key] is not None:
                    largest = max(largest, abs(a[key] - b[key]))
        largest = max(largest, abs(one["test"]["loss"] - accumulated["test"]["loss"]))
        assert one["epochs"][1]["train_loss"] != one["epochs"][2]["train_loss"]  # it trained
    assert largest < 1e-5


def test_every_model_of_a_run_computes_at_one_precision(tiny_llama_chat, articles, tmp_path, monkeypatch):
    """With mixed precision on (forced here on the CPU), the base model's latency, training, validation, test
    generation, the unmerged and merged latencies and the merge check all run in bf16, for a peft model too."""
    monkeypatch.setattr(peftbench.pipeline.method_run, "mixed_precision", lambda _: "bf16")
    AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process: this test's own
    dtypes: dict[str, set] = {}

    def record(module, _inputs, output):
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            dtypes.setdefault(type(module).__module__.split(".")[0], set()).add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        args = tiny_run_args(
            tiny_llama_chat, articles, tmp_path / "out", "--methods", "lora,full", "--epochs", "1", "--in-process"
        )
        assert main(args) == 0
    finally:
        handle.remove()
        AcceleratorState._reset_state(reset_partial_state=True)
    assert dtypes and all(seen == {torch.bfloat16} for seen in dtypes.values()), dtypes  # torch's and peft's layers
    assert _metrics(tmp_path / "out", "lora")["config"]["compute_precision"] == "bf16"


def test_epoch_zero_is_the_base_model_shared_by_every_method(tiny_gpt2, articles, tmp_path, monkeypatch):
    """Prefix and prompt tuning attach random virtual tokens before training: epoch 0 must still be the base model,
    evaluated once per seed and identical in every method's metrics.json."""
    calls = []
    real = peftbench.pipeline.units.run_zero_shot
    monkeypatch.setattr(peftbench.pipeline.units, "run_zero_shot", lambda *a: calls.append(1) or real(*a))
    output = tmp_path / "out"
    args = tiny_run_args(tiny_gpt2, articles, output, "--epochs", "1", "--in-process")
    assert main([*args, "--methods", "lora,prefix,prompt"]) == 0
    base = json.loads((output / "zero-shot" / "metrics.json").read_text())["epochs"][0]
    assert base["epoch"] == 0 and base["train_loss"] is None
    for method in ("lora", "prefix", "prompt"):
        assert _metrics(output, method)["epochs"][0] == base
    assert main([*args, "--methods", "lora,prefix,prompt,ia3"]) == 0  # one more method: the evaluation is reused
    assert _metrics(output, "ia3")["epochs"][0] == base and len(calls) == 1
    assert "| zero-shot (reference) |" in (output / "summary.md").read_text()  # a reference row, not a method


def test_near_duplicates_stay_in_one_split(tmp_path):
    """The same story with other punctuation and case, another article with the same long summary, or several
    questions on one passage go to one split (their group's); exact repeats (same source and target once
    normalised) are dropped, the first staying."""
    story = "The mayor opened a new bridge over the river on Monday, drawing a large crowd of residents. " * 5
    summary = "The mayor opened a bridge; residents came to see it and celebrated with music and food."
    rows = [
        {"id": f"r{i}", "article": f"Article number {i} tells its own news. " * 4, "highlights": f"News {i}."}
        for i in range(40)
    ]
    rows += [
        {"id": "same", "article": story, "highlights": "Bridge opens."},
        {"id": "recased", "article": story.upper().replace(",", ""), "highlights": "A bridge opens."},
        {"id": "repeated", "article": story + " ", "highlights": "bridge opens!"},  # an exact repeat of "same"
        {"id": "retold", "article": "Crowds gathered as the city's bridge opened.", "highlights": summary},
        {"id": "copied", "article": "On Monday a bridge opened in the city centre.", "highlights": summary + "!"},
        {"id": "short-a", "article": "One question about birds.", "highlights": "Yes."},
        {"id": "short-b", "article": "Another question about fish.", "highlights": "yes"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    description = load_splits(RunConfig(dataset=str(path), train_size=1, eval_size=1, test_size=1)).description
    assert "1 exact repeats dropped" in description
    examples = [Example(row["id"], row["article"], row["highlights"]) for row in rows]
    split_map, _ = _split_by_hash(examples)
    where = {ex.id: name for name, split in split_map.items() for ex in split}
    assert "repeated" not in where and len(where) == len(rows) - 1  # only the exact repeat is dropped
    assert where["same"] == where["recased"] and where["retold"] == where["copied"]  # each group in one split
    assert {"short-a", "short-b"} <= set(where)  # short answers repeat by nature: not a group


def test_embedded_splits_share_no_near_duplicate():
    splits = load_splits(RunConfig(train_size=7900, eval_size=970, test_size=970))
    sources = [
        {_normalised(ex.source)[:300] for ex in split} for split in (splits.train, splits.validation, splits.test)
    ]
    targets = [{_normalised(ex.target) for ex in split} for split in (splits.train, splits.validation, splits.test)]
    for keys in (sources, targets):
        assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert "exact repeats dropped" in splits.description


def test_adalora_regulariser_is_clipped_with_the_loss(tiny_models):
    """peft adds AdaLoRA's orthogonal regulariser to the loss, so clipping bounds its gradient too."""
    trainer = _trainer(
        "adalora", "t5", tiny_models, RunConfig(train_size=3, batch_size=1, epochs=1, max_grad_norm=1e-4)
    )
    norms = []

    def record(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.optimizer.register_step_pre_hook(record)
    trainer.train_epoch()
    assert len(norms) == 3 and max(norms) <= 1e-4 * (1 + 1e-4)


def test_adapter_size_counts_weights_and_config_only(tiny_gpt2, articles, tmp_path):
    output = tmp_path / "out"
    args = tiny_run_args(tiny_gpt2, articles, output, "--methods", "prompt,full", "--epochs", "1", "--in-process")
    assert main(args) == 0
    for method, files in (
        ("prompt", {"adapter_config.json", "adapter_model.safetensors"}),
        ("full", {"config.json", "generation_config.json", "model.safetensors"}),
    ):
        efficiency = _metrics(output, method)["efficiency"]
        adapter = output / method / "adapter"
        assert set(efficiency["adapter_files"]) == files
        assert efficiency["adapter_size_bytes"] == sum((adapter / name).stat().st_size for name in files)
    assert (output / "prompt" / "adapter" / "README.md").is_file()  # peft's card is there, and not counted


def test_chat_prompt_labels_only_the_assistant_turn(tiny_llama_chat, tiny_gpt2):
    loaded = load_model(str(tiny_llama_chat))
    layout, tokenizer = loaded.layout, loaded.tokenizer
    assert layout.prompt_format == "chat"
    example = Example("a", "The mayor opened a bridge.", "Bridge opens.")
    (item,) = layout.encode([example], TokenLimits(64, 16))
    prompt = tokenizer.decode(item.prompt)
    assert prompt.startswith("### user:\n" + RunConfig().instruction) and "The mayor opened a bridge." in prompt
    assert prompt.endswith("<|endoftext|>\n### assistant:\n")  # generation starts after the assistant header
    assert tokenizer.decode(item.target) == "Bridge opens.<|endoftext|>"  # the answer and its end of turn only
    labels = layout.collate([item])["labels"][0]
    assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == "Bridge opens.<|endoftext|>"
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": RunConfig().instruction + "\n\n" + example.source},
            {"role": "assistant", "content": example.target},
        ],
        tokenize=False,
    )
    assert tokenizer.decode(item.prompt + item.target) + "\n" == rendered  # exactly the template's conversation
    plain = load_model(str(tiny_llama_chat), prompt=PromptOptions("plain")).layout
    assert plain.prompt_format == "plain" and load_model(str(tiny_gpt2)).layout.prompt_format == "plain"


def test_prompt_format_is_recorded_and_checked(tiny_llama_chat, tiny_gpt2, articles, tmp_path, capsys):
    output = tmp_path / "out"
    args = tiny_run_args(tiny_llama_chat, articles, output, "--methods", "lora", "--epochs", "1", "--in-process")
    assert main(args) == 0
    assert _metrics(output, "lora")["config"]["prompt_format"] == "chat"
    assert "prompt format: chat" in (output / "report.md").read_text()
    refused = tiny_run_args(tiny_gpt2, articles, tmp_path / "o", "--methods", "lora", "--prompt-format", "chat")
    assert main(refused) == 2
    err = capsys.readouterr().err
    assert "--prompt-format chat needs a tokenizer with a chat template" in err and "Traceback" not in err
    assert main([*refused[:-1], "dialogue"]) == 2
    assert "--prompt-format must be one of auto, chat, plain" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_settings_count_the_steps_the_trainer_takes(name, tiny_models):
    config = RunConfig(train_size=3, batch_size=2, grad_accum=1, epochs=2)
    trainer = _trainer(name, "gpt2", tiny_models, config)
    assert MethodSettings.from_config(config).total_steps == trainer.steps_per_epoch * 2 == 4
    assert METHODS[name].loss_term is None
