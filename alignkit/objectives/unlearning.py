"""Unlearning objectives (kind `forget`), registered by their usual names; the math is in `unlearning_losses.py`.

General form (open-unlearning's names): L = forget_weight · L_forget(D_f) + retain_weight · L_retain(D_r).
Retain terms: `nll` (token-mean NLL of retain answers, HF's reduction) or `kl` (KL(π_ref ‖ π) on retain inputs).

alignkit's KL-retain choice (`kl_positions`): the reference codes average the KL over all B·T positions *including
padding*, which makes the value depend on how a batch happens to be padded; alignkit averages over the non-padding
positions of the retain batch (prompt and answer, `tokens`, the default) or over answer tokens only (`labels`).
ME is applied to answer tokens (the closer-look code's ME+GD applies it to question tokens too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alignkit.device import place
from alignkit.objectives.registry import register
from alignkit.objectives.unlearning_losses import (
    answer_preservation_loss,
    catnip_loss,
    idk_dpo_loss,
    kl_batchmean,
    max_entropy_loss,
    npo_loss,
    rmu_control_vector,
    rmu_loss,
    simnpo_loss,
    token_mean_nll,
)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass
class GAParams:
    pass


@dataclass
class RetainParams:
    forget_weight: float = 1.0  # γ
    retain_weight: float = 1.0  # α

    def __post_init__(self):
        if self.forget_weight < 0 or self.retain_weight < 0:
            raise ValueError("forget_weight and retain_weight must be >= 0")


@dataclass
class KLRetainParams(RetainParams):
    kl_positions: Literal["tokens", "labels"] = "tokens"  # see the module docstring


@dataclass
class NPOParams:
    beta: float = 0.1

    def __post_init__(self):
        _positive("beta", self.beta)


@dataclass
class NPORetainParams(NPOParams, RetainParams):
    def __post_init__(self):
        NPOParams.__post_init__(self)
        RetainParams.__post_init__(self)


@dataclass
class NPOKLParams(NPOParams, KLRetainParams):
    def __post_init__(self):
        NPOParams.__post_init__(self)
        KLRetainParams.__post_init__(self)


@dataclass
class SimNPOParams:
    beta: float = 2.5  # the authors' TOFU value
    gamma: float = 0.0  # reward margin (open-unlearning's delta)
    margin_form: Literal["code", "paper"] = "code"  # code: β(NLL/|y| - γ); paper (as recalled): β NLL/|y| - γ

    def __post_init__(self):
        _positive("beta", self.beta)


@dataclass
class SimNPORetainParams(SimNPOParams, RetainParams):
    forget_weight: float = 0.1375  # the authors' TOFU forget05 coefficients
    retain_weight: float = 1.0

    def __post_init__(self):
        SimNPOParams.__post_init__(self)
        RetainParams.__post_init__(self)


@dataclass
class CATNIPParams:
    beta: float = 1.0  # the authors' QA setting (raw text: 6, WMDP: 2)

    def __post_init__(self):
        _positive("beta", self.beta)


@dataclass
class MEParams(RetainParams):
    forget_weight: float = 0.1  # the closer-look ME+GD recipe
    retain_weight: float = 1.0


@dataclass
class IdkDPOParams(RetainParams):
    beta: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        _positive("beta", self.beta)


@dataclass
class IdkAPParams:
    beta: float = 0.1  # of the AP term
    idk_weight: float = 1.0  # NLL(y_idk | x_f)
    ap_weight: float = 1.0

    def __post_init__(self):
        _positive("beta", self.beta)
        if self.idk_weight < 0 or self.ap_weight < 0:
            raise ValueError("idk_weight and ap_weight must be >= 0")


@dataclass
class RMUParams:
    layer: int = 7  # ℓ: decoder layer whose output is steered (0-based, as model.layers[ℓ])
    steering: float = 6.5  # c: norm of the control vector (Zephyr recipe 6.5; code default 20)
    alpha: float = 1200.0  # retain weight (Zephyr recipe 1200; code default 100)
    seed: int = 42  # of the control vector, fixed for the run
    mask: Literal["all", "tokens"] = "all"  # MSE over all positions (original code) or non-padding ones

    def __post_init__(self):
        _positive("steering", self.steering)
        if self.layer < 0 or self.alpha < 0:
            raise ValueError("layer and alpha must be >= 0")


def _forget_nll(inputs: dict) -> torch.Tensor:
    return token_mean_nll(inputs["token_logps"], inputs["token_mask"])


def _retain_nll(inputs: dict) -> torch.Tensor:
    return token_mean_nll(inputs["retain_token_logps"], inputs["retain_token_mask"])


def _retain_kl(inputs: dict, p: KLRetainParams) -> torch.Tensor:
    policy, ref = inputs["retain_vocab_logps"], inputs["ref_retain_vocab_logps"]
    if p.kl_positions == "labels":
        rows = inputs["retain_vocab_is_label"]
        policy, ref = policy[rows], ref[rows]
    return kl_batchmean(policy, ref, max(1, policy.shape[0]))


def _combine(forget: torch.Tensor, retain: torch.Tensor, p: RetainParams, extra: dict) -> tuple:
    return p.forget_weight * forget + p.retain_weight * retain, {**extra, "retain_loss": retain.detach()}


@register("ga", kind="forget", params=GAParams)
def gradient_ascent(inputs: dict, p: GAParams):
    """Gradient ascent: -NLL(D_f), token-mean."""
    nll = _forget_nll(inputs)
    return -nll, {"forget_nll": nll.detach()}


@register("grad_diff", kind="forget", params=RetainParams, needs={"retain"})
def grad_diff(inputs: dict, p: RetainParams):
    """Gradient difference: γ·(-NLL(D_f)) + α·NLL(D_r)."""
    nll = _forget_nll(inputs)
    return _combine(-nll, _retain_nll(inputs), p, {"forget_nll": nll.detach()})


@register("kl_retain", kind="forget", params=KLRetainParams, reference="required", needs={"retain", "retain_vocab"})
def kl_retain(inputs: dict, p: KLRetainParams):
    """GA + KL: γ·(-NLL(D_f)) + α·KL(π_ref ‖ π) on retain inputs."""
    nll = _forget_nll(inputs)
    return _combine(-nll, _retain_kl(inputs, p), p, {"forget_nll": nll.detach()})


def _npo_terms(inputs: dict, p: NPOParams) -> tuple[torch.Tensor, dict]:
    loss = npo_loss(inputs["logps"], inputs["ref_logps"], p.beta)
    log_ratio = (inputs["logps"] - inputs["ref_logps"]).detach().mean()
    return loss, {"npo_loss": loss.detach(), "forget_log_ratio": log_ratio, "forget_nll": _forget_nll(inputs).detach()}


@register("npo", kind="forget", params=NPOParams, reference="required")
def npo(inputs: dict, p: NPOParams):
    """NPO: -(2/β) mean logσ(-β log(π(y|x)/π_ref(y|x))) on the forget set."""
    return _npo_terms(inputs, p)


@register("npo_rt", kind="forget", params=NPORetainParams, reference="required", needs={"retain"})
def npo_rt(inputs: dict, p: NPORetainParams):
    """NPO + retain NLL (NPO+RT, a.k.a. NPO+GD)."""
    loss, metrics = _npo_terms(inputs, p)
    return _combine(loss, _retain_nll(inputs), p, metrics)


@register("npo_kl", kind="forget", params=NPOKLParams, reference="required", needs={"retain", "retain_vocab"})
def npo_kl(inputs: dict, p: NPOKLParams):
    """NPO + KL(π_ref ‖ π) on retain inputs."""
    loss, metrics = _npo_terms(inputs, p)
    return _combine(loss, _retain_kl(inputs, p), p, metrics)


def _simnpo_terms(inputs: dict, p: SimNPOParams) -> tuple[torch.Tensor, dict]:
    loss = simnpo_loss(inputs["logps"], inputs["lengths"], p.beta, p.gamma, p.margin_form)
    return loss, {"simnpo_loss": loss.detach(), "forget_nll": _forget_nll(inputs).detach()}


@register("simnpo", kind="forget", params=SimNPOParams)
def simnpo(inputs: dict, p: SimNPOParams):
    """SimNPO: reference-free, length-normalised NPO."""
    return _simnpo_terms(inputs, p)


@register("simnpo_rt", kind="forget", params=SimNPORetainParams, needs={"retain"})
def simnpo_rt(inputs: dict, p: SimNPORetainParams):
    """SimNPO + retain NLL."""
    loss, metrics = _simnpo_terms(inputs, p)
    return _combine(loss, _retain_nll(inputs), p, metrics)


@register("catnip", kind="forget", params=CATNIPParams)
def catnip(inputs: dict, p: CATNIPParams):
    """CATNIP: token-level NPO calibrated by the model's own confidence; no reference, no retain data."""
    loss = catnip_loss(inputs["token_logps"], inputs["token_mask"], p.beta)
    return loss, {"forget_nll": _forget_nll(inputs).detach()}


