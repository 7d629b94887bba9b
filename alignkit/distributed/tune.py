"""Ray Tune sweeps over recipe keys: `python launch.py RECIPE --sweep`.

Each trial is a normal run (its own run directory, Ray Train workers, report) with the sampled keys applied as
overrides. Its training workers report every evaluation to Tune through Ray's Train/Tune integration (so ASHA can
stop weak trials at eval steps); the trial reports the final generation metrics at the end. Under PBT the workers'
checkpoint reports reach Tune with their checkpoints, and PBT restarts weak trials from strong trials' ones.
`sweep.search` picks Tune's search algorithm; `--sweep` on an interrupted sweep resumes it (Tuner.restore). Results:
a table sorted by the metric (CSV and Markdown), the best trial's recipe as a YAML file that runs as-is, and a plot of
the metric per trial."""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import shutil
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


def _search_space(space: dict, mutations: bool = False):
    """sweep.space as Tune's search space; `mutations`: as PBT's hyperparam_mutations, where a grid or choice is a
    plain list (PBT steps to a neighbouring entry or resamples) and a range is scaled by 0.8 or 1.2 (or resampled)."""
    from ray import tune

    makers = {"grid": list if mutations else tune.grid_search, "choice": list if mutations else tune.choice,
              "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
              "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1]))}
    return {key: makers[kind](arg) for key, spec in space.items() for kind, arg in spec.items()}


def _within_ranges(space: dict):
    """PBT scales a uniform / loguniform value by 0.8 or 1.2 without bounds: keep it inside the swept range (its
    edges were validated before the sweep; a learning rate could otherwise drift without limit)."""
    ranges = {key: (float(arg[0]), float(arg[1])) for key, spec in space.items() for kind, arg in spec.items()
              if kind in ("uniform", "loguniform")}

    def clip(config: dict) -> dict:
        for key, (low, high) in ranges.items():
            config["values"][key] = min(max(config["values"][key], low), high)
        return config

    return clip


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
    """One Tune trial: a normal run with the sampled values. Its Ray Train workers report every evaluation to Tune
    themselves (ray.train.report -> Ray's TuneReportCallback, see distributed/ray_train.py), so ASHA decides on
    them; the trial adds the metrics computed after training (generations, reward-model suite) at the end."""
    from ray import tune

    values = config["values"]
    trial_id = tune.get_context().get_trial_id()
    trial_name = f"{config['name']}_{trial_id}"
    recipe = with_overrides(config["base"], values, config["source"])
    recipe.run.name = trial_name
    recipe.run.group = config["name"]  # trackers group a sweep's trials under the sweep's name
    recipe.run.output_dir = str(Path(config["sweep_dir"]) / trial_name)
    # the trial's directory is its own: a trial rerun after an interrupted sweep replaces its partial files
    recipe.run.overwrite = True
    pbt = recipe.sweep.scheduler == "pbt"
    if pbt:
        _pbt_member(recipe, values, run)
    else:
        run(recipe)
    final = final_metrics(Path(recipe.output_dir))
    if pbt:  # PBT acts on reports with a step: a finished trial is not restarted
        del final["step"]
    tune.report({**final, "done": True, "run_dir": recipe.output_dir})


def _pbt_member(recipe: Recipe, values: dict, run) -> None:
    """A PBT trial checkpoints every `sweep.perturbation_interval` steps; those checkpoints reach Tune with their
    reports (distributed/ray_train.py). When PBT restarts the trial from a strong trial's checkpoint with mutated
    values, `tune.get_checkpoint()` is that checkpoint: the run resumes from its step, in the trial's own directory,
    with the new values (optim.lr through the restored schedule: Placement.rebase_lr). `pbt.jsonl` in the trial's
    directory records every such restart."""
    from ray import tune

    recipe.trainer.checkpoint_every = recipe.sweep.perturbation_interval
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run(recipe)
        return
    out = Path(recipe.output_dir)
    if "://" not in recipe.storage_path:  # the Ray Train checkpoints of earlier incarnations: Tune holds copies
        for earlier in Path(recipe.storage_path).glob(f"{recipe.run.name}-*"):
            shutil.rmtree(earlier, ignore_errors=True)
    # a copy in the trial's directory: the donor keeps training and Tune deletes its older checkpoints
    shutil.rmtree(out / "pbt_resume", ignore_errors=True)  # left by a restart that was itself stopped
    local = Path(checkpoint.to_directory(str(out / "pbt_resume")))
    try:
        step = json.loads((local / "trainer_state.json").read_text())["step"]
        log.info("PBT: %s continues at step %d from %s with %s", recipe.run.name, step, checkpoint.path, values)
        with open(out / "pbt.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "values": values, "checkpoint": str(checkpoint.path)}) + "\n")
        recipe.run.resume = str(local)
        run(recipe)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def final_metrics(out: Path) -> dict:
    """A finished run's metrics: the last evaluation, the last value of every online/ and train/ metric, the
    held-out generations (gen/) and the reward-model suite (reward/<set>/<metric>)."""
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final: dict = {"step": records[-1]["step"]}
    for record in records:
        final.update({k: v for k, v in record.items() if k.startswith(("eval/", "online/", "train/"))})
    behaviour_path = out / "behaviour.json"
    if behaviour_path.exists():
        final.update(json.loads(behaviour_path.read_text())["final"]["metrics"])
    reward_path = out / "reward_eval.json"
    if reward_path.exists():  # reward models: reward/<set>/<metric>, e.g. reward/shifted/accuracy
        final.update({f"reward/{name}/{k}": v for name, m in json.loads(reward_path.read_text()).items()
                      for k, v in m.items() if isinstance(v, (int, float))})
    return final


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
    # an earlier sweep of this name is refused, or with run.overwrite replaced once this one has finished; an
    # interrupted one (its Tune experiment without results.md) is resumed
    from ray.tune import Tuner

    interrupted = (not recipe.run.overwrite and not (sweep_dir / "results.md").exists()
                   and Tuner.can_restore(str(tune_experiment(sweep_dir, recipe.run.name))))
    record = sweep_dir / "sweep_recipe.yaml"  # what the sweep was started with: Tune resumes that search
    if interrupted and record.exists():
        changed = _changed_keys(record.read_text(), recipe)
        if changed:
            raise RecipeError(f"{sweep_dir} holds an interrupted sweep started with other values of "
                              f"{', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''} ({record}); resuming it "
                              "would keep its own recipe and search space. Run it as it was to resume it, or set "
                              "run.overwrite=true to start this sweep anew; nothing was changed")
    with run_directory(RunDirectory(sweep_dir, recipe.run.overwrite, resume=interrupted)) as directory:
        directory.claim()
        if not interrupted:
            record.write_text(dump_recipe(recipe))
        try:
            return _run_tuner(recipe, sweep_dir, run)
        except BaseException:
            if not Tuner.can_restore(str(tune_experiment(sweep_dir, recipe.run.name))):
                record.unlink(missing_ok=True)  # failed before Tune saved anything: nothing to resume
            raise


def _changed_keys(saved_yaml: str, recipe: Recipe) -> list[str]:
    """The dotted recipe keys whose values differ between a saved recipe and `recipe` (keys only one side has, from
    another alignkit version, are not compared). Tune resumes a sweep with the recipe it started with (the trials'
    base recipe is part of its saved search), so any difference would be ignored silently."""
    from omegaconf import OmegaConf

    def flat(data: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict) and value and key != "space":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old = flat(OmegaConf.to_container(OmegaConf.create(saved_yaml)))
    new = flat(OmegaConf.to_container(OmegaConf.create(dump_recipe(recipe))))
    return sorted(k for k in old.keys() & new.keys() if old[k] != new[k])


def _search_algorithm(sw):
    """sweep.search: random / grid (Tune's variant generator), optuna (TPE) or hyperopt through Tune's searchers."""
    if sw.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sw.seed)
    if sw.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=sw.seed)
    from ray.tune.search import BasicVariantGenerator

    # seeded, so a recipe samples the same trials every time (Tune's default generator is not)
    return BasicVariantGenerator(max_concurrent=sw.max_concurrent_trials, random_state=sw.seed)


