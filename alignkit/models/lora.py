"""LoRA adapters through PEFT (`model.lora`), for every objective and for reward models.

- `apply_lora` wraps a loaded model; only the adapters (and `modules_to_save`) train.
- The reference of an objective that needs one is the same model with its adapters disabled (`adapters_off`): no
  second copy of the model in memory.
- `merged_state` folds the adapters into the base weights, W + (alpha / r) B A, under Hugging Face's parameter names:
  what `final/` holds and what the rollout engines receive every round. `adapter_state` is what `final_adapter/` holds
  (loadable with `PeftModel.from_pretrained(base, final_adapter)`).
"""
from __future__ import annotations

import contextlib

import torch

from alignkit.errors import AlignkitError

PREFIX = "base_model.model."


def apply_lora(model, cfg, reward_model: bool = False):
    """`model` with LoRA adapters from the recipe's `model.lora` settings (a PeftModel)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, modules_to_save=list(cfg.modules_to_save) or None,
                        task_type=TaskType.SEQ_CLS if reward_model else TaskType.CAUSAL_LM)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules that the model does not have
        raise AlignkitError(f"model.lora: {exc}") from None
    if getattr(model, "is_gradient_checkpointing", False):
        wrapped.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return wrapped


def peft_model_of(module):
    """The PeftModel inside `module` (a DeepSpeed engine or the PeftModel itself), or None without LoRA."""
    from peft import PeftModel

    module = getattr(module, "module", module) if not isinstance(module, PeftModel) else module
    return module if isinstance(module, PeftModel) else None


@contextlib.contextmanager
def adapters_off(module):
    """The base model inside (adapters bypassed): the reference of a LoRA run."""
    peft = peft_model_of(module)
    if peft is None:
        raise AlignkitError("adapters_off needs a model with LoRA adapters")
    with peft.disable_adapter():
        yield


def merged_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A PeftModel state dict (LoRA, one adapter named `default`) -> the plain model's state dict with the adapters
    folded in: W + scaling * B @ A (scaling = alpha / r), computed in fp32 and stored in W's dtype."""
    out = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key or ".original_module." in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key[:-len(".base_layer.weight")]
            a, b = state.get(f"{stem}.lora_A.default.weight"), state.get(f"{stem}.lora_B.default.weight")
            if a is not None and b is not None:
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        name = key.removeprefix(PREFIX).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        out[name] = value
    return out


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable part of a PeftModel state dict: LoRA matrices and modules_to_save."""
    return {k: v for k, v in state.items() if ".lora_" in k or ".modules_to_save." in k}


def scaling_of(cfg) -> float:
    return cfg.alpha / cfg.r
