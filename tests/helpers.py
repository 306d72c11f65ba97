"""Helpers the tests share: processes a test starts (launched, and what is alive), the arguments of a fast run on a
tiny model, a run killed at a checkpoint, and models without dropout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from peftbench.cli import main
from peftbench.training.trainer import TrainOptions


def status_of(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent PID, or None where it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, dead but not yet reaped, does not)."""
    status = status_of(pid)
    return status is not None and status[0] not in "ZX"


def children(pid: int) -> list[int]:
    """The living child processes of pid."""
    found = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [child for child in found if (status_of(child) or ("Z", 0))[1] == pid and alive(child)]


def gone_within(pids: list[int], seconds: float) -> bool:
    """Whether every process of pids has ended within seconds."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def launched(command: list[str], **options) -> Iterator[subprocess.Popen]:
    """A process in a session of its own; on the way out, it and everything in its process group are killed."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def without_dropout(model: Path, directory: Path) -> Path:
    """A copy of a tiny model with every dropout off, so that runs compare exactly."""
    shutil.copytree(model, directory)
    config = json.loads((directory / "config.json").read_text())
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout_rate", "attention_dropout"):
        if key in config:
            config[key] = 0.0
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# Latency timing generates latency_new_tokens tokens per model in each of latency_rounds rounds: tests keep it to the
# fewest (tiny_run_args does), which still times every model a method has and gives each ratio an interval.
QUICK_LATENCY = ("--latency-prompts", "1", "--latency-rounds", "2", "--latency-new-tokens", "2")


# A fast run on a tiny model: a few examples, short sequences.
TINY_RUN = {
    "train-size": 8,
    "eval-size": 4,
    "test-size": 4,
    "epochs": 2,
    "batch-size": 4,
    "max-source-tokens": 48,
    "max-target-tokens": 16,
    "max-new-tokens": 8,
    "retention-size": 8,
}


def tiny_run_args(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    """CLI arguments for a fast run on a tiny model (TINY_RUN), latency on one short prompt."""
    sizes = [word for flag, value in TINY_RUN.items() for word in (f"--{flag}", str(value))]
    where = ["--model", str(model), "--dataset", str(data), "--output", str(output)]
    return ["run", *where, "--quiet", *sizes, *QUICK_LATENCY, *extra]


def grid_search(method: str, grid: str) -> list[str]:
    """Flags for a one-epoch learning-rate search of one method over exactly this grid (no point placed beyond it)."""
    points = str(len(grid.split(",")))
    return ["--methods", method, "--epochs", "1", "--search", "lr", "--lr-grid", grid, "--search-trials", points]


def fails(capsys, args: list[str]) -> str:
    """Run the CLI with args: it must exit 2 with `peftbench: error: ...` and no traceback; returns its stderr."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("peftbench: error:")
    return err


def train_options(**changes) -> TrainOptions:
    """Training options for a unit test: no warmup, no progress bars, fp32, one step per batch of 2 (changes: any
    TrainOptions field)."""
    fields = {"epochs": 4, "batch_size": 2, "grad_accum": 1, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "seed": 0}
    return TrainOptions(**fields | {"gradient_checkpointing": False, "precision": "no", "progress": False} | changes)


# A program that saves its first checkpoint (its KILL_AT_SAVE-th with that variable set), then waits to be killed
# (`python -c KILLABLE ARGS`, or a script under torchrun): the kill lands after that epoch every time, however fast or
# slow this machine is (a real crash anywhere in the next epoch resumes from the same checkpoint).
KILLABLE = """
import os, sys, time
from peftbench.training import checkpoint
save, saved = checkpoint.save, []
def save_then_wait(*args, **kwargs):
    saved.append(save(*args, **kwargs))
    if len(saved) == int(os.environ.get("KILL_AT_SAVE", "1")):
        time.sleep(600)
    return saved[-1]
checkpoint.save = save_then_wait
from peftbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_at(args: list[str], checkpoint: Path, saves: int = 1) -> None:
    """Run peftbench with args in a child process (KILLABLE) and SIGKILL it once it wrote checkpoint, its saves-th."""
    with launched(
        [sys.executable, "-c", KILLABLE, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KILL_AT_SAVE": str(saves)},
    ) as child:
        deadline = time.monotonic() + 600
        while not checkpoint.is_dir():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, f"no {checkpoint}"
            time.sleep(0.1)
