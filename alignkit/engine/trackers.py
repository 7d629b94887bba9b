"""Experiment trackers (`run.loggers`): rank 0 sends every record it writes to metrics.jsonl (always written: the
run's contract) to TensorBoard, Weights & Biases and/or MLflow, and the resolved recipe as the run's config. Sweeps
set `run.group` to the sweep's name, so a sweep's trials are grouped (a W&B group, one MLflow experiment)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from alignkit.config.loader import dump_recipe, recipe_to_dict
from alignkit.config.schema import Recipe

log = logging.getLogger(__name__)

def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]  # MLflow's limit for a parameter value
    return out


class TensorBoardTracker:
    def __init__(self, recipe: Recipe, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))
        self.writer.add_text("recipe", "```yaml\n" + dump_recipe(recipe) + "```")

    def log(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, recipe: Recipe, out: Path):
        import wandb

        # WANDB_MODE=offline (or disabled) works without an account; the files go to <output_dir>/wandb
        self.run = wandb.init(project=recipe.run.project, name=recipe.run.name, group=recipe.run.group,
                              config=recipe_to_dict(recipe), dir=str(out), reinit="create_new")

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    def __init__(self, recipe: Recipe, out: Path):
        import mlflow

        # MLFLOW_TRACKING_URI names a server or database; default: a file store in <output_dir>/mlruns (MLflow >= 3
        # keeps file stores in maintenance mode and asks for this opt-in)
        if "MLFLOW_TRACKING_URI" not in os.environ:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI",
                                                                      (out / "mlruns").resolve().as_uri()))
        name = recipe.run.group or recipe.run.project
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=recipe.run.name).info.run_id
        config = recipe_to_dict(recipe)
        for key, value in _flat(config).items():
            self.client.log_param(self.run_id, key, value)
        self.client.log_dict(self.run_id, config, "recipe.json")

    def log(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.client.log_metric(self.run_id, k, v, step=step)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The run's trackers on rank 0 (none elsewhere)."""

    def __init__(self, recipe: Recipe, out: Path, enabled: bool):
        self.trackers = [TRACKERS[n](recipe, out) for n in recipe.run.loggers if n in TRACKERS] if enabled else []

    def log(self, record: dict) -> None:
        scalars = _scalars(record)
        for tracker in self.trackers:
            tracker.log(int(record.get("step", 0)), scalars)

    def close(self, failed: bool = False) -> None:
        """End every tracker's run (idempotent); `failed` marks it failed where the tracker has a status."""
        for tracker in self.trackers:
            try:
                tracker.close(failed)
            except Exception as exc:  # closing must not hide the run's own error
                log.warning("closing %s failed: %s", type(tracker).__name__, exc)
        self.trackers = []
