"""LoRA initialisations computed from training examples (EVA): the model wrapped by peft, then initialised by peft's
own function from passes over a sample of the training split. Never the validation or test split."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import PeftConfig, get_peft_model, initialize_lora_eva_weights
from torch import nn

from peftbench.errors import ConfigError
from peftbench.model.layout import Encoded, Layout

# Training examples the initialisation reads. EVA's incremental SVD needs a few thousand tokens of layer inputs to
# settle on models of this size (peft's guide: a handful of batches); 64 examples of a few hundred tokens is that.
CALIBRATION_EXAMPLES = 64
CALIBRATION_BATCH = 8
# EVA passes over those examples again until its components settle; where they do not within this many passes (too
# few tokens per example for its rank, or a tau too strict), it is an error rather than the endless loop peft runs.
MAX_PASSES = 200


@dataclass(frozen=True)
class Calibration:
    """Training batches to initialise from, the forward pass the layout runs on them, and which positions of a
    layer's inputs are real tokens (by the inputs' length: a decoder's differs from its encoder's)."""

    batches: list[dict[str, torch.Tensor]]
    examples: int
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], object]
    real_positions: Callable[[dict[str, torch.Tensor]], dict[int, torch.Tensor]]

    def layer_rows(self, layer_input, batch: dict[str, torch.Tensor], layer_name: str) -> torch.Tensor:
        """A layer's inputs on batch as rows for an SVD, its padding positions left out."""
        inputs = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
        real = self.real_positions(batch).get(inputs.shape[1])
        return inputs[real] if real is not None else inputs.reshape(-1, inputs.shape[-1])


def calibration(layout: Layout, train: list[Encoded], device: torch.device) -> Calibration:
    """The first CALIBRATION_EXAMPLES training examples in batches of CALIBRATION_BATCH, on device."""
    examples = train[:CALIBRATION_EXAMPLES]
    batches = [
        {key: value.to(device) for key, value in layout.collate(examples[i : i + CALIBRATION_BATCH]).items()}
        for i in range(0, len(examples), CALIBRATION_BATCH)
    ]
    return Calibration(batches, len(examples), layout.token_loss, layout.real_positions)


def eva(model: nn.Module, config: PeftConfig, calibration: Calibration) -> nn.Module:
    """EVA: LoRA's A matrices from the top singular vectors of each target layer's inputs on training examples, the
    ranks redistributed across layers by explained variance (eva_config.rho); B starts at zero, so the model starts
    as the base model and the base weights stay as they are."""
    wrapped = get_peft_model(model, config, low_cpu_mem_usage=True)  # A and B are made by EVA, not twice
    budget = MAX_PASSES * len(calibration.batches)

    def forward(peft_model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        nonlocal budget
        if budget == 0:
            raise ConfigError(
                f"eva's components did not settle within {MAX_PASSES} passes over {calibration.examples} "
                "training examples: give it more or longer examples or a lower rank (--method-args "
                "eva.r=4)"
            )
        budget -= 1
        calibration.forward(peft_model, batch)

    with contextlib.redirect_stdout(io.StringIO()):  # peft prints each batch too short for a layer's rank
        initialize_lora_eva_weights(
            wrapped,
            calibration.batches,
            forward_fn=forward,
            prepare_model_inputs_fn=None,  # the batch itself reaches layer_rows
            prepare_layer_inputs_fn=calibration.layer_rows,
            show_progress_bar=False,
        )
    return wrapped
