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


def cli_error(capsys, monkeypatch, *args) -> str:
    """`launch.py ARGS` in-process (the same `main` the launcher calls; a subprocess per case cost ~4 s of the
    default suite's time): exit code 2, one `error:` line, no traceback. Returns all it wrote to stderr."""
    from alignkit.cli import main

    monkeypatch.chdir(REPO)
    code = main(list(args))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    return err


# Every shipped recipe (files starting with `_` are bases that other recipes extend).
SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("recipe", SHIPPED)
def test_shipped_recipes_validate(recipe, capsys, monkeypatch):
    from alignkit.cli import main
    from alignkit.config import load_recipe

    monkeypatch.chdir(REPO)
    overrides = []
    loaded = load_recipe(recipe)
    if loaded.model.path.startswith("runs/"):  # a recipe that starts from an earlier recipe's run (recipes/fcp)
        if not (REPO / loaded.model.path).exists():
            assert main([recipe, "--dry-run"]) == 2  # without that run: one error line naming the missing model
            assert loaded.model.path in capsys.readouterr().err
        overrides.append("model.path=builtin:tiny-llama")
        if str(loaded.online.rows_params.get("conditions", "")).startswith("runs/"):
            overrides.append("online.rows_params.conditions=[Accurate and rigorous.]")
    assert main([recipe, *overrides, "--dry-run"]) == 0  # in-process: the same code as `launch.py RECIPE --dry-run`
    out = capsys.readouterr().out
    assert "objective:" in out and "global batch" in out


