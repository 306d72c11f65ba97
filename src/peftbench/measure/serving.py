"""Serving: what loading an adapter onto a base model, switching between two and merging cost (for full fine-tuning,
loading the saved model)."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from peft import PeftModel
from torch import nn

from peftbench.measure.memory import weights_bytes
from peftbench.measure.timing import timed_ms

SERVING_REPEATS = 3  # each serving figure is the median of this many timings


@dataclass(frozen=True)
class ServingCosts:
    """What serving a trained method costs, medians over SERVING_REPEATS, in milliseconds: loading it (an adapter onto
    a loaded base model; for full fine-tuning the saved model), switching between two loaded adapters, and merging
    then unmerging the active adapter (None where it does not apply); and the bytes the first and a second loaded
    adapter add to the base model in memory (None for full fine-tuning); everything None where the saved adapter
    does not load back."""

    load_ms: float | None = None
    swap_ms: float | None = None
    merge_unmerge_ms: float | None = None
    adapter_bytes: dict[str, int] | None = None


def load_adapters(base: nn.Module, paths: list[Path]) -> PeftModel:
    """The adapters saved at paths on one base model (changed in place), named "0", "1", ... in that order: the first
    loaded with PeftModel.from_pretrained and active, the others added with load_adapter; in eval mode."""
    model = PeftModel.from_pretrained(base, paths[0], adapter_name="0")
    for index, path in enumerate(paths[1:], 1):
        model.load_adapter(path, adapter_name=str(index))
    return model.eval()


def merge_and_unmerge(model: PeftModel) -> None:
    """Fold the active adapter into the base weights, then take it out again (how a merged server swaps tasks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # peft warns that IA3's unmerge is inexact; this only times it
        model.merge_adapter()
        model.unmerge_adapter()


def model_load_costs(load: Callable[[], nn.Module], repeats: int = SERVING_REPEATS) -> ServingCosts:
    """Full fine-tuning's serving cost: loading the saved model (load) onto the device."""
    return ServingCosts(statistics.median(timed_ms(load)[1] for _ in range(repeats)))


def adapter_costs(
    load_base: Callable[[], nn.Module], path: Path, mergeable: bool, repeats: int = SERVING_REPEATS
) -> ServingCosts:
    """An adapter's serving costs: PeftModel.from_pretrained of the adapter saved at path onto a loaded base model (a
    fresh one from load_base each time, untimed); then, with a second copy of the same adapter loaded under another
    name, set_adapter from one to the other and back, and merge_and_unmerge where the method merges."""
    loads = []
    for _ in range(repeats):
        base = load_base()
        base_bytes = weights_bytes(base)  # before from_pretrained adds the adapter to it in place
        served, ms = timed_ms(partial(load_adapters, base, [path]))
        loads.append(ms)
    one = weights_bytes(served)
    served.load_adapter(path, adapter_name="1")
    two = weights_bytes(served)
    swaps = [timed_ms(partial(served.set_adapter, name))[1] for _ in range(repeats) for name in ("1", "0")]
    merges = [timed_ms(partial(merge_and_unmerge, served))[1] for _ in range(repeats)] if mergeable else None
    return ServingCosts(
        load_ms=statistics.median(loads),
        swap_ms=statistics.median(swaps),
        merge_unmerge_ms=statistics.median(merges) if merges else None,
        adapter_bytes={"first": one - base_bytes, "next": two - one},
    )
