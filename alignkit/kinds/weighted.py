"""`weighted` records: a prompt and a response given as steps with one weight each — per-token weights for
advantage-weighted training (per-step negatives, spec §7.3: each step's NLL weighted by exp(A / β)). Fields:
`prompt` (a string or messages), `steps` (non-empty strings; the response is their concatenation), `weights` (one
number >= 0 per step). A token takes the weight of the step its first character is in; the end-of-turn tokens
the last step's. Objective: awr."""
from __future__ import annotations

import bisect
import itertools

import torch

from alignkit.data.encode import EncodeSettings, collate_sft, ids_of, render_prompt_completion, truncate
from alignkit.data.records import check_text
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, register_kind
from alignkit.models.logps import forward_batch


def normalize(row: dict, where: str) -> dict:
    prompt = check_text(row, "prompt", where)
    steps, weights = row.get("steps"), row.get("weights")
    if not (isinstance(steps, list) and steps and all(isinstance(s, str) and s for s in steps)):
        raise DataError(f"{where}: field `steps` must be a non-empty list of non-empty strings")
    if not (isinstance(weights, list) and len(weights) == len(steps)
            and all(isinstance(w, (int, float)) and w >= 0 for w in weights)):
        raise DataError(f"{where}: field `weights` must be one number >= 0 per step ({len(steps)} steps)")
    return {**row, "prompt": prompt, "steps": list(steps), "weights": [float(w) for w in weights]}


def encode(tokenizer, row: dict, s: EncodeSettings) -> dict:
    """The response tokenised whole (as the sft kind does); each token takes the weight of the step its first
    character is in (offsets of a fast tokenizer), the end-of-turn tokens the last step's."""
    text = "".join(row["steps"])
    completion = [{"role": "assistant", "content": text}] if isinstance(row["prompt"], list) else text
    prompt_text, completion_text = render_prompt_completion(tokenizer, row["prompt"], completion, s.use_chat_template)
    if not completion_text.startswith(text):
        raise DataError("the chat template changes the response text; cannot weight its steps")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("weighted rows need a fast tokenizer (character offsets of its tokens)")
    enc = tokenizer(completion_text, add_special_tokens=False, return_offsets_mapping=True)
    ends = list(itertools.accumulate(len(step) for step in row["steps"]))
    weights = [row["weights"][min(bisect.bisect_right(ends, start), len(ends) - 1)]
               for start, _ in enc["offset_mapping"]]
    prompt, kept, cut = truncate(ids_of(tokenizer, prompt_text), list(enc["input_ids"]), s)
    if not kept:
        raise DataError("a response has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": prompt, "completion_ids": kept, "token_weights": weights[:len(kept)], "truncated": cut}


def collate(examples: list[dict], pad_id: int) -> dict:
    batch = collate_sft(examples, pad_id)
    width = batch["labels"].shape[1]
    batch["token_weights"] = torch.tensor([[0.0] * len(e["prompt_ids"]) + e["token_weights"]
                                           + [0.0] * (width - len(e["prompt_ids"]) - len(e["token_weights"]))
                                           for e in examples])
    return batch


def inputs(objective, module, batch: dict, ctx, reference, retain_batch=None, params=None) -> dict[str, torch.Tensor]:
    policy = forward_batch(module, batch, ctx)
    return {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float(),
            "token_weights": batch["token_weights"][:, 1:]}  # aligned with the labels' next-token positions


register_kind(RecordKind("weighted", normalize, encode, collate, inputs, sequences_per_example=1,
                         shape="prompt + steps + weights"))
