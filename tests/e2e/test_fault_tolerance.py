"""Cluster behaviour through real Ray Train runs (2 workers, DeepSpeed ZeRO-2, tiny-llama): a worker process killed
mid-run is restarted from the latest checkpoint and the run ends with the same metrics as an uninterrupted one;
`run.resume: auto` continues a stopped run with the same per-step losses."""
import json
import os

import pytest

from tests.e2e.test_cli import launch

COMMON = ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.eval_every=3", "eval.generate=false"]


def losses(run_dir):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = launch("recipes/dpo/tiny_debug.yaml", *COMMON, f"run.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return losses(out)


@pytest.mark.slow  # ~110 s with its uninterrupted run; the online kill test and the run-directory crash test are
# the other recovery checks (the default suite stays under 10 minutes on 2 cores)
def test_killed_worker_recovers_with_same_final_metrics(tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "run"
    marker = tmp_path / "killed"
    monkeypatch.setenv("ALIGNKIT_FAULT_KILL", f"1:3:{marker}")  # worker rank 1 SIGKILLs itself after step 3
    proc = launch("recipes/dpo/tiny_debug.yaml", *COMMON, "cluster.max_failures=1", f"run.output_dir={out}",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "the fault was not injected"
    recovered = losses(out)
    assert sorted(recovered) == sorted(uninterrupted)  # steps 0..6, each once: the resumed curve has no duplicates
    for step, record in uninterrupted.items():
        for key in ("train/loss", "eval/loss"):
            if key in record:
                assert recovered[step][key] == pytest.approx(record[key], abs=1e-5), (step, key)


@pytest.mark.slow  # the default suite has the same kill without retries in test_run_directory.py (one error line)
def test_without_retries_the_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_FAULT_KILL", f"0:1:{tmp_path / 'killed'}")
    proc = launch("recipes/dpo/tiny_debug.yaml", "trainer.max_steps=3", "eval.generate=false",
                  f"run.output_dir={tmp_path / 'run'}", timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_auto_continues_with_same_losses(tmp_path, uninterrupted):
    out = tmp_path / "run"
    first = launch("recipes/dpo/tiny_debug.yaml", *COMMON, "trainer.max_steps=4", f"run.output_dir={out}",
                   timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    [attempt] = os.listdir(out / "checkpoints")
    kept = sorted(p.name for p in (out / "checkpoints" / attempt).glob("step_*"))
    assert kept == ["step_000002", "step_000004"]  # retention: the last trainer.keep_checkpoints (2)
    second = launch("recipes/dpo/tiny_debug.yaml", *COMMON, "run.resume=auto", f"run.output_dir={out}",
                    timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = losses(out)
    assert sorted(resumed) == sorted(uninterrupted)
    for step in range(1, 7):
        # the resumed run fills its reference table in other batches (16 vs 24 visited examples): ~1 ulp of a
        # sequence log-prob, <= 6e-6 in the loss (see test_resume_with_more_steps_fills_missing_reference_logps)
        assert resumed[step]["train/loss"] == pytest.approx(uninterrupted[step]["train/loss"], abs=5e-5), step


@pytest.mark.slow  # ~70 s
def test_resume_from_a_checkpoint_directory(tmp_path, uninterrupted):
    """run.resume: <a checkpoint directory> (any run's, here into a new run directory) continues from its step.
    Until Ray Train V2 was given the path through the workers' config, every such run failed with Ray's
    "resume_from_checkpoint is deprecated"."""
    first = tmp_path / "first"
    proc = launch("recipes/dpo/tiny_debug.yaml", *COMMON, "trainer.max_steps=4", f"run.output_dir={first}",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [checkpoint] = (first / "checkpoints").glob("*/step_000002")
    out = tmp_path / "continued"
    proc = launch("recipes/dpo/tiny_debug.yaml", *COMMON, f"run.resume={checkpoint}", f"run.output_dir={out}",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    resumed = losses(out)
    assert sorted(resumed) == [3, 4, 5, 6]  # a new directory: the curve starts after the checkpoint's step
    for step in range(3, 7):  # (reference table filled in other batches: see the test above)
        assert resumed[step]["train/loss"] == pytest.approx(uninterrupted[step]["train/loss"], abs=5e-5), step
