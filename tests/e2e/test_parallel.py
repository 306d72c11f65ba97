"""Two CPU processes (torchrun, gloo) train and evaluate like one: same metrics within a stated tolerance, and only
the main process writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import LengthGroupedBatches
from peftbench.methods.settings import MethodSettings
from tests.helpers import (
    KILLABLE,
    alive,
    children,
    command_line,
    gone_within,
    launched,
    tiny_run_args,
    without_dropout,
)

# torchrun's rendezvous ports and two processes on the two cores: one at a time (make test runs serial tests after
# the parallel rest).
pytestmark = pytest.mark.serial

# With dropout off, two processes compute the same gradients as one, summed in another order: the losses agree to
# float32 rounding (at most 7e-7 measured). Summaries of varied length (up to 64 tokens) give the processes' shares
# different target counts, so the classic mistake, each process's own mean loss averaged by DDP, moves the losses
# by 2e-4 (LoRA) to 2e-3 (full) here: measured with that mistake put in, it fails this tolerance.
LOSS_TOLERANCE = 1e-5
SETTINGS = ("--lr", "1e-2", "--lora-dropout", "0", "--max-source-tokens", "32", "--max-target-tokens", "64")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Gloo picks its network interface from the hostname, which some containers resolve to an unreachable address.
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    local = {"GLOO_SOCKET_IFNAME": loopback} if loopback and "GLOO_SOCKET_IFNAME" not in os.environ else {}
    return {**os.environ, "OMP_NUM_THREADS": "1", **local, **(extra or {})}


def _launch(*target: str) -> list[str]:
    """torchrun with two local processes, each running target (a script, or -m and a module) with its arguments."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *target,
    ]


def _torchrun(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = _launch("-m", "peftbench", *args)
    with launched(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(env)) as run:
        out, err = run.communicate(timeout=600)
    return subprocess.CompletedProcess(command, run.returncode, out, err)


def _files(output: Path) -> set[str]:
    return {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}


# T5 also accumulates gradients over 2 batches (under DDP, the first of each pair runs in no_sync).
@pytest.mark.parametrize(
    ("family", "methods", "extra"), [("gpt2", "full,lora", ()), ("t5", "lora", ("--grad-accum", "2"))]
)
def test_two_processes_match_one(tiny_models, articles, tmp_path, family, methods, extra):
    model = without_dropout(tiny_models[family], tmp_path / "model")

    def args(output):
        # 12 examples in batches of 4: two processes each train on 2 of every batch.
        return tiny_run_args(
            model, articles, output, "--methods", methods, "--train-size", "12", "--seed", "7", *SETTINGS, *extra
        )

    assert main([*args(tmp_path / "one"), "--in-process"]) == 0
    two = _torchrun(args(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]

    for method in methods.split(","):
        one_metrics = json.loads((tmp_path / "one" / method / "metrics.json").read_text())
        two_metrics = json.loads((tmp_path / "two" / method / "metrics.json").read_text())
        assert two_metrics["environment"]["processes"] == 2
        first, last = one_metrics["epochs"][0]["val_loss"], one_metrics["epochs"][-1]["val_loss"]
        assert first - last > 100 * LOSS_TOLERANCE  # training moved the loss: agreement below means something
        for epoch_one, epoch_two in zip(one_metrics["epochs"], two_metrics["epochs"], strict=True):
            assert epoch_two["val_loss"] == pytest.approx(epoch_one["val_loss"], abs=LOSS_TOLERANCE, rel=0)
            if epoch_one["train_loss"] is not None:  # None for epoch 0, before training
                assert epoch_two["train_loss"] == pytest.approx(epoch_one["train_loss"], abs=LOSS_TOLERANCE, rel=0)
        assert two_metrics["test"]["loss"] == pytest.approx(one_metrics["test"]["loss"], abs=LOSS_TOLERANCE, rel=0)
        retention_one, retention_two = one_metrics["retention"], two_metrics["retention"]  # each process a share
        assert (retention_two["ids"], retention_two["tokens"]) == (retention_one["ids"], retention_one["tokens"])
        assert retention_two["nats"] == pytest.approx(retention_one["nats"], rel=1e-5)
        assert retention_two["base_loss"] == pytest.approx(retention_one["base_loss"], rel=1e-6)
        # Generation on the same weights: ROUGE and BLEU may move only if a near tie flips a greedy token.
        for key in ("rouge1", "rouge2", "rougeL", "bleu"):
            assert two_metrics["test"][key] == pytest.approx(one_metrics["test"][key], abs=0.02), (method, key)
        efficiency_one, efficiency_two = one_metrics["efficiency"], two_metrics["efficiency"]
        # Every example is counted once, whichever process trained it.
        samples = efficiency_two["train_samples_per_s"] * efficiency_two["train_seconds"]
        assert samples == pytest.approx(efficiency_one["train_samples_per_s"] * efficiency_one["train_seconds"])
        assert samples == pytest.approx(12 * 2)
    assert "2 processes (DDP)" in (tmp_path / "two" / "report.md").read_text()
    # The main process alone wrote: the same files as one process, and no second copy of anything.
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--batch-size", "3"], {}, "--batch-size 3 is one step's batch across all 2 processes"),
        ([], {"ACCELERATE_USE_FSDP": "true"}, "FSDP is not supported yet"),
    ],
)
def test_what_several_processes_cannot_do_is_a_clear_error(tiny_models, articles, tmp_path, extra, env, message):
    two = _torchrun(tiny_run_args(tiny_models["gpt2"], articles, tmp_path / "out", *extra), env)
    assert two.returncode != 0
    assert "exitcode  : 2" in two.stderr  # torchrun's summary of each process: a user error, exit code 2
    assert f"peftbench: error: {message}" in two.stderr
    assert "peftbench/" not in two.stderr  # no traceback through peftbench's code (torchrun prints its own)
    assert not (tmp_path / "out").exists()


