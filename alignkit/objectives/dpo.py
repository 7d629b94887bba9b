"""The DPO family as TRL defines it (spec §1): sigmoid (DPO), cdpo (label smoothing), robust, ipo, hinge.

alignkit owns `cdpo` as its own loss type because TRL >= 0.29 ignores `label_smoothing` under `sigmoid`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from alignkit.objectives.registry import register

LossType = Literal["sigmoid", "cdpo", "robust", "ipo", "hinge"]


@dataclass
class DPOParams:
    beta: float = 0.1
    loss_type: LossType = "sigmoid"
    eps: float = 0.0  # assumed label-flip probability for cdpo / robust, in [0, 0.5)
    ipo_length_normalize: bool = True  # TRL's (and the IPO authors') choice; False = the paper's sequence sums
    rpo_alpha: float = 0.0  # adds rpo_alpha * NLL(chosen) (RPO); 0 = off

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps}")
        if self.loss_type in ("sigmoid", "ipo", "hinge") and self.eps:
            raise ValueError(f"eps is used by loss_type cdpo and robust only, not {self.loss_type}")


def dpo_family_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: LossType = "sigmoid",
                    eps: float = 0.0, chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None,
                    ipo_length_normalize: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss averaged over pairs, and TRL's reward metrics (detached). Inputs are sequence log-prob sums."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "cdpo":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        if ipo_length_normalize:
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("ipo with length normalisation needs chosen_lengths and rejected_lengths")
            h = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (h - 1.0 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    reward_chosen, reward_rejected = (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    metrics = {
        "rewards/chosen": reward_chosen.mean(),
        "rewards/rejected": reward_rejected.mean(),
        "rewards/margins": (reward_chosen - reward_rejected).mean(),
        "rewards/accuracies": (reward_chosen > reward_rejected).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return losses.mean(), metrics


@register("dpo", kind="pairs", params=DPOParams, reference="required")
def dpo(inputs: dict[str, torch.Tensor], p: DPOParams):
    """Direct preference optimisation and its variants (`loss_type`: sigmoid, cdpo, robust, ipo, hinge)."""
    loss, metrics = dpo_family_loss(
        inputs["policy_chosen_logps"], inputs["policy_rejected_logps"], inputs["ref_chosen_logps"],
        inputs["ref_rejected_logps"], beta=p.beta, loss_type=p.loss_type, eps=p.eps,
        chosen_lengths=inputs["chosen_lengths"], rejected_lengths=inputs["rejected_lengths"],
        ipo_length_normalize=p.ipo_length_normalize)
    if p.rpo_alpha:
        # RPO: token-mean NLL of the chosen responses over the batch, as TRL computes it.
        nll = -inputs["policy_chosen_logps"].sum() / inputs["chosen_lengths"].sum().clamp(min=1)
        metrics["nll/chosen"] = nll.detach()
        loss = loss + p.rpo_alpha * nll
    return loss, metrics
