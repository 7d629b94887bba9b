"""What an objective receives: the forwards of policy (and reference) on a batch of its record kind, turned into the
named tensors the objective consumes (objectives/registry.py lists them per kind)."""
from __future__ import annotations

import contextlib

import torch

from alignkit.models.logps import decoder_layers, forward_rewards, forward_token_logps

SEQUENCES_PER_EXAMPLE = {"pairs": 2, "sft": 1, "unpaired": 1, "reward_pairs": 2, "forget": 1}
IGNORE = -100


def _forward(module, batch: dict, ctx, vocab: bool = False) -> dict[str, torch.Tensor]:
    with ctx:
        out = forward_token_logps(module, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  return_vocab=vocab)
    result = {"token_logps": out[0], "token_mask": out[1], "seq_logps": out[0].sum(-1), "lengths": out[1].sum(-1)}
    if vocab:
        result["vocab_logps"] = out[2]
    return result


@contextlib.contextmanager
def _capture_hidden(module, layer: int | None):
    """Record the output hidden state [B, T, d] of decoder layer `layer` during the forwards inside (a hook, so
    objectives read activations without a model-specific forward)."""
    if layer is None:
        yield None
        return
    seen: list[torch.Tensor] = []
    handle = decoder_layers(module)[layer].register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        yield seen
    finally:
        handle.remove()


def _retain_inputs(objective, module, batch: dict, ctx, reference, layer: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Retain-batch tensors of a `forget` objective. With `retain_vocab`, one forward gives log-distributions at every
    non-padding position (prompt included) and, from the same forward, the answer tokens' log-probs."""
    if "retain_vocab" not in objective.needs:
        with _capture_hidden(module, layer) as hidden:
            r = _forward(module, batch, ctx)
        out = {"retain_token_logps": r["token_logps"], "retain_token_mask": r["token_mask"].float(),
               "retain_logps": r["seq_logps"], "retain_lengths": r["lengths"].float()}
        if hidden is not None:
            out.update(retain_hidden=hidden[-1], retain_attention_mask=batch["attention_mask"],
                       ref_retain_hidden=reference.hidden(batch, layer))
        if "retain_idk" in objective.needs:
            idk = _forward(module, batch["idk"], ctx)
            out.update(retain_idk_logps=idk["seq_logps"], retain_idk_lengths=idk["lengths"].float())
        return out
    every = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)}
    r = _forward(module, every, ctx, vocab=True)
    is_label = batch["labels"][:, 1:] != IGNORE
    token_logps = r["token_logps"] * is_label
    return {"retain_token_logps": token_logps, "retain_token_mask": is_label.float(),
            "retain_logps": token_logps.sum(-1), "retain_lengths": is_label.sum(-1).float(),
            "retain_vocab_logps": r["vocab_logps"], "ref_retain_vocab_logps": reference.vocab_logps(every),
            "retain_vocab_is_label": is_label[r["token_mask"]]}


def _forget_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None,
                   layer: int | None = None) -> dict:
    with _capture_hidden(module, layer) as hidden:
        policy = _forward(module, batch, ctx, vocab="vocab" in objective.needs)
    out = {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float(),
           "logps": policy["seq_logps"], "lengths": policy["lengths"].float()}
    if hidden is not None:
        out.update(hidden=hidden[-1], attention_mask=batch["attention_mask"])
    if "idk" in objective.needs:
        idk = _forward(module, batch["idk"], ctx)
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


def objective_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None = None,
                     params=None) -> dict[str, torch.Tensor]:
    """The tensors `objective` consumes for this batch (see objectives/registry.py for each kind)."""
    kind = objective.kind
    if kind == "forget":
        layer = params.layer if "hidden_states" in objective.needs else None
        return _forget_inputs(objective, module, batch, ctx, reference, retain_batch, layer)
    if kind == "reward_pairs":
        with ctx:
            rewards, reprs = forward_rewards(module, batch["input_ids"], batch["attention_mask"])
        b = rewards.shape[0] // 2
        return {"chosen_rewards": rewards[:b], "rejected_rewards": rewards[b:], "chosen_repr": reprs[:b],
                "rejected_repr": reprs[b:], "z_bin_chosen": batch["z_bin"][:b], "z_bin_rejected": batch["z_bin"][b:],
                "margins": batch["margin"]}
    policy = _forward(module, batch, ctx, vocab=objective.distributions)
    if kind == "sft":
        return {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float()}
    seq, lengths = policy["seq_logps"], policy["lengths"].float()
    ref_seq = reference.logps(batch) if reference is not None else None
    if kind == "pairs":
        b = seq.shape[0] // 2
        out = {"policy_chosen_logps": seq[:b], "policy_rejected_logps": seq[b:],
               "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}
        if ref_seq is not None:
            out.update(ref_chosen_logps=ref_seq[:b], ref_rejected_logps=ref_seq[b:])
        return out
    out = {"policy_logps": seq, "lengths": lengths, "labels": batch["label"].float()}
    if ref_seq is not None:
        out["ref_logps"] = ref_seq
    if objective.distributions:
        out["policy_vocab_logps"] = policy["vocab_logps"]
        out["ref_vocab_logps"] = reference.vocab_logps(batch)
        # Which sequence each label position belongs to (rows of the [N, V] tensors are row-major over the batch).
        out["position_sequence"] = policy["token_mask"].nonzero()[:, 0]
    return out
