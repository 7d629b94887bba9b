"""`reward_pairs` records (RMPair): a preference pair (as `pairs`), plus optional `z_chosen` / `z_rejected` (the
value of a spurious attribute of each response: a number, a string or a bool) and `margin` (a number: how much better
chosen is). The trained model is a reward model; objectives: reward_bt, causal_rm. The spurious attribute's bins are
added to the encoded examples by data/spurious.py."""
from __future__ import annotations

import torch

from alignkit.errors import DataError
from alignkit.kinds import RecordKind, pairs, register_kind
from alignkit.models.logps import forward_rewards


def normalize(row: dict, where: str) -> dict:
    out = pairs.normalize(row, where)
    if ("z_chosen" in row) != ("z_rejected" in row):
        raise DataError(f"{where}: `z_chosen` and `z_rejected` come together (the spurious attribute of each response)")
    for field in ("z_chosen", "z_rejected"):
        if field in row and not isinstance(row[field], (int, float, str, bool)):
            raise DataError(f"{where}: field `{field}` must be a number, a string or a bool, got "
                            f"{type(row[field]).__name__}")
    if "margin" in row and (isinstance(row["margin"], bool) or not isinstance(row["margin"], (int, float))):
        raise DataError(f"{where}: field `margin` must be a number, got {row['margin']!r}")
    return out


def encode(tokenizer, row: dict, s) -> dict:
    """Like pairs, plus the margin and the row's z values when it has them (data.spurious_attribute: field)."""
    z = {k: row[k] for k in ("z_chosen", "z_rejected") if k in row}
    return {**pairs.encode(tokenizer, row, s), "margin": float(row.get("margin", 0.0)), **z}


def collate(examples: list[dict], pad_id: int) -> dict:
    """Like pairs, plus the spurious attribute's bin of every sequence ([2B], chosen then rejected) and margins."""
    batch = pairs.collate(examples, pad_id)
    batch["z_bin"] = torch.tensor([e.get("z_bin_chosen", 0) for e in examples]
                                  + [e.get("z_bin_rejected", 0) for e in examples], dtype=torch.long)
    batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    return batch


def inputs(objective, module, batch: dict, ctx, reference, retain_batch=None, params=None) -> dict[str, torch.Tensor]:
    with ctx:
        rewards, reprs = forward_rewards(module, batch["input_ids"], batch["attention_mask"])
    b = rewards.shape[0] // 2
    return {"chosen_rewards": rewards[:b], "rejected_rewards": rewards[b:], "chosen_repr": reprs[:b],
            "rejected_repr": reprs[b:], "z_bin_chosen": batch["z_bin"][:b], "z_bin_rejected": batch["z_bin"][b:],
            "margins": batch["margin"]}


register_kind(RecordKind("reward_pairs", normalize, encode, collate, inputs, sequences_per_example=2,
                         shape="prompt + chosen + rejected", pipeline="reward", reward_model=True))
