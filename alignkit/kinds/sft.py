"""`sft` records: prompt + completion (TRL's prompt-completion format), `messages` (the last assistant turn is the
target), or a preference row (its `chosen` is the target). Objectives: sft (token-mean NLL)."""
from __future__ import annotations

import torch

from alignkit.data.encode import collate_sft, encode_sft
from alignkit.data.records import check_text, is_messages
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, register_kind
from alignkit.models.logps import forward_batch


def normalize(row: dict, where: str) -> dict:
    out = dict(row)
    if "messages" in row:
        messages = row["messages"]
        if not is_messages(messages) or messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(f"{where}: field `messages` must be a list of {{role, content}} messages ending "
                            "with an assistant turn")
        out.update(prompt=messages[:-1], completion=messages[-1:])
    else:
        target = "completion" if "completion" in row else "chosen"
        out.update(prompt=check_text(row, "prompt", where), completion=check_text(row, target, where))
    return out


def inputs(objective, module, batch: dict, ctx, reference, retain_batch=None, params=None) -> dict[str, torch.Tensor]:
    policy = forward_batch(module, batch, ctx, vocab=objective.distributions)
    return {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float()}


register_kind(RecordKind("sft", normalize, encode_sft, collate_sft, inputs, sequences_per_example=1,
                         shape="prompt + completion, or messages"))
