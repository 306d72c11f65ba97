"""Training: a plain loop on accelerate, so that every step can be measured; its state for checkpoints."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from peftbench import parallel
from peftbench.config import ConfigError, RunConfig
from peftbench.data import LengthGroupedBatches, to_device
from peftbench.errors import NonFiniteLoss
from peftbench.layout import Encoded, Layout
from peftbench.measure import peak_memory_bytes, reset_peak_memory


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a --precision on this hardware.

    CPUs here lack bf16 instructions, where bf16/fp16 run tens of times slower than fp32: mixed precision is GPU-only.
    """
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp32":
        return "no"
    if not cuda:
        raise ConfigError(
            f"--precision {precision} needs a GPU; on CPU mixed precision runs far slower than fp32. "
            "Use --precision fp32 or auto"
        )
    return precision


def show_progress(quiet: bool) -> bool:
    """Progress bars: on an interactive terminal, in the main process, unless --quiet."""
    return not quiet and sys.stderr.isatty() and parallel.is_main()


@dataclass(frozen=True)
class TrainOptions:
    """The training budget and loop settings (from RunConfig)."""

    epochs: int
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    max_grad_norm: float
    seed: int
    gradient_checkpointing: bool
    precision: str
    progress: bool  # show progress bars

    @classmethod
    def from_config(cls, config: RunConfig) -> TrainOptions:
        return cls(config.epochs, config.batch_size, config.grad_accum, config.warmup_ratio, config.max_grad_norm,
                   config.seed, config.gradient_checkpointing, config.precision,
                   show_progress(config.quiet))  # fmt: skip


class Trainer:
    """Linear warmup and decay, clipping and accumulation around the optimizer it is given; one epoch per call.

    Keeps the training-only figures: seconds, real tokens, samples and peak memory (evaluation excluded); with
    several processes, tokens and samples of all of them and the highest peak of any one. Its state (counters,
    optimizer, scheduler, sampler) goes to and from checkpoints through state_dict / load_state_dict, and the
    trainable weights through trainable_weights / load_trainable_weights.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, items: list[Encoded], layout: Layout,
                 options: TrainOptions):  # fmt: skip
        self.options, self.layout = options, layout
        # split_batches: --batch-size is one step's batch across all processes (each trains on its share), so
        # the scheduler steps once per optimizer step, as with one process.
        self.accelerator = Accelerator(
            cpu=parallel.cpu_group(),  # as parallel.state()
            mixed_precision=mixed_precision(options.precision),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.sampler = LengthGroupedBatches([it.length for it in items], options.batch_size, options.seed,
                                            processes=parallel.processes(), rank=parallel.rank())  # fmt: skip
        self.loader = DataLoader(items, batch_sampler=self.sampler, collate_fn=layout.collate)
        total_steps = math.ceil(len(self.sampler) / options.grad_accum) * options.epochs
        warmup = round(options.warmup_ratio * total_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.epoch = 0
        self.seconds, self.tokens, self.samples, self.peak_memory = 0.0, 0, 0, 0

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def train_epoch(self) -> float:
        """Train one epoch; return the mean loss per target token."""
        self.sampler.set_epoch(self.epoch)  # from the trainer's count, which a resumed run restores
        self.epoch += 1
        self.model.train()
        loss_sum, token_count, tokens, samples = 0.0, 0, 0, 0
        batches, accumulate = len(self.loader), self.options.grad_accum
        bar = tqdm(self.loader, desc=f"train epoch {self.epoch}/{self.options.epochs}", unit="batch",
                   disable=not self.options.progress, leave=False)  # fmt: skip
        reset_peak_memory()
        started = time.perf_counter()
        for index, batch in enumerate(bar):
            batch = to_device(batch, self.accelerator.device)
            update = (index + 1) % accumulate == 0 or index + 1 == batches  # the last batch never waits
            with contextlib.nullcontext() if update else self.accelerator.no_sync(self.model):
                summed, n_tokens = self.layout.token_loss(self.model, batch)
                # The one host sync per step; with several processes, the whole batch's loss and target count.
                step_loss, step_tokens = parallel.totals(summed.item(), n_tokens)
                # Per target token of the whole batch: DDP averages the processes' gradients, hence the factor.
                self.accelerator.backward(summed * parallel.processes() / max(step_tokens, 1) / accumulate)
            if update:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.options.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            step = (self.epoch - 1) * batches + index + 1
            if not math.isfinite(step_loss):  # every process sees the same total, so all of them stop here
                lr = self.optimizer.param_groups[0]["initial_lr"]
                raise NonFiniteLoss(
                    f"training loss is {step_loss} at batch {step} (epoch {self.epoch}): training diverged; "
                    f"lower --lr (now {lr:g}), or check the data"
                )
            if self.accelerator.trackers:  # --report-to (none by default)
                now = {"train/loss": step_loss / max(step_tokens, 1), "train/lr": self.scheduler.get_last_lr()[0]}
                self.accelerator.log(now, step=step)
            loss_sum += step_loss
            token_count += step_tokens
            tokens += self.layout.real_tokens(batch)
            samples += len(batch["input_ids"])
            bar.set_postfix(loss=f"{step_loss / max(step_tokens, 1):.3f}")
        self.seconds += time.perf_counter() - started
        tokens, samples = parallel.totals(tokens, samples)
        self.tokens, self.samples = self.tokens + int(tokens), self.samples + int(samples)
        self.peak_memory = max(self.peak_memory, int(parallel.highest(peak_memory_bytes())))
        return loss_sum / max(token_count, 1)

    def state_dict(self) -> dict[str, Any]:
        """Counters, optimizer, scheduler and sampler: tensors, numbers and dicts (torch.load(weights_only=True))."""
        return {
            "epoch": self.epoch,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "samples": self.samples,
            "peak_memory": self.peak_memory,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch = state["epoch"]
        self.seconds, self.tokens = state["seconds"], state["tokens"]
        self.samples, self.peak_memory = state["samples"], state["peak_memory"]

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        """The weights that train (the adapter, or every weight for full fine-tuning), on the CPU."""
        return {name: p.detach().cpu().contiguous() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def load_trainable_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put saved trainable weights back; ValueError where they are not exactly this model's trainable ones."""
        trainable = {name for name, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(weights) != trainable:
            raise ValueError(f"it holds {len(weights)} tensors for {len(trainable)} trainable parameters")
        self.unwrapped.load_state_dict(weights, strict=False)