@register("catnip_ref", kind="forget", params=CATNIPParams, reference="required", needs={"ref_token_logps"})
def catnip_ref(inputs: dict, p: CATNIPParams):
    """CATNIP's reference variant: token-level NPO against a frozen copy of the starting model (no 2/β)."""
    loss = catnip_loss(inputs["token_logps"], inputs["token_mask"], p.beta, inputs["ref_token_logps"])
    return loss, {"forget_nll": _forget_nll(inputs).detach()}


@register("max_entropy", kind="forget", params=MEParams, needs={"retain", "vocab"})
def max_entropy(inputs: dict, p: MEParams):
    """ME+GD: push next-token distributions on forget answers to uniform, keep retain NLL."""
    me = max_entropy_loss(inputs["vocab_logps"])
    return _combine(me, _retain_nll(inputs), p, {"me_loss": me.detach(), "forget_nll": _forget_nll(inputs).detach()})


@register("idk_dpo", kind="forget", params=IdkDPOParams, reference="required", needs={"retain", "idk"})
def idk_dpo(inputs: dict, p: IdkDPOParams):
    """IdkDPO: DPO with chosen = an "I don't know" answer, rejected = the forget answer (2/β scale), + retain NLL."""
    loss = idk_dpo_loss(inputs["idk_logps"], inputs["logps"], inputs["ref_idk_logps"], inputs["ref_logps"], p.beta)
    margin = ((inputs["idk_logps"] - inputs["ref_idk_logps"]) - (inputs["logps"] - inputs["ref_logps"])).detach()
    return _combine(loss, _retain_nll(inputs), p, {"idk_dpo_loss": loss.detach(), "idk_margin": margin.mean(),
                                                   "forget_nll": _forget_nll(inputs).detach()})


