"""Ray Tune sweeps over recipe keys: `python launch.py RECIPE --sweep`.

Each trial is a normal run (its own run directory, Ray Train workers, report) with the sampled keys applied as
overrides. The trial process reports held-out metrics to Tune as they appear in its metrics.jsonl (so ASHA can stop
weak trials at eval steps) and the final generation metrics at the end. Results: a table sorted by the metric
(CSV and Markdown), the best trial's recipe as a YAML file that runs as-is, and a plot of the metric per trial."""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import threading
import time
from pathlib import Path

from alignkit.config.loader import dump_recipe, recipe_from_dict, recipe_to_dict
from alignkit.config.schema import Recipe
from alignkit.errors import AlignkitError, RecipeError
from alignkit.rundir import RunDirectory, run_directory

log = logging.getLogger(__name__)


def with_overrides(base: dict, values: dict, source: str) -> Recipe:
    """The recipe `base` (plain data) with dotted keys set to `values`, validated."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    return recipe_from_dict(data, source=source)


def _search_space(space: dict):
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice,
              "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
              "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1]))}
    return {key: makers[kind](arg) for key, spec in space.items() for kind, arg in spec.items()}


def _check_values(recipe: Recipe) -> None:
    """Build a trial recipe for the edge values of every swept key, so a bad value fails before any trial runs."""
    base = recipe_to_dict(recipe)
    for key, spec in recipe.sweep.space.items():
        kind, arg = next(iter(spec.items()))
        for value in arg:
            try:
                with_overrides(base, {key: value}, recipe.source)
            except RecipeError as exc:
                raise RecipeError(f"sweep value {key}={value!r}: {exc}") from None


def _trial(config: dict, run) -> None:
    """One Tune trial: a normal run with the sampled values, metrics forwarded to Tune as they are logged."""
    from ray import tune

    values = config["values"]
    trial_id = tune.get_context().get_trial_id()
    trial_name = f"{config['name']}_{trial_id}"
    recipe = with_overrides(config["base"], values, config["source"])
    recipe.run.name = trial_name
    recipe.run.group = config["name"]  # trackers group a sweep's trials under the sweep's name
    recipe.run.output_dir = str(Path(config["sweep_dir"]) / trial_name)
    metrics_path = Path(recipe.output_dir) / "metrics.jsonl"
    outcome: dict = {}

    def fit() -> None:
        try:
            run(recipe)
        except BaseException as exc:  # surfaced below, in the trial's own thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    reported = 0
    last_eval: dict = {}
    online: dict = {}  # online runs: the latest value of every online/ metric (round and held-out metrics)
    while True:
        alive = thread.is_alive()
        if metrics_path.exists():
            lines = metrics_path.read_text().splitlines()
            for line in lines[reported:]:
                record = json.loads(line)
                online.update({k: v for k, v in record.items() if k.startswith("online/")})
                evals = {k: v for k, v in record.items() if k.startswith("eval/") or k.startswith("online/eval")}
                if evals and record["step"] > 0:
                    last_eval = {**evals, **online, **{k: v for k, v in record.items() if k.startswith("train/")}}
                    tune.report({**last_eval, "step": record["step"], "done": False})
            reported = len(lines)
        if not alive:
            break
        time.sleep(2)
    if "error" in outcome:
        raise outcome["error"]
    behaviour_path = Path(recipe.output_dir) / "behaviour.json"
    final = {**last_eval, **online}
    if behaviour_path.exists():
        final.update(json.loads(behaviour_path.read_text())["final"]["metrics"])
    reward_path = Path(recipe.output_dir) / "reward_eval.json"
    if reward_path.exists():  # reward models: reward/<set>/<metric>, e.g. reward/shifted/accuracy
        final.update({f"reward/{name}/{k}": v for name, m in json.loads(reward_path.read_text()).items()
                      for k, v in m.items() if isinstance(v, (int, float))})
    records = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    final.update({k: v for k, v in records[-1].items() if k.startswith("train/")})
    tune.report({**final, "step": records[-1]["step"], "done": True, "run_dir": recipe.output_dir})


def run_sweep(recipe: Recipe, run) -> Path:
    """Sweep `recipe.sweep.space` with Ray Tune; every trial is `run(trial_recipe)` (alignkit.pipelines.run_pipeline)
    and reports its metrics."""
    sw = recipe.sweep
    if not sw.space:
        raise RecipeError(f"--sweep needs a `sweep.space` in {recipe.source} (for example "
                          "`sweep: {space: {optim.lr: {loguniform: [1.0e-6, 1.0e-4]}}, metric: eval/loss}`)")
    _check_values(recipe)
    if sw.scheduler == "asha" and not recipe.trainer.eval_every:
        raise RecipeError("sweep.scheduler: asha needs trainer.eval_every > 0 (ASHA decides at evaluations)")
    sweep_dir = Path(recipe.output_dir).resolve().with_name(Path(recipe.output_dir).name + "-sweep")
    # an earlier sweep of this name is refused, or with run.overwrite replaced once this one has finished
    with run_directory(RunDirectory(sweep_dir, recipe.run.overwrite, resume=False)) as directory:
        directory.claim()
        return _run_tuner(recipe, sweep_dir, run)


def _run_tuner(recipe: Recipe, sweep_dir: Path, run) -> Path:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from alignkit.distributed.ray_train import ensure_ray

    sw = recipe.sweep
    ensure_ray()
    scheduler = None
    if sw.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=sw.grace_period, max_t=10**6)
    param_space = {"values": _search_space(sw.space), "base": recipe_to_dict(recipe), "source": recipe.source,
                   "name": recipe.run.name, "sweep_dir": str(sweep_dir)}
    # `run` (the pipeline runner) reaches the trials through tune.with_parameters: distributed/ imports no pipeline
    trainable = tune.with_resources(tune.with_parameters(_trial, run=run), {"CPU": sw.trial_cpus})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=sw.metric, mode=sw.mode, num_samples=sw.num_samples, scheduler=scheduler,
                                    max_concurrent_trials=sw.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"{recipe.run.name}-tune", storage_path=str(sweep_dir / "tune"), verbose=1),
    )
    start = time.perf_counter()
    results = tuner.fit()
    log.info("sweep of %d trials finished in %.0f s", len(results), time.perf_counter() - start)
    return write_sweep_results(recipe, results, sweep_dir)


def write_sweep_results(recipe: Recipe, results, sweep_dir: Path) -> Path:
    sw = recipe.sweep
    rows = []
    for result in results:
        values = (result.config or {}).get("values", {})
        metrics = result.metrics or {}
        rows.append({"trial": Path(str(metrics.get("run_dir", result.path))).name, **values,
                     sw.metric: metrics.get(sw.metric), "finished": bool(metrics.get("done")),
                     "error": str(result.error).splitlines()[-1][:200] if result.error else "",
                     "run_dir": metrics.get("run_dir", "")})
    sign = 1 if sw.mode == "min" else -1
    rows.sort(key=lambda r: (r[sw.metric] is None or (isinstance(r[sw.metric], float) and math.isnan(r[sw.metric])),
                             sign * (r[sw.metric] or 0.0)))
    columns = ["trial", *sw.space, sw.metric, "finished", "error", "run_dir"]
    with open(sweep_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = [f"# Sweep `{recipe.run.name}`: {sw.metric} ({sw.mode})", "",
          "| " + " | ".join(columns[:-1]) + " |", "|" + "---|" * (len(columns) - 1)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns[:-1]) + " |" for r in rows]
    (sweep_dir / "results.md").write_text("\n".join(md) + "\n")
    _plot(rows, sw.metric, sweep_dir / "sweep.png")
    best = next((r for r in rows if r[sw.metric] is not None and r["run_dir"]), None)
    if best is None:
        raise AlignkitError(f"no trial reported {sw.metric}; see {sweep_dir / 'results.md'}")
    best_recipe = recipe_from_dict(recipe_to_dict(with_overrides(recipe_to_dict(recipe), {
        k: best[k] for k in sw.space}, recipe.source)), source=recipe.source)
    best_recipe.run.name = f"{recipe.run.name}_best"
    best_recipe.run.output_dir = None
    best_recipe.sweep.space = {}
    (sweep_dir / "best_recipe.yaml").write_text(
        f"# best trial of the sweep {recipe.run.name}: {best['trial']} ({sw.metric} = {fmt(best[sw.metric])})\n"
        + dump_recipe(best_recipe))
    log.info("best trial %s: %s = %s; recipe: %s", best["trial"], sw.metric, fmt(best[sw.metric]),
             sweep_dir / "best_recipe.yaml")
    return sweep_dir


def _plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r[metric] is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(done) + 2), 3.2))
    ax.bar(range(len(done)), [r[metric] for r in done], color="tab:blue")
    ax.set_xticks(range(len(done)), [r["trial"].rsplit("_", 1)[-1] for r in done], rotation=45, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (sorted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
