"""Report: figures drawn from results (per-method learning curves in the spirit of the original study)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from peftbench.results import MethodResult  # noqa: E402


def plot_curves(result: MethodResult, path: Path) -> Path:
    """Loss (train and validation), ROUGE-1/2/L and BLEU against epoch; epoch 0 is the base model."""
    epochs = [e.epoch for e in result.epochs]
    figure, (loss_ax, rouge_ax, bleu_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    trained = [e for e in result.epochs if e.train_loss is not None]
    loss_ax.plot([e.epoch for e in trained], [e.train_loss for e in trained], "o-", label="train")
    loss_ax.plot(epochs, [e.val_loss for e in result.epochs], "s-", label="validation")
    loss_ax.set(title="Loss per target token", xlabel="epoch", ylabel="cross-entropy")
    for kind, label in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L")):
        rouge_ax.plot(epochs, [getattr(e, kind) for e in result.epochs], "o-", label=label)
    rouge_ax.set(title="Validation ROUGE (F1)", xlabel="epoch", ylabel="F1 (0-1)")
    bleu_ax.plot(epochs, [e.bleu for e in result.epochs], "o-", color="tab:purple")
    bleu_ax.set(title="Validation BLEU", xlabel="epoch", ylabel="BLEU (0-100)")
    for ax in (loss_ax, rouge_ax, bleu_ax):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    rouge_ax.legend()
    figure.suptitle(f"{result.method} on {result.model}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
