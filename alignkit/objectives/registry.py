"""The objective registry. An objective is a pure function `(inputs, params) -> (loss, metrics)` over tensors the
engine computes for its record kind, plus a parameters dataclass (the keys allowed under `objective:` in a recipe).

Record kinds and the tensors the engine hands over (all per example, shape [B], float32):
- `pairs`: policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths (label tokens), and when a
  reference is used ref_chosen_logps, ref_rejected_logps.
- `sft`: token_logps [B, T] and token_mask [B, T] (response tokens only).
- `unpaired`: policy_logps, lengths, labels (1 = accepted, 0 = rejected), ref_logps when a reference is used; for
  objectives with `distributions=True` also policy_vocab_logps and ref_vocab_logps [N, V] (the full
  log-distributions at the N response positions of the batch) and position_sequence [N] (their sequence index).
- `reward_pairs` (the model is a reward model, not a policy): chosen_rewards, rejected_rewards [B], chosen_repr,
  rejected_repr [B, d] (the hidden state the reward head reads), z_bin_chosen, z_bin_rejected [B] (the spurious
  attribute's bin, see data/spurious.py), margins [B].
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from alignkit.errors import RecipeError

Metrics = dict[str, torch.Tensor]
LossFn = Callable[[dict[str, torch.Tensor], object], tuple[torch.Tensor, Metrics]]
RecordKind = str  # a record kind registered in alignkit/kinds/ (checked when a recipe is loaded)
# What a `forget` objective may ask the engine for, besides the forget batch's token/sequence log-probs:
NEEDS = frozenset({
    "retain",  # a retain batch beside every forget batch: retain_token_logps, retain_token_mask, retain_logps, ...
    "vocab",  # vocab_logps [N, V]: the policy's log-distribution at the N forget label positions
    "retain_vocab",  # retain_vocab_logps and ref_retain_vocab_logps [M, V] at the retain batch's positions
    "ref_token_logps",  # ref_token_logps [B, T]: the reference's per-token log-probs on the forget batch
    "idk",  # the forget questions with an "I don't know" answer: idk_logps, idk_lengths, idk_token_logps,
    #         idk_token_mask, and ref_idk_logps with a reference (data/idk.py)
    "retain_idk",  # the same on the retain batch: retain_idk_logps, retain_idk_lengths
    "hidden_states",  # hidden [B, T, d] after decoder layer `params.layer` on the forget batch (+ attention_mask);
    #                   with retain: retain_hidden, ref_retain_hidden (the frozen reference), retain_attention_mask
})


@dataclass(frozen=True)
class Objective:
    name: str
    kind: RecordKind
    reference: Literal["required", "none"]
    params_cls: type
    loss_fn: LossFn
    doc: str = ""
    distributions: bool = False  # needs full-vocabulary log-probs of policy and reference (a live reference)
    metric_names: tuple[str, ...] = ()  # metrics that may be absent from some batches (all workers reduce them)
    needs: frozenset = frozenset()  # see NEEDS

    @property
    def live_reference(self) -> bool:
        """Whether the reference must run beside the policy (more than precomputed sequence log-probs)."""
        return self.distributions or bool(self.needs & {"retain_vocab", "ref_token_logps", "idk", "hidden_states"})

    def make_params(self, values: dict):
        return self.params_cls(**values)


_REGISTRY: dict[str, Objective] = {}


def register(name: str, *, kind: RecordKind, params: type, reference: Literal["required", "none"] = "none",
             distributions: bool = False, metric_names: tuple[str, ...] = (), needs: frozenset | set = frozenset()):
    """Decorator: `@register("dpo", kind="pairs", params=DPOParams, reference="required")`."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"params of objective {name} must be a dataclass")
    if set(needs) - NEEDS:
        raise ValueError(f"objective {name}: unknown needs {sorted(set(needs) - NEEDS)}")

    def wrap(fn: LossFn) -> LossFn:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice")
        _REGISTRY[name] = Objective(name, kind, reference, params, fn, (fn.__doc__ or "").strip(), distributions,
                                    metric_names, frozenset(needs))
        return fn

    return wrap


def get_objective(name: str) -> Objective:
    _load_builtin_objectives()
    if name not in _REGISTRY:
        raise RecipeError(f"unknown objective `{name}`; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def objectives_for_kinds(kinds: list[str]) -> list[str]:
    """Names of the objectives that consume records of any of `kinds`."""
    _load_builtin_objectives()
    return sorted(name for name, o in _REGISTRY.items() if o.kind in kinds)


def _load_builtin_objectives() -> None:
    """Import every module of this package once: their @register decorators fill the registry, so a new loss is
    one new file here and nothing else."""
    import importlib
    import pkgutil

    import alignkit.objectives as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("registry", "__init__"):
            importlib.import_module(f"{package.__name__}.{module.name}")
