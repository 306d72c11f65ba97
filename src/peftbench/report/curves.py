"""A run's learning curves (curves.png), drawn from its records: metrics.json's epochs and log.jsonl's steps."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from peftbench.store.records import MethodResult
from peftbench.task.metrics import METRICS


def plot_curves(result: MethodResult, log: list[dict] | None = None) -> bytes:
    """Loss (train and validation) and the validation metrics against epoch (scores on a 0-1 scale in one panel,
    corpus scores on 0-100 in another); epoch 0 is the base model. With the method's log.jsonl records, the training
    loss of every optimizer step too, placed within its epoch."""
    epochs = [e.epoch for e in result.epochs]
    groups = [[m for m in result.metrics if not METRICS[m].corpus], [m for m in result.metrics if METRICS[m].corpus]]
    groups = [group for group in groups if group]
    figure, axes = plt.subplots(1, 1 + len(groups), figsize=(4.4 * (1 + len(groups)), 3.8), squeeze=False)
    loss_ax, *metric_axes = axes[0]
    steps = [record for record in log or [] if record.get("split") == "train"]
    if steps:
        per_epoch = {epoch: sum(r["epoch"] == epoch for r in steps) for epoch in {r["epoch"] for r in steps}}
        first = {epoch: min(r["step"] for r in steps if r["epoch"] == epoch) for epoch in per_epoch}
        where = [r["epoch"] - 1 + (r["step"] - first[r["epoch"]] + 1) / per_epoch[r["epoch"]] for r in steps]
        loss_ax.plot(where, [r["loss"] for r in steps], "-", color="tab:blue", alpha=0.35, label="train, per step")
    trained = [e for e in result.epochs if e.train_loss is not None]
    loss_ax.plot([e.epoch for e in trained], [e.train_loss for e in trained], "o-", label="train, epoch mean")
    loss_ax.plot(epochs, [e.val_loss for e in result.epochs], "s-", label="validation")
    loss_ax.set(title="Loss per target token", xlabel="epoch", ylabel="cross-entropy")
    for ax, group in zip(metric_axes, groups, strict=True):
        for metric in group:
            ax.plot(epochs, [e.scores.get(metric) for e in result.epochs], "o-", label=METRICS[metric].label)
        scale = "0-100" if METRICS[group[0]].corpus else "0-1"
        ax.set(title="Validation " + ", ".join(METRICS[m].label for m in group), xlabel="epoch", ylabel=scale)
        # Under the axes: nearby rising lines leave no empty corner inside them.
        ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    for ax in axes[0]:
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    figure.suptitle(f"{result.method} on {result.model}")
    return png(figure, dpi=110)


def png(figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()
