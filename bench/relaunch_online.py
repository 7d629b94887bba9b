"""The relaunch-per-round online loop: the design alignkit's persistent online trainer (pipelines/online.py)
replaced, kept here as the baseline of bench/online.py. Generate with the current policy -> score -> train K steps
in a *new* Ray Train run -> push the new weights to the engines -> repeat. Every round writes <out>/round_<r>/ (its
data, its training run, a
`done.json` with the round's metrics); a loop that dies in round r resumes at round r from round r-1's model.

    results = run_online(recipe, prompt_rows, ExactAnswer(), sft_on_accepted(min_score=1.0),
                         OnlineSettings(rounds=4, prompts_per_round=64, steps_per_round=8,
                                        sampling=SamplingParams(n=4, temperature=0.8, max_tokens=128)), "runs/x")

`recipe` is the training recipe of every round (objective, optimiser, cluster, rollout engines); its model.path is
the starting policy and its data.train is replaced by each round's generated data.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from alignkit.rollout.feedback import Feedback, Provider
from alignkit.rollout.types import Completion, SamplingParams

log = logging.getLogger(__name__)

RowBuilder = Callable[[list[dict], list[Completion], list[Feedback]], list[dict]]


@dataclass
class OnlineSettings:
    rounds: int = 2
    prompts_per_round: int = 16  # drawn without replacement per round from a seeded shuffle of the prompt rows
    steps_per_round: int = 4  # optimizer steps of the training stage per round
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(n=4, temperature=1.0, max_tokens=64))
    seed: int = 0


def sft_on_accepted(min_score: float = 1.0) -> RowBuilder:
    """Rejection sampling (RAFT / STaR style): SFT rows from completions that score at least `min_score`."""
    def build(rows, completions, feedback):
        return [{"prompt": rows[c.prompt_index]["prompt"], "completion": _as_completion(rows[c.prompt_index], c)}
                for c, f in zip(completions, feedback) if f.score is not None and f.score >= min_score]
    return build


def unpaired_by_score(threshold: float = 0.5) -> RowBuilder:
    """Unpaired rows (PMPO, KTO-style objectives): label = score >= threshold; unscored completions are dropped."""
    def build(rows, completions, feedback):
        return [{"prompt": rows[c.prompt_index]["prompt"], "completion": _as_completion(rows[c.prompt_index], c),
                 "label": f.score >= threshold} for c, f in zip(completions, feedback) if f.score is not None]
    return build


def _as_completion(row: dict, c: Completion):
    return [{"role": "assistant", "content": c.text}] if isinstance(row["prompt"], list) else c.text


def _round_prompts(prompt_rows: list[dict], settings: OnlineSettings, r: int) -> list[dict]:
    order = list(range(len(prompt_rows)))
    random.Random(f"online/{settings.seed}").shuffle(order)
    k = settings.prompts_per_round
    picks = [order[(r * k + i) % len(order)] for i in range(k)]
    return [prompt_rows[i] for i in picks]


def _trainer_can_push(pool, recipe) -> bool:
    """Trainer rank 0 pushes straight to the engines when they share a transport: gloo between CPU processes,
    NCCL between GPU workers and GPU engines."""
    c = pool.collective
    return c is not None and (c.device == "cpu") == (not recipe.cluster.use_gpu)


def run_online(recipe, prompt_rows: list[dict], provider: Provider, build_rows: RowBuilder,
               settings: OnlineSettings, out_dir: str | Path) -> list[dict]:
    """Run (or resume) the loop; returns every round's metrics."""
    from alignkit.config.loader import recipe_from_dict, recipe_to_dict
    from alignkit.models.loading import load_causal_lm
    from alignkit.pipelines.preference import train_stage
    from alignkit.rollout.engine import RolloutPool

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, policy = [], recipe.model.path
    for r in range(settings.rounds):
        done = out / f"round_{r}" / "done.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
            policy = results[-1]["model"]
            log.info("online round %d: done before, resuming after it (policy %s)", r, policy)
    start_round = len(results)
    if start_round >= settings.rounds:
        return results
    pool = RolloutPool(policy, recipe.rollout, recipe.model.dtype, seed=settings.seed)
    try:
        for r in range(start_round, settings.rounds):
            round_dir = out / f"round_{r}"
            round_dir.mkdir(parents=True, exist_ok=True)
            rows = _round_prompts(prompt_rows, settings, r)
            t0 = round_start = time.perf_counter()
            sampling = SamplingParams(**{**settings.sampling.__dict__, "seed": (settings.sampling.seed or 0) + r})
            completions = pool.generate([row["prompt"] for row in rows], sampling)
            gen_s = time.perf_counter() - t0
            feedback = provider.batch([rows[c.prompt_index] for c in completions], [c.text for c in completions])
            train_rows = build_rows(rows, completions, feedback)
            (round_dir / "rollouts.jsonl").write_text("".join(
                json.dumps({"prompt_index": c.prompt_index, "text": c.text, "score": f.score, "feedback": f.text,
                            "finish_reason": c.finish_reason}) + "\n" for c, f in zip(completions, feedback)))
            scores = [f.score for f in feedback if f.score is not None]
            metrics = {"round": r, "mean_score": sum(scores) / len(scores) if scores else None,
                       "scored": len(scores), "completions": len(completions), "train_rows": len(train_rows),
                       "generate_s": round(gen_s, 2),
                       "generated_tokens_per_s": round(sum(len(c.token_ids) for c in completions) / gen_s, 1)}
            if not train_rows:
                log.warning("online round %d: no training rows (all completions filtered out); keeping the policy", r)
                metrics.update(model=policy, train_s=0.0, sync_s=0.0)
            else:
                data = round_dir / "train.jsonl"
                data.write_text("".join(json.dumps(x) + "\n" for x in train_rows))
                d = recipe_to_dict(recipe)
                d["model"]["path"] = policy
                d["data"].update(train=str(data), train_split="train", eval=None, train_size=None)
                d["trainer"]["max_steps"] = settings.steps_per_round
                # overwrite: a round without done.json died mid-way and is redone from its start
                d["run"].update(name=f"{recipe.run.name}_round_{r}", output_dir=str(round_dir / "train"),
                                resume=None, storage_path=None, overwrite=True)
                d["eval"]["generate"] = False
                if recipe.rollout.colocate:
                    pool.sleep()  # the engines free their GPU memory for the trainer
                sink = pool.collective if _trainer_can_push(pool, recipe) else None
                if sink is not None and recipe.rollout.colocate:
                    sink = replace(sink, wake_first=True)
                t1 = time.perf_counter()
                trained = train_stage(recipe_from_dict(d, source=f"{recipe.source} (online round {r})"),
                                      weight_sink=sink)
                train_s = time.perf_counter() - t1
                policy = str(trained.out / "final")
                if sink is not None:  # trainer rank 0 pushed the weights at the end of training
                    sync = json.loads((trained.out / "weight_sync.json").read_text())
                else:  # from the exported model, through the object store
                    if recipe.rollout.colocate:
                        pool.wake()
                    sync = pool.update_weights(load_causal_lm(policy, recipe.model.dtype).state_dict())
                metrics.update(model=policy, train_s=round(train_s, 2), sync_s=round(sync["seconds"], 3),
                               sync_via="trainer rank 0" if sink is not None else "object store")
            metrics["round_s"] = round(time.perf_counter() - round_start, 2)
            done = round_dir / "done.json"
            done.write_text(json.dumps(metrics, indent=1))
            results.append(metrics)
            log.info("online round %d: mean score %s over %d completions, %d training rows, generate %.1f s, "
                     "train %.1f s, weight sync %.2f s", r, metrics["mean_score"], len(completions),
                     len(train_rows), gen_s, metrics["train_s"], metrics["sync_s"])
    finally:
        pool.shutdown()
    return results
