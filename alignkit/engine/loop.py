"""The one training loop, for every objective: batches -> forward -> objective -> backward -> step, with gradient
accumulation, reference log-probs, held-out evaluation, metric logging, a progress bar and the final export.

It runs inside each Ray Train worker (`distributed/ray_train.py`), and also directly in one process (tests,
debugging). Batches come from a batch source (engine/sources.py): a fixed dataset in a seeded order, or an online
source that generates, scores and builds the rows of every round with the rollout engines."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.config.schema import Recipe
from alignkit.data.encode import COLLATORS
from alignkit.engine.backends import make_backend
from alignkit.engine.sources import StaticSource, rank_world, stream_indices, worker_micro_batches  # noqa: F401
from alignkit.errors import AlignkitError
from alignkit.models.loading import DTYPES, load_causal_lm, load_model_for
from alignkit.models.logps import decoder_layers, forward_rewards, forward_token_logps
from alignkit.objectives import get_objective

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- distributed
_rank_world = rank_world


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _rank_world()[1] > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ data order
# (engine/sources.py: the static and the online batch sources)
def sharded_eval_batches(num_examples: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Every example once across workers; every worker gets the same number of batches (ZeRO-3 forwards are
    collective), padded with empty lists."""
    mine = list(range(rank, num_examples, world))
    n_batches = math.ceil(math.ceil(num_examples / world) / batch_size)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


# -------------------------------------------------------------------------------------------------------- forward
SEQUENCES_PER_EXAMPLE = {"pairs": 2, "sft": 1, "unpaired": 1, "reward_pairs": 2, "forget": 1}
IGNORE = -100


def _forward(module, batch: dict, ctx, vocab: bool = False) -> dict[str, torch.Tensor]:
    with ctx:
        out = forward_token_logps(module, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  return_vocab=vocab)
    result = {"token_logps": out[0], "token_mask": out[1], "seq_logps": out[0].sum(-1), "lengths": out[1].sum(-1)}
    if vocab:
        result["vocab_logps"] = out[2]
    return result


@contextlib.contextmanager
def _capture_hidden(module, layer: int | None):
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


def _retain_inputs(objective, module, batch: dict, ctx, reference, layer: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Retain-batch tensors of a `forget` objective. With `retain_vocab`, one forward gives log-distributions at every
    non-padding position (prompt included) and, from the same forward, the answer tokens' log-probs."""
    if "retain_vocab" not in objective.needs:
        with _capture_hidden(module, layer) as hidden:
            r = _forward(module, batch, ctx)
        out = {"retain_token_logps": r["token_logps"], "retain_token_mask": r["token_mask"].float(),
               "retain_logps": r["seq_logps"], "retain_lengths": r["lengths"].float()}
        if hidden is not None:
            out.update(retain_hidden=hidden[-1], retain_attention_mask=batch["attention_mask"],
                       ref_retain_hidden=reference.hidden(batch, layer))
        if "retain_idk" in objective.needs:
            idk = _forward(module, batch["idk"], ctx)
            out.update(retain_idk_logps=idk["seq_logps"], retain_idk_lengths=idk["lengths"].float())
        return out
    every = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)}
    r = _forward(module, every, ctx, vocab=True)
    is_label = batch["labels"][:, 1:] != IGNORE
    token_logps = r["token_logps"] * is_label
    return {"retain_token_logps": token_logps, "retain_token_mask": is_label.float(),
            "retain_logps": token_logps.sum(-1), "retain_lengths": is_label.sum(-1).float(),
            "retain_vocab_logps": r["vocab_logps"], "ref_retain_vocab_logps": reference.vocab_logps(every),
            "retain_vocab_is_label": is_label[r["token_mask"]]}


