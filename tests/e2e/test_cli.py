"""The command line as a user runs it: bad input gives one `error:` line and no traceback; --dry-run validates."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def launch(*args, timeout=120, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_clean_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and pattern in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


# Every shipped recipe (files starting with `_` are bases that other recipes extend).
SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("recipe", SHIPPED)
def test_shipped_recipes_validate(recipe, capsys, monkeypatch):
    from alignkit.cli import main

    monkeypatch.chdir(REPO)
    assert main([recipe, "--dry-run"]) == 0  # in-process: the same code as `launch.py RECIPE --dry-run`
    out = capsys.readouterr().out
    assert "objective:" in out and "global batch" in out


def test_dry_run_through_the_launcher():
    proc = launch("recipes/quickstart.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "objective:" in proc.stdout and "global batch" in proc.stdout


def test_unknown_key_error():
    assert_clean_error(launch("recipes/quickstart.yaml", "optim.lrr=1e-5"),
                       "unknown key `optim.lrr` in command-line overrides; did you mean `optim.lr`?")


def test_missing_data_file_error():
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", "data.train=/nonexistent/pairs.jsonl"),
                       "data file /nonexistent/pairs.jsonl does not exist")


def test_malformed_data_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", f"data.train={bad}", "data.eval=null",
                              f"run.output_dir={tmp_path}/run"),
                       f"{bad} row 1: missing field `rejected`")


def test_missing_model_error(tmp_path):
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", f"model.path={tmp_path}/no-model"),
                       "does not exist")


def test_debug_flag_shows_traceback():
    proc = launch("recipes/quickstart.yaml", "optim.lrr=1", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_global_batch_larger_than_data_error():
    assert_clean_error(launch("recipes/dpo/tiny_debug.yaml", "trainer.micro_batch_size=16", "trainer.grad_accum=4"),
                       "global batch 128 (trainer.micro_batch_size 16 x trainer.grad_accum 4 x cluster.num_workers 2)"
                       " is larger than the 64 training records")


def test_dry_run_prints_global_batch():
    proc = launch("recipes/quickstart.yaml", "trainer.grad_accum=3", "--dry-run")
    assert "# global batch = 4 x 3 x 2 = 24" in proc.stdout


def test_objective_that_does_not_fit_the_data():
    """npo consumes forget records; the quickstart data holds pairs: said plainly, by --dry-run too."""
    for flags in (("--dry-run",), ("run.output_dir=/nonexistent/never",)):
        proc = launch("recipes/dpo/tiny_debug.yaml", "objective.name=npo", *flags)
        assert_clean_error(proc, "objective `npo` consumes `forget` records")
        assert "`pairs`" in proc.stderr and "objectives that take this data: causal_rm, dpo" in proc.stderr
        assert "on_bad_row" not in proc.stderr  # skipping rows cannot help


def test_switched_objective_names_the_stale_parameter():
    proc = launch("recipes/dpo/tiny_debug.yaml", "objective.name=reward_bt", "--dry-run")
    assert_clean_error(proc, "objective `reward_bt` (set in command-line overrides) has no parameter `beta` "
                             "(its parameters: center_rewards); `objective.beta` comes from recipes/quickstart.yaml")
    fixed = launch("recipes/dpo/tiny_debug.yaml", "objective.name=reward_bt", "~objective.beta", "--dry-run")
    assert fixed.returncode == 0, fixed.stderr
    assert_clean_error(launch("recipes/quickstart.yaml", "~objective.nothing", "--dry-run"),
                       "the recipe sets no key `objective.nothing`")


@pytest.mark.parametrize("module", ["alignkit.evaluation.reward", "alignkit.evaluation.unlearning"])
def test_side_entry_points_give_one_error_line(module, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert_clean_error(run(str(tmp_path), "--suite", "evals/missing.yaml"),
                       "evaluation suite evals/missing.yaml does not exist (--suite)")
    run_dir = tmp_path / "a_run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text("{}")
    assert_clean_error(run(str(run_dir)), f"{run_dir} is a run directory, not a model directory; its trained model "
                                          f"is {run_dir / 'final'}")
