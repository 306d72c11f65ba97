"""Training: a plain loop on accelerate, so that every step can be measured; its state for checkpoints."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from peftbench import parallel
from peftbench.config.run_config import RunConfig
from peftbench.data.splits import LengthGroupedBatches, to_device
from peftbench.errors import ConfigError, NonFiniteLoss
from peftbench.measure.memory import peak_memory_bytes, reset_peak_memory
from peftbench.model.layout import Encoded, Layout


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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The compute precision (mixed_precision's value) as a context: every model call of a method's run (training
    forward, evaluation, generation, latency, the merge check, the base model's too) runs inside it, so that all of
    them compute at the one recorded precision."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


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
    precision: str  # accelerate's mixed_precision: "no", "bf16" or "fp16" (see mixed_precision)
    progress: bool  # show progress bars

    @classmethod
    def from_config(cls, config: RunConfig, precision: str) -> TrainOptions:
        return cls(
            config.epochs,
            config.batch_size,
            config.grad_accum,
            config.warmup_ratio,
            config.max_grad_norm,
            config.seed,
            config.gradient_checkpointing,
            precision,
            show_progress(config.quiet),
        )


class Trainer:
    """Linear warmup and decay, clipping and accumulation around the optimizer it is given; one epoch per call.

    One optimizer step takes one batch of the sampler (--batch-size x --grad-accum examples across all processes):
    each process takes its share and runs it as micro-batches of --batch-size / processes. The step's gradient is
    the mean over every target token of all its micro-batches and processes, so accumulation changes memory, never
    the result. extra_loss (a method's regulariser, e.g. AdaLoRA's) is added once per step, inside clipping.

    Keeps the training-only figures: seconds, real tokens, samples, peak memory (evaluation excluded) and each step's
    tokens and seconds (steps); with several processes, tokens and samples of all of them and the highest peak of any
    one. log, where given, receives one record per optimizer step (epoch, step, loss, learning rate, gradient norm,
    tokens, seconds). Its state (counters, steps, optimizer, scheduler) goes to and from checkpoints through
    state_dict / load_state_dict, and the trainable weights through trainable_weights / load_trainable_weights.
    """

    def __init__(
        self,
        model,
        optimizer: torch.optim.Optimizer,
        items: list[Encoded],
        layout: Layout,
        options: TrainOptions,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.options, self.layout, self.items, self.extra_loss, self.log = options, layout, items, extra_loss, log
        # split_batches: one scheduler step per optimizer step, however many processes (accelerate would otherwise
        # step the schedule once per process).
        self.accelerator = Accelerator(
            cpu=parallel.cpu_group(),  # as parallel.state()
            mixed_precision=options.precision,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        step_batch = options.batch_size * options.grad_accum
        self.sampler = LengthGroupedBatches(
            [it.length for it in items], step_batch, options.seed, processes=parallel.processes()
        )
        self.micro_batch = options.batch_size // parallel.processes()  # preflight: batch size divides evenly
        total_steps = len(self.sampler) * options.epochs
        warmup = round(options.warmup_ratio * total_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.epoch = 0
        self.seconds, self.tokens, self.samples, self.peak_memory = 0.0, 0, 0, 0
        self.steps: dict[str, list] = {"epoch": [], "tokens": [], "seconds": []}  # Efficiency.train_steps

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def train_epoch(self) -> float:
        """Train one epoch; return the mean loss per target token."""
        steps = self.sampler.batches(self.epoch)  # from the trainer's count, which a resumed run restores
        self.epoch += 1
        self.model.train()
        loss_sum, token_count, tokens, samples = 0.0, 0, 0, 0
        bar = tqdm(
            steps,
            desc=f"train epoch {self.epoch}/{self.options.epochs}",
            unit="step",
            disable=not self.options.progress,
            leave=False,
        )
        reset_peak_memory()
        started = time.perf_counter()
        for index, step_batch in enumerate(bar):
            step_started = time.perf_counter()
            step_tokens = sum(len(self.items[i].target) for i in step_batch)  # every process's share: no exchange
            real_tokens = sum(self.items[i].length for i in step_batch)  # an item's length is its real tokens
            share = parallel.share(step_batch)
            micro_batches = [share[i : i + self.micro_batch] for i in range(0, len(share), self.micro_batch)]
            summed_total = torch.zeros((), device=self.accelerator.device)
            for position, indices in enumerate(micro_batches):
                batch = to_device(self.layout.collate([self.items[i] for i in indices]), self.accelerator.device)
                last = position == len(micro_batches) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                    summed = self.layout.token_loss(self.model, batch)[0].sum()
                    # Per target token of the whole step: DDP averages the processes' gradients, hence the factor.
                    loss = summed * parallel.processes() / step_tokens
                    if last and self.extra_loss is not None:
                        loss = loss + self.extra_loss(self.unwrapped)
                    self.accelerator.backward(loss)
                summed_total += summed.detach()
                tokens += self.layout.real_tokens(batch)
                samples += len(indices)
            lr = self.optimizer.param_groups[0]["lr"]  # this step's (LoRA+: the A matrices')
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.options.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            # The one host sync per step: the step's summed loss with its gradient norm (the same on every process).
            figures = [summed_total] if norm is None else [summed_total, torch.as_tensor(norm).to(summed_total)]
            host = torch.stack([figure.reshape(()) for figure in figures]).tolist()
            (step_loss,) = parallel.totals(host[0])
            grad_norm = host[1] if norm is not None else None
            step = (self.epoch - 1) * len(steps) + index + 1
            if not math.isfinite(step_loss):  # every process sees the same total, so all of them stop here
                lr = self.optimizer.param_groups[0]["initial_lr"]
                raise NonFiniteLoss(
                    f"training loss is {step_loss} at step {step} (epoch {self.epoch}): training diverged; "
                    f"lower --lr (now {lr:g}), or check the data"
                )
            if self.accelerator.trackers:  # --report-to (none by default)
                now = {"train/loss": step_loss / step_tokens, "train/lr": self.scheduler.get_last_lr()[0]}
                self.accelerator.log(now, step=step)
            if self.log is not None:  # the norm before clipping, as HF Trainer logs it
                self.log(
                    {
                        "split": "train",
                        "epoch": self.epoch,
                        "step": step,
                        "loss": step_loss / step_tokens,
                        "learning_rate": lr,
                        "grad_norm": grad_norm,
                        "tokens": real_tokens,
                        "seconds": self.seconds + time.perf_counter() - started,
                    }
                )
            self._record_step(real_tokens, time.perf_counter() - step_started)
            loss_sum += step_loss
            token_count += step_tokens
            bar.set_postfix(loss=f"{step_loss / step_tokens:.3f}")
        self.seconds += time.perf_counter() - started
        tokens, samples = parallel.totals(tokens, samples)
        self.tokens, self.samples = self.tokens + int(tokens), self.samples + int(samples)
        self.peak_memory = max(self.peak_memory, int(parallel.highest(peak_memory_bytes())))
        return loss_sum / token_count

    def _record_step(self, tokens: int, seconds: float) -> None:
        """One optimizer step's real tokens (every process's) and wall seconds, under the current epoch."""
        for key, value in zip(("epoch", "tokens", "seconds"), (self.epoch, tokens, seconds), strict=True):
            self.steps[key].append(value)

    def state_dict(self) -> dict[str, Any]:
        """Counters, optimizer and scheduler: tensors, numbers and dicts (torch.load(weights_only=True)); the
        sampler's batches follow from the epoch."""
        return {
            "epoch": self.epoch,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "samples": self.samples,
            "peak_memory": self.peak_memory,
            "steps": self.steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.seconds, self.tokens = state["seconds"], state["tokens"]
        self.samples, self.peak_memory = state["samples"], state["peak_memory"]
        self.steps = state["steps"]

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        """The weights that train (the adapter, or every weight for full fine-tuning), on the CPU."""
        return {name: p.detach().cpu().contiguous() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def load_trainable_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put saved trainable weights back; ValueError where they are not exactly this model's trainable ones."""
        trainable = {name for name, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(weights) != trainable:
            raise ValueError(f"it holds {len(weights)} tensors for {len(trainable)} trainable parameters")
        self.unwrapped.load_state_dict(weights, strict=False)
