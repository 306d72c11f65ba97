"""Training: a plain loop on accelerate, so that every step can be measured."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from peftbench import parallel
from peftbench.config import ConfigError, RunConfig
from peftbench.data import IGNORE_INDEX, Encoded, LengthGroupedBatches, batch_length, collate, to_device
from peftbench.measure import peak_memory_bytes, reset_peak_memory
from peftbench.methods import build_optimizer
from peftbench.models import token_loss


def mixed_precision(config: RunConfig) -> str:
    """accelerate's mixed_precision for the configured --precision on this hardware.

    CPUs here lack bf16 instructions, where bf16/fp16 run tens of times slower than fp32: mixed precision is GPU-only.
    """
    cuda = torch.cuda.is_available()
    if config.precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if config.precision == "fp32":
        return "no"
    if not cuda:
        raise ConfigError(
            f"--precision {config.precision} needs a GPU; on CPU mixed precision runs far slower than fp32. "
            "Use --precision fp32 or auto"
        )
    return config.precision


class NonFiniteLoss(ConfigError):
    """The training loss became NaN or infinite: this method stops (the others go on); usually the learning rate."""


def show_progress(config: RunConfig) -> bool:
    return not config.quiet and sys.stderr.isatty() and parallel.is_main()


def real_tokens(batch: dict[str, torch.Tensor], is_seq2seq: bool) -> int:
    """Non-padding tokens the model processed: the whole sequence (causal), or encoder input + labels (seq2seq)."""
    tokens = int(batch["attention_mask"].sum())
    return tokens + int((batch["labels"] != IGNORE_INDEX).sum()) if is_seq2seq else tokens


class Trainer:
    """AdamW over trainable parameters, linear warmup and decay, clipping and accumulation; one epoch per call.

    Keeps the training-only figures: seconds, real tokens, samples and peak memory (evaluation excluded); with
    several processes, tokens and samples of all of them and the highest peak of any one.
    """

    def __init__(self, model, items: list[Encoded], pad_id: int, is_seq2seq: bool, config: RunConfig, lr: float):
        self.config, self.is_seq2seq = config, is_seq2seq
        # split_batches: --batch-size is one step's batch across all processes (each trains on its share), so
        # the scheduler steps once per optimizer step, as with one process.
        self.accelerator = Accelerator(
            cpu=parallel.cpu_group(),  # as parallel.state()
            mixed_precision=mixed_precision(config),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lengths = [batch_length(it) for it in items]
        self.sampler = LengthGroupedBatches(lengths, config.batch_size, config.seed, processes=parallel.processes(),
                                            rank=parallel.rank())  # fmt: skip
        collate_fn = functools.partial(collate, pad_id=pad_id, is_seq2seq=is_seq2seq)
        self.loader = DataLoader(items, batch_sampler=self.sampler, collate_fn=collate_fn)
        optimizer = build_optimizer(model, lr, config)  # AdamW over the trainable parameters, or the method's own
        total_steps = math.ceil(len(self.sampler) / config.grad_accum) * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
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
        batches, accumulate = len(self.loader), self.config.grad_accum
        bar = tqdm(self.loader, desc=f"train epoch {self.epoch}/{self.config.epochs}", unit="batch",
                   disable=not show_progress(self.config), leave=False)  # fmt: skip
        reset_peak_memory()
        started = time.perf_counter()
        for index, batch in enumerate(bar):
            batch = to_device(batch, self.accelerator.device)
            update = (index + 1) % accumulate == 0 or index + 1 == batches  # the last batch never waits
            with contextlib.nullcontext() if update else self.accelerator.no_sync(self.model):
                summed, n_tokens = token_loss(self.model, batch, self.is_seq2seq)
                # The one host sync per step; with several processes, the whole batch's loss and target count.
                step_loss, step_tokens = parallel.totals(summed.item(), n_tokens)
                # Per target token of the whole batch: DDP averages the processes' gradients, hence the factor.
                self.accelerator.backward(summed * parallel.processes() / max(step_tokens, 1) / accumulate)
            if update:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
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
            tokens += real_tokens(batch, self.is_seq2seq)
            samples += len(batch["input_ids"])
            bar.set_postfix(loss=f"{step_loss / max(step_tokens, 1):.3f}")
        self.seconds += time.perf_counter() - started
        tokens, samples = parallel.totals(tokens, samples)
        self.tokens, self.samples = self.tokens + int(tokens), self.samples + int(samples)
        self.peak_memory = max(self.peak_memory, int(parallel.highest(peak_memory_bytes())))
        return loss_sum / max(token_count, 1)