@contextlib.contextmanager
def _interruption():
    """A flag that is set when Tune reports that it stopped the experiment on Ctrl-C (Tune handles the signal
    itself, saves the state and returns from fit(); its warning is the one sign of it)."""
    flag: list[bool] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "has been interrupted" in record.getMessage():
                flag.append(True)

    watch, logger = Watch(level=logging.WARNING), logging.getLogger("ray.tune.tune")
    logger.addHandler(watch)
    try:
        yield flag
    finally:
        logger.removeHandler(watch)


def tune_experiment(sweep_dir: Path, name: str) -> Path:
    return sweep_dir / "tune" / f"{name}-tune"


def _run_tuner(recipe: Recipe, sweep_dir: Path, run) -> Path:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from alignkit.distributed.ray_train import ensure_ray

    sw = recipe.sweep
    ensure_ray()
    # A trial's reports before its end may lack the sweep's metric (gen/ and reward/ metrics exist only once it has
    # finished; online/ metrics once a round has run): ASHA skips such results, and the search algorithms read the
    # final one, which has it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # `run` (the pipeline runner) reaches the trials through tune.with_parameters: distributed/ imports no pipeline
    trainable = tune.with_resources(tune.with_parameters(_trial, run=run), {"CPU": sw.trial_cpus})
    experiment = tune_experiment(sweep_dir, recipe.run.name)
    if tune.Tuner.can_restore(str(experiment)):  # an interrupted sweep: finished trials stay, the rest run
        log.info("resuming the interrupted sweep in %s", experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        scheduler = None
        if sw.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=sw.grace_period, max_t=10**6)
        elif sw.scheduler == "pbt":  # decides on optimizer steps, at the checkpoint reports (every interval)
            mutations = {"values": _search_space(sw.space, mutations=True)}
            scheduler = PopulationBasedTraining(time_attr="step", perturbation_interval=sw.perturbation_interval,
                                                hyperparam_mutations=mutations,
                                                custom_explore_fn=_within_ranges(sw.space),
                                                require_attrs=False)  # the final reports carry no step
        search = _search_algorithm(sw)
        param_space = {"values": _search_space(sw.space), "base": recipe_to_dict(recipe), "source": recipe.source,
                       "name": recipe.run.name, "sweep_dir": str(sweep_dir)}
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=sw.metric, mode=sw.mode, num_samples=sw.num_samples,
                                        scheduler=scheduler, search_alg=search,
                                        # the variant generator limits itself; the searchers are wrapped
                                        max_concurrent_trials=None if sw.search in ("random", "grid")
                                        else sw.max_concurrent_trials),
            # PBT's checkpoints: a trial's newest 8 (a restarting trial copies its donor's while the donor trains on)
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent), verbose=1,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=8)),
        )
    start = time.perf_counter()
    with _interruption() as interrupted:
        results = tuner.fit()
    if interrupted:  # Ctrl-C: Tune saved the experiment's state; no results yet, the next `--sweep` resumes it
        if recipe.run.overwrite:  # the earlier sweep comes back (rundir): this one's partial state goes
            raise AlignkitError("the sweep was interrupted (with run.overwrite: the command again starts it anew)")
        raise AlignkitError(f"the sweep was interrupted; its state is in {experiment}: run the same command again to "
                            "resume it (finished trials are kept)")
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
    pbt = ("# PBT changed this trial's values during training (its restarts and values: pbt.jsonl in its directory);"
           " these are its last ones, so this recipe does not replay its schedule\n") if sw.scheduler == "pbt" else ""
    (sweep_dir / "best_recipe.yaml").write_text(
        f"# best trial of the sweep {recipe.run.name}: {best['trial']} ({sw.metric} = {fmt(best[sw.metric])})\n"
        + pbt + dump_recipe(best_recipe))
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
