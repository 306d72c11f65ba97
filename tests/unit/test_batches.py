"""The training batches (data.splits.LengthGroupedBatches): grouped by length, yet other batches at every seed and
epoch, every example once an epoch, and as many batches every epoch."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from peftbench.data.splits import LengthGroupedBatches, steps_per_epoch

pytestmark = pytest.mark.fast

_DRAW = random.Random(5)
LENGTHS = [_DRAW.randint(20, 400) for _ in range(64)]  # one window: 64 examples, batches of 8


def _sets(batches: list[list[int]]) -> set[frozenset[int]]:
    return {frozenset(batch) for batch in batches}


def _padding(batches: list[list[int]]) -> float:
    """The share of the padded slots that is padding."""
    slots = sum(max(LENGTHS[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(LENGTHS) / slots


def test_seeds_and_epochs_group_differently():
    one, other = LengthGroupedBatches(LENGTHS, 8, seed=0), LengthGroupedBatches(LENGTHS, 8, seed=1)
    assert _sets(one.batches(0)) != _sets(other.batches(0))  # not the same batches, reordered
    assert _sets(one.batches(0)) != _sets(one.batches(1))
    assert one.batches(1) == LengthGroupedBatches(LENGTHS, 8, seed=0).batches(1)  # a function of seed and epoch


def test_every_epoch_covers_every_example_once_in_as_many_batches():
    sampler = LengthGroupedBatches(LENGTHS + LENGTHS[:3], 8, seed=3, window=4)  # two windows, the last one short
    for epoch in range(4):
        batches = sampler.batches(epoch)
        assert Counter(i for batch in batches for i in batch) == Counter(range(67))
        assert len(batches) == len(sampler) == steps_per_epoch(67, 8) == 9


def test_padding_stays_far_below_a_shuffles():
    grouped = [_padding(LengthGroupedBatches(LENGTHS, 8, seed=seed).batches(0)) for seed in range(10)]
    shuffled = []
    for seed in range(10):
        order = list(range(64))
        random.Random(seed).shuffle(order)
        shuffled.append(_padding([order[i : i + 8] for i in range(0, 64, 8)]))
    assert sum(grouped) / 10 < 0.5 * sum(shuffled) / 10, (grouped, shuffled)
