"""Behavioural evaluation: greedy generations on held-out prompts, scored by the dataset's checker (for built-in
data) so a report shows what the model now does, not only its loss."""
from __future__ import annotations

import logging
import time

import torch

from alignkit.data.encode import render_prompt
from alignkit.device import host, place, place_model, work_device

log = logging.getLogger(__name__)


def generate_greedy(model_path: str, prompts: list, max_new_tokens: int, batch_size: int,
                    dtype: str = "float32") -> tuple[list[str], float]:
    """Completions (special tokens stripped) and generated tokens per second."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"
    device = work_device()  # the GPU the evaluation task reserved, else the CPU
    model = place_model(load_causal_lm(model_path, dtype, on_cuda=device.type == "cuda").eval(), device)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    completions: list[str] = []
    generated, start = 0, time.perf_counter()
    for i in range(0, len(texts), batch_size):
        enc = place(dict(tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=False)), device)
        with torch.no_grad():
            out = host(model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id))
        new = out[:, enc["input_ids"].shape[1]:]
        generated += int((new != tokenizer.pad_token_id).sum())
        completions += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [c.strip() for c in completions], generated / max(time.perf_counter() - start, 1e-9)


def score_generations(rows: list[dict], completions: list[str], scorer) -> dict[str, float]:
    if scorer is None:
        return {}
    totals: dict[str, float] = {}
    for row, completion in zip(rows, completions):
        for key, value in scorer(row, completion).items():
            totals[key] = totals.get(key, 0.0) + value
    return {f"gen/{k}": v / len(rows) for k, v in totals.items()}


def behaviour_eval(model_path: str, rows: list[dict], scorer, max_new_tokens: int, batch_size: int,
                   dtype: str = "float32", threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    completions, tokens_per_s = generate_greedy(model_path, [r["prompt"] for r in rows], max_new_tokens, batch_size,
                                                dtype)
    return {"metrics": score_generations(rows, completions, scorer), "completions": completions,
            "tokens_per_s": tokens_per_s}
