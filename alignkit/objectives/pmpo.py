"""PMPO (Abdolmaleki et al., "Preference Optimization as Probabilistic Inference" / "Learning from negative
feedback, or positive feedback or both", spec §4): EM-style learning from unpaired accepted and/or rejected samples.

    L = -alpha * E_accepted[log pi(y|x)] + (1 - alpha) * E_rejected[log pi(y|x)] + beta * KL(pi_ref || pi)

The KL is exact: summed over the vocabulary at every response position, summed over the response, averaged over
sequences. With only rejected samples it is the KL term that keeps the policy from collapsing (beta > 0).
Reconstructed choices (spec marks them so): beta default 0.5; sequence-summed log-probs (`length_normalize` switch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alignkit.objectives.registry import register

Mode = Literal["both", "accepted_only", "rejected_only"]


@dataclass
class PMPOParams:
    alpha: float = 0.5  # weight of accepted vs rejected samples (paper: 0.5)
    beta: float = 0.5  # KL weight [RECONSTRUCTED default; spec suggests a sweep over 0.1, 0.5, 1.0]
    # both: alpha as given; accepted_only = alpha 1 (weighted MLE); rejected_only = alpha 0 (needs beta > 0).
    # The pipeline drops the unused side's records, so the same data runs in every mode.
    mode: Mode = "both"
    length_normalize: bool = False  # divide each sequence log-prob by its response length

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def effective_alpha(self) -> float:
        return {"both": self.alpha, "accepted_only": 1.0, "rejected_only": 0.0}[self.mode]


def exact_kl_per_position(ref_vocab_logps: torch.Tensor, policy_vocab_logps: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi) at each position: sum_v p_ref(v) (log p_ref(v) - log p(v)); inputs [N, V] -> [N]."""
    return (ref_vocab_logps.exp() * (ref_vocab_logps - policy_vocab_logps)).sum(-1)


def pmpo_loss(policy_logps: torch.Tensor, labels: torch.Tensor, kl_per_sequence: torch.Tensor, *, alpha: float,
              beta: float) -> tuple[torch.Tensor, dict]:
    """policy_logps [B] sequence log-probs, labels [B] (1 accepted, 0 rejected), kl_per_sequence [B].
    Each expectation is a mean over its own set within the batch; an absent set contributes nothing."""
    accepted, rejected = labels > 0.5, labels <= 0.5
    loss = beta * kl_per_sequence.mean()
    metrics: dict = {"kl": (kl_per_sequence.detach().mean(), len(labels))}
    if accepted.any():
        lp = policy_logps[accepted]
        loss = loss - alpha * lp.mean()
        metrics["logps/accepted"] = (lp.detach().mean(), int(accepted.sum()))
    if rejected.any():
        lp = policy_logps[rejected]
        loss = loss + (1 - alpha) * lp.mean()
        metrics["logps/rejected"] = (lp.detach().mean(), int(rejected.sum()))
    return loss, metrics


@register("pmpo", kind="unpaired", params=PMPOParams, reference="required", distributions=True,
          metric_names=("kl", "logps/accepted", "logps/rejected"))
def pmpo(inputs: dict[str, torch.Tensor], p: PMPOParams):
    """EM-style preference optimisation from unpaired accepted/rejected samples with an exact KL to the reference."""
    kl_positions = exact_kl_per_position(inputs["ref_vocab_logps"], inputs["policy_vocab_logps"])
    kl_per_sequence = torch.zeros_like(inputs["policy_logps"]).index_add(0, inputs["position_sequence"],
                                                                          kl_positions)
    logps = inputs["policy_logps"]
    if p.length_normalize:
        logps = logps / inputs["lengths"].clamp(min=1)
    return pmpo_loss(logps, inputs["labels"], kl_per_sequence, alpha=p.effective_alpha, beta=p.beta)
