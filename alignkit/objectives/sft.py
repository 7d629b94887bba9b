"""Supervised fine-tuning: token-mean negative log-likelihood of response tokens over the whole batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.objectives.registry import register


@dataclass
class SFTParams:
    pass


def token_mean_nll(token_logps: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over all response tokens of the batch (HF `outputs.loss` reduction), not a mean of per-sequence means."""
    return -(token_logps * token_mask).sum() / token_mask.sum().clamp(min=1)


@register("sft", kind="sft", params=SFTParams)
def sft(inputs: dict[str, torch.Tensor], p: SFTParams):
    """Maximum likelihood on response tokens (prompt tokens masked)."""
    loss = token_mean_nll(inputs["token_logps"], inputs["token_mask"])
    return loss, {"nll": loss.detach()}


@register("fcp", kind="feedback", params=SFTParams)
def fcp(inputs: dict[str, torch.Tensor], p: SFTParams):
    """Feedback-conditional policy (Luo et al. 2025, spec §5.3): maximum likelihood of the response given its
    verbal feedback as a condition (`<EF>{feedback}</EF>{question}`, kinds/feedback.py) — no reward, no reference."""
    loss = token_mean_nll(inputs["token_logps"], inputs["token_mask"])
    return loss, {"nll": loss.detach()}


@register("awr", kind="weighted", params=SFTParams)
def awr(inputs: dict[str, torch.Tensor], p: SFTParams):
    """Advantage-weighted NLL (per-step negatives, spec §7.3): each response token's NLL times its step's weight
    exp(A / β) (kinds/weighted.py), averaged over the batch's response tokens."""
    mask = inputs["token_mask"]
    loss = -(inputs["token_logps"] * inputs["token_weights"] * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"nll": token_mean_nll(inputs["token_logps"], mask).detach(),
                  "mean_weight": ((inputs["token_weights"] * mask).sum() / mask.sum().clamp(min=1)).detach()}
