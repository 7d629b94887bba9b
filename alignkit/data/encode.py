"""Turn records into token ids (chat templates, prompt masking, truncation) and batches (dynamic padding): the
building blocks every record kind's encoder and collator (alignkit/kinds/) is made of, and the prompt + completion
encoding the engines and evaluations use. Padding goes only to the longest sequence of a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class EncodeSettings:
    max_length: int = 512
    max_prompt_length: int = 256
    truncation_mode: str = "keep_end"
    use_chat_template: bool = True


def render_prompt_completion(tokenizer, prompt, completion, use_chat_template: bool) -> tuple[str, str]:
    """Text of the prompt (with the generation prompt) and of the completion (with end-of-turn/EOS)."""
    if isinstance(prompt, list):
        if not use_chat_template or not getattr(tokenizer, "chat_template", None):
            raise DataError("conversational rows need a tokenizer with a chat template "
                            "(data.chat_template: auto and a chat model)")
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise DataError("the chat template renders the prompt differently with and without the answer; "
                            "cannot mask the prompt")
        return prompt_text, full_text[len(prompt_text):]
    eos = tokenizer.eos_token or ""
    return prompt, completion if completion.endswith(eos) else completion + eos


def render_prompt(tokenizer, prompt, use_chat_template: bool = True) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return prompt


def prompt_token_ids(tokenizer, prompt) -> list[int]:
    """What an engine feeds the model for a prompt: a string or chat messages rendered with the generation prompt,
    or `{"prompt_ids": [...]}` as given — a partial answer to continue, not closed by a template or an EOS."""
    if isinstance(prompt, dict):
        ids = prompt.get("prompt_ids")
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids)):
            raise ValueError("a token-id prompt is {\"prompt_ids\": [non-empty list of ints]}")
        return list(ids)
    return ids_of(tokenizer, render_prompt(tokenizer, prompt))


def continuation_prompt(tokenizer, prompt, prefix: str = "", prefix_ids: list[int] | None = None) -> dict:
    """The prompt (rendered, generation prompt included) followed by the first part of an assistant answer, as token
    ids — `prefix_ids` (the answer's own tokens, prefix_token_ids) or the tokens of `prefix` — so an engine
    continues the answer from exactly there."""
    tail = list(prefix_ids) if prefix_ids is not None else ids_of(tokenizer, prefix) if prefix else []
    return {"prompt_ids": ids_of(tokenizer, render_prompt(tokenizer, prompt)) + tail}


def prefix_token_ids(tokenizer, token_ids: list[int], prefix: str) -> list[int]:
    """The tokens of a generated answer that spell `prefix` (a cut between its steps): the longest run of its own
    token ids whose text is a prefix of `prefix`, plus the tokens of any remainder (a token that spans the cut)."""
    k = 0
    while k < len(token_ids) and prefix.startswith(tokenizer.decode(token_ids[:k + 1])):
        k += 1
    done = tokenizer.decode(token_ids[:k])
    return list(token_ids[:k]) + (ids_of(tokenizer, prefix[len(done):]) if len(done) < len(prefix) else [])


def truncate(prompt_ids: list[int], completion_ids: list[int], s: EncodeSettings) -> tuple[list, list, bool]:
    cut = False
    if len(prompt_ids) > s.max_prompt_length:
        cut = True
        prompt_ids = (prompt_ids[-s.max_prompt_length:] if s.truncation_mode == "keep_end"
                      else prompt_ids[:s.max_prompt_length])
    room = s.max_length - len(prompt_ids)
    if len(completion_ids) > room:
        cut = True
        completion_ids = completion_ids[:room]
    return prompt_ids, completion_ids, cut


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_sft(tokenizer, row: dict, s: EncodeSettings) -> dict:
    prompt_text, completion_text = render_prompt_completion(tokenizer, row["prompt"], row["completion"],
                                                            s.use_chat_template)
    prompt, completion, cut = truncate(ids_of(tokenizer, prompt_text), ids_of(tokenizer, completion_text), s)
    if not completion:
        raise DataError("a completion has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": prompt, "completion_ids": completion, "truncated": cut}


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


def sequences_to_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict:
    ids = [p + c for p, c in zip(prompts, completions)]
    labels = [[IGNORE] * len(p) + c for p, c in zip(prompts, completions)]
    return {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad(labels, IGNORE)}


def collate_sft(examples: list[dict], pad_id: int) -> dict:
    batch = sequences_to_batch([e["prompt_ids"] for e in examples], [e["completion_ids"] for e in examples], pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch
