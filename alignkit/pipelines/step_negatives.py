"""Per-step negatives (Setlur et al. 2024, spec §7): learn from the *critical step* of wrong answers.

Stages, each cached in $ALIGNKIT_CACHE/step_negatives/ by a hash of everything that produces it (a rerun, or a run
of another method on the same problems, reuses them):
1. π_sft: SFT on the gold solutions of the first `steps.sft_problems` problems (or `model.path` as it is).
2. samples: `samples_per_problem` samples of π_sft for each of the next `num_problems` problems (rollout pool),
   checked right or wrong.
3. values: for up to `max_negatives` wrong samples per problem, the steps (newline splitter, or `split_pattern`),
   Q̂ of every step prefix from best-of-K rollouts of π_sft that continue the prefix's token ids — all prefixes of
   all negatives in one generate call (or depth by depth with `early_exit`) — the step advantages, the critical
   step (first minimum of Q̂), and the checker's true first wrong step (for the oracle ablation and MC's hit rate).
4. rows for `steps.method`, trained from π_sft by the preference pipeline (DPO with π_sft as the precomputed
   reference; AWR; SFT), with held-out greedy generations scored by the checker.

    python launch.py recipes/step_negatives/step_dpo_builtin.yaml
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

from alignkit.config.loader import recipe_to_dict
from alignkit.config.schema import Recipe
from alignkit.errors import DataError, RecipeError
from alignkit.paths import cache_dir
from alignkit.rundir import RunDirectory

log = logging.getLogger(__name__)

METHOD_OBJECTIVE = {"step_dpo": "dpo", "full_dpo": "dpo", "step_awr": "awr", "sft": "sft", "rft": "sft"}


# ------------------------------------------------------------------------------------------------ problems
def load_problems(recipe: Recipe) -> tuple[list[dict], list[dict], object]:
    """(π_sft's problems, the synthetic problems, the checker) — the checker maps (row, text) to the data set's
    behavioural metrics, `correct` among them."""
    from alignkit.data.sources import behaviour_scorer, read_rows

    s = recipe.steps
    want = METHOD_OBJECTIVE[s.method]
    if recipe.objective.name != want:
        raise RecipeError(f"`objective.name`: steps.method {s.method} trains objective {want}, not "
                          f"{recipe.objective.name}; set objective.name: {want}")
    rows, origin = read_rows(s.problems, s.split, seed=recipe.data.seed)
    scorer = behaviour_scorer(s.problems)
    if scorer is None or "correct" not in scorer(rows[0], ""):
        raise RecipeError(f"`steps.problems`: {s.problems} has no checker with a `correct` verdict (use a problem set "
                          "with a checker, e.g. builtin:chain_arith)")
    need = s.sft_problems + s.num_problems
    if len(rows) < need:
        raise DataError(f"{origin}: {len(rows)} problems, but steps.sft_problems + steps.num_problems = {need}")
    for index, row in enumerate(rows[:need]):
        if "prompt" not in row or "completion" not in row:
            raise DataError(f"{origin} row {index}: a problem needs `prompt` and `completion` (a gold solution)")
    if s.critical == "oracle" and not s.problems.startswith("builtin:chain_arith"):
        raise RecipeError("`steps.critical: oracle` needs a checker that finds the true first wrong step "
                          "(builtin:chain_arith)")
    return rows[:s.sft_problems], rows[s.sft_problems:need], scorer


def _text(value) -> str:
    return value[-1]["content"] if isinstance(value, list) else value


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _model_key(path: str) -> str:
    from alignkit.models.loading import resolve_model_path
    from alignkit.paths import files_fingerprint

    local = Path(resolve_model_path(path))
    return files_fingerprint(local) if local.exists() else path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    tmp.replace(path)
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------- stage 1
def sft_model(recipe: Recipe, sft_rows: list[dict]) -> str:
    """π_sft: the recipe's model fine-tuned on the gold solutions (cached), or the model itself."""
    from alignkit.pipelines.preference import train_stage

    s = recipe.steps
    if s.sft_problems == 0:
        return recipe.model.path
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in sft_rows]
    data = _write_jsonl(cache_dir() / "step_negatives" / f"sft-data-{_digest(rows)}.jsonl", rows)
    learn = recipe.derive({
        "objective": {"name": "sft"}, "data.train": str(data), "data.train_split": "train", "data.eval": None,
        "data.train_size": None, "optim.lr": s.sft_lr, "optim.scheduler": "constant", "optim.warmup_steps": 0,
        "trainer.max_steps": s.sft_steps, "trainer.num_epochs": None, "trainer.eval_every": 0,
        "trainer.checkpoint_every": 0, "trainer.export_every": 0, "eval.generate": False, "model.lora": None,
        "run.loggers": ["jsonl"], "sweep": {}, "steps": {"problems": ""}, "run.name": "step_negatives_sft",
        "run.output_dir": None, "run.resume": None, "run.storage_path": None, "run.overwrite": True},
        source=f"{recipe.source} (π_sft stage)")
    # the key: everything of the stage's recipe that shapes the weights (not where it runs or logs)
    d = recipe_to_dict(learn)
    key = _digest(_model_key(recipe.model.path), rows, {k: d[k] for k in ("model", "data", "objective", "optim")},
                  {k: v for k, v in d["trainer"].items() if k not in ("progress_bar", "log_every")},
                  d["cluster"]["num_workers"], d["run"]["seed"])
    root = cache_dir() / "step_negatives" / f"sft-{key}"
    if (root / "done.json").exists():
        log.info("step negatives: π_sft cached at %s", root / "final")
        return str(root / "final")
    learn = learn.derive({"run.output_dir": str(root)})
    start = time.perf_counter()
    train_stage(learn)
    (root / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))
    log.info("step negatives: π_sft trained in %.0f s -> %s", time.perf_counter() - start, root / "final")
    return str(root / "final")


