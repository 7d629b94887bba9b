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


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    local = resolve_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(local, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise AlignkitError(f"cannot load a model from `{path}`: {str(exc).splitlines()[0]}") from None
    return model


def check_model_source(path: str) -> None:
    """Fail early (before workers start) on a model path that is neither built-in, local, nor hub-like."""
    if path.startswith("builtin:"):
        resolve_model_path(path)
        return
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise AlignkitError(f"model directory {p} has no config.json (is it a Hugging Face model directory?)")
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise AlignkitError(f"model path {path} does not exist")
