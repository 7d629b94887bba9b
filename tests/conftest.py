"""Shared fixtures: an isolated alignkit cache per test session (the built-in models are built once), offline hub."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    from alignkit.models.loading import resolve_model_path

    return resolve_model_path("builtin:tiny-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from alignkit.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)
