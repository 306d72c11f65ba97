"""LoRA initialisations computed from training examples (EVA, CorDA, ASTRA, LoRA-GA), each by peft's own function
over a sample of the training split (never the validation or test split), and the saving of the adapters among them
that rewrite their base weights (as the plain LoRA they amount to on the original model)."""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, initialize_lora_eva_weights
from peft.tuners.lora.astra import preprocess_astra
from peft.tuners.lora.corda import preprocess_corda
from peft.tuners.lora.loraga import preprocess_loraga
from safetensors.torch import save_file
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
    """Training examples to initialise from, as the layout collates them (on device), the forward pass it runs on a
    batch (each example's summed loss and target tokens), and which positions of a layer's inputs are real tokens
    (by the inputs' length: a decoder's differs from its encoder's)."""

    items: list[Encoded]
    collate: Callable[[list[Encoded]], dict[str, torch.Tensor]]
    device: torch.device
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    real_positions: Callable[[dict[str, torch.Tensor]], dict[int, torch.Tensor]]

    def batches(self, size: int = CALIBRATION_BATCH) -> list[dict[str, torch.Tensor]]:
        """The examples in batches of size (of 1: no padding at all), on device."""
        return [
            {key: value.to(self.device) for key, value in self.collate(self.items[i : i + size]).items()}
            for i in range(0, len(self.items), size)
        ]

    def layer_rows(self, layer_input, batch: dict[str, torch.Tensor], layer_name: str) -> torch.Tensor:
        """A layer's inputs on batch as rows for an SVD, its padding positions left out."""
        inputs = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
        real = self.real_positions(batch).get(inputs.shape[1])
        return inputs[real] if real is not None else inputs.reshape(-1, inputs.shape[-1])

    @torch.no_grad()
    def read(self, model: nn.Module, size: int = CALIBRATION_BATCH) -> None:
        """One forward pass over every example, in batches of size (for hooks that collect activations)."""
        for batch in self.batches(size):
            self.forward(model, batch)

    def gradients(self, model: nn.Module) -> None:
        """Gradients of the mean per-token loss of the examples' batches, accumulated (for LoRA-GA's estimate)."""
        batches = self.batches()
        for batch in batches:
            sums, counts = self.forward(model, batch)  # per example: summed loss and target tokens
            (sums.sum() / max(int(counts.sum()), 1) / len(batches)).backward()


def calibration(layout: Layout, train: list[Encoded], device: torch.device) -> Calibration:
    """The first CALIBRATION_EXAMPLES training examples."""
    return Calibration(train[:CALIBRATION_EXAMPLES], layout.collate, device, layout.token_loss, layout.real_positions)


def before_data(config: PeftConfig) -> PeftConfig:
    """The config as peft wraps a model before a data-driven start (plain LoRA's, without the start's own config,
    which peft would warn is unused): for counting and checking where no training examples are at hand (CorDA's and
    ASTRA's own starts need theirs), and for the start that save_pretrained's conversion reads."""
    plain = copy.deepcopy(config)
    plain.init_lora_weights = True
    plain.eva_config = plain.corda_config = plain.astra_config = plain.lora_ga_config = None
    return plain


def eva(model: nn.Module, config: PeftConfig, calibration: Calibration) -> nn.Module:
    """EVA: LoRA's A matrices from the top singular vectors of each target layer's inputs on training examples, the
    ranks redistributed across layers by explained variance (eva_config.rho); B starts at zero, so the model starts
    as the base model and the base weights stay as they are."""
    wrapped = get_peft_model(model, config, low_cpu_mem_usage=True)  # A and B are made by EVA, not twice
    batches = calibration.batches()
    budget = MAX_PASSES * len(batches)

    def forward(peft_model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        nonlocal budget
        if budget == 0:
            raise ConfigError(
                f"eva's components did not settle within {MAX_PASSES} passes over {len(calibration.items)} "
                "training examples: give it more or longer examples or a lower rank (--method-args "
                "eva.r=4)"
            )
        budget -= 1
        calibration.forward(peft_model, batch)

    with contextlib.redirect_stdout(io.StringIO()):  # peft prints each batch too short for a layer's rank
        initialize_lora_eva_weights(
            wrapped,
            batches,
            forward_fn=forward,
            prepare_model_inputs_fn=None,  # the batch itself reaches layer_rows
            prepare_layer_inputs_fn=calibration.layer_rows,
            show_progress_bar=False,
        )
    return wrapped


# The attribute of a wrapped model that holds its adapter's starting weights, where the start rewrote the base weights.
_START = "peftbench_adapter_start"


def _wrap_rewriting_base(model: nn.Module, config: PeftConfig) -> nn.Module:
    """peft's wrap of a model whose layers were prepared (CorDA, ASTRA, LoRA-GA): the adapter starts from them and
    the base weights become the residual. Its starting weights are kept for save_adapter's conversion."""
    wrapped = get_peft_model(model, config)
    start = {key: value.detach().clone() for key, value in get_peft_model_state_dict(wrapped).items()}
    setattr(wrapped, _START, start)
    return wrapped


def corda(model: nn.Module, config: PeftConfig, calibration: Calibration) -> nn.Module:
    """CorDA (instruction-previewed mode, peft's default): each target weight decomposed by SVD after weighting it
    with the covariance of its inputs on training examples; the top r components become the adapter."""
    # CorDA's hook takes each forward's inputs for one example (it drops the batch dimension): one at a time.
    preprocess_corda(model, config, run_model=lambda: calibration.read(model, size=1))
    return _wrap_rewriting_base(model, config)


def astra(model: nn.Module, config: PeftConfig, calibration: Calibration) -> nn.Module:
    """ASTRA: each target weight projected onto the tail eigenvectors of its outputs' covariance on training
    examples; that projection becomes the adapter."""
    preprocess_astra(model, config, run_model=lambda: calibration.read(model))
    return _wrap_rewriting_base(model, config)


def loraga(model: nn.Module, config: PeftConfig, calibration: Calibration) -> nn.Module:
    """LoRA-GA: the adapter starts from the SVD of each target weight's gradient on training batches, so that its
    first steps follow full fine-tuning's."""
    with warnings.catch_warnings():  # its hooks fire on outputs alone, as the frozen inputs need no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        preprocess_loraga(model, config, train_step=lambda: calibration.gradients(model))
    model.zero_grad(set_to_none=True)
    return _wrap_rewriting_base(model, config)


def save_pretrained(model: nn.Module, directory: Path) -> None:
    """The adapter in peft's format, into directory. One whose start rewrote its base weights is saved as the plain
    LoRA it amounts to on the original model (peft's conversion: rank 2r, loadable with PeftModel.from_pretrained
    onto the base model as published); its starting adapter is written for the conversion inside directory and
    removed again."""
    start = getattr(model, _START, None)
    if start is None:
        model.save_pretrained(directory, safe_serialization=True)
        return
    initial = directory / "initial-adapter"
    # peft's conversion loads the start as a plain LoRA, not subtracting it again
    before_data(model.peft_config["default"]).save_pretrained(initial)
    save_file(start, str(initial / "adapter_model.safetensors"))
    try:
        with warnings.catch_warnings():  # peft advises the very conversion this is
            warnings.filterwarnings("ignore", message=".* changes the base weights of the model")
            model.save_pretrained(
                directory, safe_serialization=True, path_initial_model_for_weight_conversion=str(initial)
            )
    finally:
        shutil.rmtree(initial, ignore_errors=True)