def test_dry_run_through_the_launcher():
    proc = launch("recipes/quickstart.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "objective:" in proc.stdout and "global batch" in proc.stdout


def test_unknown_key_error(capsys, monkeypatch):
    assert "unknown key `optim.lrr` in command-line overrides; did you mean `optim.lr`?" in cli_error(
        capsys, monkeypatch, "recipes/quickstart.yaml", "optim.lrr=1e-5")


def test_missing_data_file_error(capsys, monkeypatch):
    assert "data file /nonexistent/pairs.jsonl does not exist" in cli_error(
        capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml", "data.train=/nonexistent/pairs.jsonl")


def test_malformed_data_error(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    assert f"{bad} row 1: missing field `rejected`" in cli_error(
        capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml", f"data.train={bad}", "data.eval=null",
        f"run.output_dir={tmp_path}/run")


def test_missing_model_error(tmp_path, capsys, monkeypatch):
    assert "does not exist" in cli_error(capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml",
                                         f"model.path={tmp_path}/no-model")


def test_debug_flag_shows_traceback():
    proc = launch("recipes/quickstart.yaml", "optim.lrr=1", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_global_batch_larger_than_data_error(tmp_path, capsys, monkeypatch):
    assert ("global batch 128 (trainer.micro_batch_size 16 x trainer.grad_accum 4 x cluster.num_workers 2) is larger "
            "than the 64 training records") in cli_error(capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml",
                                                         "trainer.micro_batch_size=16", "trainer.grad_accum=4",
                                                         f"run.output_dir={tmp_path}/run")


def test_dry_run_prints_global_batch():
    proc = launch("recipes/quickstart.yaml", "trainer.grad_accum=3", "--dry-run")
    assert "# global batch = 4 x 3 x 2 = 24" in proc.stdout


def test_objective_that_does_not_fit_the_data(capsys, monkeypatch):
    """npo consumes forget records; the quickstart data holds pairs: said plainly, by --dry-run too."""
    for flags in (("--dry-run",), ("run.output_dir=/nonexistent/never",)):
        err = cli_error(capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml", "objective.name=npo", *flags)
        assert "objective `npo` consumes `forget` records" in err.strip().splitlines()[-1]
        assert "`pairs`" in err and "objectives that take this data: causal_rm, dpo" in err
        assert "on_bad_row" not in err  # skipping rows cannot help


def test_switched_objective_names_the_stale_parameter(capsys, monkeypatch):
    from alignkit.cli import main

    assert ("objective `reward_bt` (set in command-line overrides) has no parameter `beta` (its parameters: "
            "center_rewards); `objective.beta` comes from recipes/quickstart.yaml") in cli_error(
        capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml", "objective.name=reward_bt", "--dry-run")
    assert main(["recipes/dpo/tiny_debug.yaml", "objective.name=reward_bt", "~objective.beta", "--dry-run"]) == 0
    capsys.readouterr()
    assert "the recipe sets no key `objective.nothing`" in cli_error(
        capsys, monkeypatch, "recipes/quickstart.yaml", "~objective.nothing", "--dry-run")


@pytest.mark.parametrize("suite", ["reward", "unlearning"])
def test_eval_gives_one_error_line(suite, tmp_path, capsys, monkeypatch):
    assert "suite `evals/missing.yaml` is neither a file nor a shipped suite" in cli_error(
        capsys, monkeypatch, "eval", "evals/missing.yaml", f"model.path={tmp_path}")
    run_dir = tmp_path / "a_run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text("{}")
    assert f"{run_dir} is a run directory, not a model directory; its trained model is {run_dir / 'final'}" in \
        cli_error(capsys, monkeypatch, "eval", suite, f"model.path={run_dir}")


# ------------------------------------------------------------------------------------- the `alignkit` command
def test_list_verbs(capsys):
    from alignkit.cli import main

    for what, expected in (("objectives", ["dpo ", "pmpo ", "npo_rt ", "causal_rm "]),
                           ("datasets", ["builtin:concise_arithmetic", "builtin:fictitious_authors"]),
                           ("recipes", ["quickstart ", "dpo/tiny_debug ", "online/pmpo_builtin "]),
                           ("suites", ["reward ", "unlearning_tofu "])):
        assert main(["list", what]) == 0
        out = capsys.readouterr().out
        assert all(e in out for e in expected), (what, out)
    assert "online/_builtin_base" not in out  # bases are not listed


def test_shipped_names_flags_anywhere_and_other_directories(tmp_path):
    """`alignkit run NAME` from any directory; flags before, between and after the overrides."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["run", "quickstart", "--dry-run", "optim.lr=1e-4"],
                 ["run", "--dry-run", "quickstart", "optim.lr=1e-4"],
                 ["run", "recipes/quickstart.yaml", "optim.lr=1e-4", "--dry-run", "trainer.max_steps=3"]):
        proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "lr: 0.0001" in proc.stdout and "objective:" in proc.stdout
    assert "max_steps: 3" in proc.stdout
    proc = launch("recipes/quickstart.yaml", "--dry-run", "optim.lr=1")  # launch.py: flags before overrides too
    assert proc.returncode == 0 and "lr: 1.0" in proc.stdout, proc.stderr


def test_cli_errors(capsys, monkeypatch):
    assert "recipe `no_such_recipe` is neither a file nor a shipped recipe (`alignkit list recipes`" in cli_error(
        capsys, monkeypatch, "no_such_recipe", "--dry-run")
    assert "alignkit eval needs model.path=DIR" in cli_error(capsys, monkeypatch, "eval", "reward")
    assert "retain.path is for unlearning suites" in cli_error(capsys, monkeypatch, "eval", "reward", "model.path=/x",
                                                                "retain.path=/y")
    assert "alignkit eval takes model.path=DIR and retain.path=DIR" in cli_error(capsys, monkeypatch, "eval",
                                                                                "reward", "model=/x")


@pytest.mark.slow  # builds and installs the package (~1 min)
def test_a_non_editable_install_has_the_command_recipes_and_suites(tmp_path):
    """pip install (not editable) into a fresh target; from another directory the installed `alignkit` lists and
    dry-runs the shipped recipes (package data), with no repository on the path."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(REPO)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import alignkit; print(alignkit.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    listed = subprocess.run([str(site / "bin" / "alignkit"), "list", "recipes"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "quickstart" in listed.stdout and "unlearn/npo_rt_builtin" in listed.stdout
    dry = subprocess.run([str(site / "bin" / "alignkit"), "run", "unlearn/npo_rt_builtin", "--dry-run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]


def test_shipped_suites_resolve_from_any_directory(tmp_path, monkeypatch):
    """A shipped recipe's `eval.suite: evals/reward.yaml` works when the run starts in another directory."""
    from alignkit.evaluation.reward import load_suite
    from alignkit.paths import shipped

    monkeypatch.chdir(tmp_path)
    assert shipped("evals/reward.yaml", "evals").is_file() and shipped("reward", "evals").is_file()
    assert load_suite("evals/reward.yaml").sets  # found in the package, not the working directory
    assert shipped("evals/nope.yaml", "evals") == __import__("pathlib").Path("evals/nope.yaml")
