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
