"""A real 2-trial Ray Tune sweep (trials start their own 2-worker TorchTrainer with fractional CPUs)."""
import csv

import pytest

from tests.e2e.test_cli import launch


@pytest.mark.slow  # 67-75 s; keeps the default run under 10 minutes on 2 cores
def test_two_trial_sweep(tmp_path):
    out = tmp_path / "tiny_sweep"
    # with held-out generations: a trial's evaluation tasks must leave its 0.1-CPU placement group
    proc = launch("recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}", "eval.generate=true", "--sweep",
                  timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep_dir = tmp_path / "tiny_sweep-sweep"
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 2 and all(r["finished"] == "True" for r in rows)
    losses = [float(r["eval/loss"]) for r in rows]
    assert losses == sorted(losses)  # sorted by the metric (mode min)
    assert {float(r["optim.lr"]) for r in rows} == {1e-3, 1e-4}
    for r in rows:  # each trial is a normal run directory
        assert (sweep_dir / r["trial"] / "metrics.jsonl").exists() and (sweep_dir / r["trial"] / "final").exists()
        assert (sweep_dir / r["trial"] / "behaviour.json").exists()  # the generations ran
    assert (sweep_dir / "results.md").exists() and (sweep_dir / "sweep.png").exists()
    best = sweep_dir / "best_recipe.yaml"
    assert f"lr: {float(rows[0]['optim.lr'])}" in best.read_text()
    dry = launch(str(best), "--dry-run")
    assert dry.returncode == 0, dry.stderr


@pytest.mark.slow  # ~2 min: two whole online runs, each with its engine actor and trainer worker
def test_a_sweep_of_an_online_recipe(tmp_path):
    out = tmp_path / "online_sweep"
    proc = launch("recipes/sweeps/online_tiny.yaml", f"run.output_dir={out}", "--sweep", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader(open(tmp_path / "online_sweep-sweep" / "results.csv")))
    assert len(rows) == 2 and all(r["finished"] == "True" for r in rows)
    assert {int(float(r["online.samples_per_prompt"])) for r in rows} == {2, 4}
    for r in rows:  # each trial is an online run directory with its rounds
        assert (tmp_path / "online_sweep-sweep" / r["trial"] / "rounds.json").exists()


def test_sweep_validation_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(__import__("tests.conftest").conftest.REPO / "recipes/sweeps/tiny_lr_beta.yaml")
                   + "\nsweep: {space: {optim.lrr: {grid: [1, 2]}}}\n")
    proc = launch(str(bad), "--sweep")
    assert proc.returncode == 2 and "unknown swept key `optim.lrr`" in proc.stderr and "optim.lr" in proc.stderr
    bad.write_text(bad.read_text().replace("optim.lrr: {grid: [1, 2]}", "objective.beta: {grid: [-1.0]}"))
    proc = launch(str(bad), "--sweep")
    assert proc.returncode == 2 and "sweep value objective.beta=-1.0" in proc.stderr
    proc = launch("recipes/dpo/tiny_debug.yaml", "--sweep")
    assert proc.returncode == 2 and "needs a `sweep.space`" in proc.stderr


@pytest.mark.slow
def test_asha_sweep_with_random_search(tmp_path):
    out = tmp_path / "asha"
    proc = launch("recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}", "trainer.max_steps=3",
                  "sweep.scheduler=asha", "sweep.num_samples=3", "sweep.grace_period=1",
                  "sweep.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, objective.beta: {choice: [0.1, 0.5]}}",
                  "--sweep", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader(open(tmp_path / "asha-sweep" / "results.csv")))
    assert len(rows) == 3 and all(1e-4 <= float(r["optim.lr"]) <= 1e-2 for r in rows)


