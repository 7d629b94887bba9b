"""Pipelines: what `launch.py` runs for a recipe, chosen by the objective's record kind."""
from __future__ import annotations

from pathlib import Path


def run_pipeline(recipe) -> Path:
    """Train and evaluate per the recipe; returns the run directory (with report.md). An earlier run in the output
    directory is refused, or with run.overwrite replaced only when this one succeeds (alignkit/rundir.py)."""
    from alignkit.objectives import get_objective
    from alignkit.rundir import run_directory

    kind = get_objective(recipe.objective.name).kind
    if recipe.online.rounds > 0:
        from alignkit.pipelines.online import run
    elif kind == "reward_pairs":
        from alignkit.pipelines.reward import run
    elif kind == "forget":
        from alignkit.pipelines.unlearn import run
    else:
        from alignkit.pipelines.preference import run
    with run_directory(recipe.output_dir, recipe.run.overwrite, recipe.run.resume is not None) as run_dir:
        return run(recipe, run_dir)
