"""Per-token and per-sequence log-probabilities of label tokens (spec §0.3), always computed in fp32."""
from __future__ import annotations

import torch

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
    return getattr(module, "module", module)  # DeepSpeedEngine -> the HF model


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
    lp = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device).masked_scatter(mask, picked)
    if return_vocab:
        return lp, mask, logits - log_z.unsqueeze(-1)
    return lp, mask


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """[B] position of the token a reward model scores: the last attended token that is not the pad token, as
    Hugging Face's *ForSequenceClassification picks it (so a reward exported here scores the same in TRL/HF)."""
    keep = attention_mask.bool()
    if pad_token_id is not None:
        keep = keep & (input_ids != pad_token_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * keep).argmax(-1)


def forward_rewards(module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence-classification reward model's scalar rewards [B] (fp32) and the representations [B, d] its head
    reads (the backbone's final hidden state at the scored token)."""
    model = _unwrap(module)
    head = getattr(model, "score", None)
    index = last_token_index(input_ids, attention_mask, model.config.pad_token_id)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
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
