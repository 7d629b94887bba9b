"""Ray wiring: run the training loop in a Ray Train `TorchTrainer` (local Ray unless RAY_ADDRESS is set or we are
inside a Ray job), and turn worker failures back into one readable error."""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
import warnings
from pathlib import Path

from alignkit.config.loader import recipe_from_dict, recipe_to_dict
from alignkit.config.schema import Recipe
from alignkit.errors import AlignkitError
from alignkit.ray_session import (
    cpu_threads,
    ensure_ray,  # noqa: F401  (re-exported: the pipelines start Ray through it)
)

log = logging.getLogger(__name__)


def _fault_injector():
    """ALIGNKIT_FAULT_KILL=<rank>:<step>:<marker file>: that worker SIGKILLs itself after that step, once (the
    marker file records that it happened). Real process death, for testing recovery; never set in normal runs."""
    spec = os.environ.get("ALIGNKIT_FAULT_KILL")
    if not spec:
        return None
    rank_s, step_s, marker = spec.split(":", 2)

    def maybe_kill(step: int, rank: int) -> None:
        if rank == int(rank_s) and step == int(step_s) and not os.path.exists(marker):
            Path(marker).write_text(f"killed worker {rank} (pid {os.getpid()}) after step {step}\n")
            log.warning("fault injection: killing this worker (rank %d, pid %d) after step %d", rank, os.getpid(),
                        step)
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_kill


def _report_checkpoint(step: int, metrics: dict, write) -> None:
    """Every worker writes its part of the state into a local directory and reports it; Ray Train merges the parts
    into storage_path/<run>/step_NNNNNN and registers the checkpoint only when all are uploaded."""
    import ray.train

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory(prefix="alignkit-ckpt-") as tmp:
        write(Path(tmp))
        ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step_{step:06d}")


def _worker_main(config: dict) -> None:
    """Entry point of every Ray Train worker (also after a restart: then get_checkpoint() is the latest one)."""
    import ray
    import ray.train
    import torch

    from alignkit.engine.loop import RunHooks, TrainData, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Deprecation notices from torch.distributed inside DeepSpeed are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    recipe = recipe_from_dict(config["recipe"], source=config["source"])
    if not recipe.cluster.use_gpu:
        torch.set_num_threads(cpu_threads(recipe.cluster.cpus_per_worker))
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # chosen, not a failed GPU detection (DeepSpeed's warning)
    if recipe.trainer.backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if recipe.cluster.use_gpu else "gloo")
    encoded = ray.get(config["data_ref"])
    data = TrainData(kind=encoded["kind"], train=encoded["train"], eval=encoded["eval"], pad_id=encoded["pad_id"],
                     retain=encoded.get("retain", []))
    hooks = RunHooks(save_checkpoint=_report_checkpoint, on_step_end=_fault_injector())
    if config.get("tune"):  # a sweep trial: every evaluation goes to Tune (TuneReportCallback on the trial's side)
        hooks.on_evaluation = lambda record: ray.train.report(
            {k: float(v) for k, v in record.items() if isinstance(v, (int, float))})
    if encoded.get("online"):
        hooks.source = _online_source(recipe, encoded["online"])
    sink = config.get("weight_sink")
    if sink is not None:
        def push(state: dict) -> dict:
            pushed = sink.send(state)
            (Path(config["output_dir"]) / "weight_sync.json").write_text(json.dumps(pushed))
            return {"rollout/sync_s": pushed["seconds"]}
        hooks.on_final_weights = push
    checkpoint = ray.train.get_checkpoint()  # this run's latest, after a worker-group restart
    if checkpoint is None and config.get("resume_dir"):  # run.resume: a checkpoint directory
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_dir"])
    if checkpoint is None:
        summary = train(recipe, data, config["output_dir"], hooks=hooks)
    else:
        with checkpoint.as_directory() as directory:
            hooks.resume_dir = Path(directory)
            summary = train(recipe, data, config["output_dir"], hooks=hooks)
    ray.train.report(summary)


