"""Pipelines: what `launch.py` runs for a recipe, chosen by the objective's record kind."""
from __future__ import annotations

from pathlib import Path


def run_pipeline(recipe) -> Path:
    """Train and evaluate per the recipe; returns the run directory (with report.md)."""
    from alignkit.objectives import get_objective

    kind = get_objective(recipe.objective.name).kind
    if kind == "reward_pairs":
        from alignkit.pipelines.reward import run
    elif kind == "forget":
        from alignkit.pipelines.unlearn import run
    else:
        from alignkit.pipelines.preference import run
    return run(recipe)
