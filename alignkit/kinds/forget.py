"""`forget` records (UnlearnQA / UnlearnText), for forget and retain sets: `question` + `answer` (chat-templated),
or `prompt` + `completion`, or raw `text` (every token is a label). TOFU's extra fields are kept. Objectives: the
unlearning family (objectives/unlearning.py), which may also ask for a retain batch, IDK answers, full
distributions or hidden states (objectives/registry.py NEEDS)."""
from __future__ import annotations

import torch

from alignkit.data.encode import IGNORE, EncodeSettings, collate_sft, encode_sft
from alignkit.data.records import check_text
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, register_kind
from alignkit.models.logps import capture_hidden, forward_batch


def normalize(row: dict, where: str) -> dict:
    out = dict(row)
    if "prompt" in row and ("completion" in row or "messages" not in row):
        out.update(prompt=check_text(row, "prompt", where), completion=check_text(row, "completion", where))
    elif "question" in row:
        # UnlearnQA: the question is a user turn, the answer the assistant turn (rendered with the chat template)
        out.update(prompt=[{"role": "user", "content": check_text(row, "question", where)}],
                   completion=[{"role": "assistant", "content": check_text(row, "answer", where)}])
    elif "text" in row:
        # UnlearnText: every token is a label; no chat template
        out.update(prompt="", completion=check_text(row, "text", where), raw_text=True)
    else:
        raise DataError(f"{where}: a forget/retain row needs `question` + `answer`, `prompt` + `completion`, "
                        "or `text`")
    return out


def encode(tokenizer, row: dict, s: EncodeSettings) -> dict:
    """A forget/retain item: QA like SFT (answer tokens are labels), or raw text (all tokens are labels)."""
    if row.get("raw_text"):
        ids = tokenizer(row["completion"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return {"prompt_ids": [], "completion_ids": ids[:s.max_length], "truncated": len(ids) > s.max_length}
    example = encode_sft(tokenizer, row, s)
    if "idk_completion" in row:  # IdkDPO / answer preservation: the same prompt with an "I don't know" answer
        idk = encode_sft(tokenizer, {**row, "completion": row["idk_completion"]}, s)
        example.update(idk_prompt_ids=idk["prompt_ids"], idk_completion_ids=idk["completion_ids"])
    return example


def collate(examples: list[dict], pad_id: int) -> dict:
    """Forget/retain batches; with IDK answers attached, `batch["idk"]` is the same prompts with those answers."""
    batch = collate_sft(examples, pad_id)
    if "idk_completion_ids" in examples[0]:
        batch["idk"] = collate_sft([{"prompt_ids": e["idk_prompt_ids"], "completion_ids": e["idk_completion_ids"],
                                     "index": e["index"]} for e in examples], pad_id)
    return batch


def _retain_inputs(objective, module, batch: dict, ctx, reference, layer: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Retain-batch tensors of a `forget` objective. With `retain_vocab`, one forward gives log-distributions at every
    non-padding position (prompt included) and, from the same forward, the answer tokens' log-probs."""
    if "retain_vocab" not in objective.needs:
        with capture_hidden(module, layer) as hidden:
            r = forward_batch(module, batch, ctx)
        out = {"retain_token_logps": r["token_logps"], "retain_token_mask": r["token_mask"].float(),
               "retain_logps": r["seq_logps"], "retain_lengths": r["lengths"].float()}
        if hidden is not None:
            out.update(retain_hidden=hidden[-1], retain_attention_mask=batch["attention_mask"],
                       ref_retain_hidden=reference.hidden(batch, layer))
        if "retain_idk" in objective.needs:
            idk = forward_batch(module, batch["idk"], ctx)
            out.update(retain_idk_logps=idk["seq_logps"], retain_idk_lengths=idk["lengths"].float())
        return out
    every = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)}
    r = forward_batch(module, every, ctx, vocab=True)
    is_label = batch["labels"][:, 1:] != IGNORE
    token_logps = r["token_logps"] * is_label
    return {"retain_token_logps": token_logps, "retain_token_mask": is_label.float(),
            "retain_logps": token_logps.sum(-1), "retain_lengths": is_label.sum(-1).float(),
            "retain_vocab_logps": r["vocab_logps"], "ref_retain_vocab_logps": reference.vocab_logps(every),
            "retain_vocab_is_label": is_label[r["token_mask"]]}


def _forget_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None,
                   layer: int | None = None) -> dict:
    with capture_hidden(module, layer) as hidden:
        policy = forward_batch(module, batch, ctx, vocab="vocab" in objective.needs)
    out = {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float(),
           "logps": policy["seq_logps"], "lengths": policy["lengths"].float()}
    if hidden is not None:
        out.update(hidden=hidden[-1], attention_mask=batch["attention_mask"])
    if "idk" in objective.needs:
        idk = forward_batch(module, batch["idk"], ctx)
        out.update(idk_logps=idk["seq_logps"], idk_lengths=idk["lengths"].float(), idk_token_logps=idk["token_logps"],
                   idk_token_mask=idk["token_mask"].float())
        if reference is not None:
            out["ref_idk_logps"] = reference.logps(batch["idk"])
    if "vocab" in objective.needs:
        out["vocab_logps"] = policy["vocab_logps"]
    if reference is not None:
        out["ref_logps"] = reference.logps(batch)
        if "ref_token_logps" in objective.needs:
            out["ref_token_logps"] = reference.token_logps(batch)
    if "retain" in objective.needs:
        out.update(_retain_inputs(objective, module, retain_batch, ctx, reference, layer))
    return out


def inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None = None,
           params=None) -> dict[str, torch.Tensor]:
    layer = params.layer if "hidden_states" in objective.needs else None
    return _forget_inputs(objective, module, batch, ctx, reference, retain_batch, layer)


register_kind(RecordKind("forget", normalize, encode, collate, inputs, sequences_per_example=1,
                         shape="question + answer, prompt + completion, or text", pipeline="unlearn"))