def _online_source(recipe: Recipe, payload: dict):
    """The batch source of an online run: rounds made on rank 0 with the pool's engines (rollout/rounds.py)."""
    from alignkit.data.encode import EncodeSettings
    from alignkit.engine.sources import OnlineSource
    from alignkit.objectives import get_objective
    from alignkit.rollout.rounds import RoundMaker

    d, o, t = recipe.data, recipe.online, recipe.trainer
    maker = RoundMaker(payload["client"], payload["prompt_rows"], payload["eval_rows"],
                       get_objective(recipe.objective.name).kind, o, recipe.model.path,
                       EncodeSettings(d.max_length, d.max_prompt_length, d.truncation_mode, d.chat_template == "auto"),
                       seed=recipe.run.seed, scorer=payload.get("scorer"), colocate=recipe.rollout.colocate,
                       rows_dir=payload.get("rows_dir"))
    return OnlineSource(make_rows=maker.make_rows, push=maker.push,
                        evaluate=maker.evaluate if payload["eval_rows"] else None, steps_per_round=o.steps_per_round,
                        seed=recipe.run.seed, micro=t.micro_batch_size, accum=t.grad_accum, few_rows=o.few_rows,
                        max_extra_rounds=o.max_extra_rounds, eval_every=o.eval_every)


def collective_timeout_s(recipe: Recipe) -> int:
    """How long a rank may wait in a collective (the process group's timeout). Online runs: ranks > 0 wait in the
    rows broadcast while rank 0 makes a round and pushes, so the bound is every engine call a round may make, each
    limited by rollout.sync_timeout_s: generate + score per generation (1 + max_extra_rounds of them), then push and
    held-out evaluation."""
    o = recipe.online
    if o.rounds <= 0:
        return 1800  # Ray Train's default
    return int(max(1800, recipe.rollout.sync_timeout_s * (2 * (1 + o.max_extra_rounds) + 3)))


def _experiment_name(recipe: Recipe, storage: Path) -> str:
    """resume: auto continues the newest earlier attempt of this run name (Ray Train restores its checkpoints from
    the snapshot in that folder); otherwise a new, timestamped folder so old checkpoints are kept but not used."""
    if recipe.run.resume == "auto" and storage.exists():
        earlier = sorted((p for p in storage.glob(f"{recipe.run.name}-*") if any(p.glob("step_*"))),
                         key=lambda p: p.stat().st_mtime)
        if earlier:
            log.info("run.resume: auto: continuing %s", earlier[-1])
            return earlier[-1].name
        log.info("run.resume: auto: no earlier checkpoint of %s in %s; starting fresh", recipe.run.name, storage)
    return f"{recipe.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_capacity(recipe: Recipe, reserved: dict | None = None) -> None:
    """On a local Ray (no autoscaler to add nodes), fail at once when the trainer workers plus what this run's
    rollout engines `reserved` cannot fit: Ray Train would otherwise retry the worker group's start forever."""
    import ray

    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        return  # a cluster may autoscale
    c = recipe.cluster
    total = ray.cluster_resources()
    for name, per_worker in (("CPU", c.cpus_per_worker), ("GPU", c.gpus_per_worker if c.use_gpu else 0)):
        need, held = c.num_workers * per_worker, (reserved or {}).get(name, 0)
        if need and need + held > total.get(name, 0) + 1e-9:
            engines = f" while the rollout engines hold {held:g}" if held else ""
            raise AlignkitError(
                f"the {c.num_workers} training worker(s) need {need:g} {name} (cluster.num_workers x "
                f"cluster.{name.lower()}s_per_worker) but this local Ray has {total.get(name, 0):g}{engines}; lower "
                f"cluster.num_workers / cluster.{name.lower()}s_per_worker"
                + (" or rollout.num_engines / rollout.cpus_per_engine" if held else ""))


