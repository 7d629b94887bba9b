"""Ray wiring: run the training loop in a Ray Train `TorchTrainer` (local Ray unless RAY_ADDRESS is set or we are
inside a Ray job), and turn worker failures back into one readable error."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from alignkit.config.loader import recipe_from_dict, recipe_to_dict
from alignkit.config.schema import Recipe
from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS / the current Ray job, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local Ray 2.60 otherwise writes an auth token to ~/.ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    start = time.perf_counter()
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(log_to_driver=True)
        log.info("connected to Ray cluster %s", os.environ.get("RAY_ADDRESS", "(job)"))
    else:
        # The dashboard is on because Ray Train's placement-group cleaner polls the state API and logs a warning
        # every second without it.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
                 runtime_env={"env_vars": _worker_env()})
        log.info("started a local Ray in %.1f s", time.perf_counter() - start)


def _worker_env() -> dict[str, str]:
    # Caches and offline flags travel to workers; the alignkit cache holds the built-in models.
    keys = ["ALIGNKIT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TORCH_EXTENSIONS_DIR",
            "TRANSFORMERS_OFFLINE", "ALIGNKIT_FAULT"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def _worker_main(config: dict) -> None:
    """Entry point of every Ray Train worker."""
    import ray
    import torch

    from alignkit.engine.loop import TrainData, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    recipe = recipe_from_dict(config["recipe"], source=config["source"])
    if not recipe.cluster.use_gpu:
        torch.set_num_threads(max(1, int(recipe.cluster.cpus_per_worker)))
    if recipe.trainer.backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if recipe.cluster.use_gpu else "gloo")
    encoded = ray.get(config["data_ref"])
    data = TrainData(kind=encoded["kind"], train=encoded["train"], eval=encoded["eval"], pad_id=encoded["pad_id"])
    summary = train(recipe, data, config["output_dir"])
    from ray import train as ray_train

    ray_train.report(summary)


def run_training(recipe: Recipe, encoded: dict, output_dir: Path) -> None:
    """Fit a TorchTrainer with `cluster.num_workers` workers; raises AlignkitError with the worker's message."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray()
    c = recipe.cluster
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"recipe": recipe_to_dict(recipe), "source": recipe.source,
                           "data_ref": ray.put(encoded), "output_dir": str(output_dir)},
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu,
                                     resources_per_worker={"CPU": c.cpus_per_worker}),
        run_config=RunConfig(name=f"{recipe.run.name}-{int(time.time())}",
                             storage_path=str((output_dir / "ray").resolve()),
                             failure_config=FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
    except Exception as exc:  # ray.train.TrainingFailedError and friends
        raise AlignkitError(_explain_failure(exc)) from exc


def _explain_failure(exc: Exception) -> str:
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        base = getattr(failure, "_base_exc", failure)
        if isinstance(base, AlignkitError):
            return str(base)
        return f"training worker {rank} failed: {type(base).__name__}: {str(base).strip().splitlines()[-1]}"
    return f"training failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