# ------------------------------------------------------------------------------------------------- stage 2
def sample_stage(recipe: Recipe, pi_sft: str, problems: list[dict], scorer, pool) -> tuple[list[dict], dict]:
    """`samples_per_problem` samples per problem: {problem, sample, text, token_ids, finish, correct}; and the
    stage's record {seconds (when it ran), path}."""
    from alignkit.rollout.types import SamplingParams

    s = recipe.steps
    key = _digest(_model_key(pi_sft), [r["prompt"] for r in problems], s.samples_per_problem, s.temperature,
                  s.max_new_tokens, recipe.run.seed, _engine_key(recipe))
    path = cache_dir() / "step_negatives" / f"samples-{key}.jsonl"
    if path.exists() and path.with_suffix(".json").exists():
        log.info("step negatives: samples cached at %s", path)
        return _read_jsonl(path), {**json.loads(path.with_suffix(".json").read_text()), "path": str(path)}
    start = time.perf_counter()
    out = pool.generate([r["prompt"] for r in problems], SamplingParams(
        n=s.samples_per_problem, temperature=s.temperature, max_tokens=s.max_new_tokens, seed=recipe.run.seed))
    rows = [{"problem": c.prompt_index, "sample": c.sample_index, "text": c.text, "token_ids": c.token_ids,
             "finish": c.finish_reason, "correct": bool(scorer(problems[c.prompt_index], c.text)["correct"])}
            for c in out]
    seconds = time.perf_counter() - start
    log.info("step negatives: %d samples of %d problems in %.1f s, %.1f%% right", len(rows), len(problems),
             seconds, 100 * sum(r["correct"] for r in rows) / len(rows))
    _write_jsonl(path, rows)
    meta = {"seconds": seconds, "problems": len(problems)}
    path.with_suffix(".json").write_text(json.dumps(meta))  # written last: the stage is complete
    return rows, {**meta, "path": str(path)}


def _engine_key(recipe: Recipe) -> dict:
    """What changes sampled tokens besides the model and the sampling settings: the engine kind, how prompts are
    split across engines (seed + e per engine), the HF engine's chunking (a seed per chunk), the weights' dtype."""
    r = recipe.rollout
    return {"backend": r.backend, "engines": r.num_engines, "batch_size": r.batch_size, "dtype": recipe.model.dtype}