@pytest.mark.slow  # ~2 min: a sweep stopped with Ctrl-C after its first trial, then the same command again
def test_an_interrupted_sweep_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "resumed"
    cmd = [sys.executable, "launch.py", "recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}", "--sweep"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "resumed-sweep"
    deadline = time.time() + 600
    while not list(sweep_dir.glob("*/report.md")):  # the first trial has finished
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(1)
    first = next(sweep_dir.glob("*/report.md"))
    stamp = first.stat().st_mtime
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "the sweep was interrupted" in err and not (sweep_dir / "results.md").exists()
    # resumed with another search space, Tune would silently keep the old one: refused, nothing changed
    other = launch("recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}",
                   "sweep.space={optim.lr: {grid: [1.0e-2, 1.0e-3]}}", "--sweep", timeout=300)
    assert other.returncode == 2 and "interrupted sweep started with other values of sweep.space" in other.stderr
    assert first.stat().st_mtime == stamp and not (sweep_dir / "results.md").exists()
    again = launch("recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}", "--sweep", timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 2 and all(r["finished"] == "True" for r in rows)
    assert first.stat().st_mtime == stamp  # the finished trial was not run again


@pytest.mark.slow  # ~2 min
def test_optuna_search(tmp_path):
    out = tmp_path / "tpe"
    proc = launch("recipes/sweeps/tiny_lr_beta.yaml", f"run.output_dir={out}", "sweep.search=optuna",
                  "sweep.num_samples=2", "sweep.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}", "--sweep",
                  timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader(open(tmp_path / "tpe-sweep" / "results.csv")))
    assert len(rows) == 2 and all(1e-4 <= float(r["optim.lr"]) <= 1e-2 and r["finished"] == "True" for r in rows)


def test_search_validation(tmp_path):
    assert_bad = __import__("tests.e2e.test_cli", fromlist=["assert_clean_error"]).assert_clean_error
    assert_bad(launch("recipes/sweeps/tiny_lr_beta.yaml", "sweep.search=optuna", "--dry-run"),
               "optuna samples its own points; use choice instead of grid")
    assert_bad(launch("recipes/sweeps/tiny_lr_beta.yaml", "sweep.search=grid",
                      "sweep.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}", "--dry-run"),
               "grid needs every sweep.space entry to be a grid")


@pytest.mark.slow  # ~3 min: 2 trials together, restarted by PBT from each other's checkpoints
def test_pbt_restarts_weak_trials_from_strong_ones(tmp_path):
    import json

    out = tmp_path / "pbt"
    proc = launch("recipes/sweeps/tiny_pbt.yaml", f"run.output_dir={out}", "--sweep", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep_dir = tmp_path / "pbt-sweep"
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 2 and all(r["finished"] == "True" for r in rows)
    restarts = {r["trial"]: [json.loads(x) for x in (sweep_dir / r["trial"] / "pbt.jsonl").read_text().splitlines()]
                for r in rows if (sweep_dir / r["trial"] / "pbt.jsonl").exists()}
    # an exploit: a trial continued from the other trial's Tune checkpoint (Tune names trial dirs _trial_<id>_...)
    own = {trial: "_trial_" + "_".join(trial.rsplit("_", 2)[-2:]) + "_" for trial in restarts}
    cloned = [(trial, x) for trial, xs in restarts.items() for x in xs if own[trial] not in x["checkpoint"]]
    assert cloned, restarts
    for trial, xs in restarts.items():
        last = xs[-1]  # after its last restart the trial trains with that restart's (mutated) lr: constant schedule
        records = [json.loads(x) for x in (sweep_dir / trial / "metrics.jsonl").read_text().splitlines()]
        after = [r["train/lr"] for r in records if r["step"] > last["step"] and "train/lr" in r]
        assert after and all(lr == pytest.approx(last["values"]["optim.lr"], rel=1e-9) for lr in after), (trial, xs)
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps)) and steps[-1] == 12  # one curve, no duplicated steps
        assert len(list((sweep_dir / trial / "checkpoints").iterdir())) == 1  # earlier incarnations' are removed
        assert not (sweep_dir / trial / "pbt_resume").exists()
    assert "PBT changed this trial's values" in (sweep_dir / "best_recipe.yaml").read_text()
    assert (sweep_dir / "tune" / "tiny_pbt-tune" / "pbt_global.txt").exists()  # Tune's own log of every exploit


def test_random_search_is_seeded_by_sweep_seed():
    """The same recipe samples the same trials (Tune's default variant generator draws unseeded)."""
    from ray.tune.experiment import Experiment

    from alignkit.config import load_recipe
    from alignkit.distributed.tune import _search_algorithm, _search_space

    def draws(seed):
        recipe = load_recipe("recipes/sweeps/tiny_lr_beta.yaml", [
            f"sweep.seed={seed}", "sweep.num_samples=3", "sweep.max_concurrent_trials=3",
            "sweep.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, objective.beta: {choice: [0.1, 0.3, 0.5]}}"])
        search = _search_algorithm(recipe.sweep)
        search.add_configurations([Experiment("draws", run=lambda config: None, num_samples=3,
                                              config={"values": _search_space(recipe.sweep.space)})])
        trials = iter(search.next_trial, None)
        return [tuple(trial.config["values"].values()) for trial in trials]

    first = draws(0)
    assert len(first) == 3 and len(set(first)) == 3
    assert draws(0) == first and draws(1) != first


@pytest.mark.slow  # ~1 min: both trials stop at their first checkpoint
def test_pbt_on_a_metric_the_run_does_not_report_stops_with_its_names(tmp_path):
    out = tmp_path / "typo"
    proc = launch("recipes/sweeps/tiny_pbt.yaml", f"run.output_dir={out}", "sweep.metric=eval/los", "--sweep",
                  timeout=900)
    assert proc.returncode == 2 and "no trial reported eval/los" in proc.stderr, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "typo-sweep" / "results.csv")))
    assert len(rows) == 2 and all("sweep.metric eval/los is not among the metrics" in r["error"] for r in rows), rows
    assert all("eval/loss" in r["error"] for r in rows)  # the names it does report
