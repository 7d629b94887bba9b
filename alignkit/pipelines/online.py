"""Online training on one persistent trainer: the Ray Train workers stay up for the whole run while rollout engines
(vLLM or HF, Ray actors created once) generate every round; trainer rank 0 scores, builds and shares the round's rows
and pushes the new weights to the engines after the round (engine/sources.py OnlineSource, rollout/rounds.py).
Optimizer, scheduler and live reference live for the whole run; checkpoints hold the round and its rows.

    python launch.py recipes/online/dpo_builtin.yaml        # online DPO: best vs worst of n by the verifier
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from alignkit.config.schema import Recipe
from alignkit.errors import DataError, RecipeError
from alignkit.rundir import RunDirectory

log = logging.getLogger(__name__)

ONLINE_KINDS = ("sft", "pairs", "unpaired", "feedback")


def load_prompt_rows(spec: str, split: str, fields: list[str], key: str, seed: int = 0) -> tuple[list[dict], str]:
    """Rows with a valid `prompt` and the fields the feedback provider reads; a row without them fails by index."""
    from alignkit.data.records import check_text
    from alignkit.data.sources import read_rows

    rows, origin = read_rows(spec, split, seed=seed)
    for index, row in enumerate(rows):
        where = f"{origin} row {index} ({key})"
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object")
        check_text(row, "prompt", where)
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{where}: missing field `{missing[0]}`, which the feedback provider (online.feedback) "
                            "reads for every prompt")
    return rows, origin


def validate(recipe: Recipe, read_hub: bool = True) -> dict:
    """Everything an online run needs, checked before anything is written or started: the objective's kind, the
    row builder and provider with their parameters, the reference mode, the prompt sets (every row), the engine
    backend. Returns the prompt rows (empty when a hub source is not read)."""
    from alignkit.data.sources import behaviour_scorer, is_hub_source
    from alignkit.objectives import get_objective
    from alignkit.rollout.builders import make_prompt_maker, make_row_builder
    from alignkit.rollout.engine import resolve_backend, resolve_weight_sync
    from alignkit.rollout.feedback import check_provider, provider_fields

    o = recipe.online
    objective = get_objective(recipe.objective.name)
    if objective.kind not in ONLINE_KINDS:
        raise RecipeError(f"`objective.name`: {objective.name} consumes `{objective.kind}` records; online rounds "
                          f"build {', '.join(ONLINE_KINDS)} records (set online.rounds: 0 for an offline run)")
    make_row_builder(o.rows, o.rows_params, objective.kind)
    pool = None
    if o.rows_params.get("conditions") is not None:  # FCP's pool of positive conditions: readable and non-empty
        from alignkit.rollout.builders import load_conditions

        pool = load_conditions(o.rows_params["conditions"], o.rows_params.get("min_condition_score", 0.8))
        log.info("FCP conditions: a pool of %d positive feedback texts, e.g. %r", len(pool), pool[0])
    check_provider(o.feedback, o.feedback_params)
    backend = resolve_backend(recipe.rollout.backend)
    resolve_weight_sync(recipe.rollout.weight_sync, backend)
    fields = provider_fields(o.feedback, o.feedback_params)
    out = {"prompt_rows": [], "eval_rows": [], "scorer": None, "conditions": pool}
    if read_hub or not is_hub_source(o.prompts):
        out["prompt_rows"], origin = load_prompt_rows(o.prompts, o.prompts_split, fields, "online.prompts",
                                                      recipe.data.seed)
        log.info("online prompts: %d rows from %s", len(out["prompt_rows"]), origin)
        make_prompt_maker(o.rows, o.rows_params, objective.kind)(out["prompt_rows"][:1], "generate", 0)
    eval_spec = o.eval_prompts or o.prompts
    if o.eval_every and o.eval_size and (read_hub or not is_hub_source(eval_spec)):
        rows, origin = load_prompt_rows(eval_spec, o.eval_split, fields, "online.eval_prompts", recipe.data.seed)
        out["eval_rows"] = rows[:o.eval_size]
        out["scorer"] = behaviour_scorer(eval_spec)
        if o.eval_split == o.prompts_split and eval_spec == o.prompts:
            log.warning("online.eval_split is the prompt split: the held-out evaluation uses training prompts")
    return out


def with_online_steps(recipe: Recipe) -> Recipe:
    """trainer.max_steps of an online run is online.rounds x online.steps_per_round."""
    steps = recipe.online.rounds * recipe.online.steps_per_round
    if recipe.trainer.max_steps == steps:
        return recipe
    log.info("online run: trainer.max_steps = online.rounds %d x online.steps_per_round %d = %d",
             recipe.online.rounds, recipe.online.steps_per_round, steps)
    return recipe.derive({"trainer.max_steps": steps})


def run(recipe: Recipe, run_dir: RunDirectory | None = None) -> Path:
    from alignkit.distributed.ray_train import ensure_ray, run_training
    from alignkit.models.loading import check_model_source, load_tokenizer, resolve_model_path
    from alignkit.objectives import get_objective
    from alignkit.pipelines.preference import with_kind_tokens, write_run_record
    from alignkit.rollout.engine import RolloutPool

    started = time.perf_counter()
    recipe = with_online_steps(recipe)
    payload = validate(recipe)
    if payload["conditions"] is not None:  # the pool travels as a list: workers need not see the driver's files
        recipe = recipe.derive({"online.rows_params": {**recipe.online.rows_params,
                                                       "conditions": payload["conditions"]}})
    check_model_source(recipe.model.path)
    recipe = with_kind_tokens(recipe)  # FCP's <EF>, </EF>: the trainer and the engines load the resized model
    model_dir = resolve_model_path(recipe.model.path)
    pad_id = load_tokenizer(recipe.model.path).pad_token_id
    o = recipe.online
    out = (run_dir or RunDirectory.of(recipe)).claim(stale=("report.md", "rounds.json"))  # (validated above)
    write_run_record(out, recipe)

    ensure_ray()
    pool = RolloutPool(model_dir, recipe.rollout, recipe.model.dtype, seed=recipe.run.seed)
    try:
        kind = get_objective(recipe.objective.name).kind
        encoded = {"kind": kind, "train": [], "eval": [], "pad_id": pad_id,
                   "online": {**payload, "client": pool.client(), "rows_dir": str(out / "rows")}}
        t0 = time.perf_counter()
        run_training(recipe, encoded, out, reserved=pool.reserved)
        train_seconds = time.perf_counter() - t0
    finally:
        pool.shutdown()
    rounds = round_table(out / "metrics.jsonl", o.steps_per_round)
    (out / "rounds.json").write_text(json.dumps(rounds, indent=1))
    from alignkit.evaluation.report import write_report

    t = recipe.trainer
    facts = {"recipe": recipe.source, "model": recipe.model.path,
             "objective": f"{recipe.objective.name} {recipe.objective.params or ''}".strip(),
             "online": f"{o.rounds} rounds x {o.steps_per_round} optimizer steps; {o.prompts_per_round} prompts of "
                       f"{o.prompts} x {o.samples_per_prompt} samples per round; feedback {o.feedback}; rows "
                       f"{o.rows}; held-out: {len(payload['eval_rows'])} prompts every {o.eval_every} round(s)",
             "rollout": f"{recipe.rollout.num_engines} {pool.backend} engine(s), weights by {pool.weight_sync}",
             "global batch": f"{recipe.global_batch_size} (micro {t.micro_batch_size} x accum {t.grad_accum} x "
                             f"{recipe.cluster.num_workers} workers)",
             "training wall time (one Ray Train run, incl. worker start)": f"{train_seconds:.0f} s",
             "total wall time": f"{time.perf_counter() - started:.0f} s"}
    section = ["## Rounds", "", rounds_markdown(rounds), ""]
    report = write_report(out, {"title": f"alignkit online run `{recipe.run.name}`", "facts": facts}, None, [],
                          sections=section)
    log.info("report: %s", report)
    return out


ROUND_KEYS = ("online/rows", "online/mean_score", "online/eval_score", "online/eval_format", "online/eval_correct",
              "online/generated_tokens_per_s", "time/generate_s", "time/score_s", "time/train_s", "time/push_s",
              "time/eval_s")


def round_table(metrics_path: Path, steps_per_round: int) -> list[dict]:
    """One row per round from metrics.jsonl: its generation metrics (first step), training seconds (its steps),
    push and evaluation (last step), and the objective's train metrics (last step)."""
    records = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    rounds: dict[int, dict] = {}
    for record in records:
        if record["step"] == 0:  # the starting policy's held-out evaluation: "round -1"
            rounds[-1] = {"round": -1, **{k: v for k, v in record.items() if k.startswith("online/eval")}}
            continue
        r = (record["step"] - 1) // steps_per_round
        row = rounds.setdefault(r, {"round": r, "time/train_s": 0.0})
        row["time/train_s"] += record.get("time/step_s", 0.0)
        row.update({k: v for k, v in record.items() if k.startswith(("online/", "train/", "time/push", "time/eval",
                                                                     "time/generate", "time/score"))})
    return [rounds[r] for r in sorted(rounds)]


def rounds_markdown(rounds: list[dict]) -> str:
    keys = [k for k in ROUND_KEYS if any(k in r for r in rounds)]
    lines = ["| round | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rounds:
        name = "start" if r["round"] == -1 else r["round"]
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3g}" if k in r else "—" for k in keys) + " |")
    return "\n".join(lines)
