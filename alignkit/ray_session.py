"""The Ray session every layer shares: connect to the cluster in RAY_ADDRESS (or the Ray job this runs in), else
start a local Ray, with the environment its workers need and without the log lines that are not the user's concern.
Imports nothing of alignkit, so the rollout engines, the trainer and the pipelines can all start Ray through it."""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def cpu_threads(cpus: float) -> int:
    """Torch threads for a task or worker holding `cpus` Ray CPUs: rounded, not truncated, so a sweep's 1.9-CPU
    worker (0.1 left for the trial's own process) still uses both cores (int() gave it one: 2x slower)."""
    return max(1, round(cpus))


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS / the current Ray job, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local Ray 2.60 otherwise writes an auth token to ~/.ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    start = time.perf_counter()
    _drop_benign_ray_lines()
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(log_to_driver=True)
        log.info("connected to Ray cluster %s", os.environ.get("RAY_ADDRESS", "(job)"))
    else:
        # A local Ray has no spot nodes to be preempted: Ray Train's preemption watcher has nothing to watch.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # The dashboard is on because Ray Train's placement-group cleaner polls the state API and logs a warning
        # every second without it.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
                 runtime_env={"env_vars": _worker_env()})
        log.info("started a local Ray in %.1f s", time.perf_counter() - start)


def outside_placement_group() -> dict:
    """Options for `ray.remote` that schedule a task on the cluster's free resources even when the caller runs in a
    placement group. A sweep trial runs in Tune's placement group, which holds only sweep.trial_cpus; Ray would place
    the trial's evaluation tasks (which ask for a training worker's CPUs) inside it, where they can never fit."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)}


# Lines Ray forwards from its own processes that are not the user's concern and read like errors: Ray Train's
# controller logs at level E that its preemption-watcher actor has constructor arguments in the object store.
BENIGN_RAY_LINES = ("has constructor arguments in the object store and max_restarts > 0",)


def _drop_benign_ray_lines() -> None:
    """Filter BENIGN_RAY_LINES out of the worker output Ray prints in this driver (everything else is kept)."""
    import ray._private.worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "alignkit_filtered", False):
        return

    def filtered(data, ignore_prefix: bool):
        lines = [x for x in data.get("lines", []) if not any(b in x for b in BENIGN_RAY_LINES)]
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    filtered.alignkit_filtered = True
    ray_worker.print_to_stdstream = filtered


def _worker_env() -> dict[str, str]:
    # Caches and offline flags travel to workers; the alignkit cache holds the built-in models.
    keys = ["ALIGNKIT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TORCH_EXTENSIONS_DIR",
            "TRANSFORMERS_OFFLINE", "ALIGNKIT_FAULT", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"]
    return {k: os.environ[k] for k in keys if k in os.environ}