# ------------------------------------------------------------------------------------------------- stage 3
def value_stage(recipe: Recipe, pi_sft: str, problems: list[dict], samples: list[dict], scorer, pool,
                use_cache: bool = True) -> tuple[list[dict], dict]:
    """Q̂ of every step prefix of the chosen negatives: one record per negative with its steps, q0 (the bare
    prompt), qs (after each step), advantages, the MC critical step, the checker's first wrong step.
    `use_cache: False` recomputes (benchmarks of the engines) and leaves the cache as it is."""
    from alignkit.data.encode import continuation_prompt, prefix_token_ids
    from alignkit.models.loading import load_tokenizer
    from alignkit.rollout.steps import advantages, critical_step, has_pit, q_hat, split_steps, step_of_line
    from alignkit.rollout.types import SamplingParams

    s = recipe.steps
    negatives = []
    for index in range(len(problems)):
        # a sample cut off at max_new_tokens is not a finished wrong answer: its last prefix could still be right
        wrong = [x for x in samples if x["problem"] == index and not x["correct"] and x["text"].strip()
                 and (s.keep_truncated or x.get("finish") != "length")]
        negatives += wrong[:s.max_negatives]
    key = _digest(_model_key(pi_sft), [r["prompt"] for r in problems], [(n["problem"], n["text"]) for n in negatives],
                  s.k, s.groups, s.temperature, s.max_new_tokens, s.split_pattern, s.early_exit, s.keep_truncated,
                  recipe.run.seed,
                  _engine_key(recipe))
    path = cache_dir() / "step_negatives" / f"values-{key}.jsonl"
    if use_cache and path.exists() and path.with_suffix(".json").exists():
        log.info("step negatives: step values cached at %s", path)
        rows = _read_jsonl(path)
        return rows, json.loads(path.with_suffix(".json").read_text())
    tokenizer = load_tokenizer(pi_sft)
    n = s.k * s.groups
    sampling = SamplingParams(n=n, temperature=s.temperature, max_tokens=s.max_new_tokens, seed=recipe.run.seed + 1)
    steps = [split_steps(neg["text"], s.split_pattern) for neg in negatives]
    # prefix j of negative i = its first j steps (j = 0: the bare prompt, shared by a problem's negatives), as the
    # sample's own token ids up to that step (not the text re-tokenised)
    prefix_ids: dict[tuple[int, str], list[int]] = {}
    for neg, st in zip(negatives, steps):
        for j in range(len(st)):
            key_j = (neg["problem"], "".join(st[:j]))
            if key_j not in prefix_ids:
                prefix_ids[key_j] = prefix_token_ids(tokenizer, neg.get("token_ids") or [], key_j[1])
    jobs = sorted(prefix_ids)
    wins: dict[tuple[int, str], list[bool]] = {}
    continuations: dict[tuple[int, str], str] = {}  # a successful continuation of each prefix that has one
    start, generated, calls = time.perf_counter(), 0, 0

    def value(todo: list[tuple[int, str]]) -> None:
        nonlocal generated, calls
        prompts = [continuation_prompt(tokenizer, problems[p]["prompt"], prefix_ids=prefix_ids[(p, prefix)])
                   for p, prefix in todo]
        calls += 1
        for c in pool.generate(prompts, sampling):
            p, prefix = todo[c.prompt_index]
            generated += 1
            win = bool(scorer(problems[p], prefix + c.text)["correct"])
            wins.setdefault((p, prefix), []).append(win)
            if win:
                continuations.setdefault((p, prefix), c.text)

    if not s.early_exit:
        value(jobs)  # every prefix of every negative in one call
    else:  # depth by depth; a negative stops at its first hopeless prefix (later ones count as hopeless too)
        alive = list(range(len(negatives)))
        for depth in range(max((len(st) for st in steps), default=0)):
            todo = sorted({(negatives[i]["problem"], "".join(steps[i][:depth])) for i in alive
                           if depth < len(steps[i])} - set(wins))
            if todo:
                value(todo)
            # (the bare prompt is never a reason to stop: an unsolvable problem still gets its first step valued)
            alive = [i for i in alive if depth + 1 < len(steps[i]) and (
                depth == 0 or q_hat(wins[(negatives[i]["problem"], "".join(steps[i][:depth]))], s.k) > 0)]
    seconds = time.perf_counter() - start
    from alignkit.data.chain_arith import check

    records = []
    for neg, st in zip(negatives, steps):
        p = neg["problem"]
        # Q̂ after step i is the value of prefix i+1; the complete negative (every step) is wrong: Q̂ = 0
        qs = [q_hat(wins[(p, "".join(st[:j]))], s.k) if (p, "".join(st[:j])) in wins else 0.0
              for j in range(1, len(st))] + [0.0]
        q0 = q_hat(wins[(p, "")], s.k)
        oracle = check(problems[p], neg["text"]).first_wrong_step if "ops" in problems[p] else None
        records.append({"problem": p, "sample": neg["sample"], "steps": st, "q0": q0, "qs": qs,
                        "advantages": advantages(q0, qs), "critical": critical_step(qs),
                        # a pit among the rolled-out prefixes (the whole wrong answer is hopeless by definition)
                        "pit": has_pit(qs[:-1]),
                        "oracle": None if oracle is None else step_of_line(st, oracle),
                        # continuations[j]: a correct continuation of the first j steps (None: no rollout won)
                        "continuations": [continuations.get((p, "".join(st[:j]))) for j in range(len(st))]})
    stats = {"negatives": len(records), "prefixes": len(wins), "rollouts": generated, "generate_calls": calls,
             "seconds": seconds, "k": s.k, "groups": s.groups, "early_exit": s.early_exit}
    log.info("step negatives: Q̂ of %d prefixes of %d negatives from %d rollouts in %d call(s), %.1f s", len(wins),
             len(records), generated, calls, seconds)
    if use_cache:
        _write_jsonl(path, records)
        path.with_suffix(".json").write_text(json.dumps(stats))
    return records, stats