@register("idk_ap", kind="forget", params=IdkAPParams, needs={"retain", "idk", "retain_idk"})
def idk_ap(inputs: dict, p: IdkAPParams):
    """IDK+AP: NLL of an IDK answer on forget questions + answer preservation on retain questions (prefer the true
    retain answer over an IDK answer, reference-free, 1/β; reported as retain_loss)."""
    idk_nll = token_mean_nll(inputs["idk_token_logps"], inputs["idk_token_mask"])
    ap = answer_preservation_loss(-inputs["retain_logps"], -inputs["retain_idk_logps"], p.beta)
    loss = p.idk_weight * idk_nll + p.ap_weight * ap
    return loss, {"idk_nll": idk_nll.detach(), "retain_loss": ap.detach(), "forget_nll": _forget_nll(inputs).detach()}


_CONTROL: dict[tuple, torch.Tensor] = {}


def _control_vector(hidden_size: int, p: RMUParams) -> torch.Tensor:
    key = (hidden_size, p.steering, p.seed)
    if key not in _CONTROL:  # one fixed direction per run (same seed on every worker)
        _CONTROL[key] = rmu_control_vector(hidden_size, p.steering, torch.Generator().manual_seed(p.seed))
    return _CONTROL[key]


@register("rmu", kind="forget", params=RMUParams, reference="required", needs={"retain", "hidden_states"})
def rmu(inputs: dict, p: RMUParams):
    """RMU: steer layer-ℓ activations on forget data to a fixed random vector c·u/‖u‖, keep them on retain data
    (MSE to the frozen model's). Pair it with optim.trainable (the original trains layers ℓ-2..ℓ's MLP down
    projections only)."""
    h_f, h_r = inputs["hidden"], inputs["retain_hidden"]
    control = place(_control_vector(h_f.shape[-1], p), h_f.device).to(h_f.dtype)  # drawn on the host, seeded
    masks = (inputs["attention_mask"], inputs["retain_attention_mask"]) if p.mask == "tokens" else (None, None)
    forget, retain = rmu_loss(h_f, control, h_r, inputs["ref_retain_hidden"].to(h_r.dtype), p.alpha, *masks)
    return forget + p.alpha * retain, {"rmu_forget": forget.detach(), "rmu_retain": retain.detach(),
                                       "retain_loss": (p.alpha * retain).detach(),
                                       "forget_nll": _forget_nll(inputs).detach()}
