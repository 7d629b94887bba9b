"""Reference log-probs, by recipe policy (`reference.mode`): computed once before training and kept per example
(`precompute`: no second model in memory while training), or a frozen model run beside the policy (`live`)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from alignkit.device import host
from alignkit.engine.dist import all_reduce_sum, rank_world
from alignkit.engine.sources import sharded_eval_batches
from alignkit.models.logps import capture_hidden, forward_batch
from alignkit.models.lora import adapters_off


class PrecomputedReference:
    """Reference sequence log-probs computed once before training (no second model in memory while training)."""

    def __init__(self, table: torch.Tensor, known: torch.Tensor | None = None):
        self.table = table  # [N examples, sequences per example]
        self.known = known if known is not None else torch.ones(len(table), dtype=torch.bool)

    def logps(self, batch: dict) -> torch.Tensor:
        """[S] for the batch's S sequences, ordered as collated: all first sequences, then all second ones."""
        if not bool(self.known[batch["index"]].all()):
            raise AssertionError("reference log-probs missing for a batch example")
        return self.table[batch["index"]].T.reshape(-1)

    def vocab_logps(self, batch: dict) -> torch.Tensor:
        raise AssertionError("precomputed references hold no distributions; check_recipe prevents this")

    def state(self) -> dict:
        return {"table": host(self.table), "known": host(self.known)}

    def placed(self, place: Callable) -> PrecomputedReference:
        """This table on the model's device (batches index it there)."""
        return PrecomputedReference(place(self.table), place(self.known))

    @classmethod
    def compute(cls, module, examples: list[dict], collate, batch_size: int, ctx, per_example: int,
                needed: list[int] | None = None, into: PrecomputedReference | None = None
                ) -> PrecomputedReference:
        """Fill in the examples in `needed` (default all) that `into` does not know yet, with `module` (the
        reference: the starting policy); a resumed run only computes what its checkpoint lacks."""
        rank, world = rank_world()
        base = into or cls(torch.zeros(len(examples), per_example), torch.zeros(len(examples), dtype=torch.bool))
        needed = sorted(set(needed) if needed is not None else range(len(examples)))
        missing = [i for i in needed if not base.known[i]]
        if not missing:
            return base
        table = torch.zeros(len(examples), per_example, dtype=torch.float64)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            for positions in sharded_eval_batches(len(missing), batch_size, rank, world):
                ids = [missing[p] for p in positions]
                batch = collate([examples[i] for i in (ids or [missing[0]])])
                seq = forward_batch(module, batch, ctx)["seq_logps"]
                if ids:
                    table[ids] = host(seq).double().reshape(per_example, len(ids)).T
        module.train(was_training)
        table = all_reduce_sum(table).float()
        known = host(base.known).clone()
        known[missing] = True
        return cls(torch.where(known[:, None] & ~host(base.known)[:, None], table, host(base.table)), known)


class LiveReference:
    """A frozen copy of the reference model run beside the policy; or, with `adapters_of` (a LoRA run), the policy
    itself with its adapters disabled (no second model in memory)."""

    def __init__(self, model, ctx, vocab: bool = False, adapters_of=None):
        self.model, self.ctx, self.vocab = model, ctx, vocab
        self.adapters_of = adapters_of
        if adapters_of is None:
            model.eval()
            model.config.use_cache = False  # one forward per batch: a KV cache would only take memory
        self._recent: list[tuple[dict, dict]] = []

    @classmethod
    def adapters_off(cls, policy, ctx, vocab: bool = False) -> LiveReference:
        return cls(policy, ctx, vocab, adapters_of=policy)

    @contextlib.contextmanager
    def _frozen(self):
        """No gradients; for the adapters-off reference also no adapters and no dropout (eval mode)."""
        if self.adapters_of is None:
            with torch.no_grad():
                yield
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), adapters_off(self.adapters_of):
                yield
        finally:
            self.model.train(was_training)

    def _outputs(self, batch: dict) -> dict:
        # One reference forward per batch, shared by logps(), token_logps() and vocab_logps(); the last four batches
        # are remembered (a forget batch, its retain batch and their IDK-answer batches).
        for seen, out in self._recent:
            if seen is batch:
                return out
        with self._frozen():
            out = forward_batch(self.model, batch, self.ctx, vocab=self.vocab)
        self._recent = [*self._recent[-3:], (batch, out)]
        return out

    def logps(self, batch: dict) -> torch.Tensor:
        return self._outputs(batch)["seq_logps"]

    def token_logps(self, batch: dict) -> torch.Tensor:
        return self._outputs(batch)["token_logps"]

    def vocab_logps(self, batch: dict) -> torch.Tensor:
        return self._outputs(batch)["vocab_logps"]

    def hidden(self, batch: dict, layer: int) -> torch.Tensor:
        """The frozen model's hidden state after decoder layer `layer` [B, T, d]."""
        with self._frozen(), capture_hidden(self.model, layer) as seen:
            forward_batch(self.model, batch, self.ctx)
        return seen[-1]
