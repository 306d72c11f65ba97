"""Training: a plain loop on accelerate, so that every step can be measured."""

from __future__ import annotations

import functools
import math
import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from peftbench.config import RunConfig
from peftbench.data import Encoded, LengthGroupedBatches, batch_length, collate
from peftbench.models import token_loss


def make_accelerator(config: RunConfig) -> Accelerator:
    """bf16 autocast on GPUs that support it; fp32 on CPU, where bf16 runs far slower without native instructions."""
    precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=precision)


def show_progress(config: RunConfig) -> bool:
    return not config.quiet and sys.stderr.isatty()


class Trainer:
    """AdamW over trainable parameters, linear warmup and decay, clipping and accumulation; one epoch per call."""

    def __init__(self, model, items: list[Encoded], pad_id: int, is_seq2seq: bool, config: RunConfig, lr: float):
        self.config, self.is_seq2seq = config, is_seq2seq
        self.accelerator = make_accelerator(config)
        sampler = LengthGroupedBatches([batch_length(it) for it in items], config.batch_size, config.seed)
        loader = DataLoader(
            items, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad_id, is_seq2seq=is_seq2seq)
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)
        total_steps = math.ceil(len(sampler) / config.grad_accum) * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        self.epoch = 0

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def train_epoch(self) -> float:
        """Train one epoch; return the mean loss per target token."""
        self.epoch += 1
        self.model.train()
        loss_sum, token_count = 0.0, 0
        bar = tqdm(
            self.loader,
            desc=f"train epoch {self.epoch}/{self.config.epochs}",
            unit="batch",
            disable=not show_progress(self.config),
            leave=False,
        )
        for batch in bar:
            with self.accelerator.accumulate(self.model):
                summed, n_tokens = token_loss(self.model, batch, self.is_seq2seq)
                self.accelerator.backward(summed / max(n_tokens, 1))
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            loss_sum += summed.item()
            token_count += n_tokens
            bar.set_postfix(loss=f"{summed.item() / max(n_tokens, 1):.3f}")
        return loss_sum / max(token_count, 1)