def _forget_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None,
                   layer: int | None = None) -> dict:
    with _capture_hidden(module, layer) as hidden:
        policy = _forward(module, batch, ctx, vocab="vocab" in objective.needs)
    out = {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float(),
           "logps": policy["seq_logps"], "lengths": policy["lengths"].float()}
    if hidden is not None:
        out.update(hidden=hidden[-1], attention_mask=batch["attention_mask"])
    if "idk" in objective.needs:
        idk = _forward(module, batch["idk"], ctx)
        out.update(idk_logps=idk["seq_logps"], idk_lengths=idk["lengths"].float(), idk_token_logps=idk["token_logps"],
                   idk_token_mask=idk["token_mask"].float())
        if reference is not None:
            out["ref_idk_logps"] = reference.logps(batch["idk"])
    if "vocab" in objective.needs:
        out["vocab_logps"] = policy["vocab_logps"]
    if reference is not None:
        out["ref_logps"] = reference.logps(batch)
        if "ref_token_logps" in objective.needs:
            out["ref_token_logps"] = reference.token_logps(batch)
    if "retain" in objective.needs:
        out.update(_retain_inputs(objective, module, retain_batch, ctx, reference, layer))
    return out


def objective_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None = None,
                     params=None) -> dict[str, torch.Tensor]:
    """The tensors `objective` consumes for this batch (see objectives/registry.py for each kind)."""
    kind = objective.kind
    if kind == "forget":
        layer = params.layer if "hidden_states" in objective.needs else None
        return _forget_inputs(objective, module, batch, ctx, reference, retain_batch, layer)
    if kind == "reward_pairs":
        with ctx:
            rewards, reprs = forward_rewards(module, batch["input_ids"], batch["attention_mask"])
        b = rewards.shape[0] // 2
        return {"chosen_rewards": rewards[:b], "rejected_rewards": rewards[b:], "chosen_repr": reprs[:b],
                "rejected_repr": reprs[b:], "z_bin_chosen": batch["z_bin"][:b], "z_bin_rejected": batch["z_bin"][b:],
                "margins": batch["margin"]}
    policy = _forward(module, batch, ctx, vocab=objective.distributions)
    if kind == "sft":
        return {"token_logps": policy["token_logps"], "token_mask": policy["token_mask"].float()}
    seq, lengths = policy["seq_logps"], policy["lengths"].float()
    ref_seq = reference.logps(batch) if reference is not None else None
    if kind == "pairs":
        b = seq.shape[0] // 2
        out = {"policy_chosen_logps": seq[:b], "policy_rejected_logps": seq[b:],
               "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}
        if ref_seq is not None:
            out.update(ref_chosen_logps=ref_seq[:b], ref_rejected_logps=ref_seq[b:])
        return out
    out = {"policy_logps": seq, "lengths": lengths, "labels": batch["label"].float()}
    if ref_seq is not None:
        out["ref_logps"] = ref_seq
    if objective.distributions:
        out["policy_vocab_logps"] = policy["vocab_logps"]
        out["ref_vocab_logps"] = reference.vocab_logps(batch)
        # Which sequence each label position belongs to (rows of the [N, V] tensors are row-major over the batch).
        out["position_sequence"] = policy["token_mask"].nonzero()[:, 0]
    return out


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
        return {"table": self.table, "known": self.known}

    @classmethod
    def compute(cls, module, examples: list[dict], collate, batch_size: int, ctx, per_example: int,
                needed: list[int] | None = None, into: PrecomputedReference | None = None
                ) -> PrecomputedReference:
        """Fill in the examples in `needed` (default all) that `into` does not know yet, with `module` (the
        reference: the starting policy); a resumed run only computes what its checkpoint lacks."""
        rank, world = _rank_world()
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
                seq = _forward(module, batch, ctx)["seq_logps"]
                if ids:
                    table[ids] = seq.double().reshape(per_example, len(ids)).T
        module.train(was_training)
        table = _all_reduce_sum(table).float()
        known = base.known.clone()
        known[missing] = True
        return cls(torch.where(known[:, None] & ~base.known[:, None], table, base.table), known)


class LiveReference:
    """A frozen copy of the reference model run beside the policy."""

    def __init__(self, model, ctx, vocab: bool = False):
        self.model, self.ctx, self.vocab = model.eval(), ctx, vocab
        self._recent: list[tuple[dict, dict]] = []

    def _outputs(self, batch: dict) -> dict:
        # One reference forward per batch, shared by logps(), token_logps() and vocab_logps(); the last four batches
        # are remembered (a forget batch, its retain batch and their IDK-answer batches).
        for seen, out in self._recent:
            if seen is batch:
                return out
        with torch.no_grad():
            out = _forward(self.model, batch, self.ctx, vocab=self.vocab)
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
        with torch.no_grad(), _capture_hidden(self.model, layer) as seen:
            _forward(self.model, batch, self.ctx)
        return seen[-1]


# ------------------------------------------------------------------------------------------------------ metrics
class MetricsWriter:
    """Rank 0 appends one JSON object per line to metrics.jsonl."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class MetricSums:
    """Weighted sums of metrics, reduced across workers. An objective may return a metric as a tensor (weight 1 per
    batch) or as (tensor, weight), e.g. a mean over the accepted samples of a batch with weight = their count; a
    metric absent from a batch simply adds no weight. Every worker must know every key before the reduction, so the
    keys come from the objective's declared metric names plus what was seen."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict, scale: float = 1.0) -> None:
        for key, value in metrics.items():
            value, weight = value if isinstance(value, tuple) else (value, 1.0)
            weight = float(weight) * scale
            self.values[key] = self.values.get(key, 0.0) + float(value.detach()) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def mean_across_workers(self, keys: list[str]) -> dict[str, float]:
        keys = sorted(set(keys) | set(self.values))
        t = torch.tensor([self.values.get(k, 0.0) for k in keys] + [self.weights.get(k, 0.0) for k in keys],
                         dtype=torch.float64)
        t = _all_reduce_sum(t)
        n = len(keys)
        return {k: float(t[i] / t[n + i]) for i, k in enumerate(keys) if float(t[n + i]) > 0}


# ------------------------------------------------------------------------------------------------------ the loop
@dataclass
class TrainData:
    kind: str
    train: list[dict]
    eval: list[dict]
    pad_id: int
    retain: list[dict] = field(default_factory=list)  # unlearning objectives that need retain data


def retain_batch_for(data: TrainData, count: int, position: int) -> dict | None:
    """`count` retain examples from position `position` of their own seeded stream (None without retain data)."""
    if not data.retain:
        return None
    picks = stream_indices(len(data.retain), 7919, position, max(1, count))
    return COLLATORS["forget"]([data.retain[i] for i in picks], data.pad_id)


def evaluate(module, objective, params, data: TrainData, reference_eval, ctx, batch_size: int,
             metric_keys: list[str]) -> dict[str, float]:
    """Objective loss and metrics on the held-out set, averaged over examples (every example counted once)."""
    rank, world = _rank_world()
    collate = lambda ex: COLLATORS[data.kind](ex, data.pad_id)  # noqa: E731
    sums = MetricSums()
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for n, ids in enumerate(sharded_eval_batches(len(data.eval), batch_size, rank, world)):
            batch = collate([data.eval[i] for i in (ids or [0])])
            retain = retain_batch_for(data, len(ids), (n * world + rank) * batch_size)
            inputs = objective_inputs(objective, module, batch, ctx, reference_eval, retain, params)
            loss, metrics = objective.loss_fn(inputs, params)
            # Weight by examples; a padding batch (no ids) ran only to keep collective forwards in step.
            sums.add({"loss": loss, **metrics}, scale=len(ids))
    module.train(was_training)
    return {f"eval/{k}": v for k, v in sums.mean_across_workers(metric_keys).items()}


@dataclass
class RunHooks:
    """How a runner (Ray Train, or a test) plugs into the loop without the loop knowing about it."""
    resume_dir: Path | None = None  # a checkpoint directory written by save_state, to continue from
    # (step, metrics, write): called on every rank at checkpoint steps; `write(directory)` saves this rank's state.
    save_checkpoint: Callable[[int, dict, Callable[[Path], None]], None] | None = None
    on_step_end: Callable[[int, int], None] | None = None  # (step, rank), e.g. fault injection in tests
    # called on rank 0 with the final full weights (ZeRO-3 shards gathered), e.g. to push them to rollout engines;
    # what it returns is added to the run's summary
    on_final_weights: Callable[[dict], dict] | None = None
    # where batches come from (engine/sources.py); default: a StaticSource over data.train
    source: object = None


def save_state(backend, directory: Path, step: int, tokens_seen: int, rank: int, references: dict,
               source_state: dict | None = None) -> None:
    """Everything an exact resume needs: model, optimizer and scheduler (via the backend), this rank's RNG states,
    and on rank 0 the step (the data position is derived from it), precomputed reference log-probs and the batch
    source's state (an online run's round and its rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(directory)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
               directory / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save({k: v.state() for k, v in references.items() if isinstance(v, PrecomputedReference)},
                   directory / "reference_logps.pt")
        (directory / "trainer_state.json").write_text(json.dumps({"step": step, "tokens_seen": tokens_seen}))
        if source_state:
            torch.save(source_state, directory / "source_state.pt")


def saved_references(directory: Path) -> dict[str, PrecomputedReference]:
    path = directory / "reference_logps.pt"
    saved = torch.load(path) if path.exists() else {}
    return {k: PrecomputedReference(v["table"], v["known"]) for k, v in saved.items()}


def load_state(backend, directory: Path, rank: int) -> tuple[int, int]:
    state = json.loads((directory / "trainer_state.json").read_text())
    backend.load(directory)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on more workers than wrote the checkpoint
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
    return state["step"], state["tokens_seen"]


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, keep the metric lines up to the checkpoint's step, so the curve continues without duplicates."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= last_step]
        path.write_text("".join(x + "\n" for x in lines))


def _peak_rss_mb_max() -> float:
    """The largest peak resident memory of any worker process so far, in MB (Linux reports ru_maxrss in KB)."""
    import resource

    t = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], dtype=torch.float64)
    if _rank_world()[1] > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t[0])


def _all_finite(loss: torch.Tensor) -> bool:
    """Agreed across workers, so every worker skips or aborts together (no collective left waiting)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], dtype=torch.float64)
    return float(_all_reduce_sum(bad)[0]) == 0.0


