"""Load policy / reference models and tokenizers from a hub id, a local directory or `builtin:<name>`."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.models.builtin import resolve_builtin

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> str:
    """`builtin:<name>` -> its cached directory (built on first use); anything else unchanged."""
    if path.startswith("builtin:"):
        return str(resolve_builtin(path.removeprefix("builtin:")))
    return path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    except OSError as exc:
        raise AlignkitError(f"cannot load a tokenizer from `{path}`: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_attn_implementation(choice: str = "auto", on_cuda: bool | None = None, dtype: str = "bfloat16") -> str:
    """`model.attn_implementation` for the device this process loads onto: auto = FlashAttention-2 on CUDA when
    flash-attn is installed and the weights are bf16/fp16 (its kernels take no fp32), else SDPA; flash_attention_2
    without CUDA or without the package is an error."""
    import importlib.util

    on_cuda = torch.cuda.is_available() if on_cuda is None else on_cuda
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if choice == "auto":
        return "flash_attention_2" if on_cuda and has_flash and dtype != "float32" else "sdpa"
    if choice == "flash_attention_2" and not (on_cuda and has_flash):
        raise AlignkitError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn "
                            "package (" + ("not installed" if on_cuda else "this process sees no GPU") +
                            "); use auto or sdpa")
    return choice


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, attn: str = "auto",
                   on_cuda: bool | None = None):
    """A causal LM on the CPU (callers put it on its device with alignkit.device.place_model). `on_cuda`: whether
    it will compute on a GPU (default: this process sees one), for the attention kernel."""
    from transformers import AutoModelForCausalLM

    local = resolve_model_path(path)
    attn_implementation = resolve_attn_implementation(attn, on_cuda, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(local, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                     attn_implementation=attn_implementation)
    except OSError as exc:
        raise AlignkitError(f"cannot load a model from `{path}`: {str(exc).splitlines()[0]}") from None
    return model


def load_reward_model(path: str, dtype: str = "float32", trust_remote_code: bool = False, pad_token_id=None,
                      attn: str = "auto", on_cuda: bool | None = None):
    """A causal LM backbone with a one-output linear head (`AutoModelForSequenceClassification`, num_labels=1):
    from a causal LM checkpoint the head starts random; from a saved reward model it is loaded."""
    from transformers import AutoModelForSequenceClassification

    local = resolve_model_path(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            local, num_labels=1, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=resolve_attn_implementation(attn, on_cuda, dtype))
    except OSError as exc:
        raise AlignkitError(f"cannot load a reward model from `{path}`: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # an architecture without a sequence-classification class
        raise AlignkitError(f"`{path}` has no sequence-classification head class for reward models: {exc}") from None
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # HF's own forward finds the scored token through it
    return model


def check_model_source(path: str, build: bool = True) -> None:
    """Fail early (before workers start) on a model path that is neither built-in, local, nor hub-like. `build`:
    a built-in model is built (converted on first use) now; else only its name is checked."""
    if path.startswith("builtin:"):
        from alignkit.models.builtin import BUILTIN_MODELS

        name = path.removeprefix("builtin:")
        if build or name not in BUILTIN_MODELS:
            resolve_model_path(path)
        return
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            if (p / "final" / "config.json").exists():
                raise AlignkitError(f"{p} is a run directory, not a model directory; its trained model is "
                                    f"{p / 'final'}")
            raise AlignkitError(f"model directory {p} has no config.json (is it a Hugging Face model directory?)")
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise AlignkitError(f"model path {path} does not exist")
