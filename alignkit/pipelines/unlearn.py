"""Unlearning: learn -> unlearn -> evaluate, from one recipe.

1. learn (optional, `unlearn.learn`): SFT of model.path on the forget set + the retain set (the *target* model,
   which has seen the forget set) and on the retain set only (the *retain* model, the gold standard that never saw it),
   each through Ray Train, cached in $ALIGNKIT_CACHE/unlearn/ by a hash of everything that produces it.
2. unlearn: the recipe's objective on the forget set (data.train / train_split), starting from the target model, which
   is also the reference.
3. evaluate target, retain and unlearned models with the same suite (evaluation/unlearning.py), plus the attacks on
   the unlearned model (relearning on half of the forget items, weight quantisation), and write one report.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path

from alignkit.config.loader import recipe_to_dict
from alignkit.config.schema import Recipe
from alignkit.paths import cache_dir
from alignkit.pipelines.preference import check_data_kinds, train_stage
from alignkit.ray_session import cpu_threads
from alignkit.rundir import RunDirectory

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- learn
def learn_data(recipe: Recipe, role: str) -> Path:
    """The learn stage's training set as a JSONL file named by its content: the retain set (data.retain /
    retain_split, first data.retain_size items) for the retain model, the forget set plus that retain set for the
    target model (as TOFU's `full` = forget + retain). The unlearning stage's retain batches come from the same
    items, so the retain data it protects is data the target has learned."""
    from alignkit.kinds import load_records

    d = recipe.data
    rows = load_records(d.retain, d.retain_split, "forget", seed=d.seed, hub_config=d.hub_config,
                        limit=d.retain_size).rows
    if role == "target":
        rows = load_records(d.train, d.train_split, "forget", seed=d.seed, hub_config=d.hub_config).rows + rows
    keep = ("prompt", "completion", "raw_text")
    text = "".join(json.dumps({k: r[k] for k in keep if k in r}, sort_keys=True) + "\n" for r in rows)
    path = cache_dir() / "unlearn" / "data" / f"{role}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def learn_recipe(recipe: Recipe, role: str) -> Recipe:
    """The SFT recipe that makes the target (role `target`: forget + retain data) or the retain model."""
    u = recipe.unlearn
    data_file = learn_data(recipe, role)
    items = sum(1 for line in data_file.read_text().splitlines() if line.strip())
    micro = max(1, u.learn_batch_size // (recipe.cluster.num_workers * recipe.trainer.grad_accum))
    learn = recipe.derive({
        "objective": {"name": "sft"}, "data.train": str(data_file), "data.train_split": "train", "data.eval": None,
        "data.train_size": None, "data.retain": None, "data.hub_config": None, "optim.lr": u.learn_lr,
        "optim.scheduler": "constant", "optim.warmup_steps": 0,
        "trainer.max_steps": math.ceil(u.learn_epochs * items / u.learn_batch_size), "trainer.micro_batch_size": micro,
        "trainer.eval_every": 0, "trainer.checkpoint_every": 0, "trainer.export_every": 0, "eval.generate": False,
        # the target model is fine-tuned in full, and its training is not an experiment of the user's trackers
        "model.lora": None, "run.loggers": ["jsonl"], "sweep": {}})
    d = recipe_to_dict(learn)
    key = {k: d[k] for k in ("model", "data", "objective", "optim", "trainer")} | {"seed": d["run"]["seed"]}
    # settings that do not change the learned weights do not change the cache key
    key["trainer"] = {k: v for k, v in key["trainer"].items() if k not in ("progress_bar", "log_every", "export_every")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    # overwrite: a cache entry without learn_done.json is an interrupted learn run, redone from the start
    out = cache_dir() / "unlearn" / f"{role}-{digest}"
    return learn.derive({"run.name": f"learn_{role}", "run.output_dir": str(out), "run.resume": None,
                         "run.storage_path": None, "run.overwrite": True},
                        source=f"{recipe.source} (learn stage: {role})")


def _learned(recipe: Recipe) -> Path:
    """The final model of a learn recipe, trained unless the cache has it."""
    out = Path(recipe.output_dir)
    done = out / "learn_done.json"
    if done.exists() and (out / "final" / "config.json").exists():
        log.info("learn stage `%s`: cached at %s", recipe.run.name, out)
        return out / "final"
    start = time.perf_counter()
    train_stage(recipe)
    done.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    log.info("learn stage `%s`: trained in %.0f s -> %s", recipe.run.name, time.perf_counter() - start, out)
    return out / "final"


# ---------------------------------------------------------------------------------------------------- evaluate
def evaluation_sets(recipe: Recipe) -> dict[str, list[dict]]:
    """The suite's sets, read in the driver: those of `eval.suite` when the recipe names one (evals/unlearning*.yaml),
    else forget (data.train_split), retain (data.retain_split), holdout and forget_text from the recipe's sources."""
    from alignkit.errors import DataError
    from alignkit.kinds import load_records

    d, u = recipe.data, recipe.unlearn
    if recipe.eval.suite:
        from alignkit.evaluation.unlearning import load_suite, read_suite_sets

        return read_suite_sets(load_suite(recipe.eval.suite), seed=d.seed)

    def read(split: str | None, retain: bool = False) -> list[dict]:
        if not split:
            return []
        source = d.retain if retain else d.train
        return load_records(source, split, "forget", seed=d.seed, hub_config=d.hub_config).rows

    sets = {"forget": read(d.train_split), "retain": read(d.retain_split, retain=True)[:u.eval_max_items]}
    sets["forget"] = sets["forget"][:u.eval_max_items]
    if not sets["retain"]:
        raise DataError("the unlearning evaluation needs retain items: set data.retain and data.retain_split")
    for name in ("forget", "retain"):
        missing = [k for k in ("question", "answer") if k not in sets[name][0]]
        if missing:
            raise DataError(f"the unlearning evaluation needs QA items; the {name} set lacks {missing} (or name an "
                            "evaluation suite with eval.suite)")
    sets["holdout"] = read(u.holdout_split)[:u.eval_max_items]
    text_split = f"{d.train_split}_text" if u.forget_text_split == "auto" else u.forget_text_split
    try:
        sets["forget_text"] = read(text_split)[:u.eval_max_items]
    except DataError:
        if u.forget_text_split != "auto":
            raise
        sets["forget_text"] = []
    return sets


def evaluate_checkpoints(recipe: Recipe, models: dict[str, str], sets: dict, out: Path) -> tuple[dict, dict]:
    """Every model through the suite, and the attacks on the unlearned one. Returns ({row name: metrics},
    {attack: how it was measured})."""
    import torch

    from alignkit.evaluation.unlearning import compare_to_retain, evaluate_model, quantize_weights_
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    if not logging.getLogger().handlers:  # in a Ray task: show this stage's progress in the driver's output
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    u, c = recipe.unlearn, recipe.cluster
    torch.set_num_threads(cpu_threads(c.cpus_per_worker * c.num_workers))
    tokenizer = load_tokenizer(models["unlearned"])
    kw = dict(max_new_tokens=u.max_new_tokens, batch_size=recipe.eval.batch_size)
    rows, details, notes = {}, {}, {}
    for name, path in models.items():
        cached = _cached_evaluation(path, sets, kw, recipe.model.dtype)
        if cached and cached.exists():
            rows[name], details[name] = json.loads(cached.read_text())
            log.info("evaluation of `%s` (%s): cached at %s", name, path, cached)
            continue
        model = load_causal_lm(path, recipe.model.dtype)
        rows[name], details[name] = evaluate_model(model, tokenizer, sets, **kw)
        if cached:
            cached.write_text(json.dumps([rows[name], details[name]]))
    unlearned = load_causal_lm(models["unlearned"], recipe.model.dtype)
    for bits in u.quantize_bits:
        q = copy.deepcopy(unlearned)
        quantize_weights_(q, bits)
        rows[f"unlearned int{bits}"], details[f"unlearned int{bits}"] = evaluate_model(q, tokenizer, sets, **kw)
    if u.relearn_steps > 0:
        rows["unlearned + relearn"], details["unlearned + relearn"], how = _relearn(recipe, unlearned, tokenizer,
                                                                                     sets, out, kw)
        notes["relearn"] = how
    if "retain" in details:
        for name in rows:
            rows[name].update(compare_to_retain(details[name], details["retain"]))
    return rows, notes


def _cached_evaluation(path: str, sets: dict, kw: dict, dtype: str) -> Path | None:
    """Where the suite's results on a learn-stage model are kept (None for other models): the target and retain
    models are the same for every method on a benchmark, so their evaluation runs once."""
    from alignkit.evaluation.unlearning import SUITE_VERSION

    model_dir = Path(path).resolve()
    if cache_dir().resolve() not in model_dir.parents or not (model_dir.parent / "learn_done.json").exists():
        return None
    key = json.dumps({"sets": sets, "kw": kw, "dtype": dtype, "suite": SUITE_VERSION}, sort_keys=True, default=str)
    return model_dir.parent / f"eval-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def relearn_split(forget: list[dict]) -> tuple[list[dict], list[dict], str]:
    """(items the attack trains on, items it is measured on, how they were split). By author when the set has two
    or more authors (the attack must not have seen the measured authors), else by item; with a single item the
    attack can only be measured on the item it relearned, and the description says so."""
    authors = sorted({r["author"] for r in forget if r.get("author") is not None}, key=str)
    if len(authors) >= 2 and all(r.get("author") is not None for r in forget):
        first = set(authors[:len(authors) // 2])
        known = [r for r in forget if r["author"] in first]
        held = [r for r in forget if r["author"] not in first]
        return known, held, (f"trained on the forget items of {len(first)} of {len(authors)} forget authors, "
                             f"measured on the other {len(authors) - len(first)} authors' {len(held)} items")
    if len(forget) >= 2:
        half = len(forget) // 2
        how = "one author" if len(authors) < 2 else "items without an author field"
        return forget[:half], forget[half:], (f"trained on {half} forget items, measured on the other "
                                              f"{len(forget) - half} items ({how}: split by item)")
    return forget, forget, ("trained and measured on the same single forget item (nothing to hold out): this row "
                            "measures relearning of seen items, not recovery of unseen ones")


def _relearn(recipe: Recipe, model, tokenizer, sets: dict, out: Path, kw: dict) -> tuple[dict, dict, str]:
    """Relearning attack: SFT on the forget items of half of the forget authors (or items), then the suite on the
    other half. Runs in this process (a few steps of a small model)."""
    from alignkit.data.encode import EncodeSettings
    from alignkit.engine.loop import TrainData, train
    from alignkit.evaluation.unlearning import evaluate_model
    from alignkit.kinds import encode_rows

    known, held, how = relearn_split(sets["forget"])
    d = recipe.data
    settings = EncodeSettings(d.max_length, d.max_prompt_length, d.truncation_mode, d.chat_template == "auto")
    encoded, _ = encode_rows(tokenizer, known, "forget", settings, "relearn set")
    attack = recipe.derive({
        "objective": {"name": "sft"}, "optim.lr": recipe.unlearn.relearn_lr, "optim.scheduler": "constant",
        "optim.warmup_steps": 0, "trainer.backend": "torch", "trainer.zero_stage": 0,
        "trainer.max_steps": recipe.unlearn.relearn_steps, "trainer.micro_batch_size": min(len(encoded), 4),
        "trainer.grad_accum": 1, "trainer.eval_every": 0, "trainer.checkpoint_every": 0, "trainer.progress_bar": False,
        "trainer.offload_optimizer": False, "trainer.offload_params": False, "cluster.num_workers": 1,
        "data.retain": None, "data.eval": None, "sweep": {},
        # the attack fine-tunes every weight (an attacker is not limited to adapters) and logs to its own files only
        "model.lora": None, "run.loggers": ["jsonl"]}, source="relearning attack")
    attacked = copy.deepcopy(model)
    train(attack, TrainData("sft", encoded, [], tokenizer.pad_token_id), out / "relearn", model=attacked)
    attacked.config.use_cache = True
    log.info("relearning attack: %d steps; %s", recipe.unlearn.relearn_steps, how)
    metrics, details = evaluate_model(attacked, tokenizer, {**sets, "forget": held}, **kw)
    return metrics, details, how


# ----------------------------------------------------------------------------------------------------- report
def plumbing_caveat(rows: dict[str, dict], learned: float = 0.5) -> str | None:
    """A warning for the report when the numbers cannot mean anything: the target model never learned the forget
    set (e.g. the random-weight tiny-llama of the debug recipes), so there is nothing to unlearn."""
    target = rows.get("target", {})
    key = next((k for k in ("forget/rouge", "forget/fact") if k in target), None)
    if key is None or target[key] >= learned:
        return None
    return (f"Plumbing check only: the target model recalls almost none of the forget set ({key} = "
            f"{target[key]:.3g} < {learned}), so there was nothing to unlearn and the metrics below say nothing "
            "about the method.")


def shared_points(rows: dict[str, dict], x_key: str) -> dict[tuple[float, float], list[str]]:
    """Models grouped by their (x, utility) point to 3 decimals: models at the same point share one marker and one
    label that lists them all, instead of labels printed over each other."""
    points: dict[tuple[float, float], list[str]] = {}
    for name, m in rows.items():
        points.setdefault((round(m[x_key], 3), round(m["utility"], 3)), []).append(name)
    return points


def forget_vs_utility_plot(rows: dict[str, dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    first = next(iter(rows.values()))
    x_key = next((k for k in ("forget/fact", "forget/rouge") if k in first), None)
    if x_key is None or "utility" not in first:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for (x, y), names in shared_points(rows, x_key).items():
        ax.scatter(x, y, s=40)
        ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel({"forget/fact": "forget facts recalled (lower = forgotten)",
                   "forget/rouge": "forget ROUGE-L recall (lower = forgotten)"}[x_key])
    ax.set_ylabel("model utility (retain set)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------------- run
def run(recipe: Recipe, run_dir: RunDirectory | None = None) -> Path:
    import ray

    from alignkit.distributed.ray_train import ensure_ray
    from alignkit.evaluation.report import write_report
    from alignkit.evaluation.unlearning import results_table
    from alignkit.models.loading import check_model_source
    from alignkit.ray_session import outside_placement_group

    run_started = time.perf_counter()  # the one clock of the run's "total wall time"
    u = recipe.unlearn
    check_model_source(recipe.model.path)
    check_data_kinds(recipe)  # forget data, not pairs: said plainly before any row-level message
    sets = evaluation_sets(recipe)  # bad data fails before any training
    ensure_ray()
    stage_seconds = {}
    start = time.perf_counter()
    retain_model = None
    if u.learn:
        target = str(_learned(learn_recipe(recipe, "target")))
        retain_model = str(_learned(learn_recipe(recipe, "retain")))
    else:
        target = u.target_path or recipe.model.path
        retain_model = u.retain_model_path
    stage_seconds["learn (or cache)"] = time.perf_counter() - start

    unlearn_recipe = recipe.derive({"model.path": target, "reference.path": None})  # the target is the reference
    start = time.perf_counter()
    trained = train_stage(unlearn_recipe, stale=("report.md", "unlearning_eval.json", "forget_vs_utility.png"),
                          run_dir=run_dir, started=run_started)
    stage_seconds["unlearn"] = time.perf_counter() - start

    out = trained.out
    # trainer.export_every: the models along the way are evaluated too (rows `step N`): where to stop
    steps = sorted(out.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    models = {"target": target, **({"retain": retain_model} if retain_model else {}),
              **{f"step {p.name.split('_')[1]}": str(p) for p in steps}, "unlearned": str(out / "final")}
    c = recipe.cluster
    task = ray.remote(num_cpus=min(c.cpus_per_worker, 1), num_gpus=1 if c.use_gpu else 0,
                      **outside_placement_group())(evaluate_checkpoints)
    start = time.perf_counter()
    rows, notes = ray.get(task.remote(unlearn_recipe, models, sets, out))
    stage_seconds["evaluate + attacks"] = time.perf_counter() - start
    (out / "unlearning_eval.json").write_text(json.dumps({"models": models, "metrics": rows, "notes": notes},
                                                         indent=1))
    plot = forget_vs_utility_plot(rows, out / "forget_vs_utility.png")
    relearn = (f"relearning = {u.relearn_steps} SFT steps at lr {u.relearn_lr}, {notes['relearn']}; "
               if "relearn" in notes else "")
    section = ["## Unlearning evaluation", ""]
    caveat = plumbing_caveat(rows)
    if caveat:
        log.warning("%s", caveat)
        section += [f"**{caveat}**", ""]
    section += [f"Forget set: {len(sets['forget'])} items of `{recipe.data.train}` split `{recipe.data.train_split}`; "
                f"retain: {len(sets['retain'])}; holdout (non-members): {len(sets['holdout'])}. Attacks: {relearn}"
                "intN = linear weights rounded to N bits (RTN, per channel). Metric definitions: "
                "alignkit/evaluation/unlearning.py.", "", results_table(rows), ""]
    if plot:
        section += [f"![forget vs utility]({plot.name})", ""]
    facts = trained.facts(unlearn_recipe) | {f"{k} wall time": f"{v:.0f} s" for k, v in stage_seconds.items()}
    facts["models"] = ", ".join(f"{k}: {v}" for k, v in models.items())
    report = write_report(out, {"title": f"alignkit unlearning run `{recipe.run.name}`", "facts": facts}, None, [],
                          sections=section)
    log.info("report: %s", report)
    return out
