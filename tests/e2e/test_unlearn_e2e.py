"""The unlearning pipeline end to end through the CLI on tiny-llama: NPO+RT in a Ray Train worker, then the suite on
target / retain / unlearned models and both attacks, one report. The default run skips the learn stage (target and
retain = the tiny model) and uses the torch backend to stay fast; the slow test runs the recipe as shipped (2
DeepSpeed workers, learn stage) twice and checks that the second run finds the learned models in the cache."""
import json
import re

import pytest

from tests.e2e.test_cli import assert_clean_error, launch

ROWS = {"target", "retain", "unlearned", "unlearned int8", "unlearned int4", "unlearned + relearn"}


def test_tiny_unlearning_run_without_learn_stage(tmp_path):
    out = tmp_path / "run"
    proc = launch("recipes/unlearn/tiny_debug.yaml", f"run.output_dir={out}", "unlearn.learn=false",
                  "unlearn.retain_model_path=builtin:tiny-llama", "trainer.backend=torch", "trainer.zero_stage=0",
                  "cluster.num_workers=1", "trainer.export_every=1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "unlearning_eval.json").read_text())
    assert set(result["metrics"]) == ROWS | {"step 1"}  # trainer.export_every: the model after step 1 too
    target, retain = result["metrics"]["target"], result["metrics"]["retain"]
    assert target["forget_quality"] == pytest.approx(1.0)  # the same model as the retain model here
    assert retain["forget/prob"] == pytest.approx(target["forget/prob"])
    unlearned = result["metrics"]["unlearned"]
    assert unlearned["forget/prob"] < target["forget/prob"]  # NPO lowered the forget answers' probability
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["eval/npo_loss"] == pytest.approx(20 * 0.693147, abs=1e-3)
    report = (out / "report.md").read_text()
    assert "## Unlearning evaluation" in report and "| forget_quality |" in report
    assert (out / "forget_vs_utility.png").exists()
    # What the report may claim: one author (forget01) -> the attack splits by item; the random target learned
    # nothing (a plumbing check); eval split = train split is not "held out"; one clock for the whole run.
    assert "one author: split by item" in report and "measured on the other 3 items" in report
    assert "Plumbing check only" in report
    assert "records of the training split (not held out)" in report and "held-out records" not in report
    seconds = {k: int(v) for k, v in re.findall(r"(total|learn \(or cache\)|unlearn|evaluate \+ attacks) wall "
                                                 r"time[^:]*: (\d+) s", report)}
    assert seconds["total"] >= seconds["unlearn"] + seconds["evaluate + attacks"] - 1, seconds


def test_unlearning_recipe_on_data_without_qa_fields(tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"text": "a raw document"}\n{"text": "another one"}\n')
    assert_clean_error(launch("recipes/unlearn/tiny_debug.yaml", f"data.train={forget}", "data.train_split=train",
                              f"run.output_dir={tmp_path}/run", "unlearn.learn=false"),
                       "lacks ['question', 'answer']")
    assert_clean_error(launch("recipes/unlearn/tiny_debug.yaml", "eval.suite=evals/missing.yaml",
                              f"run.output_dir={tmp_path}/run2", "unlearn.learn=false"),
                       "evals/missing.yaml does not exist")


def test_learn_stage_cache_key_ignores_settings_that_do_not_change_the_weights(tmp_path, monkeypatch):
    from alignkit.config import load_recipe
    from alignkit.pipelines.unlearn import learn_recipe

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    base = load_recipe("recipes/unlearn/npo_builtin.yaml")
    paths = {learn_recipe(load_recipe("recipes/unlearn/npo_builtin.yaml", overrides), "target").output_dir
             for overrides in ([], ["trainer.export_every=4"], ["trainer.progress_bar=false"])}
    assert len(paths) == 1
    assert learn_recipe(load_recipe("recipes/unlearn/npo_builtin.yaml", ["trainer.export_every=4"]),
                        "target").trainer.export_every == 0  # the learn stage does not export along the way
    assert learn_recipe(base, "target").output_dir != learn_recipe(load_recipe(
        "recipes/unlearn/npo_builtin.yaml", ["unlearn.learn_lr=1e-4"]), "target").output_dir


@pytest.mark.slow
def test_tiny_unlearning_run_with_learn_stage_and_cache(tmp_path):
    env_cache = tmp_path / "cache"
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        proc = launch("recipes/unlearn/tiny_debug.yaml", f"run.output_dir={out}", timeout=900,
                      env={"ALIGNKIT_CACHE": str(env_cache)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert set(json.loads((out / "unlearning_eval.json").read_text())["metrics"]) == ROWS
    # the second run found both learned models in the cache
    assert proc.stderr.count("learn stage `learn_target`: cached") == 1
    assert proc.stderr.count("learn stage `learn_retain`: cached") == 1
