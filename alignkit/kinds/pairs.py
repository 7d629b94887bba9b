"""`pairs` records (PreferencePair): prompt, chosen, rejected. TRL's standard format (strings) and conversational
format (lists of {role, content}) are both accepted, and so is TRL's implicit-prompt form (chosen and rejected are
whole conversations that share their opening turns), which becomes an explicit prompt. Objectives: the DPO family.
A pair batch holds chosen and rejected sequences concatenated into one [2B, L] tensor (one forward for both)."""
from __future__ import annotations

import torch

from alignkit.data.encode import EncodeSettings, ids_of, render_prompt_completion, sequences_to_batch, truncate
from alignkit.data.records import check_text
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, register_kind
from alignkit.models.logps import forward_batch


def _split_implicit_prompt(chosen: list, rejected: list, where: str) -> tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0 or chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        raise DataError(f"{where}: no `prompt` field, and `chosen`/`rejected` do not share opening turns "
                        "followed by an assistant turn (TRL implicit-prompt format)")
    return chosen[:n], chosen[n:], rejected[n:]


def normalize(row: dict, where: str) -> dict:
    out = dict(row)
    chosen, rejected = check_text(row, "chosen", where), check_text(row, "rejected", where)
    if "prompt" in row and row["prompt"] is not None:
        prompt = check_text(row, "prompt", where)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected, where)
    else:
        raise DataError(f"{where}: missing field `prompt`")
    if isinstance(prompt, list) != isinstance(chosen, list) or isinstance(chosen, list) != isinstance(rejected, list):
        raise DataError(f"{where}: `prompt`, `chosen` and `rejected` must all be strings or all be message "
                        "lists (standard vs conversational format)")
    out.update(prompt=prompt, chosen=chosen, rejected=rejected)
    return out


def encode(tokenizer, row: dict, s: EncodeSettings) -> dict:
    prompt_text, chosen_text = render_prompt_completion(tokenizer, row["prompt"], row["chosen"], s.use_chat_template)
    _, rejected_text = render_prompt_completion(tokenizer, row["prompt"], row["rejected"], s.use_chat_template)
    prompt_ids = ids_of(tokenizer, prompt_text)
    p1, chosen, cut1 = truncate(prompt_ids, ids_of(tokenizer, chosen_text), s)
    p2, rejected, cut2 = truncate(prompt_ids, ids_of(tokenizer, rejected_text), s)
    if not chosen or not rejected:
        raise DataError("a response has no tokens left after truncation; raise data.max_length")
    return {"prompt_ids": p1, "chosen_ids": chosen, "rejected_ids": rejected, "truncated": cut1 or cut2}


def collate(examples: list[dict], pad_id: int) -> dict:
    """[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}] in one batch."""
    prompts = [e["prompt_ids"] for e in examples] * 2
    completions = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    batch = sequences_to_batch(prompts, completions, pad_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def inputs(objective, module, batch: dict, ctx, reference, retain_batch=None, params=None) -> dict[str, torch.Tensor]:
    policy = forward_batch(module, batch, ctx, vocab=objective.distributions)
    seq, lengths = policy["seq_logps"], policy["lengths"].float()
    b = seq.shape[0] // 2
    out = {"policy_chosen_logps": seq[:b], "policy_rejected_logps": seq[b:],
           "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}
    if reference is not None:
        ref_seq = reference.logps(batch)
        out.update(ref_chosen_logps=ref_seq[:b], ref_rejected_logps=ref_seq[b:])
    return out


register_kind(RecordKind("pairs", normalize, encode, collate, inputs, sequences_per_example=2,
                         shape="prompt + chosen + rejected"))
