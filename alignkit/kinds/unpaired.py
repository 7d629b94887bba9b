"""`unpaired` records (UnpairedFeedback): prompt, completion (or `response`), label (true/false as in TRL's KTO
format, or "accepted"/"rejected", or 1/0). A preference row becomes two records: chosen accepted, rejected rejected.
Objectives: pmpo (and KTO-style losses); with `distributions` they also get the full log-distributions of policy and
reference at every response position."""
from __future__ import annotations

import torch

from alignkit.data.encode import EncodeSettings, collate_sft, encode_sft
from alignkit.data.records import check_text, is_pair_row
from alignkit.errors import DataError
from alignkit.kinds import RecordKind, pairs, register_kind
from alignkit.models.logps import forward_batch

_LABELS = {True: True, False: False, "accepted": True, "rejected": False, "true": True, "false": False}  # 1 == True


def _check_label(row: dict, where: str) -> bool:
    value = row.get("label")
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, (bool, int, str)) and key in _LABELS:
        return _LABELS[key]
    raise DataError(f"{where}: field `label` must be true/false, 1/0 or accepted/rejected, got {value!r}")


def normalize(row: dict, where: str) -> dict:
    out = dict(row)
    target = "completion" if "completion" in row else "response"
    out.update(prompt=check_text(row, "prompt", where), completion=check_text(row, target, where),
               label=_check_label(row, where))
    if isinstance(out["prompt"], list) != isinstance(out["completion"], list):
        raise DataError(f"{where}: `prompt` and `{target}` must both be strings or both be message lists")
    return out


def pairs_to_unpaired(row: dict) -> list[dict]:
    """One preference row -> an accepted record (chosen) and a rejected record (rejected); other fields are kept."""
    extra = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
    return [{**extra, "completion": row["chosen"], "label": True},
            {**extra, "completion": row["rejected"], "label": False}]


def expand(row: dict, where: str) -> list[dict] | None:
    """Preference pairs feed unpaired objectives as one accepted and one rejected record each."""
    return pairs_to_unpaired(pairs.normalize(row, where)) if is_pair_row(row) else None


def encode(tokenizer, row: dict, s: EncodeSettings) -> dict:
    return {**encode_sft(tokenizer, row, s), "label": bool(row["label"])}


def collate(examples: list[dict], pad_id: int) -> dict:
    batch = collate_sft(examples, pad_id)
    batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


def inputs(objective, module, batch: dict, ctx, reference, retain_batch=None, params=None) -> dict[str, torch.Tensor]:
    policy = forward_batch(module, batch, ctx, vocab=objective.distributions)
    out = {"policy_logps": policy["seq_logps"], "lengths": policy["lengths"].float(), "labels": batch["label"].float()}
    if reference is not None:
        out["ref_logps"] = reference.logps(batch)
    if objective.distributions:
        out["policy_vocab_logps"] = policy["vocab_logps"]
        out["ref_vocab_logps"] = reference.vocab_logps(batch)
        # Which sequence each label position belongs to (rows of the [N, V] tensors are row-major over the batch).
        out["position_sequence"] = policy["token_mask"].nonzero()[:, 0]
    return out


register_kind(RecordKind("unpaired", normalize, encode, collate, inputs, sequences_per_example=1,
                         shape="prompt + completion + label", expand=expand))
