"""The trainer on tiny GPT-2 with full fine-tuning: it learns, counts its steps and tokens as the sampler and layout
say, and its state and weights round-trip into a fresh trainer that then takes exactly the same step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from peftbench.data.splits import Example, steps_per_epoch
from peftbench.model.layout import TokenLimits
from peftbench.model.load import load_model
from peftbench.training.trainer import Trainer, TrainOptions
from tests.helpers import train_options

pytestmark = pytest.mark.fast

EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets in the old town.", "Rain floods the old town."),
    Example("c", "A local team won the regional cup after extra time.", "Local team wins the cup."),
    Example("d", "Schools will close early on Friday for the holiday.", "Schools close early."),
    Example("e", "The museum reopened after a year of repairs.", "Museum reopens."),
]
LIMITS = TokenLimits(source=24, target=8)


def _trainer(model_path, options: TrainOptions, lr: float = 1e-3, log=None) -> Trainer:
    loaded = load_model(str(model_path))
    items = loaded.layout.encode(EXAMPLES, LIMITS)
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=lr)
    return Trainer(loaded.model, optimizer, items, loaded.layout, options, log=log)


def test_training_lowers_the_loss(gpt2_exact):
    trainer = _trainer(gpt2_exact, train_options(epochs=4, batch_size=len(EXAMPLES)), lr=1e-2)  # one step an epoch
    losses = [trainer.train_epoch() for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses)
    # From random weights (about ln(50257) = 10.8 per token), on the same five examples every epoch.
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.5, losses
    assert trainer.epoch == 4


@pytest.mark.parametrize(("batch_size", "grad_accum"), [(2, 1), (1, 2), (4, 1)])
def test_steps_per_epoch_match_the_sampler_and_the_optimizer(gpt2_exact, batch_size, grad_accum):
    log: list[dict] = []
    trainer = _trainer(
        gpt2_exact, train_options(epochs=1, batch_size=batch_size, grad_accum=grad_accum), log=log.append
    )
    expected = steps_per_epoch(len(EXAMPLES), batch_size * grad_accum)
    assert trainer.steps_per_epoch == expected == math.ceil(len(EXAMPLES) / (batch_size * grad_accum))
    trainer.train_epoch()
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {expected}  # one update per step
    assert [record["step"] for record in log] == list(range(1, expected + 1))
    assert all(record["split"] == "train" and record["epoch"] == 1 for record in log)


def test_an_epoch_counts_every_example_and_real_token_once(gpt2_exact):
    log: list[dict] = []
    trainer = _trainer(gpt2_exact, train_options(epochs=1), log=log.append)
    trainer.train_epoch()
    assert trainer.samples == len(EXAMPLES)
    assert trainer.tokens == sum(item.length for item in trainer.items)  # padding is not counted
    assert sum(record["tokens"] for record in log) == trainer.tokens
    assert trainer.seconds > 0


def test_the_learning_rate_decays_to_zero_at_the_last_step(gpt2_exact):
    trainer = _trainer(gpt2_exact, train_options(epochs=2), lr=1e-3)
    trainer.train_epoch()
    assert 0 < trainer.scheduler.get_last_lr()[0] < 1e-3
    trainer.train_epoch()
    assert trainer.scheduler.get_last_lr()[0] == 0.0


def test_trainable_weights_are_every_weight_for_full_fine_tuning(gpt2_exact):
    trainer = _trainer(gpt2_exact, train_options())
    weights = trainer.trainable_weights()
    assert set(weights) == {name for name, _ in trainer.unwrapped.named_parameters()}
    assert all(tensor.device.type == "cpu" for tensor in weights.values())
    with pytest.raises(ValueError, match="tensors for"):
        trainer.load_trainable_weights({name: w for name, w in weights.items() if "wte" not in name})


def test_state_and_weights_round_trip_into_a_fresh_trainer(gpt2_exact):
    options = train_options(epochs=3)
    first = _trainer(gpt2_exact, options)
    first.train_epoch()
    # Copies: on the CPU the optimizer's state and the weights given are the live tensors, which the next epoch moves.
    state, weights = copy.deepcopy(first.state_dict()), copy.deepcopy(first.trainable_weights())
    expected = first.train_epoch()

    second = _trainer(gpt2_exact, options)
    assert second.epoch == 0
    second.load_trainable_weights(weights)
    second.load_state_dict(state)
    assert (second.epoch, second.tokens, second.samples) == (1, state["tokens"], state["samples"])
    assert second.scheduler.get_last_lr() == pytest.approx(state["scheduler"]["_last_lr"])
    assert second.train_epoch() == pytest.approx(expected, rel=1e-6)
    # The check can fail: the weights alone (a fresh optimizer and schedule, epoch 0's batches) give another loss.
    third = _trainer(gpt2_exact, options)
    third.load_trainable_weights(weights)
    assert third.train_epoch() != pytest.approx(expected, rel=1e-6)
    for name, tensor in first.trainable_weights().items():
        torch.testing.assert_close(second.trainable_weights()[name], tensor, rtol=1e-5, atol=1e-6)
