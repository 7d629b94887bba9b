"""A finished run is never destroyed by a later one, as a user runs it: a good tiny run through `launch.py`, then
runs with the same name that fail in each way (refused without run.overwrite; with it, bad data, a bad model path,
a worker killed inside training). Afterwards the good run's files are byte for byte what they were."""
import pytest

from tests.e2e.test_cli import assert_clean_error, launch

FAST = ("eval.generate=false", "trainer.max_steps=2", "trainer.eval_every=0", "trainer.backend=torch",
        "trainer.zero_stage=0", "cluster.num_workers=1")


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and "checkpoints" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "good"
    proc = launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = _files(out)
    assert {"report.md", "metrics.jsonl", "recipe.yaml", "final/model.safetensors"} <= set(files)
    return out, files


def test_same_name_is_refused(good_run):
    out, files = good_run
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}"),
                       "already holds a finished run")
    assert _files(out) == files


def test_bad_data_with_overwrite_changes_nothing(good_run, tmp_path):
    out, files = good_run
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", "run.overwrite=true",
                              f"data.train={bad}", "data.eval=null"), "row 1: missing field `rejected`")
    assert _files(out) == files


def test_bad_model_path_with_overwrite_changes_nothing(good_run, tmp_path):
    out, files = good_run
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", "run.overwrite=true",
                              f"model.path={tmp_path}/no/such/model"), "does not exist")
    assert _files(out) == files


def test_crash_inside_training_restores_the_earlier_run(good_run, tmp_path):
    out, files = good_run
    proc = launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", "run.overwrite=true",
                  env={"ALIGNKIT_FAULT_KILL": f"0:1:{tmp_path / 'killed'}"}, timeout=600)
    assert (tmp_path / "killed").exists()  # the worker really died inside training
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # (Ray shows the dead worker's peers' tracebacks above it)
    assert last.startswith("error: ") and f"the earlier run in {out} was restored unchanged" in last, last
    assert _files(out) == files
    assert not (out / ".replaced").exists()


def test_dry_run_warns_that_the_run_would_be_refused(good_run):
    out, files = good_run
    proc = launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the run would stop:" in proc.stderr and "already holds a finished run" in proc.stderr
    assert _files(out) == files


def test_resume_without_checkpoints_is_refused(good_run):
    """The good run wrote no checkpoints: run.resume=auto cannot continue it and must not start over in place."""
    out, files = good_run
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", *FAST, f"run.output_dir={out}", "run.resume=auto"),
                       "no checkpoint of this run to continue")
    assert _files(out) == files
