"""Evaluation in one pass: the loss of the generated examples comes from generation's own reading of their prompts,
with the same figures and predictions as a separate loss pass, on every layout and on caches that cannot be cut."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from peftbench.data.splits import Example
from peftbench.measure.timing import PhaseTimer
from peftbench.model.layout import CausalLayout, PromptOptions, TokenLimits
from peftbench.model.load import load_model
from peftbench.training.evaluate import EvalOptions, Evaluator

WORDS = "the council voted on monday to close the old bridge after engineers found cracks in two of its piers".split()
# Prompts and targets of different lengths (padding inside every batch), down to a target of one word.
EXAMPLES = [Example(f"e{i}", " ".join(WORDS[: 4 + 3 * i]), " ".join(WORDS[i : i + 1 + (5 * i) % 7])) for i in range(7)]
OPTIONS = EvalOptions(batch_size=3, max_new_tokens=6, num_beams=1, metrics=("rougeL",))


def _positions_read(module: torch.nn.Module) -> list[int]:
    """A running count of the input positions module's forward passes read."""
    read = [0]

    def count(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        read[0] += 0 if ids is None else ids.numel()

    module.register_forward_pre_hook(count, with_kwargs=True)
    return read


def _both_ways(model, layout, reader: torch.nn.Module, generate_count: int = 5):
    """Evaluate in one pass and in two, each with what reader read; the same items and options."""
    items = layout.encode(EXAMPLES, TokenLimits(source=24, target=8))
    read, runs = _positions_read(reader), {}
    for one_pass in (True, False):
        before, timer = read[0], PhaseTimer()
        evaluator = Evaluator(layout, OPTIONS, torch.device("cpu"), one_pass=one_pass)
        scores, generation = evaluator.evaluate(model, items, EXAMPLES, generate_count, "test", timer, "test")
        runs[one_pass] = (scores, generation, read[0] - before, timer.seconds)
    prompts = sum(len(item.prompt) for item in items[:generate_count])
    return runs, prompts


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama_chat", "tiny_t5"])
def test_one_pass_gives_the_separate_passes_figures_reading_each_prompt_once(name, request):
    loaded = load_model(str(request.getfixturevalue(name)), prompt=PromptOptions())
    model = loaded.model.eval()
    encoder = getattr(model, "get_encoder", lambda: None)() if loaded.layout.kind == "seq2seq" else None
    runs, prompts = _both_ways(model, loaded.layout, encoder or model)
    (one, one_gen, one_read, one_phases), (two, two_gen, two_read, _) = runs[True], runs[False]
    assert one.loss == pytest.approx(two.loss, rel=1e-5)
    assert one_gen.predictions == two_gen.predictions and one.metrics == two.metrics
    assert one_gen.new_tokens == two_gen.new_tokens
    # The loss pass over the generated examples read their prompts again; one pass does not.
    assert two_read - one_read >= prompts // 2, (one_read, two_read, prompts)
    # Generation's throughput is timed on its own part (the phase adds the scoring): the targets' loss is not in it.
    assert 0 < one_gen.seconds <= one_phases["test_generation"] and one_phases["test_loss"] > 0


def test_a_cache_that_cannot_be_cut_back_leaves_generation_to_read_the_prompts(tokenizer):
    # A sliding window shorter than the prompts: the cache cannot go back to the prompts once the targets are in.
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model, layout = MistralForCausalLM(config).eval(), CausalLayout(tokenizer)
    items = layout.encode(EXAMPLES[2:5], TokenLimits(source=24, target=8))
    prompts = layout.collate(items, with_targets=False)
    with torch.inference_mode():
        prefilled = layout.prefill(model, prompts)
        layout.prefilled_loss(model, prompts, [item.target for item in items], prefilled)
    assert prefilled == {}  # generate reads the prompts itself
    runs, _ = _both_ways(model, layout, model)
    assert runs[True][0].loss == pytest.approx(runs[False][0].loss, rel=1e-5)
    assert runs[True][1].predictions == runs[False][1].predictions


def test_a_model_with_a_cache_kind_of_its_own_reads_prompt_and_target_together(tiny_llama_chat):
    # generate refuses a cache passed in when the model's generation config names its own kind of cache.
    loaded = load_model(str(tiny_llama_chat), prompt=PromptOptions())
    model = loaded.model.eval()
    model.generation_config.cache_implementation = "static"
    items = loaded.layout.encode(EXAMPLES, TokenLimits(source=24, target=8))[:3]
    prompts = loaded.layout.collate(items, with_targets=False)
    with torch.inference_mode():
        prefilled = loaded.layout.prefill(model, prompts)
        expected, expected_counts = loaded.layout.token_loss(model, loaded.layout.collate(items))
    # One batch: its loss in one pass is then prompt and target read together.
    _, losses = Evaluator(loaded.layout, OPTIONS, torch.device("cpu"), one_pass=True).generate(model, items)
    assert prefilled == {} and [losses[i][1] for i in range(len(items))] == expected_counts.tolist()
    assert [losses[i][0] for i in range(len(items))] == pytest.approx(expected.tolist(), rel=1e-6)
    runs, _ = _both_ways(model, loaded.layout, model)
    assert runs[True][1].predictions == runs[False][1].predictions
