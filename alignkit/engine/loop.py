"""The one training loop, for every objective: batches -> forward -> objective -> backward -> step, with gradient
accumulation, reference log-probs, held-out evaluation, metric logging, a progress bar and the final export.

It runs inside each Ray Train worker (`distributed/ray_train.py`), and also directly in one process (tests,
debugging). Batches come from a batch source (engine/sources.py): a fixed dataset in a seeded order, or an online
source that generates, scores and builds the rows of every round with the rollout engines."""
from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.config.schema import Recipe
from alignkit.engine.backends import make_backend
from alignkit.engine.checkpoint import _truncate_metrics, load_state, save_state, saved_references
from alignkit.engine.dist import all_reduce_sum, rank_world
from alignkit.engine.metrics import MetricSums, MetricsWriter, memory_mb_max
from alignkit.engine.reference import LiveReference, PrecomputedReference  # noqa: F401
from alignkit.engine.sources import (  # noqa: F401
    StaticSource,
    sharded_eval_batches,
    stream_indices,
    worker_micro_batches,
)
from alignkit.engine.trackers import Trackers
from alignkit.errors import AlignkitError
from alignkit.kinds import get_kind
from alignkit.models.loading import DTYPES, load_causal_lm, load_reward_model, load_tokenizer
from alignkit.models.lora import adapter_state, apply_lora, merged_state, peft_model_of, scaling_of
from alignkit.objectives import get_objective

log = logging.getLogger(__name__)


def objective_inputs(objective, module, batch: dict, ctx, reference, retain_batch: dict | None = None,
                     params=None) -> dict[str, torch.Tensor]:
    """The tensors `objective` consumes for this batch: its record kind's module builds them (alignkit/kinds/)."""
    return get_kind(objective.kind).inputs(objective, module, batch, ctx, reference, retain_batch, params)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ the loop
@dataclass
class TrainData:
    kind: str
    train: Sequence[dict]  # a list, or EncodedRows (data/encoded_rows.py): the cached training set, read by position
    eval: list[dict]
    pad_id: int
    retain: list[dict] = field(default_factory=list)  # unlearning objectives that need retain data


def batch_maker(kind: str, pad_id: int, place: Callable = lambda batch: batch) -> Callable[[list[dict]], dict]:
    """examples -> a collated batch of `kind` on the model's device (`place`: the backend's device seam)."""
    collate = get_kind(kind).collate
    return lambda examples: place(collate(examples, pad_id))


def retain_batch_for(data: TrainData, count: int, position: int, place: Callable = lambda batch: batch
                     ) -> dict | None:
    """`count` retain examples from position `position` of their own seeded stream (None without retain data), on
    the model's device."""
    if not data.retain:
        return None
    picks = stream_indices(len(data.retain), 7919, position, max(1, count))
    return batch_maker("forget", data.pad_id, place)([data.retain[i] for i in picks])


def evaluate(module, objective, params, data: TrainData, reference_eval, ctx, batch_size: int,
             metric_keys: list[str], place: Callable = lambda batch: batch) -> dict[str, float]:
    """Objective loss and metrics on the held-out set, averaged over examples (every example counted once)."""
    rank, world = rank_world()
    collate = batch_maker(data.kind, data.pad_id, place)
    sums = MetricSums()
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for n, ids in enumerate(sharded_eval_batches(len(data.eval), batch_size, rank, world)):
            batch = collate([data.eval[i] for i in (ids or [0])])
            retain = retain_batch_for(data, len(ids), (n * world + rank) * batch_size, place)
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
    # called on every rank with the step's record after each held-out evaluation (and an online round's end), e.g.
    # to report to Ray Tune (a collective: every rank calls it at the same steps)
    on_evaluation: Callable[[dict], None] | None = None


