"""Pipelines: what `launch.py` runs for a recipe, named by the objective's record kind (preference, reward,
unlearn), `online` for recipes with online rounds, `step_negatives` for recipes with `steps.problems`."""
from __future__ import annotations

from pathlib import Path


def run_pipeline(recipe) -> Path:
    """Train and evaluate per the recipe; returns the run directory (with report.md). An earlier run in the output
    directory is refused, or with run.overwrite replaced only when this one succeeds (alignkit/rundir.py)."""
    import importlib

    from alignkit.kinds import get_kind
    from alignkit.objectives import get_objective
    from alignkit.rundir import RunDirectory, run_directory

    # the objective's record kind names its pipeline (alignkit/kinds/); online recipes have their own
    name = ("online" if recipe.online.rounds > 0 else "step_negatives" if recipe.steps.problems
            else get_kind(get_objective(recipe.objective.name).kind).pipeline)
    run = importlib.import_module(f"alignkit.pipelines.{name}").run
    with run_directory(RunDirectory.of(recipe)) as run_dir:
        return run(recipe, run_dir)