# ------------------------------------------------------------------------------------------------- stage 4
def build_rows(recipe: Recipe, problems: list[dict], samples: list[dict], values: list[dict]) -> tuple[list, dict]:
    """Training rows of `steps.method` and what was kept."""
    from alignkit.rollout.steps import split_steps, step_weights

    s = recipe.steps
    rng = random.Random(f"steps/{recipe.run.seed}")
    right = {}
    for x in samples:
        if x["correct"]:
            right.setdefault(x["problem"], []).append(x["text"])

    def as_answer(p, text):
        return [{"role": "assistant", "content": text}] if isinstance(problems[p]["prompt"], list) else text

    def positive(p):  # a full correct solution: one of π_sft's right samples, else the gold solution
        return rng.choice(right[p]) if p in right else _text(problems[p]["completion"])

    stats: dict = {"method": s.method}
    if s.method == "sft":
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in problems]
    elif s.method == "rft":
        rows = [{"prompt": problems[x["problem"]]["prompt"], "completion": as_answer(x["problem"], x["text"])}
                for x in samples if x["correct"]]
    elif s.method == "full_dpo":  # arbitrary right / wrong full responses of the same problem
        rows = []
        for p in range(len(problems)):
            wrong = [x["text"] for x in samples if x["problem"] == p and not x["correct"]]
            if p in right and wrong:
                rows.append({"prompt": problems[p]["prompt"], "chosen": as_answer(p, rng.choice(right[p])),
                             "rejected": as_answer(p, rng.choice(wrong))})
    else:
        kept = [v for v in values if s.keep_no_pit or v["pit"] or s.critical == "oracle"]
        stats.update(negatives=len(values), with_pit=sum(v["pit"] for v in values), kept=len(kept),
                     mc_finds_true_first_error=_hit_rate(values))
        if s.method == "step_awr":
            # a negative up to its critical step (alignkit's choice: after the pit A = 0, and weight exp(0) = 1
            # would imitate the wrong rest of the answer as much as a right one)
            def cut(v):
                return (v["oracle"] if s.critical == "oracle" else v["critical"]) + 1

            rows = [{"prompt": problems[v["problem"]]["prompt"], "steps": v["steps"][:cut(v)],
                     "weights": step_weights(v["advantages"][:cut(v)], s.awr_beta, s.awr_max_weight)}
                    for v in kept if v["oracle"] is not None or s.critical != "oracle"]
            # π_sft's right samples keep weight 1 (their prefixes stay solvable: A = 0)
            rows += [{"prompt": problems[p]["prompt"], "steps": split_steps(texts[0], s.split_pattern),
                      "weights": [1.0] * len(split_steps(texts[0], s.split_pattern))}
                     for p, texts in sorted(right.items())]
        else:
            rows = [_step_pair(s, problems, v, positive, as_answer) for v in kept]
            rows = [r for r in rows if r is not None]
    stats["rows"] = len(rows)
    return rows, stats