def _all_finite(loss: torch.Tensor) -> bool:
    """Agreed across workers, so every worker skips or aborts together (no collective left waiting)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], dtype=torch.float64)
    return float(all_reduce_sum(bad)[0]) == 0.0


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
    rank, world = rank_world()
    t, output_dir = recipe.trainer, Path(output_dir)
    objective = get_objective(recipe.objective.name)
    params = objective.make_params(recipe.objective.params)
    seed_everything(recipe.run.seed)
    m = recipe.model
    load = dict(attn=m.attn_implementation, on_cuda=recipe.cluster.use_gpu)
    if model is None:
        model = (load_reward_model(m.path, m.dtype, m.trust_remote_code, load_tokenizer(m.path).pad_token_id, **load)
                 if get_kind(data.kind).reward_model else
                 load_causal_lm(m.path, m.dtype, m.trust_remote_code, **load))
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    freeze_except(model, recipe.optim.trainable)
    if m.lora is not None and peft_model_of(model) is None:  # (a resumed relearn passes a plain model too)
        model = apply_lora(model, m.lora, reward_model=get_kind(data.kind).reward_model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model.lora: r %d, alpha %g on %s: %d trainable weights of %d", m.lora.r, m.lora.alpha,
                 m.lora.target_modules, trainable, sum(p.numel() for p in model.parameters()))
    backend = make_backend(model, recipe)  # the model on its device; every batch follows through backend.place
    collate = batch_maker(data.kind, data.pad_id, backend.place)
    ctx = backend.forward_context()
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    trackers = Trackers(recipe, output_dir, enabled=rank == 0)
    writer = MetricsWriter(output_dir / "metrics.jsonl" if rank == 0 else None, trackers)
    try:
        batch_size = t.micro_batch_size * 2  # the reference pass (no gradients: twice the training micro-batch)
        eval_batch = recipe.eval.batch_size  # the held-out loss pass
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
                ref_module = backend.place_model(load_causal_lm(recipe.reference.path, m.dtype, m.trust_remote_code,
                                                                **load))
            visited = source.visited(t.max_steps, world)
            per_example = get_kind(data.kind).sequences_per_example
            references["train"] = PrecomputedReference.compute(ref_module, data.train, collate, batch_size, ctx,
                                                                per_example, needed=visited, into=saved.get("train")
                                                                ).placed(backend.place)
            if data.eval:
                references["eval"] = PrecomputedReference.compute(ref_module, data.eval, collate, batch_size, ctx,
                                                                   per_example, into=saved.get("eval")
                                                                   ).placed(backend.place)
            log.info("reference log-probs ready for the %d train examples this run visits and %d eval examples "
                     "in %.1f s", len(set(visited)), len(data.eval), time.perf_counter() - start)
            del ref_module  # a separate reference model is not kept beside the policy: precompute's promise
        elif mode == "live":
            vocab = objective.distributions or "retain_vocab" in objective.needs
            if m.lora is not None and not recipe.reference.path:  # the policy with its adapters off: no second model
                references["train"] = references["eval"] = LiveReference.adapters_off(backend.module, ctx, vocab)
            else:
                ref_model = backend.place_model(load_causal_lm(recipe.reference.path or m.path, m.dtype,
                                                               m.trust_remote_code, **load))
                references["train"] = references["eval"] = LiveReference(ref_model, ctx, vocab)

        start_step, tokens_seen = 0, 0
        if hooks.resume_dir is not None:
            start_step, tokens_seen = load_state(backend, Path(hooks.resume_dir), rank)
            source_file = Path(hooks.resume_dir) / "source_state.pt"
            if source_file.exists():
                source.load_state(torch.load(source_file, weights_only=False, map_location="cpu"), backend, start_step)
            if rank == 0:
                _truncate_metrics(output_dir / "metrics.jsonl", start_step)
            log.info("resumed from %s at step %d", hooks.resume_dir, start_step)
            earlier = backend.rebase_lr(recipe.optim.lr)
            if earlier is not None:
                log.info("optim.lr %g replaces the checkpoint's %g (the schedule continues at step %d)",
                         recipe.optim.lr, earlier, start_step)
        reference, reference_eval = references["train"], references["eval"]

        metric_keys = ["loss", *objective.metric_names]
        last_eval: dict[str, float] = {}
        if data.eval and start_step == 0:
            last_eval = evaluate(backend.module, objective, params, data, reference_eval, ctx, eval_batch, metric_keys,
                                 backend.place)
            writer.write({"step": 0, **last_eval})
        if start_step == 0 and hasattr(source, "start_metrics"):  # an online run's held-out curve starts here
            before = source.start_metrics()
            if before:
                writer.write({"step": 0, **before})

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
        latest: dict = {}
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
                retain = retain_batch_for(data, len(ids), position, backend.place)
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
            tokens = float(all_reduce_sum(torch.tensor([float(window_tokens)], dtype=torch.float64))[0])
            tokens_seen += int(tokens)
            elapsed = time.perf_counter() - window_start
            last_train = {f"train/{k}": v for k, v in means.items()}
            record = {"step": step + 1, **last_train, "train/lr": backend.lr(),
                      "train/grad_norm": backend.last_grad_norm, "train/tokens_per_s": tokens / max(elapsed, 1e-9),
                      "train/tokens": tokens_seen, "time/step_s": elapsed}
            record["sys/peak_rss_mb"], record["sys/rss_mb"] = memory_mb_max()
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
                last_eval = evaluate(backend.module, objective, params, data, reference_eval, ctx, eval_batch,
                                     metric_keys, backend.place)
                record.update(last_eval)
            online = hasattr(source, "round_metrics")  # every step of an online run is logged: rounds add them up
            if online or (step + 1) % t.log_every == 0 or is_last or any(k.startswith("eval/") for k in record):
                writer.write(record)
            latest.update(record)  # what a report carries: the latest value of every metric (e.g. the round's score)
            round_end = online and (step + 1) % source.steps_per_round == 0
            if hooks.on_evaluation is not None and (any(k.startswith("eval/") for k in record) or round_end):
                hooks.on_evaluation(dict(latest))
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
    except BaseException:  # a failed run still ends its tracker runs (W&B / MLflow mark them failed)
        trackers.close(failed=True)
        raise
    trackers.close()
    final = export_model(backend, model, recipe, output_dir / "final", rank)
    pushed = hooks.on_final_weights(final) if hooks.on_final_weights is not None and final is not None else {}
    return {**last_train, **last_eval, "train/tokens": tokens_seen, **pushed}


def export_model(backend, model, recipe: Recipe, path: Path, rank: int) -> dict | None:
    """A Hugging Face directory (safetensors) loadable by AutoModelForCausalLM.from_pretrained; rank 0 writes it and
    gets the exported weights back (None on other ranks). With LoRA: the adapters merged into the weights, and the
    adapters alone in `<path>_adapter` (PEFT's format)."""
    state = backend.state_dict_for_export(raw=True)  # collective under ZeRO-3: every rank calls it
    if rank != 0 or state is None:
        return None
    from alignkit.models.loading import load_tokenizer

    dtype = DTYPES[recipe.model.dtype]
    target = model.module if hasattr(model, "module") else model
    peft = peft_model_of(target)
    if peft is not None:
        adapter_dir = path.with_name(path.name + "_adapter")
        peft.save_pretrained(adapter_dir.with_name(adapter_dir.name + ".tmp"), state_dict=adapter_state(state))
        _replace_dir(adapter_dir.with_name(adapter_dir.name + ".tmp"), adapter_dir)
        state, target = merged_state(state, scaling_of(recipe.model.lora)), peft.get_base_model()
    state = {k: v.to(dtype) for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    config = target.config.get_text_config()
    untie = getattr(config, "tie_word_embeddings", False) and _head_trained_apart(target, state)
    if untie:  # loaders that honour a tied config (vLLM skips lm_head.weight) would use the embeddings as the head
        log.warning("the output head was trained apart from the input embeddings it is tied to (LoRA "
                    "modules_to_save): %s saves both, with tie_word_embeddings: false", path.name)
        config.tie_word_embeddings = False
    try:
        target.save_pretrained(tmp, state_dict=dict(state))  # a copy: save_pretrained drops tied weights from it
    finally:
        if untie:
            config.tie_word_embeddings = True
    load_tokenizer(recipe.model.path).save_pretrained(tmp)
    _replace_dir(tmp, path)
    return state


def _head_trained_apart(model, state: dict) -> bool:
    """Whether `state` (the plain model's names) holds an output head that differs from the input embeddings."""
    modules = {id(m): n for n, m in model.named_modules()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    head_key, embed_key = (f"{modules.get(id(m))}.weight" for m in (head, embed))
    if head_key not in state or embed_key not in state:
        return False
    return not torch.equal(state[head_key], state[embed_key])


def _replace_dir(new: Path, path: Path) -> None:
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(new, path)
