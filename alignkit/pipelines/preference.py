"""Offline training from a dataset (DPO family, SFT, and every objective of kind `pairs` or `sft`):
prepare (model, data, validation) -> train in Ray Train workers -> evaluate held-out behaviour -> report."""
from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from alignkit.config.loader import dump_recipe
from alignkit.config.schema import Recipe
from alignkit.data.encode import EncodeSettings
from alignkit.data.sources import behaviour_scorer
from alignkit.kinds import encode_rows, load_records
from alignkit.models.loading import check_model_source, load_tokenizer, resolve_model_path
from alignkit.objectives import get_objective
from alignkit.pipelines.data_cache import encode_source
from alignkit.rundir import RunDirectory

log = logging.getLogger(__name__)


def provenance() -> dict:
    import importlib.metadata as md

    import alignkit

    versions = {"alignkit": alignkit.__version__}
    for package in ("torch", "transformers", "deepspeed", "ray", "trl", "datasets"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        sha = None
    return {"versions": versions, "git_sha": sha, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def check_data_kinds(recipe: Recipe, read_hub: bool = True) -> None:
    """Each data source of the recipe holds the record kind its objective consumes (judged from its first rows),
    else one DataError that says which kind each side has and which objectives fit the data."""
    from alignkit.data.sources import is_hub_source
    from alignkit.errors import DataError
    from alignkit.kinds import get_kind, kind_mismatch
    from alignkit.objectives.registry import objectives_for_kinds

    objective = get_objective(recipe.objective.name)
    d = recipe.data
    sources = [("data.train", d.train, d.train_split, objective.kind)]
    if d.eval:
        sources.append(("data.eval", d.eval, d.eval_split, objective.kind))
    if "retain" in objective.needs and d.retain:
        sources.append(("data.retain", d.retain, d.retain_split, "forget"))
    for key, spec, split, kind in sources:
        if not read_hub and is_hub_source(spec):
            log.info("%s: hub dataset %s is not read by --dry-run; its rows are validated when the run starts",
                     key, spec)
            continue
        found = kind_mismatch(spec, split, kind, seed=d.seed, hub_config=d.hub_config)
        if found is None:
            continue
        origin, kinds, fields = found
        has = (f"records that fit the kinds {', '.join(f'`{k}`' for k in kinds)}" if len(kinds) > 1 else
               f"`{kinds[0]}` records" if kinds else "rows of no record kind alignkit knows")
        hint = f"; objectives that take this data: {', '.join(objectives_for_kinds(kinds))}" if kinds else ""
        raise DataError(f"objective `{objective.name}` consumes `{kind}` records ({get_kind(kind).shape}), but {key} "
                        f"({origin}) holds {has} (fields: {fields}){hint}")


def prepare_data(recipe: Recipe) -> tuple[dict, dict]:
    """Load, validate and tokenize train/eval data once, in the driver, so bad data fails before workers start."""
    objective = get_objective(recipe.objective.name)
    kind = objective.kind
    d = recipe.data
    check_data_kinds(recipe)
    # PMPO's one-sided modes train on one side of the data only: drop the other side's records up front.
    side = recipe.objective.params.get("mode", "both")
    keep = {"accepted_only": (True,), "rejected_only": (False,)}.get(side, (True, False))
    tokenizer = load_tokenizer(recipe.model.path)
    settings = EncodeSettings(d.max_length, d.max_prompt_length, d.truncation_mode, d.chat_template == "auto")
    if "idk" in objective.needs or "retain_idk" in objective.needs:
        from alignkit.data.idk import attach_idk, idk_row, load_idk_answers

        idk_answers = load_idk_answers(d.idk_answers)
    # The training set goes through the cached datasets encoder (a second run with the same inputs reads the cache);
    # workers read their rows from its files.
    transform = (partial(idk_row, answers=tuple(idk_answers), seed=d.seed, origin=d.train)
                 if "idk" in objective.needs else None)
    encoded_train, train = encode_source(
        tokenizer, resolve_model_path(recipe.model.path), d.train, d.train_split, kind, settings, seed=d.seed,
        hub_config=d.hub_config, on_bad_row=d.on_bad_row, limit=d.train_size,
        keep_labels=keep if kind == "unpaired" else (True, False), transform=transform, num_proc=d.num_proc,
        root=d.cache_dir)
    cut_train = train["truncated"]
    eval_rows, encoded_eval, cut_eval, eval_origin = [], [], 0, None
    if d.eval:
        # Loss evaluation uses the first eval_size records; generations use the first eval.num_prompts distinct
        # prompts of the split, which may be more.
        held_out = load_records(d.eval, d.eval_split, kind, on_bad_row=d.on_bad_row, seed=d.seed,
                                hub_config=d.hub_config)
        eval_rows, eval_origin = held_out.rows, held_out.origin
        if "idk" in objective.needs:
            eval_rows = attach_idk(eval_rows, idk_answers, d.seed, eval_origin)
        encoded_eval, cut_eval = encode_rows(tokenizer, eval_rows[:d.eval_size], kind, settings, held_out.origin)
    encoded_retain = []
    if "retain" in objective.needs:
        retain = load_records(d.retain, d.retain_split, "forget", on_bad_row=d.on_bad_row, limit=d.retain_size,
                              seed=d.seed, hub_config=d.hub_config)
        if "retain_idk" in objective.needs:
            retain.rows = attach_idk(retain.rows, idk_answers, d.seed + 1, retain.origin)
        encoded_retain, cut_retain = encode_rows(tokenizer, retain.rows, "forget", settings, retain.origin)
        cut_train += cut_retain
        log.info("retain data: %d records from %s", len(encoded_retain), retain.origin)
    binning = None
    if kind == "reward_pairs":
        from alignkit.data.encoded_rows import with_fields
        from alignkit.data.spurious import assign_bins, attribute_values, bin_fields, fit_binning

        z_train = attribute_values(encoded_train, d.spurious_attribute, train["origin"])
        binning = fit_binning([z for pair in z_train for z in pair], d.spurious_bins)
        encoded_train = with_fields(encoded_train, bin_fields(z_train, binning))
        if encoded_eval:
            assign_bins(encoded_eval, attribute_values(encoded_eval, d.spurious_attribute, eval_origin), binning)
        log.info("spurious attribute `%s`: %s (fitted on the training responses)", d.spurious_attribute,
                 binning.describe())
    if recipe.global_batch_size > len(encoded_train):
        from alignkit.errors import RecipeError

        raise RecipeError(f"global batch {recipe.global_batch_size} (trainer.micro_batch_size "
                          f"{recipe.trainer.micro_batch_size} x trainer.grad_accum {recipe.trainer.grad_accum} x "
                          f"cluster.num_workers {recipe.cluster.num_workers}) is larger than the "
                          f"{len(encoded_train)} training records of {train['origin']}")
    # The same source and split for training and evaluation: its "held-out" metrics are on training rows.
    eval_is_train = bool(d.eval) and d.eval == d.train and d.eval_split == d.train_split
    if eval_is_train:
        log.warning("data.eval and data.eval_split name the training data (%s, split %s): the eval/ metrics are on "
                    "rows the run trains on, not held out", d.train, d.train_split)
    stats = {"train_rows": len(encoded_train), "eval_rows": len(encoded_eval), "train_origin": train["origin"],
             "eval_origin": eval_origin, "skipped_rows": train["skipped"], "train_cache": train["path"],
             "train_cache_hit": train["cache_hit"], "train_encode_s": train["seconds"],
             "truncated_rows": cut_train + cut_eval, "eval_is_train": eval_is_train}
    if cut_train + cut_eval:
        log.warning("%d row(s) truncated to data.max_length=%d / max_prompt_length=%d", cut_train + cut_eval,
                    d.max_length, d.max_prompt_length)
    encoded = {"kind": kind, "train": encoded_train, "eval": encoded_eval, "pad_id": tokenizer.pad_token_id,
               "retain": encoded_retain}
    return encoded, {"stats": stats, "eval_rows": _unique_prompts(eval_rows), "binning": binning}


def _unique_prompts(rows: list[dict]) -> list[dict]:
    """One row per prompt (unpaired data repeats each prompt), for generation-based evaluation."""
    seen, out = set(), []
    for row in rows:
        key = repr(row["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


@dataclass
class TrainedRun:
    """What the training stage leaves for a pipeline's evaluation and report."""
    out: Path
    model_dir: str  # the starting model's directory
    info: dict  # prepare_data's info: stats, eval rows, spurious binning
    train_seconds: float
    started: float  # perf_counter at the start of the run
    recipe: Recipe | None = None  # as trained (trainer.max_steps computed from trainer.num_epochs)

    def facts(self, recipe: Recipe, extra_data: str = "") -> dict:
        recipe = self.recipe or recipe
        t, stats = recipe.trainer, self.info["stats"]
        return {
            "recipe": recipe.source, "model": recipe.model.path,
            "objective": f"{recipe.objective.name} {recipe.objective.params or ''}".strip(),
            "data": f"{stats['train_rows']} train records ({stats['train_origin']}), {stats['eval_rows']} "
                    + ("records of the training split (not held out) " if stats.get("eval_is_train") else
                       "held-out records ") + f"for the loss metrics{extra_data}",
            "optimizer steps": t.max_steps,
            "global batch": f"{recipe.global_batch_size} (micro {t.micro_batch_size} x accum {t.grad_accum} x "
                            f"{recipe.cluster.num_workers} workers)",
            "backend": f"{t.backend}" + (f" ZeRO-{t.zero_stage}" if t.backend == "deepspeed" else "")
                       + f", {t.precision}",
            "training wall time (Ray Train, incl. worker start)": f"{self.train_seconds:.0f} s",
            "total wall time": f"{time.perf_counter() - self.started:.0f} s",
        }


def write_run_record(out: Path, recipe: Recipe) -> None:
    """recipe.yaml: the resolved recipe (runs as-is) plus provenance."""
    (out / "recipe.yaml").write_text(
        dump_recipe(recipe) + "\n# provenance (ignored when the recipe is loaded)\n"
        + "provenance: " + json.dumps(provenance()) + "\n")


def train_stage(recipe: Recipe, stale: tuple[str, ...] = ("report.md", "behaviour.json"), weight_sink=None,
                run_dir: RunDirectory | None = None, started: float | None = None) -> TrainedRun:
    """Validate model and data (in the driver), then claim the output directory and write the run record, then
    train in Ray Train workers. Nothing under the output directory changes before the inputs are validated.
    `stale`: result files a resumed run writes anew. `run_dir`: the pipeline's RunDirectory (default: one for
    the recipe, without rollback). `started`: the pipeline's clock (perf_counter), for the report's total time.
    `weight_sink` (rollout/weight_sync.py CollectiveSync): rank 0 pushes the final weights to rollout engines."""
    from alignkit.distributed.ray_train import ensure_ray, run_training

    started = time.perf_counter() if started is None else started
    own = run_dir is None  # no pipeline context (a learn stage, a benchmark): commit or roll back here
    run_dir = run_dir or RunDirectory.of(recipe)
    if own:
        run_dir.refuse_if_taken()
    t0 = time.perf_counter()
    check_model_source(recipe.model.path)
    model_dir = resolve_model_path(recipe.model.path)
    recipe = with_kind_tokens(recipe)
    encoded, info = prepare_data(recipe)
    stats = info["stats"]
    recipe = with_epochs(recipe, stats["train_rows"])
    t = recipe.trainer
    log.info("model %s; data: %d train rows from %s, %d held-out rows; prepared in %.1f s", recipe.model.path,
             stats["train_rows"], stats["train_origin"], stats["eval_rows"], time.perf_counter() - t0)
    log.info("global batch = micro_batch_size %d x grad_accum %d x num_workers %d = %d examples per optimizer step; "
             "%d steps = %.2f epochs", t.micro_batch_size, t.grad_accum, recipe.cluster.num_workers,
             recipe.global_batch_size, t.max_steps, t.max_steps * recipe.global_batch_size / stats["train_rows"])

    # Validated: from here on the output directory is this run's (an earlier run is set aside, not deleted).
    # A resumed run keeps its metrics (the workers cut them back to the checkpoint's step) and exports.
    out = run_dir.claim(stale)
    try:
        write_run_record(out, recipe)
        ensure_ray()
        t1 = time.perf_counter()
        run_training(recipe, encoded, out, weight_sink=weight_sink)
    except BaseException:
        if own:
            run_dir.rollback()
        raise
    if own:
        run_dir.commit()
    return TrainedRun(out, model_dir, info, time.perf_counter() - t1, started, recipe)


def with_kind_tokens(recipe: Recipe) -> Recipe:
    """The recipe with model.path at a directory that has the special tokens of the objective's record kind (FCP's
    <EF>, </EF>; models/special_tokens.py); the recipe itself when the kind needs none or the model has them."""
    from alignkit.kinds import get_kind
    from alignkit.models.special_tokens import with_special_tokens

    tokens = get_kind(get_objective(recipe.objective.name).kind).special_tokens
    path = with_special_tokens(recipe.model.path, tokens, recipe.run.seed, recipe.model.dtype)
    if path == recipe.model.path:
        return recipe
    log.info("model.path for this run: %s (%s with %s added)", path, recipe.model.path, ", ".join(tokens))
    return recipe.derive({"model.path": path})


def with_epochs(recipe: Recipe, train_rows: int) -> Recipe:
    """With trainer.num_epochs, the recipe with trainer.max_steps = ceil(num_epochs x rows / global batch)."""
    epochs = recipe.trainer.num_epochs
    if epochs is None:
        return recipe
    steps = max(1, math.ceil(epochs * train_rows / recipe.global_batch_size))
    log.info("trainer.num_epochs %g over %d training records at a global batch of %d: trainer.max_steps = %d", epochs,
             train_rows, recipe.global_batch_size, steps)
    return recipe.derive({"trainer.max_steps": steps})


def run(recipe: Recipe, run_dir: RunDirectory | None = None) -> Path:
    trained = train_stage(recipe, run_dir=run_dir)
    out = trained.out
    behaviour = None
    scorer = behaviour_scorer(recipe.data.eval)
    eval_rows = trained.info["eval_rows"][:recipe.eval.num_prompts]
    if recipe.eval.generate and eval_rows:
        behaviour = _behaviour(recipe, trained.model_dir, out / "final", eval_rows, scorer)
        (out / "behaviour.json").write_text(json.dumps(behaviour, indent=1))

    facts = trained.facts(recipe, f", {len(eval_rows)} held-out prompts for generations" if behaviour else "")
    from alignkit.evaluation.report import write_report

    report = write_report(out, {"title": f"alignkit run `{recipe.run.name}`", "facts": facts}, behaviour,
                          [_prompt_text(r["prompt"]) for r in eval_rows])
    log.info("report: %s", report)
    return out


def _prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _behaviour(recipe: Recipe, start_dir: str, final_dir: Path, rows: list[dict], scorer) -> dict:
    """Greedy generations of the starting and the trained model on held-out prompts, in Ray tasks (on a GPU if the
    cluster has them)."""
    import ray

    from alignkit.evaluation.generation import behaviour_eval
    from alignkit.ray_session import cpu_threads, outside_placement_group

    e, c = recipe.eval, recipe.cluster
    threads = cpu_threads(c.cpus_per_worker * c.num_workers)
    task = ray.remote(num_cpus=min(c.cpus_per_worker, 1), num_gpus=1 if c.use_gpu else 0,
                      **outside_placement_group())(behaviour_eval)
    args = dict(rows=rows, scorer=scorer, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                dtype=recipe.model.dtype, threads=threads)
    start = time.perf_counter()
    result = {"final": ray.get(task.remote(str(final_dir), **args))}
    if e.compare_to_start:
        result["start"] = ray.get(task.remote(start_dir, **args))
    log.info("held-out generations: %s (start: %s) in %.1f s", result["final"]["metrics"],
             result.get("start", {}).get("metrics"), time.perf_counter() - start)
    return result