def test_every_process_gets_a_share_of_every_batch():
    lengths = list(range(9))  # batches of 4, 4 and 1: the lone example joins the batch before it
    assert sorted(len(batch) for batch in LengthGroupedBatches(lengths, 4, seed=0, window=10).batches(0)) == [1, 4, 4]
    whole = LengthGroupedBatches(lengths, 4, seed=0, window=10, processes=2).batches(0)
    assert sorted(len(batch) for batch in whole) == [4, 5]
    assert sorted(i for batch in whole for i in batch) == lengths
    # 201 examples: windows of 50 batches of 4 leave the last example alone in a window of its own.
    sampler = LengthGroupedBatches(list(range(201)), 4, seed=0, processes=2)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert all(batch[0::2] and batch[1::2] for batch in batches)  # no process without a share
        assert sorted(i for batch in batches for i in batch) == list(range(201))


def test_one_step_count_schedules_everything(monkeypatch):
    """AdaLoRA's rank budget, the learning-rate schedule and the loop count the same optimizer steps, also where
    several processes merge a short last batch (6 examples, batch 4, 4 processes: one step per epoch, not two)."""
    monkeypatch.setenv("WORLD_SIZE", "4")  # parallel.processes() reads it; no process group is formed
    settings = MethodSettings.from_config(RunConfig(train_size=6, batch_size=4, epochs=3))
    taken = len(LengthGroupedBatches([1] * 6, 4, seed=0, processes=4))
    assert taken == 1 and settings.total_steps == taken * 3
    accumulated = MethodSettings.from_config(RunConfig(train_size=10, batch_size=4, grad_accum=2, epochs=2))
    assert accumulated.total_steps == 2 * len(LengthGroupedBatches([1] * 10, 8, seed=0, processes=4)) == 2


def test_two_processes_resume_to_the_uninterrupted_metrics(tiny_models, articles, tmp_path):
    """A two-process run killed after epoch 1 resumes (weights, optimizer, data order, counters) to the same metrics.

    Each process's RNG state is saved too; on CPU, dropout draws one seed per call, so the processes' states
    coincide and this test cannot tell them apart (on CUDA they differ).
    """

    def args(output):
        return tiny_run_args(
            tiny_models["gpt2"], articles, output, "--methods", "lora", "--epochs", "3", "--seed", "5", "--lr", "3e-3"
        )

    reference = _torchrun(args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    output = tmp_path / "interrupted"
    with launched(
        _launch(str(script), *args(output)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_environment()
    ) as launcher:
        deadline = time.monotonic() + 300
        while not (output / "lora" / "checkpoint" / "epoch-1").is_dir():
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint after epoch 1"
            time.sleep(0.1)
        workers = children(launcher.pid)  # torchrun starts each in a session of its own: killpg misses them
        assert len(workers) == 2, [command_line(pid) for pid in workers]
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone: its workers must end with it
        assert gone_within(workers, 10), [command_line(pid) for pid in workers if alive(pid)]
    assert not (output / "lora" / "metrics.json").exists()

    resumed = _torchrun(args(output))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one, two = (json.loads((path / "lora" / "metrics.json").read_text()) for path in (tmp_path / "reference", output))
    assert two["epochs"] == one["epochs"] and two["test"] == one["test"] and two["retention"] == one["retention"]
