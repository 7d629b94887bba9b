"""Reward models (`reward_pairs` objectives: reward_bt, causal_rm): train a backbone + scalar head in Ray Train
workers, then run the reward evaluation suite (held-out and distribution-shifted accuracy, length sensitivity,
counterfactual edits, best-of-n selection, calibration) on the trained model, and write one report."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from alignkit.config.schema import Recipe
from alignkit.data.encode import EncodeSettings
from alignkit.pipelines.preference import train_stage
from alignkit.rundir import RunDirectory

log = logging.getLogger(__name__)


def run(recipe: Recipe, run_dir: RunDirectory | None = None) -> Path:
    from alignkit.evaluation.reward import load_suite

    load_suite(recipe.eval.suite)  # a bad suite fails now, not after training
    trained = train_stage(recipe, stale=("report.md", "reward_eval.json", "calibration.png"), run_dir=run_dir)
    out = trained.out
    results = evaluate(recipe, out / "final")
    (out / "reward_eval.json").write_text(json.dumps(results, indent=1))
    from alignkit.evaluation.report import write_report
    from alignkit.evaluation.reward import calibration_plot, results_table

    plot = calibration_plot(results, out / "calibration.png")
    binning = trained.info["binning"]
    section = ["## Reward-model evaluation", "",
               f"Spurious attribute `{recipe.data.spurious_attribute}`: {binning.describe()}. Metrics are defined in "
               "`alignkit/evaluation/reward.py` (accuracy: pairwise; cf_delta: reward change from one appended "
               "filler sentence, in reward std units; bon_*: best-of-6 selection over {chosen, rejected} x "
               "{0, 1, 2 fillers}).", "", results_table(results), ""]
    if plot:
        section += [f"![calibration]({plot.name})", ""]
    facts = trained.facts(recipe, f"; evaluation suite {recipe.eval.suite or '(recipe data.eval)'}")
    report = write_report(out, {"title": f"alignkit reward model `{recipe.run.name}`", "facts": facts}, None, [],
                          sections=section)
    log.info("report: %s", report)
    return out


def evaluate(recipe: Recipe, model_dir: Path) -> dict:
    """The suite on the trained model, in a Ray task (on a GPU if the cluster has them)."""
    import ray

    from alignkit.evaluation.reward import load_sets, load_suite, score_sets
    from alignkit.ray_session import cpu_threads, outside_placement_group

    d, c = recipe.data, recipe.cluster
    settings = EncodeSettings(d.max_length, d.max_prompt_length, d.truncation_mode, d.chat_template == "auto")
    # Suite and data are read here, in the driver (workers may run on other machines), and shipped to the task.
    suite = load_suite(recipe.eval.suite)
    sets = load_sets(suite, d.eval, d.eval_split, d.seed)
    task = ray.remote(num_cpus=min(c.cpus_per_worker, 1), num_gpus=1 if c.use_gpu else 0,
                      **outside_placement_group())(score_sets)
    start = time.perf_counter()
    results = ray.get(task.remote(str(model_dir), sets, suite, settings=settings, dtype=recipe.model.dtype,
                                  batch_size=recipe.eval.batch_size,
                                  threads=cpu_threads(c.cpus_per_worker * c.num_workers)))
    log.info("reward evaluation in %.1f s", time.perf_counter() - start)
    return results
