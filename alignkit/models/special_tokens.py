"""Special tokens a record kind needs (FCP's `<EF>`, `</EF>`): the model directory with them added to the tokenizer
and the embeddings resized with mean-resizing — new rows drawn from a normal with the mean and covariance of the
existing embeddings (the FCP paper's choice; transformers' `resize_token_embeddings(mean_resizing=True)`), seeded.

The result is an ordinary Hugging Face directory in the alignkit cache, made once per (model, tokens, seed), so the
trainer, the reference, the rollout engines (HF and vLLM) and `final/` all see the same resized vocabulary. A model
that already has the tokens (a `final/` of an FCP run) is used as it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from alignkit.paths import cache_dir, file_lock, files_fingerprint

log = logging.getLogger(__name__)


def missing_tokens(model_path: str, tokens: tuple[str, ...]) -> list[str]:
    from alignkit.models.loading import load_tokenizer

    vocab = load_tokenizer(model_path).get_vocab()
    return [t for t in tokens if t not in vocab]


def with_special_tokens(model_path: str, tokens: tuple[str, ...], seed: int = 0, dtype: str = "float32") -> str:
    """`model_path` itself when its tokenizer has every token; else the cached directory of the model with them
    added (built on first use)."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

    if not tokens or not missing_tokens(model_path, tokens):
        return model_path
    local = Path(resolve_model_path(model_path))
    key = hashlib.sha256(json.dumps([files_fingerprint(local), list(tokens), seed, dtype]).encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{local.name}-tokens-{key}"
    with file_lock(cache_dir() / "locks" / f"{target.name}.lock"):
        if (target / "config.json").exists():
            return str(target)
        import torch

        tokenizer = load_tokenizer(model_path)
        before = len(tokenizer)
        added = tokenizer.add_tokens(list(tokens), special_tokens=True)  # (whole units: never split or merged)
        model = load_causal_lm(model_path, dtype)
        old = model.get_input_embeddings().weight.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if len(tokenizer) > old:
                model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        # Models whose embedding matrix is padded past the tokenizer (Qwen2.5: 151936 rows for ~151665 tokens) put
        # the new ids on untrained padding rows without resizing: give those rows the mean of the tokenizer's
        # rows too (mean-resizing draws from N(mean, 1e-9 cov): the mean, to float precision).
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
        padded = [i for i in ids if i < old]
        if padded:
            with torch.no_grad():
                for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())
                            if e is not None}.values():
                    emb.weight[padded] = emb.weight[:before].mean(0)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("model %s: added %d special token(s) %s with mean-resized embeddings (%d -> %d rows): %s", model_path,
             added, ", ".join(tokens), old, model.get_input_embeddings().weight.shape[0], target)
    return str(target)

