"""The math of the unlearning objectives (spec §2, §3, §8) as small pure functions of tensors, each checked against
the spec's hand-computed values in tests/objectives/test_unlearning_losses.py.

Scale factors differ on purpose (spec Appendix B.3): NPO, SimNPO and IdkDPO use 2/β, AP uses 1/β, CATNIP none.
Sequence log-probs are sums over answer tokens; "token-mean" means over all supervised tokens of the batch (HF's
`outputs.loss` reduction), not a mean of per-sequence means.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from alignkit.objectives.sft import token_mean_nll  # noqa: F401  (the token-mean NLL, shared with SFT)


def npo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO: -(2/β) mean logσ(-β (log π(y|x) - log π_ref(y|x))), sequence sums [B]."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logps - ref_logps)).mean()


def npo_weight(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO's per-sequence gradient weight relative to gradient ascent, 2σ(βℓ) in (0, 2); 1 at initialisation."""
    return 2.0 * torch.sigmoid(beta * (policy_logps - ref_logps))


def simnpo_loss(policy_logps: torch.Tensor, lengths: torch.Tensor, beta: float = 2.5, gamma: float = 0.0,
                margin_form: Literal["code", "paper"] = "code") -> torch.Tensor:
    """SimNPO (reference-free, length-normalised): -(2/β) mean logσ(β (NLL/|y| - γ)) in the authors' code form;
    the paper form (as recalled) does not multiply γ by β: -(2/β) mean logσ(β NLL/|y| - γ). Same when γ = 0."""
    avg_nll = -policy_logps / lengths.clamp(min=1)
    z = beta * (avg_nll - gamma) if margin_form == "code" else beta * avg_nll - gamma
    return -(2.0 / beta) * F.logsigmoid(z).mean()


def log1m_exp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - p) from log p <= 0, accurate on both sides of p = 1/2 (the CATNIP code's two branches)."""
    log_p = log_p.clamp(max=0.0)
    return torch.where(log_p <= -math.log(2.0), torch.log1p(-log_p.exp()), torch.log(-torch.expm1(log_p)))


def catnip_loss(token_logps: torch.Tensor, token_mask: torch.Tensor, beta: float = 1.0,
                ref_token_logps: torch.Tensor | None = None) -> torch.Tensor:
    """CATNIP: token-level NPO whose reference is the model's own detached probability of *not* producing the
    token: ℓ_t = -logσ(β (log(1 - sg(p_t)) - log p_t)), token-mean over the batch. With `ref_token_logps` it is
    the reference variant, ℓ_t = -logσ(β (log p_ref,t - log p_t)). No 2/β factor."""
    mask = token_mask.bool()
    # Masked positions hold log p = 0 (p = 1, log(1 - p) = -inf): give them a harmless value, then drop them.
    token_logps = torch.where(mask, token_logps.clamp(max=0.0), torch.full_like(token_logps, -1.0))
    # A token the model is certain of has log p == 0 exactly in fp32, so log(1 - p) = -inf and the loss is inf (a
    # memorised forget set makes every batch non-finite). The anchor caps p at 1 - 1e-7 (log(1 - p) >= -16.1): the
    # loss stays finite and its gradient weight tends to β, CATNIP's limit for p -> 1 (the authors' code computes
    # log(1 - p) from the logits, which stays finite the same way).
    anchor = (log1m_exp(token_logps.detach().clamp(max=math.log1p(-1e-7))) if ref_token_logps is None
              else ref_token_logps)
    per_token = torch.where(mask, -F.logsigmoid(beta * (anchor - token_logps)), torch.zeros_like(token_logps))
    return per_token.sum() / mask.sum().clamp(min=1)


def catnip_weight(p: torch.Tensor, beta: float) -> torch.Tensor:
    """∂ℓ/∂log p of CATNIP: β p^β / (p^β + (1-p)^β), a calibrated confidence weight on gradient ascent."""
    return beta * p.pow(beta) / (p.pow(beta) + (1 - p).pow(beta))


def kl_batchmean(policy_vocab_logps: torch.Tensor, ref_vocab_logps: torch.Tensor,
                 num_positions: int | torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π) summed over the vocabulary and the given positions [N, V], divided by `num_positions`
    (B·T for the reference codes' unmasked `batchmean`, or N for the label-masked variant)."""
    kl = (ref_vocab_logps.exp() * (ref_vocab_logps - policy_vocab_logps)).sum()
    return kl / num_positions


def idk_dpo_loss(policy_idk: torch.Tensor, policy_forget: torch.Tensor, ref_idk: torch.Tensor,
                 ref_forget: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """IdkDPO (open-unlearning `DPO`): DPO with chosen = an I-don't-know answer, rejected = the forget answer, and
    open-unlearning's 2/β scale: -(2/β) mean logσ(β h)."""
    h = (policy_idk - ref_idk) - (policy_forget - ref_forget)
    return -(2.0 / beta) * F.logsigmoid(beta * h).mean()


def max_entropy_loss(vocab_logps: torch.Tensor) -> torch.Tensor:
    """ME: mean over the given positions [N, V] of KL(U_V ‖ π(·|s)) = Σ_v (1/V)(log(1/V) - log π(v|s))."""
    vocab = vocab_logps.shape[-1]
    return (-math.log(vocab) - vocab_logps).mean(-1).mean()


def answer_preservation_loss(nll_retain: torch.Tensor, nll_idk: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """AP: -(1/β) mean logσ(β (NLL(y_idk|x_r) - NLL(y_r|x_r))), sequence sums, on retain questions."""
    return -(1.0 / beta) * F.logsigmoid(beta * (nll_idk - nll_retain)).mean()


def rmu_control_vector(hidden_size: int, steering: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """RMU's fixed random direction: uniform [0, 1) entries (not Gaussian), scaled to norm `steering`."""
    u = torch.rand(1, 1, hidden_size, generator=generator)
    return steering * u / u.norm()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over hidden states [B, T, d]: all positions (the original RMU code), or with `mask` [B, T] the mean
    over the hidden dimension, averaged over valid positions (open-unlearning's variant)."""
    if mask is None:
        return F.mse_loss(hidden, target.expand_as(hidden))
    per_position = (hidden - target.expand_as(hidden)).pow(2).mean(-1)
    mask = mask.float()
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def rmu_loss(h_forget: torch.Tensor, control: torch.Tensor, h_retain: torch.Tensor,
             h_retain_frozen: torch.Tensor, alpha: float = 100.0, forget_mask: torch.Tensor | None = None,
             retain_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMU: push layer-ℓ activations on forget data to the control vector, keep them on retain data.
    Returns (forget term, retain term); the loss is forget + alpha * retain."""
    return masked_mse(h_forget, control, forget_mask), masked_mse(h_retain, h_retain_frozen, retain_mask)


def undial_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """UNDIAL's teacher: softmax(z_ref - β onehot(y)), lowering the label token's logit. logits [N, V], labels [N]
    (only supervised positions: open-unlearning's one-hot of -100 would hit the last vocabulary entry)."""
    adjusted = ref_logits.float().clone()
    adjusted.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(labels, -beta, dtype=adjusted.dtype)[:, None])
    return adjusted.softmax(-1)


def undial_loss(policy_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's next-token distribution against UNDIAL's targets, mean over positions."""
    return -(targets * policy_logits.float().log_softmax(-1)).sum(-1).mean()