def _step_pair(s, problems, v, positive, as_answer) -> dict | None:
    p, steps = v["problem"], v["steps"]
    c = v["oracle"] if s.critical == "oracle" else v["critical"]
    if c is None:
        return None
    if s.pair_form == "paper":  # question / a full correct solution / the negative up to its critical step
        return {"prompt": problems[p]["prompt"], "chosen": as_answer(p, positive(p)),
                "rejected": as_answer(p, "".join(steps[:c + 1]).rstrip("\n"))}
    # shared prefix (Self-Explore, Step-DPO): the question with the steps before the pit as the start of the answer;
    # chosen = a rollout that continued that prefix to a right answer, rejected = the pit step
    prefix, chosen = "".join(steps[:c]), v["continuations"][c]
    if chosen is None:
        gold = _text(problems[p]["completion"])
        if not gold.startswith(prefix):
            return None  # no rollout and not the gold path: no known correct continuation of this prefix
        chosen = gold[len(prefix):]
    return {"prompt_prefix": prefix, "prompt": problems[p]["prompt"], "chosen": chosen, "rejected": steps[c]}


def _hit_rate(values: list[dict]) -> float | None:
    known = [v for v in values if v["oracle"] is not None]
    return sum(v["critical"] == v["oracle"] for v in known) / len(known) if known else None


# ---------------------------------------------------------------------------------------------------- run
def run(recipe: Recipe, run_dir: RunDirectory | None = None) -> Path:
    from alignkit.distributed.ray_train import ensure_ray
    from alignkit.models.loading import check_model_source
    from alignkit.pipelines import preference
    from alignkit.rollout.engine import RolloutPool

    started = time.perf_counter()
    s = recipe.steps
    check_model_source(recipe.model.path)
    sft_rows, problems, scorer = load_problems(recipe)
    run_dir = run_dir or RunDirectory.of(recipe)
    run_dir.refuse_if_taken()  # before hours of mining: the stages are cached, the run directory is not
    ensure_ray()
    timings = {}
    t0 = time.perf_counter()
    pi_sft = sft_model(recipe, sft_rows)
    timings["sft_s"] = time.perf_counter() - t0
    samples, sample_meta, values, value_stats = [], {}, [], {}
    if s.method != "sft":
        pool = RolloutPool(pi_sft, recipe.rollout, recipe.model.dtype, seed=recipe.run.seed)
        try:
            t0 = time.perf_counter()
            samples, sample_meta = sample_stage(recipe, pi_sft, problems, scorer, pool)
            timings["sample_s"] = time.perf_counter() - t0
            if s.method in ("step_dpo", "step_awr"):
                t0 = time.perf_counter()
                values, value_stats = value_stage(recipe, pi_sft, problems, samples, scorer, pool)
                timings["value_s"] = time.perf_counter() - t0
        finally:
            pool.shutdown()
    used = s.use_problems or len(problems)  # rows from the first `used` mined problems only
    rows, row_stats = build_rows(recipe, problems[:used], [x for x in samples if x["problem"] < used],
                                 [v for v in values if v["problem"] < used])
    if not rows:
        raise DataError(f"steps.method {s.method}: no training rows from {len(problems)} problems ({row_stats})")
    if s.pair_form == "shared_prefix" and s.method == "step_dpo":
        rows = [_render_prefix(pi_sft, r) for r in rows]
    data = _write_jsonl(cache_dir() / "step_negatives" / f"rows-{_digest(rows)}.jsonl", rows)
    epochs = recipe.trainer.num_epochs
    recipe = _batch_within(recipe, len(rows))
    train = recipe.derive({
        "model.path": pi_sft, "data.train": str(data), "data.train_split": "train",
        "data.train_size": None, "data.eval": None,
        "trainer.max_steps": max(1, math.ceil((epochs or 1) * len(rows) / recipe.global_batch_size)),
        "trainer.num_epochs": None, "steps": {"problems": ""}}, source=f"{recipe.source} ({s.method} stage)")
    log.info("step negatives, %s: %d rows (%s) -> %d optimizer steps from π_sft", s.method, len(rows), row_stats,
             train.trainer.max_steps)
    trained = preference.train_stage(train, stale=("report.md", "behaviour.json", "steps.json", "rows.jsonl",
                                                   "train_recipe.yaml"),
                                     run_dir=run_dir, started=started)
    out = trained.out
    # recipe.yaml reruns the whole pipeline (its stages from the cache); the training stage's own recipe beside it
    (out / "recipe.yaml").replace(out / "train_recipe.yaml")
    preference.write_run_record(out, recipe)
    summary = {"method": s.method, "problems": used, "mined_problems": len(problems), "samples": len(samples),
               "right_samples": sum(x["correct"] for x in samples), **row_stats, "values": value_stats,
               "timings": timings, "pi_sft": pi_sft, "train_s": trained.train_seconds,
               "samples_file": sample_meta.get("path"),
               # the mining cost of the rows: the stages' own seconds and rollouts (also when they came from the
               # cache), the share of the `used` problems of all mined ones
               "rollouts_per_row": (len(samples) + value_stats.get("rollouts", 0)) * used / len(problems)
               / max(1, len(rows)),
               "seconds_per_row": (sample_meta.get("seconds", 0) + value_stats.get("seconds", 0)) * used
               / len(problems) / max(1, len(rows))}
    _write_jsonl(out / "rows.jsonl", rows)
    # held-out greedy generations of π_sft (start) and the trained model, scored by the problems' checker
    from alignkit.data.sources import read_rows
    from alignkit.evaluation.report import write_report

    held_out = read_rows(s.problems, s.eval_split, seed=recipe.data.seed)[0][:recipe.eval.num_prompts]
    behaviour = preference._behaviour(recipe, pi_sft, out / "final", held_out, scorer)
    (out / "behaviour.json").write_text(json.dumps(behaviour, indent=1))
    summary["held_out"] = {"start": behaviour.get("start", {}).get("metrics"), "final": behaviour["final"]["metrics"]}
    summary["total_s"] = time.perf_counter() - started
    (out / "steps.json").write_text(json.dumps(summary, indent=1))
    facts = trained.facts(train, f", {len(held_out)} held-out problems ({s.problems} {s.eval_split}) for generations")
    facts["per-step negatives"] = (f"method {s.method}; π_sft {pi_sft}; {len(problems)} problems x "
                                   f"{s.samples_per_problem} samples ({summary['right_samples']} right); "
                                   + (f"Q̂ from {value_stats['rollouts']} rollouts (K={s.k}) in "
                                      f"{value_stats['seconds']:.0f} s; " if value_stats else "")
                                   + f"{len(rows)} rows; MC finds the true first error in "
                                   + (f"{row_stats['mc_finds_true_first_error']:.0%}"
                                      if row_stats.get("mc_finds_true_first_error") is not None else "—")
                                   + " of negatives")
    report = write_report(out, {"title": f"alignkit per-step negatives run `{recipe.run.name}`", "facts": facts},
                          behaviour, [_text(r["prompt"]) for r in held_out])
    log.info("report: %s", report)
    return out


