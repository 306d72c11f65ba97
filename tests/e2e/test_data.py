"""Data preparation: label masking, truncation, per-batch padding, splits and the length-grouped sampler."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
import torch

from peftbench.config.run_config import RunConfig
from peftbench.data.splits import Example, LengthGroupedBatches, load_splits
from peftbench.model.layout import IGNORE_INDEX, CausalLayout, Seq2SeqLayout, TokenLimits

EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets in the old town, and shops closed early.", "Rain floods town."),
]


def test_causal_labels_cover_only_target_and_eos(tokenizer):
    layout = CausalLayout(tokenizer)
    items = layout.encode(EXAMPLES, TokenLimits(source=64, target=16))
    batch = layout.collate(items)
    width = batch["input_ids"].shape[1]
    assert width == max(len(it.prompt) + len(it.target) for it in items)  # padded to the batch, not a maximum
    for row, item in enumerate(items):
        labels, mask = batch["labels"][row], batch["attention_mask"][row]
        n_pad = width - len(item.prompt) - len(item.target)
        assert mask[:n_pad].sum() == 0 and mask[n_pad:].all()  # left padding
        assert (labels[: n_pad + len(item.prompt)] == IGNORE_INDEX).all()  # padding and prompt masked
        assert labels[n_pad + len(item.prompt) :].tolist() == item.target
        assert item.target[-1] == tokenizer.eos_token_id
        assert batch["input_ids"][row, n_pad:].tolist() == item.prompt + item.target
        assert batch["position_ids"][row, n_pad:].tolist() == list(range(len(item.prompt) + len(item.target)))
    decoded = tokenizer.decode(items[0].prompt)
    assert decoded.startswith("The mayor") and decoded.endswith("\nTL;DR:")
    assert tokenizer.decode(items[0].target[:-1]) == " Mayor opens bridge."


def test_truncation_cuts_source_never_target_eos(tokenizer):
    long = Example("c", "word " * 500, "one two three four five six seven eight nine ten")
    layout, limits = CausalLayout(tokenizer), TokenLimits(source=20, target=6)
    (item,) = layout.encode([long], limits)
    separator = tokenizer("\nTL;DR:", add_special_tokens=False).input_ids  # the summarisation task's cue
    assert len(item.prompt) == 20 + len(separator) and item.prompt[-len(separator) :] == separator
    assert len(item.target) == 6 and item.target[-1] == tokenizer.eos_token_id
    (short,) = layout.encode([EXAMPLES[0]], limits)
    assert tokenizer.decode(short.target) == " Mayor opens bridge.<|endoftext|>"  # fits: untouched


def test_seq2seq_prefix_and_label_padding(tokenizer):
    layout = Seq2SeqLayout(tokenizer, prefix="summarize: ")
    items = layout.encode(EXAMPLES, TokenLimits(source=64, target=16))
    assert tokenizer.decode(items[0].prompt).startswith("summarize: The mayor")
    batch = layout.collate(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    short = min(range(2), key=lambda i: len(items[i].target))
    n = len(items[short].target)
    assert batch["labels"][short, :n].tolist() == items[short].target
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert batch["labels"].shape[1] == max(len(it.target) for it in items)
    prompt_only = layout.collate(items, with_targets=False)
    assert "labels" not in prompt_only


def test_length_grouped_batches_cover_every_index_once_per_epoch():
    lengths = [(i * 37) % 101 + 1 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, batch_size=4, seed=1, window=5)
    epochs = [sampler.batches(epoch) for epoch in range(2)]
    assert sampler.batches(1) == epochs[1]  # a function of the epoch alone
    for batches in epochs:
        assert len(batches) == len(sampler) == 51
        assert Counter(i for batch in batches for i in batch) == Counter(range(203))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # Grouping: padding inside batches is far below that of random batches of the same data.
    waste = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    random_order = torch.randperm(203, generator=generator).tolist()
    random_batches = [random_order[i : i + 4] for i in range(0, 203, 4)]
    assert waste(epochs[0]) < 0.5 * waste(random_batches)
    assert LengthGroupedBatches(lengths, 4, seed=1, window=5).batches(0) == epochs[0]  # seeded


def test_embedded_dataset_splits_are_disjoint_and_clean():
    splits = load_splits(RunConfig(train_size=2000, eval_size=300, test_size=300))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2000, 300, 300)
    sources = [{ex.source for ex in split} for split in (splits.train, splits.validation, splits.test)]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    for ex in splits.train[:50]:
        assert ex.source == ex.source.strip() and ex.target == ex.target.strip() and ex.target
    again = load_splits(RunConfig(train_size=10, eval_size=1, test_size=1))
    assert [ex.id for ex in again.train] == [ex.id for ex in splits.train[:10]]  # deterministic
    assert "CNN/DailyMail" in splits.description


def _every(splits) -> list[Example]:
    return splits.train + splits.validation + splits.test


def _load(path) -> list[Example]:
    return _every(load_splits(RunConfig(dataset=str(path), train_size=1, eval_size=1, test_size=1)))


ROWS = [
    {"article": f'Article {i}, first line.\nSecond line of article {i}, "quoted".', "highlights": f"Summary {i}."}
    for i in range(60)
]


ONE_LINE = [{**row, "article": row["article"].replace("\n", " ")} for row in ROWS]
LONG = {"article": "A long document. " * 10_000, "highlights": "Long."}  # 170 kB: over the csv module's default limit
# Each case alone, so that each fails on its own without the fix: rows, and whether the file starts with a BOM.
CSV_CASES = {
    "quoted line breaks": (ROWS, False),
    "a byte-order mark": (ONE_LINE, True),
    "a long field": ([LONG], False),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_is_read_by_the_csv_module(case, tmp_path):
    """Quoted fields keep their line breaks (and quotes), a BOM is not part of the first column's name, and a field
    may be longer than 128 KiB."""
    rows, bom = CSV_CASES[case]
    rows = [*ONE_LINE, *rows]
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as stream:  # \r\n ends rows (csv's way)
        writer = csv.DictWriter(stream, ["article", "highlights"])
        writer.writeheader()
        writer.writerows(rows)
    splits = load_splits(RunConfig(dataset=str(path), train_size=40, eval_size=1, test_size=1))
    sources = {row["article"].strip() for row in rows}
    assert all(ex.source in sources for ex in _every(splits))
    assert splits.rows.read == len(rows) and not splits.rows.dropped


JSONL_CASES = {"U+2028 inside a string": ("\u2028", False), "a byte-order mark": (" ", True)}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_jsonl_lines_end_at_newlines_only_and_a_bom_is_accepted(case, tmp_path):
    separator, bom = JSONL_CASES[case]
    path = tmp_path / "d.jsonl"
    rows = [{**row, "article": row["article"].replace("\n", separator)} for row in ROWS]  # raw: ensure_ascii=False
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(b"\xef\xbb\xbf" * bom + text.encode("utf-8"))
    sources = {row["article"] for row in rows}
    examples = _load(path)
    assert examples and all(ex.source in sources and separator in ex.source for ex in examples)
