"""Online training as a user runs it: `python launch.py recipes/online/<name>.yaml` (one persistent trainer, HF engine
actors, weights pushed every round), and the recipe errors that stop it before anything starts."""
import json

import pytest

from tests.e2e.test_cli import cli_error, launch


def test_two_online_rounds_through_the_launcher(tmp_path):
    out = tmp_path / "run"
    proc = launch("recipes/online/tiny_debug.yaml", f"run.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]  # step 0: the starting policy's held-out evaluation
    assert "online/eval_correct" in records[0]
    assert [r["online/round"] for r in records if "online/round" in r] == [0, 1]
    assert [r["online/weights_version"] for r in records if "online/weights_version" in r] == [1, 2]
    assert all(r["time/push_s"] < 60 for r in records if "time/push_s" in r)
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [-1, 0, 1] and all("online/eval_correct" in r for r in rounds)
    assert "## Rounds" in (out / "report.md").read_text()
    assert (out / "final" / "config.json").exists()


@pytest.mark.parametrize("overrides,message", [
    (["online.feedback_params={answer_field: solution}"],
     "missing field `solution`, which the feedback provider (online.feedback) reads for every prompt"),
    (["objective.name=dpo", "objective.beta=0.1"], "unpaired_by_score makes `unpaired` records, but the objective "
                                                   "consumes `pairs` records; use best_vs_worst"),
    (["reference.mode=precompute"], "cannot be precomputed"),
    (["online.rows_params={min_score: 1}"], "unpaired_by_score has no parameter 'min_score'"),
    (["online.feedback=judge"], "unknown provider `judge`"),
    (["online.prompts_per_round=0"], "`online.prompts_per_round`"),
])
def test_bad_online_recipes_fail_before_anything_starts(overrides, message, capsys, monkeypatch):
    err = cli_error(capsys, monkeypatch, "recipes/online/tiny_debug.yaml", *overrides, "--dry-run")
    assert message in err.strip().splitlines()[-1]


ONLINE_KILL = ["online.rounds=3", "trainer.checkpoint_every=1", "trainer.backend=deepspeed", "trainer.zero_stage=2",
               "cluster.cpus_per_worker=0.5",  # 2 workers + the engine on 2 cores
               "cluster.num_workers=2"]


@pytest.mark.slow  # two online runs with 2 Ray Train workers (~2 min)
def test_a_killed_worker_recovers_an_online_run(tmp_path, monkeypatch):
    """A trainer worker really killed mid-round (after step 3 = round 1's first step) under cluster.max_failures:
    the worker group restarts from the latest checkpoint (round 1's rows in it, weights pushed to the engine
    again) and the run ends with the same per-step losses as an uninterrupted one."""
    def losses(out):
        records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}

    straight = tmp_path / "straight"
    proc = launch("recipes/online/tiny_debug.yaml", *ONLINE_KILL, f"run.output_dir={straight}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("ALIGNKIT_FAULT_KILL", f"1:3:{tmp_path / 'killed'}")
    killed = tmp_path / "killed_run"
    proc = launch("recipes/online/tiny_debug.yaml", *ONLINE_KILL, "cluster.max_failures=1",
                  f"run.output_dir={killed}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "killed").exists(), "the fault was not injected"
    a, b = losses(straight), losses(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:  # the same operations in the same order after the restart (the kill test's 1e-5)
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