def _batch_within(recipe: Recipe, rows: int) -> Recipe:
    """A data-size sweep reaches sizes whose methods make fewer rows than one global batch (full-response DPO on 16
    problems: ~6 pairs): those train with a smaller batch (grad_accum, then micro_batch_size), said in the log,
    instead of failing; a batch that fits is left as it is."""
    t, workers = recipe.trainer, recipe.cluster.num_workers
    if rows >= recipe.global_batch_size:
        return recipe
    per_worker = rows // workers
    if per_worker < 1:
        raise DataError(f"steps.method {recipe.steps.method}: {rows} training row(s) for {workers} workers")
    micro = min(t.micro_batch_size, per_worker)
    accum = max(1, min(t.grad_accum, per_worker // micro))
    log.warning("step negatives: %d rows, fewer than the global batch %d: training with micro_batch_size %d x "
                "grad_accum %d x %d worker(s)", rows, recipe.global_batch_size, micro, accum, workers)
    return recipe.derive({"trainer.micro_batch_size": micro, "trainer.grad_accum": accum})


def _render_prefix(model_path: str, row: dict) -> dict:
    """A shared-prefix pair as a text prompt: the question rendered with the chat template's generation prompt
    followed by the kept steps, so chosen and rejected continue the same partial answer."""
    from alignkit.data.encode import render_prompt
    from alignkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    return {"prompt": render_prompt(tokenizer, row["prompt"]) + row["prompt_prefix"], "chosen": row["chosen"],
            "rejected": row["rejected"]}