def freeze_except(model, patterns: list[str]) -> None:
    """With `optim.trainable` (regexes over parameter names), only matching parameters train (RMU trains three MLP
    projections); the optimizer only sees parameters that require gradients."""
    if not patterns:
        return
    names = [name for name, _ in model.named_parameters()]
    keep = {name for name in names if any(re.search(p, name) for p in patterns)}
    if not keep:
        raise AlignkitError(f"optim.trainable {patterns} matches no parameter of the model (names look like "
                            f"{names[0]!r}, {names[len(names) // 2]!r})")
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    log.info("optim.trainable: %d of %d parameter tensors train (%d weights)", len(keep), len(names),
             sum(p.numel() for n, p in model.named_parameters() if n in keep))


def train(recipe: Recipe, data: TrainData, output_dir: str | Path, model=None, hooks: RunHooks | None = None) -> dict:
    """Train per the recipe; returns the last train and eval metrics. Call on every worker."""
    hooks = hooks or RunHooks()
    rank, world = _rank_world()
    t, output_dir = recipe.trainer, Path(output_dir)
    objective = get_objective(recipe.objective.name)
    params = objective.make_params(recipe.objective.params)
    seed_everything(recipe.run.seed)
    collate = lambda ex: COLLATORS[data.kind](ex, data.pad_id)  # noqa: E731
    if model is None:
        model = load_model_for(data.kind, recipe.model.path, recipe.model.dtype, recipe.model.trust_remote_code)
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    freeze_except(model, recipe.optim.trainable)
    backend = make_backend(model, recipe)
    ctx = backend.forward_context()
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(output_dir / "metrics.jsonl" if rank == 0 else None)
    batch_size = t.micro_batch_size * 2
    source = hooks.source or StaticSource(data.train, recipe.run.seed, t.micro_batch_size, t.grad_accum)

    mode = recipe.reference.mode
    if mode == "auto":  # online rows do not exist before training: their reference runs live
        live = objective.live_reference or recipe.online.rounds > 0
        mode = ("live" if live else "precompute") if objective.reference == "required" else "none"
    references: dict = {"train": None, "eval": None}
    start = time.perf_counter()
    if mode == "precompute":
        # The reference is the starting policy (or reference.path), so this runs before any update and before a
        # checkpoint is loaded; a resumed run computes only what its checkpoint's tables lack (e.g. more steps).
        saved = saved_references(Path(hooks.resume_dir)) if hooks.resume_dir is not None else {}
        ref_module = backend.module
        if recipe.reference.path:
            ref_module = load_causal_lm(recipe.reference.path, recipe.model.dtype, recipe.model.trust_remote_code)
        visited = source.visited(t.max_steps, world)
        per_example = SEQUENCES_PER_EXAMPLE[data.kind]
        references["train"] = PrecomputedReference.compute(ref_module, data.train, collate, batch_size, ctx,
                                                            per_example, needed=visited, into=saved.get("train"))
        if data.eval:
            references["eval"] = PrecomputedReference.compute(ref_module, data.eval, collate, batch_size, ctx,
                                                               per_example, into=saved.get("eval"))
        log.info("reference log-probs ready for the %d train examples this run visits and %d eval examples "
                 "in %.1f s", len(set(visited)), len(data.eval), time.perf_counter() - start)
    elif mode == "live":
        ref_model = load_causal_lm(recipe.reference.path or recipe.model.path, recipe.model.dtype,
                                   recipe.model.trust_remote_code)
        references["train"] = references["eval"] = LiveReference(
            ref_model, ctx, vocab=objective.distributions or "retain_vocab" in objective.needs)

    start_step, tokens_seen = 0, 0
    if hooks.resume_dir is not None:
        start_step, tokens_seen = load_state(backend, Path(hooks.resume_dir), rank)
        source_file = Path(hooks.resume_dir) / "source_state.pt"
        if source_file.exists():
            source.load_state(torch.load(source_file, weights_only=False), backend)
        if rank == 0:
            _truncate_metrics(output_dir / "metrics.jsonl", start_step)
        log.info("resumed from %s at step %d", hooks.resume_dir, start_step)
    reference, reference_eval = references["train"], references["eval"]

    metric_keys = ["loss", *objective.metric_names]
    last_eval: dict[str, float] = {}
    if data.eval and start_step == 0:
        last_eval = evaluate(backend.module, objective, params, data, reference_eval, ctx, batch_size, metric_keys)
        writer.write({"step": 0, **last_eval})

    def checkpoint(step: int, metrics: dict) -> None:
        if hooks.save_checkpoint is not None:
            hooks.save_checkpoint(step, metrics, lambda d: save_state(backend, Path(d), step, tokens_seen, rank,
                                                                      references, source.state()))

    progress = None
    if rank == 0 and t.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.max_steps, initial=start_step, desc=f"train {recipe.run.name}", unit="step",
                        dynamic_ncols=True)
    last_train: dict[str, float] = {}
    skipped = 0
    window_start = loop_start = time.perf_counter()
    window_tokens = 0
    for step in range(start_step, t.max_steps):
        sums = MetricSums()
        fetched = time.perf_counter()
        micro_batches = source.micro_batches(step, rank, world)  # [] = nothing to train on (an empty online round)
        window_start += time.perf_counter() - fetched  # an online round's generation is not step time
        for m, examples in enumerate(micro_batches):
            ids = [e["index"] for e in examples]
            batch = collate(examples)
            # retain examples follow their own stream, at the same position as this worker's forget examples
            position = ((step * t.grad_accum + m) * world + rank) * t.micro_batch_size
            retain = retain_batch_for(data, len(ids), position)
            inputs = objective_inputs(objective, backend.module, batch, ctx, reference, retain, params)
            loss, metrics = objective.loss_fn(inputs, params)
            if not _all_finite(loss):
                where = f"non-finite loss at step {step + 1} (this worker's examples: {ids}, worker {rank})"
                if t.on_nonfinite == "abort":
                    if step > start_step:  # the state before this step, unless it is already in a checkpoint
                        checkpoint(step, {"step": step, **last_train, **last_eval})
                    raise AlignkitError(f"{where}; stopped (trainer.on_nonfinite: abort). Lower optim.lr or check "
                                        "the data; trainer.on_nonfinite: skip skips such batches")
                skipped += 1
                log.warning("%s; skipped (trainer.on_nonfinite: skip)", where)
                backend.skip_micro_batch()
                continue
            backend.backward(loss)
            backend.step()
            sums.add({"loss": loss, **metrics})
            window_tokens += int(batch["attention_mask"].sum())
        means = sums.mean_across_workers(metric_keys)
        tokens = float(_all_reduce_sum(torch.tensor([float(window_tokens)], dtype=torch.float64))[0])
        tokens_seen += int(tokens)
        elapsed = time.perf_counter() - window_start
        last_train = {f"train/{k}": v for k, v in means.items()}
        record = {"step": step + 1, **last_train, "train/lr": backend.lr(), "train/grad_norm": backend.last_grad_norm,
                  "train/tokens_per_s": tokens / max(elapsed, 1e-9), "train/tokens": tokens_seen,
                  "time/step_s": elapsed, "sys/peak_rss_mb": _peak_rss_mb_max()}
        if not micro_batches:
            record["train/skipped_step"] = 1
        if hasattr(source, "round_metrics"):  # an online round: generation, scoring and row statistics
            record.update(source.round_metrics())
            record.update(source.after_step(step + 1, backend))
        record["time/elapsed_s"] = time.perf_counter() - loop_start  # after the push: round walls add up
        if skipped:
            record["train/skipped_batches"] = skipped
        is_last = step + 1 == t.max_steps
        if data.eval and (is_last or (t.eval_every and (step + 1) % t.eval_every == 0)):
            last_eval = evaluate(backend.module, objective, params, data, reference_eval, ctx, batch_size, metric_keys)
            record.update(last_eval)
        if (step + 1) % t.log_every == 0 or is_last or any(k.startswith(("eval/", "online/")) for k in record):
            writer.write(record)
        if t.checkpoint_every and ((step + 1) % t.checkpoint_every == 0 or is_last):
            checkpoint(step + 1, {**record, **last_eval})
        if t.export_every and (step + 1) % t.export_every == 0 and not is_last:
            # a loadable model of this step (e.g. to evaluate a method along its training); the last is `final`
            export_model(backend, model, recipe, output_dir / f"step_{step + 1}", rank)
        if hooks.on_step_end is not None:
            hooks.on_step_end(step + 1, rank)
        window_start, window_tokens = time.perf_counter(), 0  # after eval/logging: step time is training only
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", refresh=False)
    if progress is not None:
        progress.close()
    final = export_model(backend, model, recipe, output_dir / "final", rank)
    pushed = hooks.on_final_weights(final) if hooks.on_final_weights is not None and final is not None else {}
    return {**last_train, **last_eval, "train/tokens": tokens_seen, **pushed}


def export_model(backend, model, recipe: Recipe, path: Path, rank: int) -> dict | None:
    """A Hugging Face directory (safetensors) loadable by AutoModelForCausalLM.from_pretrained; rank 0 writes it and
    gets the exported weights back (None on other ranks)."""
    state = backend.state_dict_for_export()  # collective under ZeRO-3: every rank calls it
    if rank != 0 or state is None:
        return None
    from alignkit.models.loading import load_tokenizer

    dtype = DTYPES[recipe.model.dtype]
    state = {k: v.to(dtype) for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    target = model.module if hasattr(model, "module") else model
    target.save_pretrained(tmp, state_dict=dict(state))  # a copy: save_pretrained drops tied weights from it
    load_tokenizer(recipe.model.path).save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return state
