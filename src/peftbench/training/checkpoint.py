"""Resume: per-epoch checkpoints of a method's run state.

A method's directory holds checkpoint/epoch-<k>/ while it trains, and metrics.json once it has finished. Re-running
the same command skips finished methods (store.fingerprints tells them) and resumes the others from their last
checkpoint. A checkpoint holds what the trainer's state_dict and trainable weights give, what the method has measured
so far (records.Progress), and every process's RNG states; this module only writes and reads them, atomically.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from peftbench import parallel
from peftbench.errors import ConfigError
from peftbench.store import rundir
from peftbench.store.records import Progress
from peftbench.store.rundir import MethodDir

WEIGHTS_FILE = "trainable.safetensors"  # the trainable parameters only: the adapter, or every weight for `full`


STATE_FILE = "state.pt"  # the trainer's state and each process's RNG states: tensors, numbers, lists (weights_only)


PROGRESS_FILE = "progress.json"  # what was measured so far (results.Progress)


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors, numbers and lists, so that weights_only can load them."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Resumable(Protocol):
    """What a checkpoint saves and restores of a trainer (train.Trainer)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def trainable_weights(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_weights(self, weights: dict[str, torch.Tensor]) -> None: ...


def _epoch_dirs(directory: MethodDir) -> list[Path]:
    root = directory.checkpoints
    found = [path for path in root.glob("epoch-*") if path.name[6:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda path: int(path.name[6:]))


def latest(directory: MethodDir) -> Path | None:
    """The newest complete checkpoint of a method (complete: only finished ones are renamed into place)."""
    found = _epoch_dirs(directory)
    return found[-1] if found else None


@dataclass
class Saved:
    """A checkpoint read back whole, ready for restore."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    progress: Progress


def _read(path: Path) -> Saved:
    weights = load_file(str(path / WEIGHTS_FILE))
    state = torch.load(path / STATE_FILE, weights_only=True)
    progress = Progress.from_dict(json.loads((path / PROGRESS_FILE).read_text()))
    if not isinstance(state, dict) or {"trainer", "rng"} - state.keys():
        raise ValueError(f"{STATE_FILE} lacks the trainer's state or the RNG states")
    return Saved(path, weights, state, progress)


def load_latest(directory: MethodDir) -> Saved | None:
    """The newest checkpoint that reads back whole, or None (the method starts from scratch).

    A checkpoint that does not read (a file cut short by a full disk or a crash of the machine, garbled bytes) is
    reported, set aside as checkpoint/epoch-<k>.corrupt (removed with the other checkpoints once the method
    finishes), and the one before it is tried.
    """
    found, unreadable = None, []
    for path in reversed(_epoch_dirs(directory)):
        try:
            found = _read(path)
            break
        except Exception as exc:  # noqa: BLE001 - garbled bytes make torch's unpickler raise anything (IndexError...)
            unreadable.append((path, exc))
    parallel.wait_for_everyone()  # every process has read before the main one moves anything
    if unreadable and parallel.is_main():
        then = f"resumes from {found.path.name}" if found else "starts from scratch"
        for path, exc in unreadable:
            aside = rundir.set_aside(path)
            print(
                f"peftbench: warning: checkpoint {path.name} of {directory.name} is unreadable "
                f"({type(exc).__name__}: {exc}); set aside as {aside.name}; {directory.name} {then}",
                file=sys.stderr,
            )
    return found


def save(directory: MethodDir, trainer: Resumable, progress: Progress) -> Path | None:
    """Write checkpoint/epoch-<k>/ after the trainer's epoch k: into a temporary directory, then one rename, so a
    crash at any moment leaves the previous checkpoint or this one, never half of one. Older epochs are removed.

    Every process calls it (their RNG states are saved); the main process writes, and returns the path.
    """
    rng = parallel.everyone(rng_states())
    if not parallel.is_main():
        return None
    root = directory.checkpoints
    state = trainer.state_dict()
    target = rundir.inside(root, f"epoch-{state['epoch']}", "checkpoint")

    def fill(staging: Path) -> None:
        save_file(trainer.trainable_weights(), str(staging / WEIGHTS_FILE))
        torch.save({"trainer": state, "rng": rng}, staging / STATE_FILE)
        (staging / PROGRESS_FILE).write_text(json.dumps(progress.to_dict(), indent=2))

    rundir.write_directory(target, fill)
    for path in [*_epoch_dirs(directory), *root.glob(f"{rundir.STAGING_PREFIX}*")]:  # and what killed runs left
        if path != target:
            rundir.remove(path)
    return target


def restore(saved: Saved, trainer: Resumable) -> Progress:
    """Load a checkpoint (read by load_latest) into a freshly built trainer (weights, its state, this process's RNG)
    and return what the method had measured so far."""
    rng = saved.state["rng"]
    try:
        if len(rng) != parallel.processes():
            raise ValueError(f"it was written by {len(rng)} processes, and {parallel.processes()} run now")
        trainer.load_trainable_weights(saved.weights)
        trainer.load_state_dict(saved.state["trainer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot resume from {saved.path}: {exc}; remove it, or rerun with --force") from None
    set_rng_states(rng[parallel.rank()])  # last: building the model and trainer drew random numbers
    return saved.progress


def remove(directory: MethodDir) -> None:
    """Drop a method's checkpoints once its results are written."""
    rundir.remove(directory.checkpoints)