def run_training(recipe: Recipe, encoded: dict, output_dir: Path, weight_sink=None,
                 reserved: dict | None = None) -> None:
    """Fit a TorchTrainer with `cluster.num_workers` workers; raises AlignkitError with the worker's message.
    `weight_sink`: rank 0 sends the final weights through it (to rollout engines) and writes weight_sync.json.
    `reserved`: resources this run's rollout engines hold ({"CPU": 1.0, ...}), for the capacity check."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray()
    check_capacity(recipe, reserved)
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    in_tune = _in_tune_session()
    # a PBT trial: the checkpoint reports reach Tune with their checkpoints (PBT clones trials from them); in other
    # trials the evaluations reach Tune as metrics through Ray's TuneReportCallback
    pbt = in_tune and recipe.sweep.scheduler == "pbt"
    callbacks, queues = [], None
    if pbt:
        from ray.util.queue import Queue

        queues = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
        callbacks.append(_reports_to_queue(*queues))
    elif in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    c, t = recipe.cluster, recipe.trainer
    storage = Path(recipe.storage_path).resolve() if "://" not in recipe.storage_path else recipe.storage_path
    resources = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.use_gpu else {})}
    # run.resume: a checkpoint directory reaches the workers in their config (Train V2 has no
    # resume_from_checkpoint); auto: Ray Train restores the latest checkpoint of the continued experiment itself
    resume_dir = None if recipe.run.resume in (None, "auto") else str(Path(recipe.run.resume).resolve())
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"recipe": recipe_to_dict(recipe), "source": recipe.source,
                           "data_ref": ray.put(encoded), "output_dir": str(output_dir), "weight_sink": weight_sink,
                           "tune": in_tune and not pbt, "resume_dir": resume_dir},
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(timeout_s=collective_timeout_s(recipe)),
        run_config=RunConfig(
            name=_experiment_name(recipe, Path(storage)) if isinstance(storage, Path) else recipe.run.name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=c.max_failures), callbacks=callbacks,
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints, checkpoint_score_attribute=t.checkpoint_metric,
                checkpoint_score_order=t.checkpoint_mode)),
    )
    try:
        result = (trainer.fit() if queues is None else
                  _fit_reporting_to_tune(trainer, *queues, t.max_steps, recipe.sweep.metric))
    except Exception as exc:  # ray.train.TrainingFailedError and friends
        raise AlignkitError(_explain_failure(exc)) from exc
    if result.checkpoint is not None:
        log.info("latest checkpoint: %s", result.checkpoint.path)


def _reports_to_queue(reports, done):
    """A Ray Train callback (it runs in the Train controller) that puts every report, with its checkpoint, onto
    `reports` and waits until the trial's thread has reported it to Tune (_fit_reporting_to_tune), which copies the
    checkpoint: until then Ray Train's retention must not delete it (the blocked controller registers no newer
    checkpoint). Ray's TuneReportCallback forwards only the metrics and the checkpoint's path: PBT would have no
    checkpoint to clone."""
    from ray.train.v2.api.callback import UserCallback

    class ReportsToQueue(UserCallback):
        def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
            reports.put((metrics[0], checkpoint))
            done.get()

    return ReportsToQueue()


def _fit_reporting_to_tune(trainer, reports, done, max_steps: int, metric: str):
    """`trainer.fit()` in a thread, while this (the Tune trial's) thread reports what the workers report. A
    checkpoint goes with its report (Tune copies it into the trial's directory: what PBT clones from). The last
    step's report goes without step and checkpoint, so PBT does not restart a trial that has finished training; the
    workers' end-of-run summary (no step) is not reported: the trial reports its final metrics itself."""
    import threading

    from ray import tune
    from ray.util.queue import Empty

    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # raised again in the trial's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="alignkit-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not reports.empty():
            try:
                metrics, checkpoint = reports.get(timeout=1.0)
            except Empty:
                continue
            step = metrics.get("step")
            if step is not None and metric not in metrics:  # PBT would never compare this trial
                done.put(True)
                raise AlignkitError(f"sweep.metric {metric} is not among the metrics this run reports: "
                                    + ", ".join(sorted(k for k in metrics if k.startswith(("eval/", "train/")))))
            if step is not None and step < max_steps:
                tune.report(metrics, checkpoint=None if checkpoint is None else
                            tune.Checkpoint(checkpoint.path, checkpoint.filesystem))
            elif step is not None:
                tune.report({k: v for k, v in metrics.items() if k != "step"})
            done.put(True)
        thread.join()
    finally:  # (when PBT stops this trial, the process goes, and the Train run with it: actors are owned by it)
        for queue in (reports, done):
            queue.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _explain_failure(exc: Exception) -> str:
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        base = getattr(failure, "_base_exc", failure)
        if isinstance(base, AlignkitError):
            return str(base)
        return f"training worker {rank} failed: {type(base).__name__}: {str(base).strip().splitlines()[-1]}"
    return f"training failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
