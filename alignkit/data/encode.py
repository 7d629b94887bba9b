"""Turn records into token ids (chat templates, prompt masking, truncation) and batches (dynamic padding).

A pair batch holds chosen and rejected sequences concatenated into one [2B, L] tensor, so the policy runs one
forward for both; padding goes only to the longest sequence of the batch."""
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


def _truncate(prompt_ids: list[int], completion_ids: list[int], s: EncodeSettings) -> tuple[list, list, bool]:
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


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, row: dict, s: EncodeSettings) -> dict:
    prompt_text, chosen_text = render_prompt_completion(tokenizer, row["prompt"], row["chosen"], s.use_chat_template)
    _, rejected_text = render_prompt_completion(tokenizer, row["prompt"], row["rejected"], s.use_chat_template)
    prompt_ids = _ids(tokenizer, prompt_text)
    p1, chosen, cut1 = _truncate(prompt_ids, _ids(tokenizer, chosen_text), s)
    p2, rejected, cut2 = _truncate(prompt_ids, _ids(tokenizer, rejected_text), s)
    if not chosen or not rejected:
        raise DataError("a response has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": p1, "chosen_ids": chosen, "rejected_ids": rejected, "truncated": cut1 or cut2}


def encode_sft(tokenizer, row: dict, s: EncodeSettings) -> dict:
    prompt_text, completion_text = render_prompt_completion(tokenizer, row["prompt"], row["completion"],
                                                            s.use_chat_template)
    prompt, completion, cut = _truncate(_ids(tokenizer, prompt_text), _ids(tokenizer, completion_text), s)
    if not completion:
        raise DataError("a completion has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": prompt, "completion_ids": completion, "truncated": cut}


def encode_forget(tokenizer, row: dict, s: EncodeSettings) -> dict:
    """A forget/retain item: QA like SFT (answer tokens are labels), or raw text (all tokens are labels)."""
    if row.get("raw_text"):
        ids = _ids(tokenizer, row["completion"] + (tokenizer.eos_token or ""))
        return {"prompt_ids": [], "completion_ids": ids[:s.max_length], "truncated": len(ids) > s.max_length}
    example = encode_sft(tokenizer, row, s)
    if "idk_completion" in row:  # IdkDPO / answer preservation: the same prompt with an "I don't know" answer
        idk = encode_sft(tokenizer, {**row, "completion": row["idk_completion"]}, s)
        example.update(idk_prompt_ids=idk["prompt_ids"], idk_completion_ids=idk["completion_ids"])
    return example


def encode_unpaired(tokenizer, row: dict, s: EncodeSettings) -> dict:
    return {**encode_sft(tokenizer, row, s), "label": bool(row["label"])}


def encode_reward_pair(tokenizer, row: dict, s: EncodeSettings) -> dict:
    """A pair for a reward model; the spurious attribute's bins are added later (`data/spurious.py`)."""
    return {**encode_pair(tokenizer, row, s), "margin": float(row.get("margin", 0.0))}


ENCODERS = {"pairs": encode_pair, "sft": encode_sft, "unpaired": encode_unpaired, "reward_pairs": encode_reward_pair,
            "forget": encode_forget}


def encode_rows(tokenizer, rows: list[dict], kind: str, s: EncodeSettings, origin: str = "") -> tuple[list, int]:
    """Encode every row; returns the encoded examples and how many were truncated."""
    encoded, truncated = [], 0
    for index, row in enumerate(rows):
        try:
            example = ENCODERS[kind](tokenizer, row, s)
        except DataError as exc:
            raise DataError(f"{origin} row {index}: {exc}") from None
        example["index"] = index
        truncated += example.pop("truncated")
        encoded.append(example)
    return encoded, truncated


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


def _sequences_to_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict:
    ids = [p + c for p, c in zip(prompts, completions)]
    labels = [[IGNORE] * len(p) + c for p, c in zip(prompts, completions)]
    return {"input_ids": _pad(ids, pad_id), "attention_mask": _pad([[1] * len(s) for s in ids], 0),
            "labels": _pad(labels, IGNORE)}


def collate_pairs(examples: list[dict], pad_id: int) -> dict:
    """[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}] in one batch."""
    prompts = [e["prompt_ids"] for e in examples] * 2
    completions = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    batch = _sequences_to_batch(prompts, completions, pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def collate_sft(examples: list[dict], pad_id: int) -> dict:
    batch = _sequences_to_batch([e["prompt_ids"] for e in examples], [e["completion_ids"] for e in examples], pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def collate_forget(examples: list[dict], pad_id: int) -> dict:
    """Forget/retain batches; with IDK answers attached, `batch["idk"]` is the same prompts with those answers."""
    batch = collate_sft(examples, pad_id)
    if "idk_completion_ids" in examples[0]:
        batch["idk"] = collate_sft([{"prompt_ids": e["idk_prompt_ids"], "completion_ids": e["idk_completion_ids"],
                                     "index": e["index"]} for e in examples], pad_id)
    return batch


def collate_unpaired(examples: list[dict], pad_id: int) -> dict:
    batch = collate_sft(examples, pad_id)
    batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


def collate_reward_pairs(examples: list[dict], pad_id: int) -> dict:
    """Like pairs, plus the spurious attribute's bin of every sequence ([2B], chosen then rejected) and margins."""
    batch = collate_pairs(examples, pad_id)
    batch["z_bin"] = torch.tensor([e.get("z_bin_chosen", 0) for e in examples]
                                  + [e.get("z_bin_rejected", 0) for e in examples], dtype=torch.long)
    batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    return batch


COLLATORS = {"pairs": collate_pairs, "sft": collate_sft, "unpaired": collate_unpaired,
             "reward_pairs": collate_reward_pairs, "forget": collate_forget}
