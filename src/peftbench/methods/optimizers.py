"""Optimizers and what some methods add to the training loop: AdamW over the trainable parameters for most methods;
LoRA+'s learning-rate groups; LoRA-FA's frozen A and projected B; AdaLoRA's rank allocation as optimizer hooks and its
orthogonal regulariser as a loss term, so the training loop is the same for every method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft.optimizers import create_lorafa_optimizer, create_loraplus_optimizer
from torch import nn

if TYPE_CHECKING:
    from peftbench.methods.settings import MethodSettings


def adamw(model: nn.Module, lr: float, settings: MethodSettings) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) updates all parameters in one pass: for full fine-tuning the per-tensor loop
    # took several times longer per step here. It is also what HF Trainer uses by default.
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=settings.weight_decay, fused=True)


def loraplus(model: nn.Module, lr: float, settings: MethodSettings) -> torch.optim.Optimizer:
    """AdamW with B matrices at lr x --loraplus-lr-ratio and A matrices at lr (peft's LoRA+ grouping)."""
    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=lr,
        loraplus_lr_ratio=settings.loraplus_lr_ratio,
        loraplus_weight_decay=settings.weight_decay,
    )


def lorafa(model: nn.Module, lr: float, settings: MethodSettings) -> torch.optim.Optimizer:
    """LoRA-FA (peft's create_lorafa_optimizer): the A matrices stay as initialised (it freezes them) and B's
    gradient is projected onto A's row space; its scaling from the built config, so that --method-args lorafa.r=...
    holds for the optimizer too."""
    return create_lorafa_optimizer(model, lr=lr, weight_decay=settings.weight_decay)


def _orthogonality(tuner) -> torch.Tensor:
    """AdaLoRA's regulariser, as peft computes it: mean over its A and B matrices of ||P Pᵀ - I|| (Frobenius)."""
    adapter = tuner.trainable_adapter_name
    terms = []
    for name, param in tuner.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            gram = param @ param.T if "lora_A" in name else param.T @ param
            terms.append(torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=gram.device, dtype=gram.dtype)))
    return torch.stack(terms).mean()


def adalora_regularizer(model: nn.Module) -> torch.Tensor:
    """AdaLoRA's orthogonal regulariser, weighted as configured: peft adds it to the loss when the model computes the
    loss from labels, which peftbench's loss never asks for, so the trainer adds it (once per step, inside
    clipping)."""
    tuner = model.base_model
    return tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight * _orthogonality(tuner)


def adalora(model: nn.Module, lr: float, settings: MethodSettings) -> torch.optim.Optimizer:
    """AdamW, with AdaLoRA's rank allocation as an optimizer hook, so the loop stays the same for every method:
    after each step, before the gradients are cleared, update_and_allocate scores and prunes ranks."""
    optimizer = adamw(model, lr, settings)
    tuner = model.base_model

    def allocate_ranks(*_) -> None:
        # The step index from AdamW's own state, so a run resumed from a checkpoint continues the rank schedule.
        tuner.update_and_allocate(max(int(state["step"]) for state in optimizer.state.values()) - 1)

    # The rank allocator's importance scores and the rank pattern so far travel in the optimizer's state dict, so a
    # checkpoint (which saves the optimizer) resumes the allocation exactly where it stopped.
    allocator, config = tuner.rankallocator, tuner.peft_config[tuner.trainable_adapter_name]
    scores = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def save_allocation(_, state_dict: dict) -> dict:
        state_dict["adalora"] = {name: dict(getattr(allocator, name)) for name in scores}
        state_dict["adalora"]["rank_pattern"] = config.rank_pattern
        return state_dict

    def load_allocation(_, state_dict: dict) -> dict:
        state_dict = dict(state_dict)
        saved = state_dict.pop("adalora")
        for name in scores:
            setattr(allocator, name, dict(saved[name]))
        config.rank_pattern = saved["rank_pattern"]
        return state_dict

    optimizer.register_step_post_hook(allocate_ranks)
    optimizer.register_state_dict_post_hook(save_allocation)
    optimizer.register_load_state_dict_pre_hook(load_allocation)
    return optimizer
