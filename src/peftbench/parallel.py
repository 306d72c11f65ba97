"""Several processes (DDP under `accelerate launch` or `torchrun`): who writes, and how per-process figures combine.

Every process trains on its share of each batch and evaluates its share of each split; the figures are then
combined so that every process holds the same, complete results. Only the main process writes files or prints.
With one process every helper here is the identity, and no process group is ever created.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object


def processes() -> int:
    """How many processes run this comparison (WORLD_SIZE, set by torchrun and accelerate launch), without creating
    a process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_group() -> bool:
    """Whether the processes form a CPU (gloo) group: several of them, and no GPU. accelerate forms one only when
    asked for the CPU, which torchrun does not say."""
    return processes() > 1 and not torch.cuda.is_available()


def state() -> PartialState:
    """accelerate's process state, creating the process group (if several processes) on first use."""
    return PartialState(cpu=cpu_group())


def rank() -> int:
    return state().process_index if processes() > 1 else 0


def is_main() -> bool:
    """Whether this process writes results, checkpoints and reports, and prints."""
    return rank() == 0


def wait_for_everyone() -> None:
    if processes() > 1:
        state().wait_for_everyone()


def totals(*values: float) -> list[float]:
    """Each value summed over every process, in one exchange (float64: token counts stay exact)."""
    if processes() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=state().device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def highest(value: float | int) -> float:
    """The largest value any process has (e.g. peak memory, which is per process)."""
    if processes() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=state().device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.item()


def everyone(value: Any) -> list[Any]:
    """[value of process 0, value of process 1, ...] on every process."""
    return gather_object([value]) if processes() > 1 else [value]


def share(items: list[Any]) -> list[Any]:
    """This process's share of items: every processes()-th one, starting at its rank."""
    return items[rank() :: processes()]
