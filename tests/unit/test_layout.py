"""Model layouts on tiny real models: how examples become token ids, how a batch is padded (causal: left, seq2seq:
right), and that the loss and token counts of a padded batch are those of its examples one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftbench.data.splits import Example
from peftbench.model.layout import IGNORE_INDEX, CausalLayout, Seq2SeqLayout, TokenLimits
from peftbench.model.load import load_model
from peftbench.task.presets import TASKS

pytestmark = pytest.mark.fast

# Sources and targets of different lengths, so that every batch holds padding.
EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets.", "Rain floods the old town after a night of storms."),
    Example("c", "A local team won the regional cup after extra time in a tense final.", "Team wins."),
]
LIMITS = TokenLimits(source=32, target=16)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    loaded = load_model(str(tiny_gpt2))
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def t5(tiny_t5):
    loaded = load_model(str(tiny_t5))
    loaded.model.eval()
    return loaded


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------------------------------------- causal


def test_gpt2_gets_the_causal_layout_in_the_plain_format(gpt2):
    assert isinstance(gpt2.layout, CausalLayout) and gpt2.layout.kind == "causal"
    assert gpt2.layout.prompt_format == "plain"  # GPT-2's tokenizer has no chat template


def test_causal_encode_is_source_cue_then_target_and_eos(gpt2):
    layout, tokenizer = gpt2.layout, gpt2.tokenizer
    items = layout.encode(EXAMPLES, LIMITS)
    cue = TASKS["summarization"].cue
    for example, item in zip(EXAMPLES, items, strict=True):
        assert tokenizer.decode(item.prompt) == example.source + cue
        assert item.target == _ids(tokenizer, " " + example.target) + [layout.eos_id]  # a new word after the cue
        assert item.length == len(item.prompt) + len(item.target)
        assert len(item.prompt) - len(_ids(tokenizer, example.source)) == layout.prompt_overhead()


def test_causal_encode_cuts_long_sources_and_targets_to_the_limits(gpt2):
    layout = gpt2.layout
    long = Example("long", "word " * 200, "one two three four five six seven eight nine ten eleven twelve")
    limits = TokenLimits(source=10, target=5)
    (item,) = layout.encode([long], limits)
    assert len(item.prompt) == limits.source + layout.prompt_overhead()
    assert len(item.target) == limits.target and item.target[-1] == layout.eos_id  # EOS kept
    assert gpt2.tokenizer.decode(item.prompt).endswith(TASKS["summarization"].cue)  # the cue is never cut


def test_causal_collate_left_pads_so_every_target_ends_in_the_last_column(gpt2):
    layout = gpt2.layout
    items = layout.encode(EXAMPLES, LIMITS)
    batch = layout.collate(items)
    width = max(item.length for item in items)
    assert batch["input_ids"].shape == batch["labels"].shape == (len(items), width)
    assert len({item.length for item in items}) > 1  # the batch does hold padding
    for row, item in enumerate(items):
        sequence, pad = item.prompt + item.target, width - item.length
        assert batch["input_ids"][row, pad:].tolist() == sequence
        assert batch["input_ids"][row, :pad].tolist() == [layout.pad_id] * pad
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * item.length
        assert batch["position_ids"][row, pad:].tolist() == list(range(item.length))  # real tokens count from 0
        labels = batch["labels"][row].tolist()
        assert labels[width - len(item.target) :] == item.target
        assert labels[: width - len(item.target)] == [IGNORE_INDEX] * (width - len(item.target))


def test_causal_collate_without_targets_holds_the_prompts_only(gpt2):
    layout = gpt2.layout
    items = layout.encode(EXAMPLES, LIMITS)
    batch = layout.collate(items, with_targets=False)
    assert "labels" not in batch
    width = max(len(item.prompt) for item in items)
    assert batch["input_ids"].shape == (len(items), width)
    for row, item in enumerate(items):
        assert batch["input_ids"][row, width - len(item.prompt) :].tolist() == item.prompt


def _causal_losses_by_hand(model, items) -> list[torch.Tensor]:
    """Each example alone, unpadded: the summed cross-entropy of its target tokens given everything before them."""
    losses = []
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([item.prompt + item.target])
            logits = model(input_ids=ids).logits[0]
            start = len(item.prompt)
            predicting = logits[start - 1 : item.length - 1]  # position t predicts token t + 1
            losses.append(F.cross_entropy(predicting, torch.tensor(item.target), reduction="sum"))
    return losses


def test_causal_token_loss_is_the_examples_summed_target_cross_entropy(gpt2):
    layout, model = gpt2.layout, gpt2.model
    items = layout.encode(EXAMPLES, LIMITS)
    with torch.no_grad():
        rows, counts = layout.token_loss(model, layout.collate(items))  # each example's own
    loss, count = rows.sum(), int(counts.sum())
    by_hand = _causal_losses_by_hand(model, items)
    assert count == sum(len(item.target) for item in items)
    assert loss.item() == pytest.approx(sum(by_hand).item(), rel=1e-4)
    assert rows.tolist() == pytest.approx([value.item() for value in by_hand], rel=1e-4)


def test_causal_real_tokens_ignore_padding(gpt2):
    layout = gpt2.layout
    items = layout.encode(EXAMPLES, LIMITS)
    batch = layout.collate(items)
    assert layout.real_tokens(batch) == sum(item.length for item in items)
    assert layout.padded_positions(batch) == len(items) * max(item.length for item in items)
    assert layout.real_tokens(batch) < layout.padded_positions(batch)


def test_causal_generation_continues_each_left_padded_prompt(gpt2):
    layout, model = gpt2.layout, gpt2.model
    items = layout.encode(EXAMPLES, LIMITS)
    with torch.no_grad():
        new = layout.generate(model, layout.collate(items, with_targets=False), max_new_tokens=3, fixed_length=True)
        assert [len(tokens) for tokens in new] == [3] * len(items)  # only the new tokens, never the prompt
        for item, tokens in zip(items, new, strict=True):
            alone = model(input_ids=torch.tensor([item.prompt])).logits[0, -1]
            assert tokens[0] == int(alone.argmax())  # greedy: as if the prompt had no padding


# ---------------------------------------------------------------------------------------------- seq2seq


def test_t5_gets_the_seq2seq_layout_with_its_task_prefix(t5):
    assert isinstance(t5.layout, Seq2SeqLayout) and t5.layout.kind == "seq2seq"
    assert t5.layout.prefix == "summarize: "


def test_seq2seq_encode_ends_prompt_and_target_with_eos(t5):
    layout, tokenizer = t5.layout, t5.tokenizer
    items = layout.encode(EXAMPLES, LIMITS)
    for example, item in zip(EXAMPLES, items, strict=True):
        assert item.prompt[-1] == layout.eos_id and item.target[-1] == layout.eos_id
        assert tokenizer.decode(item.prompt[:-1]) == "summarize: " + example.source
        assert item.target[:-1] == _ids(tokenizer, example.target)
        assert len(item.prompt) <= LIMITS.source and len(item.target) <= LIMITS.target


def test_seq2seq_encode_cuts_to_the_limits(t5):
    layout = t5.layout
    long = Example("long", "word " * 200, "one two three four five six seven eight nine ten eleven twelve")
    (item,) = layout.encode([long], TokenLimits(source=12, target=5))
    assert len(item.prompt) == 12 and len(item.target) == 5
    assert item.prompt[-1] == item.target[-1] == layout.eos_id
    assert t5.tokenizer.decode(item.prompt).startswith("summarize: ")  # the prefix is never cut


def test_seq2seq_collate_right_pads(t5):
    layout = t5.layout
    items = layout.encode(EXAMPLES, LIMITS)
    batch = layout.collate(items)
    source_width, target_width = (max(len(getattr(it, part)) for it in items) for part in ("prompt", "target"))
    assert batch["input_ids"].shape == (len(items), source_width)
    assert batch["labels"].shape == (len(items), target_width)
    for row, item in enumerate(items):
        pad = source_width - len(item.prompt)
        assert batch["input_ids"][row].tolist() == item.prompt + [layout.pad_id] * pad
        assert batch["attention_mask"][row].tolist() == [1] * len(item.prompt) + [0] * pad
        assert batch["labels"][row].tolist() == item.target + [IGNORE_INDEX] * (target_width - len(item.target))


def test_seq2seq_token_loss_is_the_examples_summed_target_cross_entropy(t5):
    layout, model = t5.layout, t5.model
    items = layout.encode(EXAMPLES, LIMITS)
    with torch.no_grad():
        sums, counts = layout.token_loss(model, layout.collate(items))
        loss, count = sums.sum(), int(counts.sum())
        by_hand = []
        for item in items:
            target = torch.tensor([item.target])
            logits = model(input_ids=torch.tensor([item.prompt]), labels=target).logits[0]
            by_hand.append(F.cross_entropy(logits, target[0], reduction="sum").item())
    assert count == sum(len(item.target) for item in items)
    assert loss.item() == pytest.approx(sum(by_hand), rel=1e-4)
    assert sums.tolist() == pytest.approx(by_hand, rel=1e-4)  # each example's own
    assert counts.tolist() == [len(item.target) for item in items]


def test_seq2seq_real_tokens_count_encoder_and_decoder_without_padding(t5):
    layout = t5.layout
    items = layout.encode(EXAMPLES, LIMITS)
    batch = layout.collate(items)
    assert layout.real_tokens(batch) == sum(len(item.prompt) + len(item.target) for item in items)
    assert layout.padded_positions(batch) == batch["input_ids"].numel() + batch["labels"].numel()
    assert layout.real_tokens(batch) < layout.padded_positions(batch)


TEXTS = ["The river rose overnight and the old bridge closed.", "Short one."]


def test_causal_text_items_predict_every_token_after_the_first(gpt2):
    items = gpt2.layout.text_items(TEXTS, budget=6)
    ids = [_ids(gpt2.tokenizer, text) for text in TEXTS]
    assert [item.prompt + item.target for item in items] == [row[:6] for row in ids]  # no template, cut to budget
    assert [len(item.prompt) for item in items] == [1, 1]


def test_seq2seq_text_items_read_half_and_predict_the_rest(t5):
    items = t5.layout.text_items(TEXTS, budget=8)
    for item, text in zip(items, TEXTS, strict=True):
        ids = _ids(t5.tokenizer, text)[:8]
        half = len(ids) // 2
        assert item.prompt == ids[:half] + [t5.tokenizer.eos_token_id] and item.target == ids[half:]
