"""Per-token and per-sequence log-probabilities of label tokens (spec §0.3), always computed in fp32."""
from __future__ import annotations

import contextlib
import inspect

import torch

from alignkit.device import model_device, place

IGNORE = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B,T,V], labels [B,T] (IGNORE on prompt/pad) -> (log p of each next label token, mask), [B,T-1].

    Position t predicts token t+1. Masked positions hold 0. Gathers before normalising, so the full fp32
    log-softmax over the vocabulary is never materialised: log p = logit - logsumexp(logits)."""
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != IGNORE
    logits = logits.float()
    picked = logits.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return lp * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] summed log-prob of the label tokens, [B] number of label tokens."""
    lp, mask = token_logps(logits, labels)
    return lp.sum(-1), mask.sum(-1)


def _unwrap(module):
    """DeepSpeedEngine / PeftModel -> the Hugging Face model (with LoRA layers, if any, in place)."""
    module = getattr(module, "module", module)
    get_base = getattr(type(module), "get_base_model", None)  # peft.PeftModel
    return module.get_base_model() if get_base is not None else module


def supports_label_only_head(module) -> bool:
    """True when the LM head can be applied to selected positions only: a plain linear head after the backbone."""
    model = _unwrap(module)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    config = getattr(model, "config", None)
    return (isinstance(head, torch.nn.Linear) and hasattr(model, "base_model") and model.base_model is not model
            and not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None))


def forward_token_logps(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                        return_vocab: bool = False):
    """Same result as `token_logps(module(...).logits, labels)`, but the LM head runs only at positions whose next
    token is a label: prompt and padding positions never produce [V]-sized logits (less compute and memory).

    With `return_vocab`, also returns the full log-distribution at those positions, [N, V] in fp32 (N = number of
    label positions, row-major over the batch), for objectives with exact KL terms."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    if supports_label_only_head(module):
        model = _unwrap(module)
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()  # [N, V] for the N label positions
    else:
        logits = module(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][mask].float()
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1) - log_z
    lp = picked.new_zeros(targets.shape).masked_scatter(mask, picked)
    if return_vocab:
        return lp, mask, logits - log_z.unsqueeze(-1)
    return lp, mask


def shared_prompt_token_logps(module, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                               owner: list[int], pad_token_id: int, return_vocab: bool = False):
    """Log-probs of completions that share prompts, each prompt run once: completion k continues prompt owner[k],
    and the prompt's KV cache serves all its completions. Same values as `forward_token_logps` on the
    concatenations (tested), for a fraction of the compute when several answers follow one question (truth ratio's
    paraphrased and perturbed answers, multiple-choice options).

    Prompts are right-padded (no fully-masked query rows), so the cache holds pad slots that the attention mask
    hides; positions are given explicitly. Requires `supports_label_only_head(module)`. Returns (lp [K, Lc], mask
    [K, Lc]) over completion tokens, plus the [N, V] log-distributions at those tokens with `return_vocab`."""
    model = _unwrap(module)
    device = model_device(model)
    n_prompt, prompt_len = len(prompt_ids), max(len(p) for p in prompt_ids)
    ids = torch.full((n_prompt, prompt_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((n_prompt, prompt_len), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, :len(p)], prompt_mask[i, :len(p)] = torch.tensor(p), 1
    lengths = prompt_mask.sum(-1)
    out = model.base_model(**place(dict(input_ids=ids, attention_mask=prompt_mask, use_cache=True,
                                        position_ids=torch.arange(prompt_len).expand(n_prompt, -1)), device))
    rows = torch.tensor(owner, dtype=torch.long)
    on_device_rows = place(rows, device)
    # predicts each completion's first token
    last_hidden = out.last_hidden_state[on_device_rows, place(lengths[rows] - 1, device)]
    cache_arg = "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"
    cache = getattr(out, cache_arg)  # transformers >= 5.2x names it `cache`
    cache.reorder_cache(on_device_rows)  # one cache row per completion

    n, width = len(completion_ids), max(len(c) for c in completion_ids)
    targets = torch.full((n, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.bool)
    for k, c in enumerate(completion_ids):
        targets[k, :len(c)], mask[k, :len(c)] = torch.tensor(c), True
    attention = torch.cat([prompt_mask[rows], mask.long()], dim=1)
    positions = lengths[rows].unsqueeze(1) + torch.arange(width)
    targets, attention, positions, mask = place((targets, attention, positions, mask), device)
    hidden = model.base_model(input_ids=targets, attention_mask=attention, position_ids=positions,
                              **{cache_arg: cache}).last_hidden_state
    hidden = torch.cat([last_hidden.unsqueeze(1), hidden[:, :-1]], dim=1)  # position t predicts token t
    logits = model.get_output_embeddings()(hidden[mask]).float()
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1) - log_z
    lp = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
    if return_vocab:
        return lp, mask, logits - log_z.unsqueeze(-1)
    return lp, mask


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """[B] position of the token a reward model scores: the last attended token that is not the pad token, as
    Hugging Face's *ForSequenceClassification picks it (so a reward exported here scores the same in TRL/HF)."""
    keep = attention_mask.bool()
    if pad_token_id is not None:
        keep = keep & (input_ids != pad_token_id)
    positions = place(torch.arange(input_ids.shape[1]), input_ids.device)
    return (positions * keep).argmax(-1)


def forward_rewards(module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence-classification reward model's scalar rewards [B] (fp32) and the representations [B, d] its head
    reads (the backbone's final hidden state at the scored token)."""
    model = _unwrap(module)
    head = getattr(model, "score", None)
    index = last_token_index(input_ids, attention_mask, model.config.pad_token_id)
    rows = place(torch.arange(input_ids.shape[0]), input_ids.device)
    if isinstance(head, torch.nn.Linear) and model.base_model is not model:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, index]
        return head(hidden).squeeze(-1).float(), hidden
    out = module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.logits.squeeze(-1).float(), out.hidden_states[-1][rows, index]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a (possibly DeepSpeed-wrapped) HF causal LM, for hooks on layer outputs."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected .layers on its decoder)")
    return layers


def forward_batch(module, batch: dict, ctx, vocab: bool = False) -> dict[str, torch.Tensor]:
    """Token and sequence log-probs of a collated batch (input_ids, attention_mask, labels) under `ctx` (autocast);
    with `vocab` also the full log-distributions at the label positions."""
    with ctx:
        out = forward_token_logps(module, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  return_vocab=vocab)
    result = {"token_logps": out[0], "token_mask": out[1], "seq_logps": out[0].sum(-1), "lengths": out[1].sum(-1)}
    if vocab:
        result["vocab_logps"] = out[2]
    return result


@contextlib.contextmanager
def capture_hidden(module, layer: int | None):
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
