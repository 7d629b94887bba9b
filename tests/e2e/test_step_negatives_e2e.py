"""Per-step negatives as a user runs it: `python launch.py recipes/step_negatives/tiny_debug.yaml` — π_sft, samples,
Q̂ of every step prefix, per-step DPO pairs, training and held-out generations; a second method on the same problems
reuses every cached stage (slow)."""
import json

import pytest

from tests.e2e.test_cli import cli_error, launch


@pytest.mark.slow  # ~45-60 s; the stages, splitter, Q̂ and row builders are tested in-process (tests/rollout)
def test_the_pipeline_through_the_launcher_and_its_stage_cache(tmp_path):
    out = tmp_path / "dpo"
    proc = launch("recipes/step_negatives/tiny_debug.yaml", f"run.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "steps.json").read_text())
    assert summary["samples"] == 16 and summary["values"]["generate_calls"] == 1  # every prefix in one call
    assert summary["rows"] >= 1 and summary["values"]["rollouts"] == 2 * summary["values"]["prefixes"]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
    assert "gen/correct" in summary["held_out"]["final"] and (out / "final" / "config.json").exists()
    assert "per-step negatives" in (out / "report.md").read_text()
    # recipe.yaml reruns the whole pipeline; train_recipe.yaml is its last stage (DPO on rows.jsonl from π_sft)
    assert "problems: builtin:chain_arith" in (out / "recipe.yaml").read_text()
    assert "problems: ''" in (out / "train_recipe.yaml").read_text()


@pytest.mark.slow
def test_another_method_reuses_every_cached_stage(tmp_path):
    """A second method on the same problems: π_sft, samples and Q̂ come from the cache (slow: two full runs)."""
    runs = {}
    for method, objective in (("step_dpo", "objective.name=dpo"), ("step_awr", "objective.name=awr")):
        out = tmp_path / method
        extra = ["~objective.beta"] if method == "step_awr" else []
        proc = launch("recipes/step_negatives/tiny_debug.yaml", f"steps.method={method}", objective, *extra,
                      f"run.output_dir={out}", timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[method] = (proc.stderr, json.loads((out / "steps.json").read_text()))
    for stage in ("π_sft cached", "samples cached", "step values cached"):
        assert stage in runs["step_awr"][0]
    assert runs["step_awr"][1]["timings"]["value_s"] < 5


@pytest.mark.parametrize("overrides,message", [
    (["steps.problems=builtin:concise_arithmetic"], "gold solution"),
    (["steps.use_problems=99"], "steps.use_problems"),
    (["steps.method=step_awr"], "steps.method step_awr trains objective awr"),
    (["steps.critical=oracle", "steps.split_pattern=x"], "needs the default line steps"),
    (["steps.split_pattern=(unclosed"], "is not a regular expression"),
])
def test_bad_step_recipes_fail_before_anything_starts(overrides, message, capsys, monkeypatch):
    err = cli_error(capsys, monkeypatch, "recipes/step_negatives/tiny_debug.yaml", *overrides, "--dry-run")
    assert message in err.strip().splitlines()[-1]
