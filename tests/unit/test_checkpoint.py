"""Checkpoints of run state: what save writes, load_latest reads back and restore puts into a fresh trainer is the
trainer as it was (weights, optimizer, counters, RNG); an unreadable newest checkpoint is set aside for the one
before it."""

from __future__ import annotations

import copy
import random
import shutil

import numpy as np
import pytest
import torch

from peftbench.data.splits import Example
from peftbench.errors import ConfigError
from peftbench.model.layout import TokenLimits
from peftbench.model.load import load_model
from peftbench.store.records import EpochMetrics, Progress
from peftbench.store.rundir import MethodDir
from peftbench.training import checkpoint
from peftbench.training.trainer import Trainer
from tests.helpers import train_options

pytestmark = pytest.mark.fast

EXAMPLES = [
    Example("a", "The mayor opened a new bridge over the river on Monday.", "Mayor opens bridge."),
    Example("b", "Heavy rain flooded streets in the old town.", "Rain floods the old town."),
    Example("c", "A local team won the regional cup after extra time.", "Local team wins the cup."),
]
OPTIONS = train_options(epochs=3, batch_size=len(EXAMPLES))  # one step an epoch: quick


def _trainer(model_path) -> Trainer:
    loaded = load_model(str(model_path))
    items = loaded.layout.encode(EXAMPLES, TokenLimits(source=24, target=8))
    optimizer = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
    return Trainer(loaded.model, optimizer, items, loaded.layout, OPTIONS)


def _progress(epoch: int) -> Progress:
    epochs = [EpochMetrics(k, None if k == 0 else 10.0 - k, 9.5 - k, {"rougeL": 0.1 * k}) for k in range(epoch + 1)]
    return Progress(epochs=epochs, log_lines=3 * epoch, phase_seconds={"training": 1.0 * epoch})


@pytest.fixture
def method(tmp_path) -> MethodDir:
    return MethodDir(tmp_path / "full")


def test_an_empty_method_directory_has_no_checkpoint(method):
    assert checkpoint.latest(method) is None and checkpoint.load_latest(method) is None
    method.checkpoints.mkdir(parents=True)
    (method.checkpoints / "epoch-x").mkdir()  # not an epoch's
    assert checkpoint.latest(method) is None and checkpoint.load_latest(method) is None


def test_save_then_restore_gives_the_same_trainer_and_rng(gpt2_exact, method):
    trainer = _trainer(gpt2_exact)
    trainer.train_epoch()
    progress = _progress(1)
    path = checkpoint.save(method, trainer, progress)
    # What the RNGs give next, right after the save.
    expected_rng = (torch.rand(5), random.random(), np.random.rand())
    assert path == method.checkpoints / "epoch-1" and checkpoint.latest(method) == path
    weights = copy.deepcopy(trainer.trainable_weights())
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())

    torch.manual_seed(1234)  # other states than the saved ones
    random.seed(1234)
    np.random.seed(1234)
    fresh = _trainer(gpt2_exact)
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(fresh.trainable_weights()[name], weights[name])  # training moved them: the check can fail
    saved = checkpoint.load_latest(method)
    assert saved is not None and saved.path == path
    assert checkpoint.restore(saved, fresh) == progress
    assert torch.equal(torch.rand(5), expected_rng[0])
    assert (random.random(), np.random.rand()) == expected_rng[1:]
    assert fresh.epoch == 1 and fresh.samples == trainer.samples and fresh.tokens == trainer.tokens
    restored = fresh.trainable_weights()
    assert restored.keys() == weights.keys()
    assert all(torch.equal(restored[name], weights[name]) for name in weights)
    restored_optimizer = fresh.optimizer.state_dict()
    for index, state in optimizer["state"].items():
        assert torch.equal(restored_optimizer["state"][index]["exp_avg"], state["exp_avg"])
        assert torch.equal(restored_optimizer["state"][index]["step"], state["step"])


def test_a_newer_save_replaces_the_older_checkpoint(gpt2_exact, method):
    trainer = _trainer(gpt2_exact)
    for epoch in (1, 2):
        trainer.train_epoch()
        checkpoint.save(method, trainer, _progress(epoch))
    assert [path.name for path in method.checkpoints.iterdir()] == ["epoch-2"]
    saved = checkpoint.load_latest(method)
    assert saved.state["trainer"]["epoch"] == 2 and saved.progress == _progress(2)
    checkpoint.remove(method)
    assert not method.checkpoints.exists() and checkpoint.latest(method) is None


def test_a_corrupt_newest_checkpoint_is_set_aside_for_the_previous_one(gpt2_exact, method, tmp_path, capsys):
    trainer = _trainer(gpt2_exact)
    trainer.train_epoch()
    checkpoint.save(method, trainer, _progress(1))
    kept = tmp_path / "kept-epoch-1"
    shutil.copytree(method.checkpoints / "epoch-1", kept)  # save removes older epochs: put this one back below
    trainer.train_epoch()
    newest = checkpoint.save(method, trainer, _progress(2))
    shutil.copytree(kept, method.checkpoints / "epoch-1")
    state = newest / checkpoint.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # cut short, as by a crash
    assert checkpoint.latest(method) == newest  # latest only lists; reading is load_latest's

    saved = checkpoint.load_latest(method)
    assert saved.path == method.checkpoints / "epoch-1" and saved.state["trainer"]["epoch"] == 1
    assert saved.progress == _progress(1)
    assert not newest.exists() and (method.checkpoints / "epoch-2.corrupt").is_dir()
    warning = capsys.readouterr().err
    assert "checkpoint epoch-2 of full is unreadable" in warning and "resumes from epoch-1" in warning
    fresh = _trainer(gpt2_exact)
    checkpoint.restore(saved, fresh)
    assert fresh.epoch == 1


def test_every_checkpoint_unreadable_starts_from_scratch(gpt2_exact, method, capsys):
    trainer = _trainer(gpt2_exact)
    trainer.train_epoch()
    path = checkpoint.save(method, trainer, _progress(1))
    (path / checkpoint.WEIGHTS_FILE).write_bytes(b"not safetensors")
    assert checkpoint.load_latest(method) is None
    assert "starts from scratch" in capsys.readouterr().err
    assert checkpoint.latest(method) is None and (method.checkpoints / "epoch-1.corrupt").is_dir()


def test_restore_refuses_a_checkpoint_of_other_weights_or_processes(gpt2_exact, method):
    trainer = _trainer(gpt2_exact)
    trainer.train_epoch()
    checkpoint.save(method, trainer, _progress(1))
    saved = checkpoint.load_latest(method)
    fewer = copy.copy(saved)
    fewer.weights = {name: w for name, w in saved.weights.items() if "wte" not in name}
    with pytest.raises(ConfigError, match="cannot resume from .*epoch-1.*tensors for"):
        checkpoint.restore(fewer, _trainer(gpt2_exact))
    two = copy.copy(saved)
    two.state = {**saved.state, "rng": saved.state["rng"] * 2}
    with pytest.raises(ConfigError, match="written by 2 processes, and 1 run now"):
        checkpoint.restore(two, _trainer(gpt2_exact))
